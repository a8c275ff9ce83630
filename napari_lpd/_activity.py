"""napari's activity animation, held still while LPD jobs run (``napari_lpd._workers``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class ActivityGif:
    """napari's "loading" GIF, held still while our jobs run.

    napari animates it in the status bar while any progress bar exists, at 33 frames/s.
    Under software OpenGL (Xvfb/llvmpipe, remote desktops) every frame recomposites the
    window with its GL canvas, ~30 ms each: measured here, the event loop's median tick gap
    went from 10 ms to 38-40 ms with an idle worker, and even at a frame every 3 s each
    frame is a window repaint that the job's threads lose. While our jobs run the GIF
    stands still on its frame (the bar, the status line and the live tiles still show
    progress). napari offers no setting for it and
    its widget is private (``ActivityToggleItem._inProgressIndicator``), so the movie is
    found with public Qt API alone - the QLabels of the top-level windows whose movie is
    ``loading.gif`` - and only here: the one place that walks Qt's widget tree."""

    running = 0  # our jobs now running, in this process

    @classmethod
    def begin(cls) -> None:
        cls.running += 1

    @classmethod
    def end(cls) -> None:
        cls.running -= 1
        if cls.running == 0:
            cls.pause(False)

    @classmethod
    def pause(cls, pause: bool = True) -> None:
        """Hold the GIF on its frame (``pause``), or let it run again where we held it;
        a movie napari has stopped stays stopped either way."""
        from qtpy.QtGui import QMovie

        try:
            for movie in cls._movies():
                if pause or movie.state() == QMovie.MovieState.Paused:
                    movie.setPaused(pause)  # pausing a stopped movie does nothing
        except Exception:  # cosmetic only: never let it break a job
            log.debug("could not adjust napari's activity animation", exc_info=True)

    @staticmethod
    def _movies() -> list[Any]:
        from qtpy.QtWidgets import QApplication, QLabel

        app = QApplication.instance()
        if app is None:
            return []
        return [label.movie() for top in app.topLevelWidgets()
                for label in top.findChildren(QLabel) if label.movie() is not None
                and label.movie().fileName().endswith("loading.gif")]
