"""One task of ``lpd batch`` on a dask worker: predict a slide (or region) into its store,
export it, and report progress to the batch's client.

``run_task`` never raises: an error (bad input, a bug) is returned in the result and is not
retried. Progress goes out as events (``Worker.log_event`` under the batch's topic, relayed
by the scheduler to ``run_batch``): "start" when the task begins (with the worker's name,
address and process id), "predict" once the model is loaded, "tiles" and "pyramid" from
``segment_iter``'s progress (at most one per ``BatchOptions.progress_interval`` seconds, and
always the last), "end" with the status.
The model is loaded once per worker thread and kept for the next task."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lpd.errors import LPDError, StoreMismatch

if TYPE_CHECKING:
    from lpd.batch import BatchOptions, BatchTask


def output_paths(out_dir: Path, name: str, exports: Sequence[str]) -> tuple[Path, dict[str, Path]]:
    """A task's store ``out_dir/<name>.zarr`` and export files (format -> path)."""
    from lpd.io.formats import export_paths

    return out_dir / f"{name}.zarr", export_paths(name, out_dir, exports)


_models = threading.local()  # per worker thread: model objects are not shared by threads


def _load_model(checkpoint: str, device: str):
    from lpd.io.checkpoint import load_checkpoint

    path = Path(checkpoint)
    key = (str(path.resolve()), path.stat().st_mtime_ns, device)
    if getattr(_models, "key", None) != key:
        _models.model, _models.key = load_checkpoint(path, device), key
    return _models.model


def _current_worker():
    """The dask worker running this task, or None (not on a worker)."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


class _Events:
    """A task's progress events to ``run_batch`` (``Worker.log_event`` under ``topic``,
    relayed by the scheduler): "start", "predict", "tiles"/"pyramid" (one per ``interval`` s
    at most, always the last), "end". Nothing is sent off a worker or without a topic."""

    def __init__(self, topic: str | None, name: str, submission: int, interval: float) -> None:
        self.worker = _current_worker()
        self.topic, self.interval, self._last = topic, interval, float("-inf")
        self.where = {"worker": None if self.worker is None else str(self.worker.name),
                      "address": getattr(self.worker, "address", None), "pid": os.getpid()}
        # the scheduler sets an event's "worker" to the worker's address
        self.ident = {"name": name, "submission": submission,
                      "worker_name": self.where["worker"],
                      "address": self.where["address"], "pid": os.getpid()}

    def emit(self, stage: str, **values: object) -> None:
        if self.worker is not None and self.topic is not None:
            self.worker.log_event(self.topic, {**self.ident, "stage": stage, **values})

    def progress(self, p) -> None:
        """A ``TiledProgress``: done/total tiles, windows (forward passes), elapsed s."""
        now = time.monotonic()
        if now - self._last < self.interval and p.done < p.total:
            return
        self._last = now
        self.emit(p.stage, done=p.done, total=p.total, windows=p.forward_passes,
                  elapsed=p.elapsed)


def run_task(task: BatchTask, checkpoint: str, out_dir: str, options: BatchOptions,
             topic: str | None = None, submission: int = 1) -> dict:
    """Predict + export one task (on a worker). Never raises: errors are in the result.

    Parameters
    ----------
    task : BatchTask
        The slide or region.
    checkpoint, out_dir : str
        Paths the worker can read / write.
    options : BatchOptions
        Prediction settings.
    topic : str, optional
        The ``run_batch`` event topic progress events go to (none without it).
    submission : int
        ``run_batch``'s submission of this task (1, 2 when submitted again, ...), carried in
        the events.

    Returns
    -------
    dict
        ``name``, ``slide``, ``region``, ``status`` ("done", "skipped", "failed"),
        ``store``, ``files``, ``passes`` (windows computed), ``tiles``, ``tiles_skipped``,
        ``busy_s`` (seconds predicting), ``cpu_s`` (CPU seconds of the worker process
        meanwhile), ``seconds`` (the whole task), ``error`` (None or
        type, message), ``worker``, ``address``, ``pid``.
    """
    import torch

    t0 = time.perf_counter()
    events = _Events(topic, task.name, submission, options.progress_interval)
    store, files = output_paths(Path(out_dir), task.name, options.exports)
    result = {"name": task.name, "slide": str(task.slide), "region": task.region,
              "status": "failed", "store": str(store),
              "files": {k: str(v) for k, v in files.items()}, "passes": 0, "tiles": 0,
              "tiles_skipped": 0, "busy_s": 0.0, "cpu_s": 0.0, "seconds": 0.0, "error": None,
              **events.where}
    events.emit("start")
    try:
        torch.set_num_threads(options.torch_threads)
        from lpd.io.formats import export
        from lpd.io.store import OutputStore

        done = (options.resume and OutputStore.is_store(store)
                and OutputStore.open(store).complete)
        if done and all(f.is_file() for f in files.values()):
            result["status"] = "skipped"
            return result
        if not done:
            _predict(task, checkpoint, store, options, result, events)
        export(store, formats=(), paths=files)
        result["status"] = "done"
    except Exception as exc:  # the task's error is reported, the batch goes on
        result["error"] = error_info(exc)
    finally:
        result["seconds"] = time.perf_counter() - t0
        events.emit("end", status=result["status"], windows=result["passes"],
                    elapsed=result["busy_s"])
    return result


def _predict(task: BatchTask, checkpoint: str, store: Path, options: BatchOptions,
             result: dict, events: _Events) -> None:
    from lpd.progress import drive
    from lpd.segmentation import segment_iter

    model = _load_model(checkpoint, options.device)
    events.emit("predict")  # the model is loaded: busy seconds start
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        res = drive(segment_iter(
            model, task.slide, mpp=options.mpp, region=task.region, level=options.level,
            target_mpp=options.target_mpp, allow_resample=options.allow_resample,
            batch_size=options.batch_size, device=options.device, out=store,
            prototypes=options.prototypes, resume=options.resume), events.progress).result
    finally:
        result["busy_s"] = time.perf_counter() - t0
        result["cpu_s"] = time.process_time() - cpu0  # all threads of the worker process
    gy, gx = res.plan.grid
    result.update(passes=res.forward_passes, tiles=gy * gx, tiles_skipped=res.tiles_skipped)


def error_info(exc: BaseException) -> dict:
    """Name and message of an error; a traceback too when it is not a user-facing error."""
    message = str(exc)
    if isinstance(exc, StoreMismatch):
        message = message.replace("pass resume=False", "pass resume=False (lpd batch "
                                  "--no-resume)")
    info = {"type": type(exc).__name__, "message": message}
    if not isinstance(exc, LPDError):
        info["traceback"] = "".join(traceback.format_exception(exc)[-6:])
    return info
