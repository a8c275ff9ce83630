"""Exports of a prediction store: pyramidal label TIFF and per-class area CSV (the QuPath
GeoJSON is ``lpd.io.geojson``; all three are registered in ``lpd.io.formats``).

Every export reads the store chunk by chunk (or band by band) and writes atomically.
- TIFF: BigTIFF, tiled (256 px), deflate-compressed, uint8 labels as a palette image (the
  class colours in the TIFF colour map); levels 1.. of the store's pyramid as SubIFDs; the
  class table (value, name, colour), mpp, offset and scale in the first page's JSON
  ImageDescription; resolution tags in pixels per centimetre when the mpp is known.
- CSV: per class pixel count, area in µm² (empty, with a note, when the mpp is unknown),
  % of tissue (classes 1..C) and % of the analysed region (background included)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lpd._atomic import atomic_open, atomic_path
from lpd.errors import InputError
from lpd.io.store import OutputStore

TIFF_TILE = 256
#: Names that moved to ``lpd.io.geojson``; ``from lpd.io.export import export_geojson``
#: still finds them there.
_MOVED = ("export_geojson", "store_extent", "class_polygons", "mask_polygons")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from lpd.io import geojson

        return getattr(geojson, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_for_export(store: OutputStore | str | Path, allow_incomplete: bool) -> OutputStore:
    """The store (opened when a path), refused when incomplete unless allowed.

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder).
    allow_incomplete : bool
        Accept an interrupted prediction.

    Returns
    -------
    OutputStore

    Raises
    ------
    InputError
        When the store cannot be opened, or is incomplete and not allowed to be.
    """
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

    st = open_for_export(store, allow_incomplete)
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
    st = open_for_export(store, allow_incomplete)
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
    st = open_for_export(store, allow_incomplete)
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
