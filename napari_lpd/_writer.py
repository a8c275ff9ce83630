"""Writer contributions: a Labels layer -> pyramidal label TIFF, or -> QuPath GeoJSON.

Both go through ``lpd.io.export`` (atomic writes), which exports prediction stores: a layer
that shows a finished store (our results) is exported from it; any other Labels layer
(painted by hand, a ground truth) is first copied into a temporary store, with its
microns per pixel taken from the layer's scale when its units are a length."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpd.classes import CLASS_NAMES
from lpd.errors import InputError
from lpd.io.export import export_geojson, export_tiff
from lpd.io.store import OutputStore
from napari_lpd._layers import DEFAULT_COLOURS

STORE_CHUNK = 512


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: labels -> pyramidal, tiled label TIFF with the class table."""
    with _layer_store(data, meta) as store:
        return [str(export_tiff(store, _with_suffix(path, (".tif", ".tiff"), ".tif")))]


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: labels -> QuPath GeoJSON (class polygons in level-0 pixels)."""
    with _layer_store(data, meta) as store:
        return [str(export_geojson(store, _with_suffix(path, (".geojson", ".json"),
                                                        ".geojson")))]


def _with_suffix(path: str, accepted: Sequence[str], default: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in accepted else p.with_name(p.name + default)


class _layer_store:
    """Context manager: the layer's own finished store, or a temporary copy of its data."""

    def __init__(self, data: Any, meta: dict[str, Any]) -> None:
        self.data, self.meta = data, meta
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> OutputStore:
        info = self.meta.get("metadata") or {}
        path = info.get("lpd_store")
        if path and Path(path).exists():
            store = OutputStore.open(path)
            if not store.complete:
                raise InputError(path, "this result is incomplete (interrupted run); it is "
                                 "not exported as if it were finished")
            return store
        self._tmp = tempfile.TemporaryDirectory(prefix="lpd-export-")
        level0 = self.data[0] if isinstance(self.data, (list, tuple)) else self.data
        return store_from_labels(level0, Path(self._tmp.name) / "labels.zarr",
                                 scale=self.meta.get("scale"), units=self.meta.get("units"),
                                 translate=self.meta.get("translate"),
                                 class_names=info.get("lpd_class_names"))

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def layer_mpp_from_meta(scale: Any, units: Any) -> float | None:
    """µm per pixel from a layer's scale and units (None for pixels)."""
    if scale is None or units is None:
        return None
    try:
        import pint

        unit = pint.get_application_registry()(str(units[-1]))
        return float(scale[-1]) * float(unit.to("micrometer").magnitude)
    except Exception:  # "pixel" or not a length
        return None


def store_from_labels(
    labels: Any, path: Path, *, scale: Any = None, units: Any = None, translate: Any = None,
    class_names: Sequence[str] | None = None,
) -> OutputStore:
    """A finished prediction store holding a 2-D label array (read in chunks)."""
    if getattr(labels, "ndim", 0) != 2:
        raise InputError(None, f"only 2-D label layers can be exported, got shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    names = list(class_names or CLASS_NAMES)
    colours = list(DEFAULT_COLOURS[: len(names)])
    if len(colours) < len(names):
        colours += [(128, 128, 128)] * (len(names) - len(colours))
    mpp = layer_mpp_from_meta(scale, units)
    sy, sx = (float(scale[-2]), float(scale[-1])) if scale is not None else (1.0, 1.0)
    ty, tx = (float(translate[-2]), float(translate[-1])) if translate is not None else (0, 0)
    h, w = int(labels.shape[0]), int(labels.shape[1])
    store = OutputStore.create(
        path, shape=(h, w), tile=STORE_CHUNK, chunk=STORE_CHUNK, class_names=names,
        class_colours=colours, mpp=mpp, scale=1.0, offset=(tx / sx, ty / sy),
    )
    for i, y in enumerate(range(0, h, STORE_CHUNK)):
        for j, x in enumerate(range(0, w, STORE_CHUNK)):
            block = np.asarray(labels[y : y + STORE_CHUNK, x : x + STORE_CHUNK])
            if block.size and (block.max() > 255 or block.min() < 0):
                raise InputError(None, "label values must lie in 0..255 for export")
            store.put_tile(i, j, block.astype(np.uint8))
    for _ in store.build_pyramid():
        pass
    store.mark_complete()
    return store
