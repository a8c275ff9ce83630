"""Writer contributions: a Labels layer -> pyramidal label TIFF, or -> QuPath GeoJSON.

Both go through ``lpd.io.export``, which exports prediction stores: a layer that shows a
finished store (our results) is exported from it; any other Labels layer (painted by hand, a
ground truth) is first copied into a temporary store, with its microns per pixel taken from
the layer's scale when its units are a length.

napari calls writers on the GUI thread and waits for the list of written paths. Called from
a running Qt event loop (File > Save Selected Layer(s)), the writer copies the layer's data,
starts the writing in a napari worker (progress in the activity dock, errors as a
notification) and returns the target path at once; anywhere else (a script,
``napari.save_layers`` from code, no Qt at all) it writes before returning. Either way the
file is written under a temp name beside the target and renamed when whole, so a failure or
a cancel never leaves a half-written file at the target path."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpd.errors import InputError
from lpd.io.export import export_geojson, export_tiff
from lpd.io.files import atomic_path
from lpd.io.store import OutputStore
from lpd.io.store_tools import store_from_labels
from napari_lpd._metadata import LayerMeta

#: The save jobs running in workers (``napari_lpd._workers.RunHandle``), oldest first.
JOBS: list[Any] = []

Export = Callable[[OutputStore, Path], Any]


def write_labels_tiff(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: labels -> pyramidal, tiled label TIFF with the class table.

    Parameters
    ----------
    path : str
        Target file; ``.tif`` is appended unless it ends in ``.tif`` or ``.tiff``.
    data : array-like or list of array-like
        The layer's data (level 0 is used when multiscale).
    meta : dict
        The layer's attributes (``scale``, ``translate``, ``units``, ``metadata``).

    Returns
    -------
    list of str
        The target path. From napari's File menu the file is still being written in a
        worker when this returns (see the module docstring).
    """
    return write_layer(_with_suffix(path, (".tif", ".tiff"), ".tif"), export_tiff, data, meta)


def write_labels_geojson(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer: labels -> QuPath GeoJSON (class polygons in level-0 pixels).

    Parameters
    ----------
    path : str
        Target file; ``.geojson`` is appended unless it ends in ``.geojson`` or ``.json``.
    data : array-like or list of array-like
        The layer's data (level 0 is used when multiscale).
    meta : dict
        The layer's attributes (``scale``, ``translate``, ``units``, ``metadata``).

    Returns
    -------
    list of str
        The target path. From napari's File menu the file is still being written in a
        worker when this returns (see the module docstring).
    """
    target = _with_suffix(path, (".geojson", ".json"), ".geojson")
    return write_layer(target, export_geojson, data, meta)


def write_layer(target: Path, export: Export, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a layer with ``export``: in a worker when called from a running Qt event loop
    on the GUI thread, else before returning (errors then raise).

    Parameters
    ----------
    target : Path
        The file to write.
    export : callable
        ``export(store, path)``, e.g. ``lpd.io.export.export_tiff``.
    data, meta
        The layer's data and attributes, as napari passes them to writers.

    Returns
    -------
    list of str
        ``[str(target)]``.
    """
    if not in_gui_event_loop():
        for _ in write_job(target, export, data, meta):
            pass
        return [str(target)]
    from napari.utils.notifications import show_info

    from napari_lpd._notify import notify_error
    from napari_lpd._workers import run_in_worker

    data = _snapshot(data)  # the user may paint on while the worker reads
    JOBS.append(run_in_worker(  # its callbacks run later, on the GUI thread
        lambda: write_job(target, export, data, meta), description=f"Saving {target.name}",
        total=lambda v: v[1], done=lambda v: v[0], describe=lambda v: v[2],
        on_return=lambda _: show_info(f"Saved {target.name} ({target.parent})"),
        on_error=lambda exc: notify_error(exc, f"Saving {target.name}"),
        on_finish=JOBS.remove))
    return [str(target)]


def write_job(target: Path, export: Export, data: Any,
              meta: dict[str, Any]) -> Generator[tuple[int, int, str], None, Path]:
    """Write a layer to ``target`` atomically, as a generator for ``run_in_worker``.

    Parameters
    ----------
    target : Path
        The file to write; nothing appears there until it is whole.
    export : callable
        ``export(store, path)``, e.g. ``lpd.io.export.export_tiff``.
    data, meta
        The layer's data and attributes, as napari passes them to writers.

    Yields
    ------
    tuple of (int, int, str)
        Progress: steps done, steps in all, what is being done. Closed at a yield (a
        cancel), the job publishes nothing and removes its temp file.

    Returns
    -------
    Path
        ``target``.
    """
    yield 0, 3, f"Preparing {target.name}"
    with _layer_store(data, meta) as store, atomic_path(target) as tmp:
        yield 1, 3, f"Writing {target.name}"
        export(store, tmp)
        yield 2, 3, f"Finishing {target.name}"  # closed here: the temp file is removed
    return target


def in_gui_event_loop() -> bool:
    """Whether the caller runs on the GUI thread inside a running Qt event loop.

    Returns
    -------
    bool
        True for a menu action or a button; False in scripts, in code run between event
        loops (a console, a test body) and without Qt. napari tests ``loopLevel`` alike.
    """
    try:
        from qtpy.QtCore import QCoreApplication, QThread
    except Exception:  # no Qt binding: headless
        return False
    app = QCoreApplication.instance()
    return (app is not None and QThread.currentThread() == app.thread()
            and app.thread().loopLevel() > 0)


def _snapshot(data: Any) -> Any:
    """An in-memory label array copied (a few ms), so painting on does not reach the file;
    lazy data (a store, zarr) is left to be read in the worker."""
    level0 = data[0] if isinstance(data, (list, tuple)) else data
    return level0.copy() if isinstance(level0, np.ndarray) else data


def _with_suffix(path: str, accepted: Sequence[str], default: str) -> Path:
    p = Path(path)
    return p if p.suffix.lower() in accepted else p.with_name(p.name + default)


class _layer_store:
    """Context manager: the layer's own finished store, or a temporary copy of its data."""

    def __init__(self, data: Any, meta: dict[str, Any]) -> None:
        self.data, self.meta = data, meta
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> OutputStore:
        info = LayerMeta.from_metadata(self.meta.get("metadata"))
        path = info.store
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
                                 class_names=info.class_names)

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
