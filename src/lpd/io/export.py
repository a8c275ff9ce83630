"""Exports of a prediction store: pyramidal label TIFF, QuPath GeoJSON, per-class area CSV.

Every export reads the store chunk by chunk (or band by band) and writes atomically.
- TIFF: BigTIFF, tiled (256 px), deflate-compressed, uint8 labels as a palette image (the
  class colours in the TIFF colour map); levels 1.. of the store's pyramid as SubIFDs; the
  class table (value, name, colour), mpp, offset and scale in the first page's JSON
  ImageDescription; resolution tags in pixels per centimetre when the mpp is known.
- GeoJSON: a FeatureCollection, one feature per connected polygon (holes included), with
  ``properties = {"objectType": "annotation", "classification": {"name", "color"}}`` as
  QuPath reads it, coordinates in level-0 slide pixels. Polygons are traced with marching
  squares (``skimage.measure.find_contours``, boundaries on pixel edges, corners cut by
  half a pixel) per block of 2048 px with one pixel of real data around it, clipped to the
  block and merged per class (``shapely.union_all``), so polygons cross blocks seamlessly.
  Memory grows with the number of polygon vertices, not the slide: by default the finest
  store level with at most ``max_pixels`` pixels is traced (a coarser level for huge
  stores: fewer, coarser vertices), and polygons are simplified by ``simplify`` pixels.
  Polygons are clipped to the store's extent (``store_extent``): no coordinate lies past
  the slide's edge, whatever level was traced.
- CSV: per class pixel count, area in µm² (empty, with a note, when the mpp is unknown),
  % of tissue (classes 1..C) and % of the analysed region (background included)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon, box, mapping
from shapely.geometry.polygon import orient
from skimage.measure import find_contours

from lpd._atomic import atomic_open, atomic_path
from lpd.errors import InputError
from lpd.io.store import OutputStore

TIFF_TILE = 256
BLOCK = 2048
MAX_PIXELS = 2**26


def _store(store: OutputStore | str | Path, allow_incomplete: bool) -> OutputStore:
    opened = store if isinstance(store, OutputStore) else OutputStore.open(store)
    if not opened.complete and not allow_incomplete:
        raise InputError(opened.path, "the prediction is incomplete (interrupted?); rerun the "
                         "prediction to finish it, or export it as it is on purpose")
    return opened


def class_table(store: OutputStore) -> list[dict]:
    rows = [{"value": 0, "name": "background", "colour": [0, 0, 0]}]
    names = store.class_names  # a model made with fewer classes may keep more colours
    for i, (name, colour) in enumerate(zip(names, store.class_colours[: len(names)],
                                           strict=True)):
        rows.append({"value": i + 1, "name": name, "colour": list(colour)})
    return rows


# ---- TIFF -------------------------------------------------------------------------------
def export_tiff(
    store: OutputStore | str | Path, path: str | Path, *, allow_incomplete: bool = False
) -> Path:
    """Pyramidal, tiled, compressed label TIFF (see the module docstring).

    Every page is a palette (indexed colour) image: the pixel values are the labels, and
    the TIFF colour map (``tiff_colormap``) shows them in the class colours in viewers that
    apply it (QuPath exports its own label masks this way); readers that do not, tifffile
    and napari-lpd among them, see the labels. The description is our JSON only, so
    tifffile reads the file without a warning.

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder).
    path : str or Path
        The ``.tif`` to write (atomically).
    allow_incomplete : bool
        Export an interrupted prediction as it is.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        When the store cannot be opened, or is incomplete and not allowed to be.
    """
    import tifffile

    st = _store(store, allow_incomplete)
    path = Path(path)
    meta = {
        "lpd": "labels", "classes": class_table(st), "mpp": st.mpp, "scale": st.scale,
        "offset": {"x": st.offset[0], "y": st.offset[1]}, "complete": st.complete,
    }
    colormap = tiff_colormap(st)
    levels = st.n_levels
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for lv in range(levels):
            arr = st.level(lv)
            options: dict = {
                "shape": tuple(arr.shape), "dtype": np.uint8, "tile": (TIFF_TILE, TIFF_TILE),
                "compression": "zlib", "photometric": "palette", "colormap": colormap,
            }
            if st.mpp:
                per_cm = 1e4 / (st.mpp * 2**lv)
                options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            if lv == 0:  # our JSON as the description, not tifffile's "shaped" metadata
                # (a "shape" key there makes tifffile read it as its own series and warn)
                options.update(subifds=levels - 1, description=json.dumps(meta),
                               metadata=None)
            else:
                options.update(subfiletype=1, metadata=None)
            tif.write(_tiff_tiles(arr), **options)
    return path


def tiff_colormap(store: OutputStore) -> np.ndarray:
    """The TIFF colour map of a label export: class colours, background and unused black.

    Parameters
    ----------
    store : OutputStore
        The prediction store whose class colours are used.

    Returns
    -------
    numpy.ndarray
        uint16 (3, 256): red, green, blue of each label value, 0..65535 as TIFF wants.
    """
    colormap = np.zeros((3, 256), np.uint16)
    for row in class_table(store):
        colormap[:, row["value"]] = np.asarray(row["colour"], np.uint16) * 257
    return colormap


def _tiff_tiles(arr) -> Iterator[np.ndarray]:
    h, w = arr.shape
    t = TIFF_TILE
    for y in range(0, h, t):
        band = np.asarray(arr[y : y + t, :])
        for x in range(0, w, t):
            tile = np.zeros((t, t), np.uint8)
            part = band[:, x : x + t]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


# ---- CSV --------------------------------------------------------------------------------
def class_areas(store: OutputStore | str | Path, *, allow_incomplete: bool = False) -> list[dict]:
    """Per label value: pixels, µm² (None when the mpp is unknown), % tissue, % region."""
    st = _store(store, allow_incomplete)
    n = len(st.class_names) + 1
    counts = np.zeros(n, np.int64)
    arr = st.labels
    h, w = arr.shape
    c = st.chunk
    for y in range(0, h, c):
        band = np.asarray(arr[y : y + c, :])
        counts += np.bincount(band.ravel(), minlength=n)[:n]
    region = int(counts.sum())
    tissue = int(counts[1:].sum())
    pixel_area = None if st.mpp is None else st.mpp**2
    rows = []
    for row in class_table(st):
        v = row["value"]
        px = int(counts[v])
        rows.append({
            "label": v, "class": row["name"], "pixels": px,
            "area_um2": None if pixel_area is None else px * pixel_area,
            "percent_tissue": None if v == 0 else (100.0 * px / tissue if tissue else 0.0),
            "percent_region": 100.0 * px / region if region else 0.0,
        })
    return rows


def export_csv(
    store: OutputStore | str | Path, path: str | Path, *, allow_incomplete: bool = False
) -> Path:
    """Per-class area table (see ``class_areas``); ``note`` says why an area is empty."""
    st = _store(store, allow_incomplete)
    rows = class_areas(st, allow_incomplete=allow_incomplete)
    note = "" if st.mpp is not None else "microns per pixel unknown: no area in µm²"
    path = Path(path)
    fields = ["label", "class", "pixels", "area_um2", "percent_tissue", "percent_region", "note"]
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({
                **row,
                "area_um2": "" if row["area_um2"] is None else f"{row['area_um2']:.3f}",
                "percent_tissue": ("" if row["percent_tissue"] is None
                                   else f"{row['percent_tissue']:.6f}"),
                "percent_region": f"{row['percent_region']:.6f}",
                "note": note,
            })
    return path


# ---- GeoJSON ----------------------------------------------------------------------------
def export_geojson(
    store: OutputStore | str | Path,
    path: str | Path,
    *,
    level: int | None = None,
    simplify: float = 0.25,
    max_pixels: int = MAX_PIXELS,
    allow_incomplete: bool = False,
) -> Path:
    """QuPath-compatible FeatureCollection of class polygons in level-0 slide pixels.

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder).
    path : str or Path
        The ``.geojson`` to write (atomically).
    level : int, optional
        The store level to trace; default: the finest with at most ``max_pixels`` pixels.
    simplify : float
        Douglas-Peucker tolerance in traced pixels (0: none), topology preserved.
    max_pixels : int
        Size limit of the level traced by default.
    allow_incomplete : bool
        Export an interrupted prediction as it is.

    Returns
    -------
    Path
        ``path``. Every coordinate lies within ``store_extent(store)``.

    Raises
    ------
    InputError
        When the store cannot be opened, is incomplete and not allowed to be, or
        ``level`` does not exist.
    """
    st = _store(store, allow_incomplete)
    if level is None:
        level = next((lv for lv in range(st.n_levels)
                      if math.prod(st.level(lv).shape) <= max_pixels), st.n_levels - 1)
    if not 0 <= level < st.n_levels:
        raise InputError(st.path, f"level {level} does not exist (0..{st.n_levels - 1})")
    per_class = class_polygons(st, level)
    extent = box(*store_extent(st))
    factor = st.scale * 2**level
    ox, oy = st.offset
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        first = True
        for value, geom in per_class.items():
            if simplify > 0:
                geom = geom.simplify(simplify, preserve_topology=True)
            geom = shapely.transform(geom, lambda xy: xy * factor + np.array([ox, oy]))
            geom = shapely.intersection(geom, extent)  # a coarse level's last pixel overhangs
            name = st.class_names[value - 1]
            colour = list(st.class_colours[value - 1])
            for poly in _polygons(geom):
                feature = {
                    "type": "Feature",
                    "geometry": mapping(orient(poly, 1.0)),
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": colour},
                    },
                }
                fh.write(("" if first else ",") + "\n" + json.dumps(feature))
                first = False
        fh.write("\n]}\n")
    return path


def store_extent(store: OutputStore) -> tuple[float, float, float, float]:
    """The area a store's labels cover, in level-0 slide pixels.

    The store's level 0 (``offset + shape * scale``), cut to the slide when the store
    records its size (``info["image_size"]``, written by tiled inference): a resampled
    grid's last pixel may reach past the slide's edge, and a coarser level's last pixel
    past level 0's (odd sizes halve rounding up).

    Parameters
    ----------
    store : OutputStore
        The prediction store.

    Returns
    -------
    tuple of float
        ``(xmin, ymin, xmax, ymax)``.
    """
    ox, oy = store.offset
    h, w = store.shape
    x0, y0, x1, y1 = ox, oy, ox + w * store.scale, oy + h * store.scale
    info = store.meta.get("info")
    size = info.get("image_size") if isinstance(info, dict) else None
    if (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        x1, y1 = max(x0, min(x1, float(size[1]))), max(y0, min(y1, float(size[0])))
    return x0, y0, x1, y1


def class_polygons(store: OutputStore, level: int = 0) -> dict[int, shapely.Geometry]:
    """Per label value (1..C): the union of its pixels at ``level`` as (Multi)Polygons in
    that level's pixel-edge coordinates (x right, y down)."""
    arr = store.level(level)
    h, w = arr.shape
    parts: dict[int, list] = {v: [] for v in range(1, len(store.class_names) + 1)}
    for y0 in range(0, h, BLOCK):
        for x0 in range(0, w, BLOCK):
            y1, x1 = min(y0 + BLOCK, h), min(x0 + BLOCK, w)
            ya, xa = max(y0 - 1, 0), max(x0 - 1, 0)
            block = np.asarray(arr[ya : min(y1 + 1, h), xa : min(x1 + 1, w)])
            clip = box(x0, y0, x1, y1)
            for v in np.unique(block[y0 - ya : y1 - ya, x0 - xa : x1 - xa]).tolist():
                if v not in parts:
                    continue
                for poly in mask_polygons(block == v):
                    moved = shapely.transform(poly, lambda xy, dx=xa, dy=ya: xy + [dx, dy])
                    cut = moved.intersection(clip)
                    if not cut.is_empty:
                        parts[v].extend(_polygons(cut))
    return {v: shapely.union_all(ps) for v, ps in parts.items() if ps}


def mask_polygons(mask: np.ndarray) -> list[Polygon]:
    """Polygons (with holes) of a boolean mask, in pixel-edge coordinates (x, y)."""
    padded = np.pad(mask, 1).astype(np.float32)
    rings = [Polygon(c[:, ::-1] - 0.5) for c in find_contours(padded, 0.5) if len(c) >= 4]
    rings = [r if r.is_valid else shapely.make_valid(r) for r in rings]
    rings = [r for r in rings if isinstance(r, Polygon) and r.area > 0]
    if not rings:
        return []
    tree = shapely.STRtree(rings)
    points = [shapely.Point(r.exterior.coords[0]) for r in rings]
    pairs = tree.query(points, predicate="within")  # (point index, ring index) containing it
    depth = np.bincount(pairs[0], minlength=len(rings))
    parent: dict[int, int] = {}
    for p, r in zip(*pairs, strict=True):
        if depth[r] == depth[p] - 1:
            parent[int(p)] = int(r)
    holes: dict[int, list] = {}
    for i, d in enumerate(depth):
        if d % 2 == 1 and i in parent:
            holes.setdefault(parent[i], []).append(rings[i].exterior.coords)
    out = []
    for i, d in enumerate(depth):
        if d % 2 == 0:
            poly = Polygon(rings[i].exterior.coords, holes.get(i, []))
            out.extend(_polygons(poly if poly.is_valid else shapely.make_valid(poly)))
    return out


def _polygons(geom: shapely.Geometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [g for part in getattr(geom, "geoms", []) for g in _polygons(part)]
