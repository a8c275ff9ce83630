"""The report of ``lpd batch`` (``OUT/batch-report.json``) and the bookkeeping of attempts.

Per slide: its status, its attempts (which worker ran each, how it ended, the windows it
computed and its busy seconds) and retries. Per worker: windows computed per busy second.
For the run: windows per second of wall time and per busy second.

**Attempts and retries.** An attempt is one start of a slide's task on a worker, as the
worker reports it (a "start" progress event); it ends "done", "skipped", "failed" (an error
in the task: bad input, a bug, never retried) or "worker died" (the worker process was lost
while running it: killed, out of memory, its machine gone). Only a lost worker is retried,
``retries`` times at most (default ``DEFAULT_RETRIES``), and a retry resumes the slide's
store from its finished chunks. Attempts are counted from the workers' start events, so a
slide's count is right whoever restarted it: ``lpd batch`` (its own LocalCluster sets
dask's ``distributed.scheduler.allowed-failures`` to 0, so every worker loss reaches
``lpd batch`` as one ``KilledWorker`` and nothing is retried twice) or a running scheduler
that reruns a task by itself up to its own ``allowed-failures`` (default 3) before it raises
``KilledWorker``: each rerun's start is one more attempt, and a start beyond ``1 + retries``
is cancelled. dask charges a lost worker to every task assigned to it, also one queued there
and not started; such a loss (no start seen) is not an attempt: it is resubmitted, at most
``MAX_UNSTARTED_LOSSES`` times.

**Windows and busy seconds.** Windows are the model's forward passes (input-size windows,
halo included: ``TiledResult.forward_passes``); busy seconds are the seconds a worker spent
predicting (in ``segment_iter``: reading, model, blending, writing, the store's pyramid),
not loading the model or exporting. An attempt that died counts what its last progress
event reported."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Retries of a slide whose worker died. Batch systems retry a lost worker a few times:
# Spark (spark.task.maxFailures 4: 3 retries), dask (allowed-failures 3), Kubernetes Jobs
# (backoffLimit 6) for small tasks; AWS Batch and Snakemake default to none. A slide is a
# long task (minutes to hours) and a retry resumes from the finished chunks, so a retry is
# cheap; two losses of the same slide on different workers in a row mostly mean the slide
# itself kills workers (memory), and a third try would only cost another worker. So 2.
DEFAULT_RETRIES = 2
# losses of a task that had not started (queued on a worker that died) resubmitted freely
MAX_UNSTARTED_LOSSES = 3
WORKER_DIED = "worker died"


@dataclass
class Attempt:
    """One start of a slide's task on a worker."""

    attempt: int  # 1, 2, ...
    worker: str | None = None  # the dask worker's name (kept across a nanny's restarts)
    address: str | None = None
    pid: int | None = None
    outcome: str = "running"  # "done", "skipped", "failed", "worker died"
    windows: int = 0  # forward passes of this attempt
    busy_s: float = 0.0  # seconds predicting
    cpu_s: float | None = None  # CPU seconds of the worker process meanwhile (a finished one)
    tiles_done: int = 0
    tiles_total: int = 0


@dataclass
class _Slide:
    submission: int = 0  # lpd batch's own submissions of the task: 1, 2, ...
    started: int = 0  # starts seen for the current submission
    unstarted_losses: int = 0
    finished: bool = False
    attempts: list[Attempt] = field(default_factory=list)


class AttemptLog:
    """Attempts of every slide of a batch, from progress events and task results.

    Parameters
    ----------
    names : sequence of str
        The tasks' names.
    retries : int
        Retries allowed per slide after a lost worker (>= 0).
    """

    def __init__(self, names, retries: int = DEFAULT_RETRIES) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.retries = int(retries)
        self._slides = {n: _Slide() for n in names}

    def submit(self, name: str) -> int:
        """A new submission of ``name``; returns its number (1 for the first)."""
        s = self._slides[name]
        s.submission += 1
        s.started = 0
        return s.submission

    def event(self, msg: dict) -> bool:
        """Record a worker's progress event (``lpd.batch_task``'s: ``name``, ``submission``,
        ``stage``, ``worker_name``, ``address``, ``pid``, ``done``, ``total``, ``windows``,
        ``elapsed``).

        Returns
        -------
        bool
            True when this start is one more than ``1 + retries`` (a scheduler rerunning
            the task by itself): the caller cancels the task.
        """
        s = self._slides.get(msg.get("name"))
        if s is None or s.finished or msg.get("submission") != s.submission:
            return False  # late news of an earlier submission
        if msg.get("stage") == "start":
            if s.attempts and s.attempts[-1].outcome == "running":
                s.attempts[-1].outcome = WORKER_DIED  # rerun by the scheduler itself
            s.started += 1
            s.attempts.append(Attempt(len(s.attempts) + 1, _str(msg.get("worker_name")),
                                      msg.get("address"), msg.get("pid")))
            return len(s.attempts) > 1 + self.retries
        if s.started and msg.get("stage") in ("tiles", "pyramid"):
            a = s.attempts[-1]
            a.windows, a.busy_s = int(msg.get("windows", 0)), float(msg.get("elapsed", 0.0))
            a.tiles_done, a.tiles_total = int(msg.get("done", 0)), int(msg.get("total", 0))
        return False

    def lost(self, name: str) -> str:
        """The current submission's worker died.

        Returns
        -------
        str
            "retry" (it had started: submit it again), "requeue" (it had not started: submit
            it again, not an attempt) or "failed" (no retries left).
        """
        s = self._slides[name]
        if s.started:
            s.attempts[-1].outcome = WORKER_DIED
            return "retry" if len(s.attempts) <= self.retries else "failed"
        s.unstarted_losses += 1
        return "requeue" if s.unstarted_losses <= MAX_UNSTARTED_LOSSES else "failed"

    def finish(self, name: str, result: dict) -> dict:
        """The slide's final entry: ``result`` (``run_task``'s, or a failure) with its
        ``attempts``, ``retries``, ``history`` (the attempts), ``windows`` and ``busy_s``
        (over all attempts)."""
        s = self._slides[name]
        s.finished = True
        if "worker" in result:  # the task ran and returned: it ends the current attempt
            if not s.started:  # its start event was not seen (events off or lost)
                s.attempts.append(Attempt(len(s.attempts) + 1))
            a = s.attempts[-1]
            a.worker, a.address, a.pid = _str(result["worker"]), result.get("address"), \
                result.get("pid")
            a.outcome, a.windows = result["status"], int(result.get("passes", 0))
            a.busy_s, a.cpu_s = float(result.get("busy_s", 0.0)), result.get("cpu_s")
        elif s.started and s.attempts[-1].outcome == "running":
            s.attempts[-1].outcome = WORKER_DIED  # cancelled past the retries
        history = [asdict(a) for a in s.attempts]
        return {**result, "attempts": len(history), "retries": max(0, len(history) - 1),
                "history": history, "windows": sum(a.windows for a in s.attempts),
                "busy_s": sum(a.busy_s for a in s.attempts)}

    def attempts(self, name: str) -> list[Attempt]:
        """The attempts of ``name`` so far."""
        return list(self._slides[name].attempts)


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def worker_throughput(tasks: list[dict]) -> dict[str, dict]:
    """Windows per busy second of each worker, from the tasks' ``history``.

    Parameters
    ----------
    tasks : list of dict
        The report's task entries.

    Returns
    -------
    dict
        Worker name -> ``attempts``, ``slides`` (attempts done there), ``windows``,
        ``busy_s``, ``windows_per_s`` (windows / busy_s; 0 when never busy), and over the
        attempts that returned (a lost one's CPU time is unknown): ``cpu_s`` and
        ``windows_per_cpu_s`` (little moved by other processes' load, unlike busy_s).
    """
    out: dict[str, dict] = {}
    for task in tasks:
        for a in task.get("history", []):
            w = out.setdefault(str(a["worker"]), {"attempts": 0, "slides": 0, "windows": 0,
                                                  "busy_s": 0.0, "cpu_s": 0.0,
                                                  "cpu_windows": 0})
            w["attempts"] += 1
            w["slides"] += a["outcome"] == "done"
            w["windows"] += a["windows"]
            w["busy_s"] += a["busy_s"]
            if a.get("cpu_s") is not None:
                w["cpu_s"] += a["cpu_s"]
                w["cpu_windows"] += a["windows"]
    for w in out.values():
        w["windows_per_s"] = w["windows"] / w["busy_s"] if w["busy_s"] > 0 else 0.0
        cpu_windows = w.pop("cpu_windows")
        w["windows_per_cpu_s"] = cpu_windows / w["cpu_s"] if w["cpu_s"] > 0 else 0.0
    return dict(sorted(out.items()))


@dataclass
class BatchReport:
    """What ``run_batch`` returns and writes as ``OUT/batch-report.json``.

    ``tasks`` hold one entry per task, in input order (see ``AttemptLog.finish``);
    ``workers`` the throughput per worker (``worker_throughput``); ``throughput`` the
    run's: windows, busy seconds, ``windows_per_s`` (per second of the run's wall time,
    cluster start included) and ``windows_per_busy_s``."""

    out_dir: str
    checkpoint: str
    scheduler: str
    started: str
    seconds: float = 0.0
    retries_allowed: int = DEFAULT_RETRIES
    tasks: list[dict] = field(default_factory=list)
    workers: dict[str, dict] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    finished: bool = False

    @property
    def counts(self) -> dict[str, int]:
        out = {"done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for t in self.tasks:
            out[t["status"]] = out.get(t["status"], 0) + 1
        return out

    @property
    def retries(self) -> int:
        """Retries over all slides."""
        return sum(t.get("retries", 0) for t in self.tasks)

    @property
    def failed(self) -> list[dict]:
        return [t for t in self.tasks if t["status"] == "failed"]

    def update_throughput(self) -> None:
        """Recompute ``workers`` and ``throughput`` from the tasks."""
        self.workers = worker_throughput(self.tasks)
        windows = sum(w["windows"] for w in self.workers.values())
        busy = sum(w["busy_s"] for w in self.workers.values())
        self.throughput = {
            "windows": windows, "busy_s": busy, "wall_s": self.seconds,
            "windows_per_s": windows / self.seconds if self.seconds > 0 else 0.0,
            "windows_per_busy_s": windows / busy if busy > 0 else 0.0}

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts, "retries": self.retries}
