"""The job threads' CPU priority: below the GUI thread's (``napari_lpd._workers`` lowers
it in each worker thread before the job starts)."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

# Compute runs at a lower CPU priority than the GUI thread: on the 2-core machine here the
# torch threads otherwise take the cores the event loop needs, and with it the whole Segment
# run measured 0.68-0.77 of the CLI's tiles/s with 100-130 ms tick gaps while tiles were
# painted; at nice 10, 0.81 and at most 64 ms (benchmarks/gui_responsiveness.py).
BACKGROUND_NICE = 10


def lower_thread_priority(nice: int = BACKGROUND_NICE) -> None:
    """Give the calling thread (and every thread it starts from now on: torch's OpenMP
    team, lpd's reader thread) the Linux nice value ``nice``, so the GUI thread wins the
    CPU whenever it has work. Elsewhere, or when refused, nothing happens. An unprivileged
    process cannot raise it back: the worker thread stays low-priority until Qt's thread
    pool retires it (30 s idle), which is what background work wants anyway."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except OSError:
        log.debug("could not lower the worker thread's priority", exc_info=True)
