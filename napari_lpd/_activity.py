"""napari's activity animation, slowed while LPD jobs run (``napari_lpd._workers``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class ActivityGif:
    """napari's "loading" GIF, slowed while our jobs run.

    napari animates it in the status bar while any progress bar exists, at 33 frames/s.
    Under software OpenGL (Xvfb/llvmpipe, remote desktops) every frame recomposites the
    window with its GL canvas, ~30 ms each: measured here, the event loop's median tick gap
    went from 10 ms to 38-40 ms with an idle worker. While our jobs run the GIF is slowed
    to a frame every 3 s (the bar itself still updates). napari offers no setting for it and
    its widget is private (``ActivityToggleItem._inProgressIndicator``), so the movie is
    found with public Qt API alone - the QLabels of the top-level windows whose movie is
    ``loading.gif`` - and only here: the one place that walks Qt's widget tree."""

    SPEED = 1  # percent of normal speed while our jobs run (a frame per 3 s)
    running = 0  # our jobs now running, in this process

    @classmethod
    def begin(cls) -> None:
        cls.running += 1

    @classmethod
    def end(cls) -> None:
        cls.running -= 1
        if cls.running == 0:
            cls.slow(False)

    @classmethod
    def slow(cls, slow: bool = True) -> None:
        try:
            for movie in cls._movies():
                movie.setSpeed(cls.SPEED if slow else 100)
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
