"""Reader contribution: slides and images as multiscale Image layers, lpd prediction stores
(``*.zarr``) as Labels with the class colours, label TIFFs written by our writer as Labels,
QuPath GeoJSON (``*.geojson``, ``*.geojson.gz``) as a Shapes layer on its slide
(``read_geojson``).

An incomplete store (an interrupted run) is shown with "(incomplete)" in its name, level 0
only, at half opacity and hidden, so it is never mistaken for a finished result."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lpd.errors import InputError
from lpd.io.annotations import GEOJSON_SUFFIXES
from lpd.io.store import OutputStore
from lpd.wsi.slide import is_dicom_folder, open_slide
from napari_lpd._annotations import read_geojson
from napari_lpd._layers import (
    IN_MEMORY_MAX,
    LABELS_OPACITY,
    LayerData,
    class_colormap,
    grid_transform,
    slide_layer,
    store_labels_layer,
    units_of,
)
from napari_lpd._metadata import LayerMeta

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".png", ".jpg", ".jpeg",
                  # read with OpenSlide (lpd.wsi.open_slide routes them); DICOM folders too
                  ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".dcm")
#: ``"lpd": "labels"`` in the JSON description marks a label TIFF of lpd.io.export.
LABELS_TIFF_MARKER = "labels"

ReaderFunction = Callable[[Any], list[LayerData]]


def napari_get_reader(path: str | list[str]) -> ReaderFunction | None:
    """The reader for ``path`` (a file or a list of files), or None when it is not ours."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_accepts(Path(p)) for p in paths):
        return None
    return read_paths


def _accepts(path: Path) -> bool:
    name = path.name.lower().rstrip("/")
    if name.endswith(".zarr"):
        return OutputStore.is_store(path)
    if path.is_dir():  # a DICOM-WSI slide is a folder of .dcm files
        return is_dicom_folder(path)
    return name.endswith(SLIDE_SUFFIXES + GEOJSON_SUFFIXES)


def read_paths(path: str | list[str]) -> list[LayerData]:
    """napari's entry point. A file that cannot be read (``InputError``, ``OSError``: what
    a user's file can cause) becomes a one-line error notification, the problem first, then
    the file, and the other files still open; napari would otherwise report it as a plugin
    failure with a traceback button. ``[(None,)]``: napari's "read, nothing to add"."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        try:
            layers.extend(read_path(Path(p)))
        except (InputError, OSError) as exc:
            from napari.utils.notifications import show_error

            show_error(f"Could not open: {reason_first(exc, p)}")
    return layers or [(None,)]


def reason_first(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """``"<problem> — <file name> (<folder>)"``: the reason before the file, so a
    notification cut short still says what is wrong.

    Parameters
    ----------
    exc : BaseException
        The error; the file is the one an ``InputError`` or ``OSError`` names.
    path : str or PathLike, optional
        The file when the error names none.

    Returns
    -------
    str
        The problem alone when there is no file.
    """
    if isinstance(exc, InputError):
        problem, path = exc.problem, exc.path or path
    elif isinstance(exc, OSError) and exc.strerror:
        problem, path = exc.strerror, exc.filename or path
    else:
        problem = str(exc)
    if path is None or isinstance(path, int):  # an OSError may name a file descriptor
        return problem
    full = Path(os.path.abspath(os.fsdecode(path)))
    return f"{problem} — {full.name} ({full.parent})"


def read_path(path: Path) -> list[LayerData]:
    """Layers for one file or store (errors are ``lpd.errors.InputError`` naming the file)."""
    if path.name.lower().rstrip("/").endswith(".zarr"):
        return [read_store(path)]
    if path.name.lower().endswith(GEOJSON_SUFFIXES):
        return [read_geojson(path)]
    labels = _read_labels_tiff(path)
    if labels is not None:
        return [labels]
    slide = open_slide(path)
    for note in slide.metadata.get("notes", []):  # e.g. an implausible microns per pixel
        from napari.utils.notifications import show_warning

        show_warning(f"{note} — {path.name}")
    return [slide_layer(slide)]


def read_store(path: Path) -> LayerData:
    store = OutputStore.open(path)
    data, meta, kind = store_labels_layer(store, name=f"LPD labels [{path.stem}]")
    if not store.complete:
        meta["visible"] = False
        meta["opacity"] = 0.3
    return data, meta, kind


def _read_labels_tiff(path: Path) -> LayerData | None:
    """A label TIFF written by ``lpd.io.export.export_tiff`` (our writer, ``lpd export``),
    as Labels with its class colours and placement; anything else: None. Small label maps
    are read into memory, larger ones stay lazy (every pyramid level, through zarr)."""
    if not path.name.lower().endswith((".tif", ".tiff")):
        return None
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # not a readable TIFF: the slide reader reports the problem
        return None
    try:
        info = json.loads(tif.pages[0].description or "{}")
        if not isinstance(info, dict) or info.get("lpd") != LABELS_TIFF_MARKER:
            tif.close()
            return None
        series = tif.series[0]
        h, w = series.levels[0].shape[:2]
        if h * w <= IN_MEMORY_MAX:
            data: Any = series.levels[0].asarray()
            tif.close()
        else:  # the open file stays referenced by the lazy arrays. One array per level:
            # a level's own aszarr() is the whole multiscale group for a pyramid
            data = [zarr.open_array(series.aszarr(level=lv), mode="r")
                    for lv in range(len(series.levels))]
    except Exception:
        tif.close()
        return None
    try:  # our JSON, but possibly edited by hand
        classes = [c for c in info.get("classes", []) if int(c.get("value", 0)) > 0]
        names = [str(c["name"]) for c in classes]
        colormap = class_colormap([c["colour"] for c in classes])
        mpp, scale = info.get("mpp"), float(info.get("scale") or 1.0)
        offset = info.get("offset") or {"x": 0.0, "y": 0.0}
        unit = 1.0 if mpp is None else float(mpp) / scale  # µm (or px) per level-0 pixel
        sc, tr = grid_transform((unit, unit), (0.0, 0.0), scale,
                                (float(offset["x"]), float(offset["y"])))
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise InputError(path, f"the label TIFF's description is damaged ({exc!r})") from None
    meta = {
        "name": path.stem,
        "scale": sc,
        "translate": tr,
        "units": units_of(mpp),
        "multiscale": isinstance(data, list) and len(data) > 1,
        "colormap": colormap,
        "opacity": LABELS_OPACITY,
        "metadata": LayerMeta(class_names=names, path=str(path)).to_metadata(),
    }
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    return data, meta, "labels"
