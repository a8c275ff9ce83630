"""Small Qt pieces of the dock widgets: a row of widgets, the class legend (colour swatch,
class name, area % of the segmented tissue and area), the dominant-prototype legend (k
shades per class) and a live loss curve painted with QPainter (no plotting library, cheap
to repaint). No dock widget lives here: the widget modules import these, never each other."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QWidget

from lpd.classes import CLASS_LONG_NAMES, CLASS_NAMES
from lpd.colours import contrast_ratio
from napari_lpd._layers import DEFAULT_COLOURS

MAX_POINTS = 2000  # older points of the loss curve are thinned so a long run stays cheap


def row_of(*widgets: QWidget) -> QWidget:
    """One widget holding ``widgets`` side by side (for a form row).

    Parameters
    ----------
    *widgets : QWidget
        Left to right.

    Returns
    -------
    QWidget
        The row, without margins.
    """
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row


# ---- class legend ------------------------------------------------------------------------
def format_areas(um2: Sequence[float]) -> list[str]:
    """Areas in one unit for a whole table: mm² when the largest is at least 0.01 mm²,
    else µm²; fixed-point, never scientific notation."""
    values = [float(v) for v in um2]
    if values and max(values) >= 1e4:
        return [f"{v / 1e6:.3f} mm²" for v in values]
    return [f"{v:.0f} µm²" for v in values]


class LegendWidget(QWidget):
    """One row per class; the figures are filled in when a segmentation finishes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("Legend")
        self._rows: list[tuple[QLabel, QLabel, QLabel, QLabel]] = []
        self._shown: list[tuple[str, tuple[int, ...]]] = []  # the rows' names and colours
        self.set_classes(CLASS_NAMES, DEFAULT_COLOURS)

    def set_classes(self, names: Sequence[str], colours: Sequence[Sequence[int]]) -> None:
        """One row per class (nothing is rebuilt when the classes and colours are the
        ones shown: a rebuild relays the dock out, a repaint of the whole window)."""
        shown = [(str(n), tuple(int(v) for v in c[:3]))
                 for n, c in zip(names, colours, strict=True)]
        if self._rows and shown == self._shown:
            return
        self._shown = shown
        for row in self._rows:
            for w in row:
                w.deleteLater()
        self._grid.addWidget(self.title, 0, 0, 1, 4)
        self._rows = []
        for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            r, g, b = (int(v) for v in colour[:3])
            swatch.setStyleSheet(f"background-color: rgb({r},{g},{b}); border: 1px solid #888;")
            label = QLabel(f"{name} – {CLASS_LONG_NAMES.get(name, name)}")
            percent, area = QLabel("–"), QLabel("")
            for col, w in enumerate((swatch, label, percent, area)):
                self._grid.addWidget(w, i + 1, col)
            self._rows.append((swatch, label, percent, area))
        self.names = list(names)

    def set_counts(self, counts: Sequence[int], mpp: float | None, note: str = "",
                   assumed: float | None = None) -> None:
        """``counts``: pixels per label 0..C; ``mpp``: µm per pixel of those labels;
        ``assumed``: the image's µm/px when it was assumed, not known (every area then
        says so)."""
        counts = np.asarray(counts, dtype=np.int64)
        tissue = int(counts[1:].sum())
        n = [int(counts[i + 1]) if i + 1 < len(counts) else 0 for i in range(len(self._rows))]
        areas = format_areas([v * mpp * mpp for v in n]) if mpp else [f"{v} px" for v in n]
        flag = f" (assumed {assumed:g} µm/px)" if assumed and mpp else ""
        for (_, _, percent, area), pixels, text in zip(self._rows, n, areas, strict=True):
            percent.setText(f"{100.0 * pixels / tissue:.1f} %" if tissue else "0 %")
            area.setText(text + flag)
        self.title.setText("Legend (area % of segmented tissue)" + (f" — {note}" if note else ""))

    def clear_counts(self, note: str = "") -> None:
        for _, _, percent, area in self._rows:
            percent.setText("–")
            area.setText("")
        self.title.setText("Legend" + (f" — {note}" if note else ""))

    def percentages(self) -> list[str]:
        return [row[2].text() for row in self._rows]


class DominantLegend(QWidget):
    """The colours of the dominant-prototype map: per class, its name and k numbered
    swatches (prototype 1..k, lightest first)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.swatches: list[QLabel] = []

    def set_palette(self, palette: dict[int, tuple[str, int, tuple[int, int, int]]]) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.swatches = []
        rows: dict[str, int] = {}
        for value, (name, j, (r, g, b)) in palette.items():
            if name not in rows:
                rows[name] = len(rows)
                self._grid.addWidget(QLabel(name), rows[name], 0)
            ink = "black" if contrast_ratio((r, g, b), (0, 0, 0)) >= contrast_ratio(
                (r, g, b), (255, 255, 255)) else "white"
            swatch = QLabel(str(j))
            swatch.setAlignment(Qt.AlignmentFlag.AlignCenter)
            swatch.setFixedSize(22, 16)
            swatch.setStyleSheet(f"background-color: rgb({r},{g},{b}); color: {ink}; "
                                 "font-size: 9px;")
            swatch.setToolTip(f"{name} {j}: prototype {j} of {name} (label {value})")
            self._grid.addWidget(swatch, rows[name], j)
            self.swatches.append(swatch)
        k = max((j for _, j, _ in palette.values()), default=0)
        self._grid.setColumnStretch(k + 1, 1)  # swatches packed to the left


# ---- loss curve -------------------------------------------------------------------------
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
