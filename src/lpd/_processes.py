"""No orphan processes: what a command starts, it ends, also when it is stopped.

``guard_children`` wraps a command (``lpd.cli.main`` wraps every one): inside it SIGTERM
raises ``Terminated`` (a ``KeyboardInterrupt``) in the main thread, so a ``kill`` runs the
same clean-up as Ctrl-C (stores marked incomplete, pools shut down), and on leaving it,
by any means, every process started inside (any depth: a process pool's workers, a dask
``LocalCluster``'s nannies and workers, a multiprocessing manager) gets SIGTERM, then
SIGKILL after a grace period. Processes that existed before the block (an X server a
test started, say) are left alone. Process trees come from psutil.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

GRACE_S = 3.0  # seconds between SIGTERM and SIGKILL


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled as an interrupt (Ctrl-C) by the code it stops."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


class ChildWatch:
    """The descendants of this process that appeared after the watch was made."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._before = {_key(p) for p in self._descendants()}

    def _descendants(self) -> list[psutil.Process]:
        try:
            return self._me.children(recursive=True)
        except psutil.Error:
            return []

    def new(self) -> list[psutil.Process]:
        """Live descendants started since the watch was made (not multiprocessing's
        resource tracker: it ends by itself with this process, and a stopped one makes
        the next process pool of this process warn)."""
        return [p for p in self._descendants()
                if _key(p) not in self._before and not _is_resource_tracker(p)]

    def stop_new(self, grace: float = GRACE_S) -> int:
        """SIGTERM the new descendants, SIGKILL those alive after ``grace`` seconds.

        Returns
        -------
        int
            How many processes had to be stopped.
        """
        procs = self.new()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for p in alive + self.new():  # and any started while we waited
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=grace)
        return len(procs)


def _is_resource_tracker(p: psutil.Process) -> bool:
    try:
        return any("resource_tracker" in part for part in p.cmdline())
    except psutil.Error:
        return False


def _key(p: psutil.Process) -> tuple[int, float]:
    try:
        return p.pid, p.create_time()
    except psutil.Error:
        return p.pid, 0.0


@contextmanager
def guard_children(grace: float = GRACE_S) -> Iterator[ChildWatch]:
    """SIGTERM becomes ``Terminated`` inside the block (main thread only), and processes
    started inside are stopped when it ends (see the module docstring).

    Parameters
    ----------
    grace : float
        Seconds a process gets between SIGTERM and SIGKILL.

    Yields
    ------
    ChildWatch
        The watch (its ``new()`` lists the processes started so far).
    """
    watch = ChildWatch()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield watch
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        watch.stop_new(grace)
