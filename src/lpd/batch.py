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
  of raising; the other tasks go on. An error is not retried (bad input fails again).
- A lost worker is retried: a slide whose worker died (killed, out of memory) runs again,
  ``retries`` times at most, resuming its store from the chunks already written
  (``lpd.batch_report``: attempts, retries, windows per second per worker).
- Progress: the tasks' events (``lpd.batch_task``) reach ``on_event`` in the caller's
  thread, with "lost", "retry" and "requeue" of ``run_batch``'s own.
- The report (``OUT/batch-report.json``) is rewritten atomically after every task.
``run_batch`` prints nothing; ``on_status`` receives each task's result as it finishes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lpd._atomic import atomic_write_text
from lpd._batch_run import BatchRun
from lpd._userfile import read_text
from lpd.batch_report import DEFAULT_RETRIES, BatchReport
from lpd.batch_task import output_paths, run_task
from lpd.errors import InputError

__all__ = ["DEFAULT_RETRIES", "BatchOptions", "BatchReport", "BatchTask", "default_threads",
           "output_paths", "parse_task", "read_task_file", "resolve_checkpoint", "run_batch",
           "run_task"]

REPORT_NAME = "batch-report.json"
# the LocalCluster's settings (see _client): glibc's malloc trim threshold, no profiler
_CLUSTER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                   "distributed.worker.profile.enabled": False}
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
    progress_interval: float = 0.5  # s between a task's "tiles" events (0: every batch)


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


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int, threads_per_worker: int,
            processes: bool) -> Iterator[tuple[object, str]]:
    import dask
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
    # allowed_failures=0: a worker loss errs its tasks at once with KilledWorker, and only
    # lpd batch retries them (lpd.batch_report): dask would rerun them itself up to 3 times.
    # glibc's own malloc trim threshold, not the nanny's 64 KiB: a worker then mmaps and
    # zero-fills every tensor afresh (measured: predict 1.2-1.7x slower per slide). No
    # statistical profiler (it samples every thread each 10 ms, for a dashboard this cluster
    # does not have; measured, 1 worker: 0.89 -> 0.95 of a plain process's windows per CPU s).
    with dask.config.set(_CLUSTER_CONFIG), _quiet_lost_tasks(), \
            LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                         processes=processes, dashboard_address=None,
                         silence_logs=logging.ERROR, scheduler_kwargs={"allowed_failures": 0},
                         **extra) as cluster, Client(cluster) as client:
        yield client, f"LocalCluster({workers} workers x {threads_per_worker} thread, {kind})"


@contextlib.contextmanager
def _quiet_lost_tasks() -> Iterator[None]:
    """Without the scheduler's "Task ... marked as failed because 1 workers died" errors:
    with allowed_failures=0 each lost worker gives them, and run_batch reports the loss
    and its retry itself."""
    def keep(record: logging.LogRecord) -> bool:
        return "workers died while trying to run it" not in str(record.msg)

    logger = logging.getLogger("distributed.scheduler")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


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
    retries: int = DEFAULT_RETRIES,
    on_status: Callable[[dict], None] | None = None,
    on_event: Callable[[dict], None] | None = None,
    on_train_progress: Callable[[object], None] | None = None,
) -> BatchReport:
    """Run every task (see the module docstring) and write ``out_dir/batch-report.json``.

    Parameters
    ----------
    tasks : sequence of BatchTask, str or Path
        Slides, or ``SLIDE@x,y,w,h`` regions (level-0 px).
    out_dir : str or Path
        Output folder (stores, exports, the report).
    checkpoint : str or Path, optional
        Model checkpoint; None or "default": the default model.
    scheduler : str, optional
        Address of a running dask scheduler; default a ``LocalCluster``.
    workers, threads_per_worker : int
        The LocalCluster's worker processes and dask threads per worker.
    processes : bool
        LocalCluster workers as processes (default) or threads of this process.
    options : BatchOptions, optional
        Prediction settings of every task.
    retries : int
        Runs again, at most this many times, a slide whose worker died (default
        ``DEFAULT_RETRIES``; see ``lpd.batch_report``). Errors are never retried.
    on_status : callable, optional
        Called with each task's final entry as it ends (in this thread).
    on_event : callable, optional
        Called with each progress event (dict: ``name``, ``attempt``, ``stage`` "start",
        "predict", "tiles", "pyramid", "end", ``worker``, ``address``, ``pid``, ``done``,
        ``total``, ``windows``, ``elapsed``; ``lpd.batch_task``), and with ``stage`` "lost"
        (a worker died running the slide), "retry" (it runs again) and "requeue" (it was
        queued on a worker that died; not an attempt) from ``run_batch``, in this thread.
    on_train_progress : callable, optional
        Progress of training the default model where its weights are missing.

    Returns
    -------
    BatchReport
        Per task its status, attempts and retries; per worker windows per busy second.

    Raises
    ------
    InputError
        No tasks, clashing output names, a bad checkpoint, an unreachable scheduler.
    """
    options = options or BatchOptions()
    items = [t if isinstance(t, BatchTask) else parse_task(str(t)) for t in tasks]
    _check(items, workers, threads_per_worker, retries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = resolve_checkpoint(checkpoint, on_train_progress, options.device)
    from lpd.io.checkpoint import read_checkpoint_metadata

    read_checkpoint_metadata(ckpt)  # a bad checkpoint fails once, here, not in every task
    t0 = time.perf_counter()
    report = BatchReport(str(out), str(ckpt), "", dt.datetime.now().astimezone().isoformat(
        timespec="seconds"), retries_allowed=retries)
    report.tasks = [{"name": t.name, "slide": str(t.slide), "region": t.region,
                     "status": "pending"} for t in items]
    with _client(scheduler, workers, threads_per_worker, processes) as (client, described):
        report.scheduler = described
        _write(report, out, t0)
        BatchRun(client, items, str(ckpt.resolve()), out, options, report,
                 lambda: _write(report, out, t0), on_status, on_event).run()
    report.finished = True
    _write(report, out, t0)
    return report


def _check(items: list[BatchTask], workers: int, threads_per_worker: int,
           retries: int) -> None:
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
    if retries < 0:
        raise InputError(None, f"retries must be >= 0, got {retries}")


def _write(report: BatchReport, out: Path, t0: float) -> None:
    report.seconds = time.perf_counter() - t0
    report.update_throughput()
    atomic_write_text(out / REPORT_NAME, json.dumps(report.to_dict(), indent=1, default=str))
