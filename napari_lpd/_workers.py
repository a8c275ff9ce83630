"""Running ``lpd`` generators off the GUI thread (stardist-napari's pattern, with Cancel).

The compute generator (e.g. ``lpd.infer.tiled.predict_tiled``) yields progress per tile
batch or training step and returns its result. ``run_in_worker`` wraps it in a napari
``GeneratorWorker``; yielded values reach ``on_yield`` on the GUI thread, coalesced to one
call per second (a timer flushes a trailing batch), and a ``napari.utils.progress`` bar in
the activity dock follows them, updated in the same throttled call (DESIGN.md: per-batch
progress updates cost 15-25 % throughput).

Cancel: ``RunHandle.cancel()`` sets a flag that the wrapper checks before asking the lpd
generator for its next value; the wrapper then closes the generator *in the worker thread*
(so lpd's cleanup - reader thread, open files - runs there, within one batch) and the worker
ends normally. napari's own ``worker.quit()`` (e.g. from the activity dock) is also handled:
the suspended generator is closed when the worker finishes.

Errors never reach napari's traceback dialog: the wrapper catches them in the worker and
hands them to ``on_error`` on the GUI thread; the default shows a one-line notification
(``LPDError``s are the user's to fix and read as they are; anything else is logged with its
traceback and reported by type and message)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from lpd.errors import LPDError

# DESIGN.md (GUI facts): a window repaint costs 40-70 ms under software GL, so GUI-side
# updates are coalesced. benchmarks/gui_responsiveness.py (whole Segment widget, CMU slide,
# 2 cores, compute at nice 10, idle machine): one update per 500 ms gave tick gaps p95
# 16-18 ms and 0.77 of the CLI's tiles/s; one per second p95 13 ms and 0.84.
UPDATE_INTERVAL_S = 1.0

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

# napari animates a "loading" GIF in the status bar while any progress bar exists, at 33
# frames/s. Under software OpenGL (Xvfb/llvmpipe, remote desktops) every frame recomposites
# the window with its GL canvas, ~30 ms each: measured here, the event loop's median tick
# gap went from 10 ms to 38-40 ms with an idle worker. While our jobs run the GIF is slowed
# to a frame every 3 s (found through public Qt API; the bar itself still updates).
ACTIVITY_GIF_SPEED = 1  # percent of normal speed while our jobs run (a frame per 3 s)
_running_jobs = [0]


def _activity_movies() -> list[Any]:
    from qtpy.QtWidgets import QApplication, QLabel

    app = QApplication.instance()
    if app is None:
        return []
    movies = []
    for top in app.topLevelWidgets():
        for label in top.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.fileName().endswith("loading.gif"):
                movies.append(movie)
    return movies


def _slow_activity_gif(slow: bool) -> None:
    try:
        for movie in _activity_movies():
            movie.setSpeed(ACTIVITY_GIF_SPEED if slow else 100)
    except Exception:  # cosmetic only: never let it break a job
        log.debug("could not adjust napari's activity animation", exc_info=True)


@dataclass
class _Failed:
    error: BaseException


@dataclass
class RunHandle:
    """A running (or finished) job: ``cancel()`` it, ask whether it is ``running``."""

    worker: GeneratorWorker
    bar: progress | None = None
    cancelled: bool = False
    failed: BaseException | None = None
    finished: bool = False
    orphaned: bool = False  # its owner widget was deleted: no callback runs any more
    _pending: list = field(default_factory=list)
    _gen: Generator | None = None
    _bar_text: str = ""  # the bar's description as given (tqdm's ``desc`` adds ": ")

    def cancel(self) -> None:
        """Stop at the next yield (within one batch); nothing more is painted."""
        self.cancelled = True

    @property
    def running(self) -> bool:
        """True from the start until every callback of the end has run (the worker's own
        ``is_running`` is False while it still waits for a thread)."""
        return not self.finished


def error_message(exc: BaseException) -> str:
    """One line for a notification, the reason first: ``"<problem> — <file> (<folder>)"``
    for an error naming a file (notifications cut long lines: a path first would hide the
    reason). Anything but an ``LPDError`` is prefixed with its type.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    str
        The message.
    """
    from napari_lpd._reader import reason_first  # here: the reader loads dask (~0.7 s)

    text = reason_first(exc)
    return text if isinstance(exc, LPDError) else f"{type(exc).__name__}: {text}"


def notify_error(exc: BaseException, what: str = "LPD") -> None:
    """A napari notification ``"<what> failed: <error_message>"`` without the traceback
    dialog (the log keeps the traceback of anything but an ``LPDError``).

    Parameters
    ----------
    exc : BaseException
        The error.
    what : str
        What failed, e.g. ``"Segmentation"``.
    """
    if not isinstance(exc, LPDError):
        log.error("%s failed", what, exc_info=exc)
    show_error(f"{what} failed: {error_message(exc)}")


def run_in_worker(
    make_generator: Callable[[], Generator[Any, None, Any]],
    *,
    description: str,
    total: Callable[[Any], int] | None = None,
    done: Callable[[Any], int] | None = None,
    describe: Callable[[Any], str] | None = None,
    on_yield: Callable[[list[Any]], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[RunHandle], None] | None = None,
    start: bool = True,
    owner: Any = None,
) -> RunHandle:
    """Start ``make_generator()`` in a thread. ``on_yield`` receives the values yielded
    since the last GUI update (a list, never empty), at most once a second; the last
    batch is always flushed before ``on_return``. ``total``/``done`` read the progress
    bar's figures from a yielded value, ``describe`` its text (a new text or total, e.g. a
    new stage, resets the one bar). ``on_return`` is skipped after a cancel; ``on_error``
    (default: a notification) gets exceptions raised by the generator; ``on_finish`` is
    called last in every case. ``owner``: a QObject (the widget); when it is deleted (the
    viewer closed mid-run) the job is cancelled and none of the callbacks runs again."""
    handle_box: list[RunHandle] = []

    def work() -> Generator[Any, None, Any]:  # a generator function: napari then makes
        handle = handle_box[0]  # a GeneratorWorker
        lower_thread_priority()
        try:
            gen = handle._gen = make_generator()
            while not handle.cancelled:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield value
            gen.close()  # here, in the worker thread: lpd's cleanup runs before finished
            return None
        except Exception as exc:  # reported on the GUI thread, not as a traceback dialog
            return _Failed(exc)

    worker = create_worker(work, _start_thread=False)
    handle = RunHandle(worker)
    handle_box.append(handle)
    last = [0.0]
    timer = QTimer()
    timer.setSingleShot(True)

    def flush() -> None:
        timer.stop()
        last[0] = time.monotonic()
        if not handle._pending or handle.cancelled:
            handle._pending.clear()
            return
        values, handle._pending = handle._pending, []
        latest = values[-1]
        if total is not None:
            n_total = int(total(latest))
            text = describe(latest) if describe is not None else description
            bar = handle.bar
            if bar is None:
                handle.bar = progress(total=n_total, desc=text)
                _slow_activity_gif(True)
            elif (bar.total, handle._bar_text) != (n_total, text):  # a new stage: the same
                # bar (a new napari progress bar costs 30-170 ms of GUI time; measured)
                bar.total = n_total
                bar.set_description(text)
            handle._bar_text = text
        if handle.bar is not None and done is not None:
            bar = handle.bar
            bar.n = int(done(latest))
            # napari's activity-dock bar listens to the value event (progress.update emits
            # it); .n alone updates the text ("122/266") and leaves the bar at 0 %
            bar.events.value(value=bar.n)
            bar.refresh()
        if on_yield is not None and not handle.orphaned:
            on_yield(values)

    # Callbacks may process Qt events (napari does when a layer or a progress bar is
    # added), which would deliver the worker's next signal *inside* the running callback:
    # a late tile batch painted after the result. Every handler goes through one queue,
    # run by a non-reentrant pump, so they always run one after the other, in order.
    queue: deque[tuple[Callable[[Any], None], Any]] = deque()
    pumping = [False]

    def post(handler: Callable[[Any], None], value: Any = None) -> None:
        queue.append((handler, value))
        if pumping[0]:
            return
        pumping[0] = True
        try:
            while queue:
                fn, arg = queue.popleft()
                fn(arg)
        finally:
            pumping[0] = False

    timer.timeout.connect(lambda: post(lambda _: flush()))

    def yielded(value: Any) -> None:
        handle._pending.append(value)
        wait = UPDATE_INTERVAL_S - (time.monotonic() - last[0])
        if wait <= 0:
            flush()
        elif not timer.isActive():  # a trailing batch is painted even if no yield follows
            timer.start(int(wait * 1000) + 1)

    def returned(value: Any) -> None:
        if isinstance(value, _Failed):
            handle._pending.clear()
            handle.failed = value.error
            if handle.orphaned:
                log.warning("job of a closed widget failed: %s", error_message(value.error))
                return
            (on_error or notify_error)(value.error)
            return
        flush()
        if on_return is not None and not handle.cancelled:
            on_return(value)

    def finished() -> None:
        timer.stop()
        handle._pending.clear()  # nothing more is painted after a cancel
        try:
            if handle._gen is not None:
                handle._gen.close()  # after napari's own quit(); a no-op when it ended
            if handle.bar is not None:
                handle.bar.close()
                handle.bar = None
            if on_finish is not None and not handle.orphaned:
                on_finish(handle)
        finally:
            _running_jobs[0] -= 1
            if _running_jobs[0] == 0:
                _slow_activity_gif(False)
            handle.finished = True  # last: "not running" means every callback has run

    def aborted() -> None:  # napari's quit(): the generator is suspended, not closed
        handle.cancelled = True

    worker.yielded.connect(lambda value: post(yielded, value))
    worker.returned.connect(lambda value: post(returned, value))
    worker.aborted.connect(aborted)
    worker.finished.connect(lambda: post(lambda _: finished()))
    if owner is not None:

        def orphan(*_: Any) -> None:
            handle.orphaned = True
            handle.cancel()

        owner.destroyed.connect(orphan)
    _running_jobs[0] += 1
    if total is not None:  # the bar appears at the click (a new napari progress bar costs
        # 30-170 ms of GUI time: better there than as a stall in the middle of the run)
        handle.bar = progress(total=1, desc=description)  # 0 would animate: repaints
        handle._bar_text = description
        _slow_activity_gif(True)
    if start:
        worker.start()
    return handle
