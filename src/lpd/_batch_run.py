"""The loop of ``lpd.batch.run_batch``: submit the tasks, follow their progress events and
results through one queue consumed in the caller's thread, submit again a slide whose worker
died (``lpd.batch_report.AttemptLog`` decides), and fill the report as tasks end."""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lpd.batch_report import AttemptLog, BatchReport
from lpd.batch_task import error_info, run_task

if TYPE_CHECKING:
    from lpd.batch import BatchOptions, BatchTask


class BatchRun:
    """Submits the tasks, follows their events and results in one queue (consumed in the
    caller's thread), retries a slide whose worker died, fills the report."""

    def __init__(self, client, items: list[BatchTask], checkpoint: str, out: Path,
                 options: BatchOptions, report: BatchReport, write: Callable[[], None],
                 on_status: Callable[[dict], None] | None,
                 on_event: Callable[[dict], None] | None) -> None:
        self.client, self.items, self.checkpoint, self.out = client, items, checkpoint, out
        self.options, self.report, self.write = options, report, write
        self.on_status, self.on_event = on_status, on_event
        self.log = AttemptLog([t.name for t in items], report.retries_allowed)
        self.index = {t.name: i for i, t in enumerate(items)}
        self.topic = f"lpd-batch-{uuid.uuid4().hex}"
        self.queue: queue.Queue = queue.Queue()
        self.live: dict[str, tuple[BatchTask, object]] = {}  # key -> (task, future)

    def run(self) -> None:
        self.client.subscribe_topic(self.topic, lambda ev: self.queue.put(("event", ev[1])))
        try:
            for task in self.items:
                self._submit(task)
            while self.live:
                try:
                    kind, item = self.queue.get(timeout=1.0)  # a signal is handled meanwhile
                except queue.Empty:
                    continue
                if kind == "event":
                    self._event(item)
                else:
                    self._done(item)
        finally:
            for _task, fut in self.live.values():  # interrupted: stop what still runs
                fut.cancel()
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)

    def _submit(self, task: BatchTask) -> None:
        n = self.log.submit(task.name)
        # a retry resumes what the lost attempt wrote, also under resume=False
        opts = self.options if n == 1 else dataclasses.replace(self.options, resume=True)
        fut = self.client.submit(run_task, task, self.checkpoint, str(self.out.resolve()),
                                 opts, self.topic, n, pure=False,
                                 key=f"lpd-task-{task.name}-{n}-{time.time_ns()}")
        self.live[fut.key] = (task, fut)
        fut.add_done_callback(lambda f: self.queue.put(("done", f.key)))

    def _event(self, msg: dict) -> None:
        if self.log.event(msg):  # started more often than 1 + retries (a scheduler's reruns)
            for task, fut in self.live.values():
                if task.name == msg.get("name"):
                    fut.cancel()
        n = len(self.log.attempts(msg["name"])) if msg.get("name") in self.index else 0
        ev = {k: v for k, v in msg.items() if k not in ("worker_name", "submission")}
        # the scheduler sets "worker" to the address; the report names workers by name
        self._tell({**ev, "attempt": n, "worker": msg.get("worker_name"),
                    "address": msg.get("address") or msg.get("worker")})

    def _done(self, key: str) -> None:
        from distributed import KilledWorker

        task, fut = self.live.pop(key)
        base = {"name": task.name, "slide": str(task.slide), "region": task.region,
                "status": "failed"}
        if fut.cancelled():
            n = len(self.log.attempts(task.name))
            result = {**base, "error": {"type": "WorkerLost", "message": _lost(task, n)}}
        else:
            try:
                result = fut.result()
            except KilledWorker as exc:
                result = self._lost(task, base, exc)
                if result is None:
                    return
            except Exception as exc:  # the task could not run there (not retried)
                result = {**base, "error": error_info(exc)}
        entry = self.log.finish(task.name, result)
        self.report.tasks[self.index[task.name]] = entry
        self.report.update_throughput()
        self.write()
        if self.on_status is not None:
            self.on_status(entry)

    def _lost(self, task: BatchTask, base: dict, exc: BaseException) -> dict | None:
        """A worker died holding ``task``: submit it again (None) or its failure."""
        verdict = self.log.lost(task.name)
        attempts = self.log.attempts(task.name)
        info: dict = {"name": task.name, "attempt": len(attempts)}
        if verdict == "requeue":  # queued on that worker, never started: not an attempt
            self._submit(task)
            self._tell({**info, "stage": "requeue"})
            return None
        if attempts:
            last = attempts[-1]
            self._tell({**info, "stage": "lost", "worker": last.worker, "pid": last.pid,
                        "address": last.address, "done": last.tiles_done,
                        "total": last.tiles_total, "windows": last.windows})
        if verdict == "retry":
            self._submit(task)
            self._tell({**info, "stage": "retry", "attempt": len(attempts) + 1})
            return None
        return {**base, "error": {"type": "WorkerLost", "message": _lost(task, len(attempts)),
                                  "dask": f"{type(exc).__name__}: {exc}"}}

    def _tell(self, msg: dict) -> None:
        if self.on_event is not None:
            self.on_event(dict(msg))


def _lost(task: BatchTask, attempts: int) -> str:
    return (f"{task.slide}: the worker running it died in each of its {attempts} attempts "
            "(a slide that keeps killing its worker likely needs more memory than a worker "
            "has; see --retries)")
