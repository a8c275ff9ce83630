"""Class legend: colour swatch, class name, area % of the segmented tissue and area."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from lpd.classes import CLASS_LONG_NAMES, CLASS_NAMES
from napari_lpd._layers import DEFAULT_COLOURS


def format_area(um2: float) -> str:
    """µm² below 0.01 mm², mm² above."""
    return f"{um2 / 1e6:.3g} mm²" if um2 >= 1e4 else f"{um2:.3g} µm²"


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

    def set_counts(self, counts: Sequence[int], mpp: float | None, note: str = "") -> None:
        """``counts``: pixels per label 0..C; ``mpp``: µm per pixel of those labels."""
        counts = np.asarray(counts, dtype=np.int64)
        tissue = int(counts[1:].sum())
        for i, (_, _, percent, area) in enumerate(self._rows):
            n = int(counts[i + 1]) if i + 1 < len(counts) else 0
            percent.setText(f"{100.0 * n / tissue:.1f} %" if tissue else "0 %")
            area.setText(format_area(n * mpp * mpp) if mpp else f"{n} px")
        self.title.setText("Legend (area % of segmented tissue)" + (f" — {note}" if note else ""))

    def clear_counts(self, note: str = "") -> None:
        for _, _, percent, area in self._rows:
            percent.setText("–")
            area.setText("")
        self.title.setText("Legend" + (f" — {note}" if note else ""))

    def percentages(self) -> list[str]:
        return [row[2].text() for row in self._rows]
