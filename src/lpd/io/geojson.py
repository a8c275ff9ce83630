"""QuPath GeoJSON export of a prediction store: one feature per connected class region.

The file is a FeatureCollection as QuPath (0.4 and later) writes and reads it (File >
Import objects from file, or drag the file onto the image; ``PathObjectTypeAdapters`` in
QuPath's source): each feature is a Polygon (holes included) with ``properties =
{"objectType": "annotation" | "detection", "classification": {"name", "color": [r, g, b]},
"measurements": {name: number}}``. ``"isLocked"`` is left out (QuPath writes it only for
locked objects) and so is ``"id"`` (QuPath gives imported objects one). The JSON is ASCII
(``µ`` escaped as ``\\u00b5``), so readers that assume another charset than UTF-8 read it.

- Class names: QuPath's built-in classes by default (``QUPATH_CLASSES``: TUM -> Tumor,
  STR -> Stroma, LYM -> Immune cells, NEC -> Necrosis, in QuPath's colours, from
  ``PathClass.StandardPathClasses``), so the regions join QuPath's own class list; a class
  not in the map keeps its name and colour. ``class_names="lpd"``: the store's names and
  colours (TUM, STR, ...). The viewer keeps its own palette either way.
- Measurements: ``"Area µm^2"`` and ``"Perimeter µm"`` (QuPath's names) when the microns
  per pixel are known, else ``"Area px^2"`` and ``"Perimeter px"`` (level-0 pixels). The
  perimeter includes the holes' boundaries, as QuPath's does.
- Coordinates: level-0 pixels of the slide as QuPath opens it (x right, y down, origin at
  the top-left corner of the full-resolution image): store pixel (row u, col v) covers
  ``offset + (v, u) * scale``. Polygons are clipped to the store's extent
  (``store_extent``).
- Minimum area: regions smaller than ``min_area_um2`` (default 100 µm²; ``min_area_px``,
  default 400 level-0 px², when the mpp is unknown) are left out, and holes smaller than it
  are filled (what QuPath's "Remove fragments & holes" does); larger holes stay. 0 keeps
  everything.
- Tracing: marching squares (``skimage.measure.find_contours``, boundaries on pixel edges,
  corners cut by half a pixel) per block of 2048 px with one pixel of real data around it,
  clipped to the block and merged per class (``shapely.union_all``), so polygons cross
  blocks seamlessly. Memory grows with the number of vertices, not the slide: by default
  the finest store level with at most ``max_pixels`` pixels is traced, and polygons are
  simplified by ``simplify`` traced pixels.
- ``.geojson.gz``: gzip-compressed (QuPath 0.4 and later imports it), chosen by
  ``compress`` or by the file name."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import shapely
from shapely.geometry import Polygon, box, mapping
from shapely.geometry.polygon import orient
from skimage.measure import find_contours

from lpd._atomic import atomic_open
from lpd.errors import InputError
from lpd.io.export import open_for_export
from lpd.io.store import OutputStore

BLOCK = 2048
MAX_PIXELS = 2**26

#: Our class name -> (QuPath's built-in class name, its colour RGB 0-255), as QuPath's
#: ``PathClass.StandardPathClasses`` defines them (qupath-core, PathClass.java).
QUPATH_CLASSES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "TUM": ("Tumor", (200, 0, 0)),
    "STR": ("Stroma", (150, 200, 150)),
    "LYM": ("Immune cells", (160, 90, 160)),
    "NEC": ("Necrosis", (50, 50, 50)),
}
CLASS_NAME_STYLES = ("qupath", "lpd")
OBJECT_TYPES = ("annotation", "detection")
MIN_AREA_UM2 = 100.0
MIN_AREA_PX = 400.0


def feature_classes(store: OutputStore, class_names: str = "qupath") -> list[tuple[str, list[int]]]:
    """The (name, colour) of each class in the GeoJSON, for label values 1..C in order.

    Parameters
    ----------
    store : OutputStore
        The prediction store (its class names and colours).
    class_names : {"qupath", "lpd"}
        QuPath's built-in classes where ``QUPATH_CLASSES`` maps ours (others keep theirs),
        or the store's own names and colours.

    Returns
    -------
    list of (str, list of int)
        Name and RGB colour (0-255) per class.

    Raises
    ------
    ValueError
        An unknown ``class_names``.
    """
    check_options(class_names=class_names)
    out = []
    for name, colour in zip(store.class_names, store.class_colours, strict=False):
        if class_names == "qupath" and name in QUPATH_CLASSES:
            name, colour = QUPATH_CLASSES[name]
        out.append((name, [int(c) for c in colour]))
    return out


def min_area_level0(store: OutputStore, min_area_um2: float = MIN_AREA_UM2,
                    min_area_px: float = MIN_AREA_PX) -> float:
    """The minimum region area in level-0 px²: ``min_area_um2`` over the level-0 pixel's
    area (``(mpp / scale)²`` µm²) when the store's mpp is known, else ``min_area_px``."""
    if store.mpp is None:
        return float(min_area_px)
    return float(min_area_um2) / (store.mpp / store.scale) ** 2


def check_options(class_names: str = "qupath", object_type: str = "annotation",
                  min_area_um2: float = MIN_AREA_UM2, min_area_px: float = MIN_AREA_PX,
                  compress: bool | None = None) -> None:
    """Refuse bad ``export_geojson`` options before anything is written.

    Parameters
    ----------
    class_names, object_type, min_area_um2, min_area_px, compress
        As ``export_geojson`` takes them.

    Raises
    ------
    ValueError
        An unknown ``class_names`` or ``object_type``, or a negative minimum area.
    """
    if class_names not in CLASS_NAME_STYLES:
        raise ValueError(f"class_names must be one of {CLASS_NAME_STYLES}, not {class_names!r}")
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, not {object_type!r}")
    if not (min_area_um2 >= 0 and min_area_px >= 0):  # NaN too
        raise ValueError("a minimum area must be 0 or more")


def export_geojson(
    store: OutputStore | str | Path,
    path: str | Path,
    *,
    class_names: str = "qupath",
    object_type: str = "annotation",
    min_area_um2: float = MIN_AREA_UM2,
    min_area_px: float = MIN_AREA_PX,
    compress: bool | None = None,
    level: int | None = None,
    simplify: float = 0.25,
    max_pixels: int = MAX_PIXELS,
    allow_incomplete: bool = False,
) -> Path:
    """QuPath GeoJSON FeatureCollection of class regions in level-0 slide pixels.

    See the module docstring for the format (QuPath's GeoJSON, 0.4 and later).

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder).
    path : str or Path
        The ``.geojson`` (or ``.geojson.gz``) to write (atomically).
    class_names : {"qupath", "lpd"}
        QuPath's built-in classes and colours (``QUPATH_CLASSES``), or the store's own.
    object_type : {"annotation", "detection"}
        QuPath's object type: annotations (editable; a few large regions), or detections
        (light; many small regions).
    min_area_um2 : float
        Smallest region kept and smallest hole not filled, in µm² (when the mpp is known).
    min_area_px : float
        The same in level-0 px², used when the mpp is unknown.
    compress : bool, optional
        gzip the file; default: when ``path`` ends in ``.gz``.
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
    ValueError
        An unknown ``class_names`` or ``object_type``, or a negative minimum area.
    """
    check_options(class_names, object_type, min_area_um2, min_area_px)
    st = open_for_export(store, allow_incomplete)
    classes = feature_classes(st, class_names)
    if level is None:
        level = next((lv for lv in range(st.n_levels)
                      if math.prod(st.level(lv).shape) <= max_pixels), st.n_levels - 1)
    if not 0 <= level < st.n_levels:
        raise InputError(st.path, f"level {level} does not exist (0..{st.n_levels - 1})")
    min_area = min_area_level0(st, min_area_um2, min_area_px)
    path = Path(path)
    gz = path.name.lower().endswith(".gz") if compress is None else bool(compress)
    with _open_text(path, gz) as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        first = True
        for feature in _features(st, level, simplify, min_area, classes, object_type):
            fh.write(("" if first else ",") + "\n" + json.dumps(feature))
            first = False
        fh.write("\n]}\n")
    return path


def _features(st: OutputStore, level: int, simplify: float, min_area: float,
              classes: list[tuple[str, list[int]]], object_type: str) -> Iterator[dict]:
    extent = box(*store_extent(st))
    factor = st.scale * 2**level
    shift = np.array(st.offset)
    um = None if st.mpp is None else st.mpp / st.scale  # µm per level-0 px
    for value, geom in class_polygons(st, level).items():
        if simplify > 0:
            geom = geom.simplify(simplify, preserve_topology=True)
        geom = shapely.transform(geom, lambda xy: xy * factor + shift)
        geom = shapely.intersection(geom, extent)  # a coarse level's last pixel overhangs
        name, colour = classes[value - 1]
        for poly in drop_small(_polygons(geom), min_area):
            yield {
                "type": "Feature",
                "geometry": mapping(orient(poly, 1.0)),
                "properties": {
                    "objectType": object_type,
                    "classification": {"name": name, "color": colour},
                    "measurements": measurements(poly, um),
                },
            }


@contextlib.contextmanager
def _open_text(path: Path, compress: bool) -> Iterator[IO[str]]:
    if not compress:
        with atomic_open(path, "w", encoding="utf-8") as fh:
            yield fh
        return
    with (atomic_open(path, "wb") as raw,
          gzip.GzipFile(filename=path.name, fileobj=raw, mode="wb", mtime=0) as packed,
          io.TextIOWrapper(packed, encoding="utf-8") as fh):
        yield fh


def measurements(poly: Polygon, um_per_px: float | None) -> dict[str, float]:
    """QuPath's shape measurements of a polygon in level-0 pixels.

    Parameters
    ----------
    poly : shapely.Polygon
        In level-0 px.
    um_per_px : float or None
        Level-0 µm per pixel; None when unknown.

    Returns
    -------
    dict
        ``{"Area µm^2", "Perimeter µm"}``, or ``{"Area px^2", "Perimeter px"}`` without
        ``um_per_px``; the perimeter includes the holes' boundaries.
    """
    if um_per_px is None:
        return {"Area px^2": round(poly.area, 3), "Perimeter px": round(poly.length, 3)}
    return {"Area µm^2": round(poly.area * um_per_px**2, 3),
            "Perimeter µm": round(poly.length * um_per_px, 3)}


def drop_small(polygons: list[Polygon], min_area: float) -> list[Polygon]:
    """Fill the holes smaller than ``min_area``, then drop the polygons smaller than it.

    Parameters
    ----------
    polygons : list of shapely.Polygon
    min_area : float
        In the polygons' units squared; 0 keeps everything.

    Returns
    -------
    list of shapely.Polygon
    """
    if min_area <= 0:
        return list(polygons)
    out = []
    for poly in polygons:
        holes = [ring for ring in poly.interiors if Polygon(ring).area >= min_area]
        if len(holes) < len(poly.interiors):
            poly = Polygon(poly.exterior, holes)
        if poly.area >= min_area:
            out.append(poly)
    return out


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
