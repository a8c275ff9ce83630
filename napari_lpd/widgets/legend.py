"""Class legend: colour swatch, class name, area % of the segmented tissue and area."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from lpd.classes import CLASS_LONG_NAMES, CLASS_NAMES
from napari_lpd._layers import DEFAULT_COLOURS


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
        self.set_classes(CLASS_NAMES, DEFAULT_COLOURS)

    def set_classes(self, names: Sequence[str], colours: Sequence[Sequence[int]]) -> None:
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
