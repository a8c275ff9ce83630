"""Running ``lpd`` generators off the GUI thread (stardist-napari's pattern, with Cancel).

The compute generator (e.g. ``lpd.segmentation.segment_iter``) yields progress per tile
batch or training step and returns its result. ``run_in_worker`` wraps it in a napari
``GeneratorWorker``; yielded values reach ``on_yield`` on the GUI thread, coalesced to one
call per ``UPDATE_INTERVAL_S`` (2 s; a timer flushes a trailing batch), and a
``napari.utils.progress`` bar in the activity dock follows them, one event-loop turn later
(docs/architecture.md, Threads and responsiveness: per-batch progress updates cost 15-25 %
throughput; each GUI change in a turn of its own keeps each repaint's stall short).

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
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from qtpy.QtCore import QTimer

from napari_lpd._activity import ActivityGif
from napari_lpd._notify import error_message, notify_error
from napari_lpd._priority import lower_thread_priority

# docs/architecture.md (Threads and responsiveness): a window repaint costs 40-80 ms under
# software GL, CPU that the job's threads lose, so GUI-side updates are coalesced: one per
# UPDATE_INTERVAL_S (benchmarks/gui_responsiveness.py, 2 cores: one per 500 ms gave 0.77
# of the CLI's tiles/s; with the layer list kept quiet, one per second 0.83, one per 2 s
# 0.87, load ~1). Each step that changes the window (tiles, the bar's value, the result,
# the bar's removal, the widget's end state) gets an event-loop turn of its own, TURN_MS
# after the one before: two such changes in one turn stalled it 90-180 ms. The bar moves
# at each update.
UPDATE_INTERVAL_S = 2.0
TURN_MS = 40

log = logging.getLogger(__name__)

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
    #: ``later(step)``: run ``step`` (a change of the window) in an event-loop turn of its
    #: own, after the job's changes queued before it (see ``_Job._later``)
    later: Callable[[Callable[[], None]], None] = field(default=lambda step: step())

    def cancel(self) -> None:
        """Stop at the next yield (within one batch); nothing more is painted."""
        self.cancelled = True

    @property
    def running(self) -> bool:
        """True from the start until every callback of the end has run (the worker's own
        ``is_running`` is False while it still waits for a thread)."""
        return not self.finished


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
    on_start: Callable[[], None] | None = None,
    quick_start: bool = False,
    start: bool = True,
    owner: Any = None,
) -> RunHandle:
    """Start ``make_generator()`` in a thread.

    Parameters
    ----------
    make_generator : callable
        Called in the worker thread; returns the generator to drive (its yields are
        progress, its return value the result).
    description : str
        The progress bar's first text.
    total, done : callable, optional
        Read the bar's total and position from a yielded value (no ``total``: no bar).
    describe : callable, optional
        The bar's text from a yielded value; a new text or total (a new stage) resets the
        one bar.
    on_yield : callable, optional
        Receives the values yielded since the last GUI update (a list, never empty), at
        most once per UPDATE_INTERVAL_S; the last batch is always flushed before
        ``on_return``.
    on_return : callable, optional
        The generator's return value; skipped after a cancel.
    on_error : callable, optional
        Exceptions raised by the generator (default: ``notify_error``).
    on_finish : callable, optional
        Called last in every case, with the handle.
    on_start : callable, optional
        GUI set-up called on the GUI thread before the worker starts (skipped after a
        cancel or once the owner is deleted): with ``quick_start``, in the event-loop turn
        after this call returned.
    quick_start : bool
        Return at once (from a click): ``on_start`` runs in the next event-loop turn, the
        bar and the worker's start in a later one (the window repaints in between; the
        worker would compete with the set-up for the GIL).
    start : bool
        Start the worker (else ``handle.worker.start()``); without ``quick_start``, now.
    owner : QObject, optional
        The widget; when it is deleted (the viewer closed mid-run) the job is cancelled and
        none of the callbacks runs again.

    Returns
    -------
    RunHandle
        The job's handle (``cancel()``, ``running``).
    """
    job = _Job(make_generator, description=description, total=total, done=done,
               describe=describe, on_yield=on_yield, on_return=on_return,
               on_error=on_error or notify_error, on_finish=on_finish, on_start=on_start,
               quick_start=quick_start)
    if owner is not None:
        owner.destroyed.connect(lambda *_: job.orphan())
    if quick_start:
        QTimer.singleShot(0, lambda: job.set_up(start))
    elif start:
        if on_start is not None:
            on_start()
        job.handle.worker.start()
    return job.handle


class _Job:
    """The GUI side of one worker: throttled updates, the progress bar and the callbacks,
    run one after the other in the order the worker's signals came.

    Callbacks may process Qt events (napari does when a layer or a progress bar is added),
    which would deliver the worker's next signal *inside* the running callback: a late tile
    batch painted after the result. So every handler goes through one queue, run by a
    non-reentrant pump (``_post``). The worker's signals are connected to lambdas (PyQt
    holds those strongly, and napari holds the worker while it runs): they keep this object
    alive exactly as long as its worker."""

    def __init__(self, make_generator: Callable[[], Generator[Any, None, Any]], *,
                 description: str, total: Callable[[Any], int] | None,
                 done: Callable[[Any], int] | None, describe: Callable[[Any], str] | None,
                 on_yield: Callable[[list[Any]], None] | None,
                 on_return: Callable[[Any], None] | None,
                 on_error: Callable[[BaseException], None],
                 on_finish: Callable[[RunHandle], None] | None,
                 on_start: Callable[[], None] | None = None, quick_start: bool = False) -> None:
        self.make_generator = make_generator
        self.description, self.total, self.done, self.describe = description, total, done, describe
        self.on_yield, self.on_return = on_yield, on_return
        self.on_error, self.on_finish, self.on_start = on_error, on_finish, on_start
        self.handle = RunHandle(create_worker(self._work, _start_thread=False))
        self._last_update = 0.0
        self._queue: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._pumping = self._ending = False  # ending: the worker is done, the bar too
        self._bar_value = 0  # the value the bar shows
        self._timer = QTimer()  # flushes a trailing batch when no yield follows
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(lambda: self._post(lambda _: self._flush()))
        self._steps: deque[Callable[[], None]] = deque()  # screen changes, one per turn
        self._turn = QTimer()
        self._turn.setSingleShot(True)
        self._turn.timeout.connect(lambda: self._next_turn())
        self.handle.later = self._later
        worker = self.handle.worker
        worker.yielded.connect(lambda value: self._post(self._yielded, value))
        worker.returned.connect(lambda value: self._post(self._returned, value))
        worker.aborted.connect(lambda: self._aborted())
        worker.finished.connect(lambda: self._later(self._finished))
        ActivityGif.begin()
        if total is not None and not quick_start:  # the bar appears at the call (a new
            # napari progress bar costs 30-170 ms of GUI time: not as a stall mid-run)
            self._first_bar()

    # ---- the worker thread ----------------------------------------------------------
    def _work(self) -> Generator[Any, None, Any]:  # a generator function: napari then
        handle = self.handle  # makes a GeneratorWorker
        lower_thread_priority()
        try:
            gen = handle._gen = self.make_generator()
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

    # ---- the GUI thread -------------------------------------------------------------
    def set_up(self, start: bool) -> None:
        """``quick_start``: ``on_start`` now, the bar and the worker's start next turn."""
        handle = self.handle

        def then() -> None:
            if self.total is not None and not (handle.orphaned or handle.cancelled):
                self._first_bar()
            if start:  # even when cancelled: it ends at once, and the end runs as usual
                handle.worker.start()

        try:
            if self.on_start is not None and not (handle.orphaned or handle.cancelled):
                self.on_start()
        finally:  # a failed set-up still ends the job (no handle left running)
            self._later(then)

    def _first_bar(self) -> None:
        handle = self.handle
        if handle.bar is None and not handle.finished:  # a value may have made it already
            handle.bar = progress(total=1, desc=self.description)  # 0 would animate
            handle._bar_text = self.description
            ActivityGif.pause()

    def _post(self, handler: Callable[[Any], None], value: Any = None) -> None:
        """Run ``handler(value)`` after every handler queued before it (never inside one)."""
        self._queue.append((handler, value))
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue:
                fn, arg = self._queue.popleft()
                fn(arg)
        finally:
            self._pumping = False

    def _yielded(self, value: Any) -> None:
        self.handle._pending.append(value)
        wait = UPDATE_INTERVAL_S - (time.monotonic() - self._last_update)
        if wait <= 0:
            self._flush()
        elif not self._timer.isActive():  # a trailing batch is painted even if no yield
            self._timer.start(int(wait * 1000) + 1)  # follows

    def _flush(self) -> None:
        handle = self.handle
        self._timer.stop()
        self._last_update = time.monotonic()
        if not handle._pending or handle.cancelled:
            handle._pending.clear()
            return
        values, handle._pending = handle._pending, []
        if self.on_yield is not None and not handle.orphaned:
            self.on_yield(values)
        latest = values[-1]
        self._later(lambda: None if self._ending else self._update_bar(latest))

    def _later(self, step: Callable[[], None]) -> None:
        """Run ``step`` in an event-loop turn of its own, TURN_MS after the step queued
        before it (the window is repainted in between), then after every handler queued
        before it. Steps run one per turn, in order: two that change the window never
        share a turn, whoever asked for them (e.g. the bar's new stage and the live
        layer's new data)."""
        self._steps.append(step)
        if not self._turn.isActive():
            self._turn.start(TURN_MS)

    def _next_turn(self) -> None:
        if self._steps:
            step = self._steps.popleft()
            try:
                self._post(lambda _: step())
            finally:
                if self._steps:
                    self._turn.start(TURN_MS)

    def _update_bar(self, latest: Any) -> None:
        handle, renamed, text = self.handle, False, ""
        if self.total is not None:
            n_total = int(self.total(latest))
            text = self.describe(latest) if self.describe is not None else self.description
            bar = handle.bar
            if bar is None:
                handle.bar = progress(total=n_total, desc=text)
                ActivityGif.pause()
            elif (bar.total, handle._bar_text) != (n_total, text):  # a new stage: the same
                # bar (a new napari progress bar costs 30-170 ms of GUI time; measured)
                bar.total, renamed = n_total, True
            handle._bar_text = text
        bar = handle.bar
        if bar is not None and self.done is not None:
            bar.n = int(self.done(latest))
        if renamed:  # the text (napari repaints the window for it), the value next turn,
            # unless the bar shows that value already (0, or emptied by its new range)
            bar.set_description(text)
            if bar.n != (0 if self._bar_value > bar.total else self._bar_value):
                self._later(lambda: None if handle.bar is not bar or self._ending
                            else self._bar_to(bar, bar.n))
        elif bar is not None and self.done is not None:
            bar.refresh()  # the text ("122/266"), then the bar
            self._bar_to(bar, bar.n)

    def _bar_to(self, bar: progress, value: int) -> None:
        """napari's activity-dock bar follows the value event and processes Qt's pending
        events (a window repaint)."""
        self._bar_value = value
        bar.events.value(value=value)

    def _returned(self, value: Any) -> None:
        handle = self.handle
        if isinstance(value, _Failed):
            handle._pending.clear()
            handle.failed = value.error
            if handle.orphaned:
                log.warning("job of a closed widget failed: %s", error_message(value.error))
            else:
                self.on_error(value.error)
            return
        self._flush()
        self._ending = True  # the bar goes in a turn or two: a value queued now, a stage
        # that came with the result's last batch, would be one more repaint for nothing
        if self.on_return is not None and not handle.cancelled:
            self.on_return(value)

    def _finished(self) -> None:
        """The end, in turns after the result's (each repaints the window once, after the
        bar steps queued before): the bar goes, then ``on_finish``."""
        handle = self.handle
        self._timer.stop()
        self._ending = True
        handle._pending.clear()  # nothing more is painted after a cancel
        try:
            if handle._gen is not None:
                handle._gen.close()  # after napari's own quit(); a no-op when it ended
        finally:
            self._later(self._close_bar)

    def _close_bar(self) -> None:
        try:
            if self.handle.bar is not None:
                self.handle.bar.close()
                self.handle.bar = None
        finally:
            self._later(self._end)

    def _end(self) -> None:
        try:
            if self.on_finish is not None and not self.handle.orphaned:
                self.on_finish(self.handle)
        finally:
            ActivityGif.end()
            self.handle.finished = True  # last: "not running": every callback has run

    def _aborted(self) -> None:  # napari's quit(): the generator is suspended, not closed
        self.handle.cancelled = True

    def orphan(self, *_: Any) -> None:
        """The owner widget was deleted: cancel, and run no callback any more."""
        self.handle.orphaned = True
        self.handle.cancel()
