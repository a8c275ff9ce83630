"""Many slides (or regions of slides) as tasks on dask.distributed: predict + export each.

A task is a slide path, optionally with a region in level-0 pixels, written
``SLIDE@x,y,w,h`` (``parse_task``). Its results go to ``OUT/<name>.zarr`` (the store) and
``OUT/<name>-labels.tiff``, ``OUT/<name>.geojson``, ``OUT/<name>-areas.csv``, where
``<name>`` is the slide's file stem, plus ``_x<x>_y<y>_w<w>_h<h>`` for a region.

- Scheduler: a ``LocalCluster`` by default (worker processes, one dask thread each; the
  torch threads of a task are set inside the task), or ``Client(address)`` of a running
  scheduler (the checkpoint, slides and OUT must then be on a filesystem the workers see).
- Resumable: a task whose store is complete and whose exports exist is skipped; an
  incomplete store resumes from its finished chunks (``predict_tiled(resume=True)``).
- Failures stay local: a task returns its error (type and message, naming the file) instead
  of raising, and a worker that dies is reported the same way; the other tasks go on.
- The report (``OUT/batch-report.json``) is rewritten atomically after every task.
``run_batch`` prints nothing; ``on_status`` receives each task's result as it finishes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpd._atomic import atomic_write_text
from lpd._userfile import read_text
from lpd.errors import InputError, LPDError, StoreMismatch

REPORT_NAME = "batch-report.json"
_REGION = re.compile(r"^(\d+),(\d+),(\d+),(\d+)$")


@dataclass(frozen=True)
class BatchTask:
    """One slide, or one region (x, y, w, h in level-0 px) of a slide."""

    slide: Path
    region: tuple[int, int, int, int] | None = None

    @property
    def name(self) -> str:
        if self.region is None:
            return self.slide.stem
        x, y, w, h = self.region
        return f"{self.slide.stem}_x{x}_y{y}_w{w}_h{h}"

    def __str__(self) -> str:
        return str(self.slide) + ("" if self.region is None else
                                  "@" + ",".join(map(str, self.region)))


@dataclass
class BatchOptions:
    """Prediction settings shared by every task (see ``lpd predict``)."""

    level: int | None = None
    mpp: float | None = None
    target_mpp: float | None = None
    allow_resample: bool = False  # resample by more than 8x (lpd predict --allow-resample)
    batch_size: int = 8
    prototypes: bool = False
    torch_threads: int = 1
    device: str = "cpu"
    resume: bool = True
    exports: tuple[str, ...] = ("tiff", "geojson", "csv")


@dataclass
class BatchReport:
    out_dir: str
    checkpoint: str
    scheduler: str
    started: str
    seconds: float = 0.0
    tasks: list[dict] = field(default_factory=list)
    finished: bool = False

    @property
    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for t in self.tasks:
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out

    @property
    def failed(self) -> list[dict]:
        return [t for t in self.tasks if t["status"] == "failed"]

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts}


def parse_task(spec: str) -> BatchTask:
    """``SLIDE`` or ``SLIDE@x,y,w,h`` (a path that itself holds '@' still works)."""
    path, sep, tail = spec.rpartition("@")
    match = _REGION.match(tail) if sep else None
    if not match:
        return BatchTask(Path(spec))
    x, y, w, h = (int(v) for v in match.groups())
    if w < 1 or h < 1:
        raise InputError(path, f"region {tail} is empty (x,y,width,height)")
    return BatchTask(Path(path), (x, y, w, h))


def read_task_file(path: str | Path) -> list[BatchTask]:
    """Tasks from a text file: one ``SLIDE[@x,y,w,h]`` per line.

    Blank lines and # comments are ignored; relative paths are relative to the file's
    folder. The file may be UTF-8 with or without a byte-order mark (or UTF-16 with one),
    with any line endings.

    Parameters
    ----------
    path : str or Path
        The task list.

    Returns
    -------
    list of BatchTask
        The tasks in file order.

    Raises
    ------
    InputError
        Naming the file (unreadable, not text) or the task (an empty region).
    """
    path = Path(path)
    lines = read_text(path, "task list").splitlines()  # a BOM or CRLF is fine
    tasks = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            task = parse_task(line)
            slide = task.slide if task.slide.is_absolute() else path.parent / task.slide
            tasks.append(BatchTask(slide, task.region))
    return tasks


def output_paths(out_dir: Path, name: str, exports: Sequence[str]) -> tuple[Path, dict[str, Path]]:
    from lpd.io.formats import export_paths

    return out_dir / f"{name}.zarr", export_paths(name, out_dir, exports)


def default_threads() -> int:
    """Torch threads on CPU: one core is left to the reader thread (and the system).
    Measured by ``lpd bench throughput`` on 2 shared cores: 1 torch thread + the reader gave
    3x the throughput of 2 torch threads, which collapse when the cores are busy
    (docs/architecture.md, Threads); on many cores one core less costs little."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def resolve_checkpoint(
    checkpoint: str | Path | None,
    on_train_progress: Callable[[object], None] | None = None,
    device: str = "cpu",
) -> Path:
    """A checkpoint path; None or "default" is the shipped default model (trained only
    where its weights are missing: a stripped install)."""
    if checkpoint is None or str(checkpoint) == "default":
        from lpd.default_model import default_checkpoint

        return default_checkpoint(on_progress=on_train_progress, device=device)
    return Path(checkpoint)


_models = threading.local()  # per worker thread: model objects are not shared by threads


def _load_model(checkpoint: str, device: str):
    from lpd.io.checkpoint import load_checkpoint

    path = Path(checkpoint)
    key = (str(path.resolve()), path.stat().st_mtime_ns, device)
    if getattr(_models, "key", None) != key:
        _models.model, _models.key = load_checkpoint(path, device), key
    return _models.model


def run_task(task: BatchTask, checkpoint: str, out_dir: str, options: BatchOptions) -> dict:
    """Predict + export one task (on a worker). Never raises: errors are in the result."""
    import torch

    t0 = time.perf_counter()
    store, files = output_paths(Path(out_dir), task.name, options.exports)
    result = {"name": task.name, "slide": str(task.slide), "region": task.region,
              "status": "failed", "store": str(store), "files": {k: str(v) for k, v in
                                                                 files.items()},
              "passes": 0, "tiles": 0, "tiles_skipped": 0, "seconds": 0.0, "error": None}
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
            _predict(task, checkpoint, store, options, result)
        export(store, formats=(), paths=files)
        result["status"] = "done"
    except Exception as exc:  # the task's error is reported, the batch goes on
        result["error"] = error_info(exc)
    finally:
        result["seconds"] = time.perf_counter() - t0
    return result


def _predict(task: BatchTask, checkpoint: str, store: Path, options: BatchOptions,
             result: dict) -> None:
    from lpd.progress import drive
    from lpd.segmentation import segment_iter

    model = _load_model(checkpoint, options.device)
    res = drive(segment_iter(
        model, task.slide, mpp=options.mpp, region=task.region, level=options.level,
        target_mpp=options.target_mpp, allow_resample=options.allow_resample,
        batch_size=options.batch_size, device=options.device, out=store,
        prototypes=options.prototypes, resume=options.resume)).result
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


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int, threads_per_worker: int,
            processes: bool) -> Iterator[tuple[object, str]]:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(None, f"cannot reach the dask scheduler at {scheduler} "
                             f"({type(exc).__name__}: {exc})") from None
        with client:
            yield client, f"scheduler {scheduler}"
        return
    kind = "processes" if processes else "threads"
    # Worker processes get OpenMP's passive waiting (read when torch loads, so it must be in
    # their environment): busy-waiting OpenMP threads collapse on shared cores (measured:
    # lpd.bench.throughput, 2 torch threads 1.2 -> 6 passes/s under load).
    extra = {"env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}} \
        if processes else {}
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                      processes=processes, dashboard_address=None,
                      silence_logs=logging.ERROR, **extra) as cluster, Client(cluster) as client:
        yield client, f"LocalCluster({workers} workers x {threads_per_worker} thread, {kind})"


def run_batch(
    tasks: Sequence[BatchTask | str | Path],
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    threads_per_worker: int = 1,
    processes: bool = True,
    options: BatchOptions | None = None,
    on_status: Callable[[dict], None] | None = None,
    on_train_progress: Callable[[object], None] | None = None,
) -> BatchReport:
    """Run every task (see the module docstring); returns the report, also written to
    ``out_dir/batch-report.json``. ``on_status(result)`` is called as each task ends."""
    options = options or BatchOptions()
    items = [t if isinstance(t, BatchTask) else parse_task(str(t)) for t in tasks]
    if not items:
        raise InputError(None, "no slides given")
    seen: dict[str, BatchTask] = {}
    for t in items:
        if t.name in seen:
            raise InputError(t.slide, f"gives the same output name {t.name!r} as "
                             f"{seen[t.name]}; rename one of them or run them apart")
        seen[t.name] = t
    if workers < 1 or threads_per_worker < 1:
        raise InputError(None, "workers and threads per worker must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = resolve_checkpoint(checkpoint, on_train_progress, options.device)
    from lpd.io.checkpoint import read_checkpoint_metadata

    read_checkpoint_metadata(ckpt)  # a bad checkpoint fails once, here, not in every task
    t0 = time.perf_counter()
    report = BatchReport(str(out), str(ckpt), "", dt.datetime.now().astimezone().isoformat(
        timespec="seconds"))
    report.tasks = [{"name": t.name, "slide": str(t.slide), "region": t.region,
                     "status": "pending"} for t in items]
    index = {t.name: i for i, t in enumerate(items)}
    with _client(scheduler, workers, threads_per_worker, processes) as (client, described):
        from distributed import as_completed

        report.scheduler = described
        _write(report, out, t0)
        futures = {client.submit(run_task, t, str(ckpt.resolve()), str(out.resolve()),
                                 options, key=f"lpd-task-{t.name}-{time.time_ns()}",
                                 pure=False): t for t in items}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # the worker died or the task could not run there
                result = {"name": task.name, "slide": str(task.slide), "region": task.region,
                          "status": "failed", "error": error_info(exc)}
            report.tasks[index[task.name]] = result
            _write(report, out, t0)
            if on_status is not None:
                on_status(result)
    report.finished = True
    _write(report, out, t0)
    return report


def _write(report: BatchReport, out: Path, t0: float) -> None:
    report.seconds = time.perf_counter() - t0
    atomic_write_text(out / REPORT_NAME, json.dumps(report.to_dict(), indent=1, default=str))
