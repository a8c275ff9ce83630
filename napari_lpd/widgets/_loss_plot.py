"""A small live loss curve painted with QPainter (no plotting library, cheap to repaint)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

MAX_POINTS = 2000  # older points are thinned so a long run stays cheap to paint


class LossPlot(QWidget):
    """Loss per training step: a polyline with the latest value and the y range written on
    it. ``append`` adds points; the widget repaints itself (call from the GUI thread)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss per step")

    def clear(self) -> None:
        self.steps, self.losses = [], []
        self.update()

    def append(self, steps: Sequence[int], losses: Sequence[float]) -> None:
        for step, loss in zip(steps, losses, strict=True):
            if math.isfinite(loss):
                self.steps.append(int(step))
                self.losses.append(float(loss))
        if len(self.steps) > MAX_POINTS:  # keep every other point of the older half
            half = len(self.steps) // 2
            self.steps = self.steps[:half:2] + self.steps[half:]
            self.losses = self.losses[:half:2] + self.losses[half:]
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        margin = 6.0
        area = QRectF(margin, margin + 14, self.width() - 2 * margin,
                      self.height() - 2 * margin - 28)
        faint = QColor(text)
        faint.setAlpha(60)
        painter.setPen(QPen(faint, 1))
        painter.drawRect(area)
        if not self.losses:
            painter.setPen(text)
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss curve")
            painter.end()
            return
        lo, hi = min(self.losses), max(self.losses)
        span = hi - lo or max(abs(hi), 1.0) * 0.1
        first, last = self.steps[0], self.steps[-1]
        width = max(last - first, 1)
        path = QPainterPath()
        for i, (step, loss) in enumerate(zip(self.steps, self.losses, strict=True)):
            point = QPointF(area.left() + area.width() * (step - first) / width,
                            area.bottom() - area.height() * (loss - lo) / span)
            if i == 0:
                path.moveTo(point)
            else:
                path.lineTo(point)
        painter.setPen(QPen(QColor(30, 144, 255), 1.6))
        painter.drawPath(path)
        painter.setPen(text)
        painter.drawText(QPointF(margin, margin + 10),
                         f"loss {self.losses[-1]:.4g} (step {last})")
        painter.drawText(QPointF(margin, self.height() - margin),
                         f"min {lo:.3g} · max {hi:.3g}")
        painter.end()
