"""The progress / cancel protocol of every long job, and its one driver.

Long work in ``lpd`` is a generator: it yields a progress event per step (a tile batch, a
training step) and returns its result (``StopIteration.value``). Closing the generator stops
the work within one step and leaves nothing half-written (finished store chunks stay, a
checkpoint is not saved). Widgets run such a generator in a napari worker; scripts and the
command line drive it with ``drive``."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from lpd.errors import Cancelled

P = TypeVar("P")
R = TypeVar("R")


def drive(gen: Generator[P, None, R], on_progress: Callable[[P], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> R:
    """Run a job generator to its end and return its result.

    Parameters
    ----------
    gen : generator
        Yields progress events, returns the result.
    on_progress : callable, optional
        Called with every event.
    should_stop : callable, optional
        Asked after every event; True closes the generator (the job stops within one step)
        and raises ``Cancelled``.

    Returns
    -------
    The generator's return value.

    Raises
    ------
    Cancelled
        ``should_stop`` returned True.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None:
                on_progress(event)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled("stopped on request")
    except BaseException:
        gen.close()  # an error or Ctrl+C in a callback stops the job too
        raise


def relay(gen: Generator[P, None, R], convert: Callable[[P], Any]
          ) -> Generator[Any, None, R]:
    """A job inside another: yield ``convert(event)`` for each event of ``gen`` and return
    its result (``result = yield from relay(inner, to_outer_event)``). Closing the outer job
    closes ``gen``.

    Parameters
    ----------
    gen : generator
        The inner job.
    convert : callable
        Makes the outer job's event from an inner one.

    Returns
    -------
    The inner generator's return value.
    """
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            yield convert(event)
    finally:
        gen.close()
