"""Export widget: a Labels layer to a folder as a label TIFF, an OME-Zarr (a copy of the
prediction store), a QuPath GeoJSON (QuPath's class names, or ours) and a per-class area
CSV (``lpd.io.formats``).

Every file is written atomically (a temp name beside it, renamed when whole), so a failed
or interrupted export never leaves a half-written file under the final name. Results of
interrupted runs are refused. Layers that are not LPD results (a painted or ground-truth
label map) are exported through a temporary store, like the writers do."""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import napari.viewer
from napari.layers import Labels
from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lpd.errors import InputError
from lpd.io.formats import FORMATS, export_paths
from napari_lpd._layers import watch_layers
from napari_lpd._metadata import LayerMeta
from napari_lpd._notify import notify_error
from napari_lpd._workers import RunHandle, run_in_worker
from napari_lpd._writer import _layer_store


def safe_name(name: str) -> str:
    """A file-name stem from a layer name: ``LPD labels [CMU-1]`` -> ``LPD_labels_CMU-1``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "labels"


#: The GeoJSON's class names: menu text -> ``class_names`` of ``lpd.io.geojson``.
CLASS_NAME_CHOICES = {
    "QuPath classes (Tumor, Stroma, Immune cells, Necrosis)": "qupath",
    "LPD classes (TUM, STR, LYM, NEC)": "lpd",
}


def export_job(data: Any, meta: dict[str, Any], folder: Path, stem: str, formats: list[str],
               options: dict[str, Any] | None = None,
               ) -> Generator[tuple[int, int, str], None, list[Path]]:
    """Write the chosen formats; yields (done, total, text), returns the written paths.
    ``options``: export options (``lpd.io.formats``), each handed to the formats taking it."""
    options = options or {}
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    targets = export_paths(stem, folder, formats, options)  # the one naming scheme
    with _layer_store(data, meta) as store:
        for i, (key, target) in enumerate(targets.items()):
            yield i, len(formats), f"Writing {target.name}"
            written.append(FORMATS[key].write(store, target, **FORMATS[key].own(options)))
    return written


class ExportWidget(QWidget):
    """Dock widget: export a label layer to a folder in the chosen formats."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.handle: RunHandle | None = None
        self.written: list[Path] = []
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.currentTextChanged.connect(self._layer_changed)
        form.addRow("Labels", self.layer_combo)
        self.folder_edit = QLineEdit(str(Path.home()))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.folder_edit)
        row.addWidget(browse)
        form.addRow("Folder", row)
        self.name_edit = QLineEdit()
        form.addRow("File name", self.name_edit)
        self.checks: dict[str, QCheckBox] = {}
        for key, fmt in FORMATS.items():
            self.checks[key] = QCheckBox(fmt.title)
            self.checks[key].setChecked(True)
            form.addRow("", self.checks[key])
        self.class_names_combo = QComboBox()
        self.class_names_combo.addItems(list(CLASS_NAME_CHOICES))
        self.class_names_combo.setToolTip(
            "Class names and colours in the GeoJSON: QuPath's built-in classes join "
            "QuPath's class list (the viewer keeps its own colours)")
        self.checks["geojson"].toggled.connect(self.class_names_combo.setEnabled)
        form.addRow("GeoJSON classes", self.class_names_combo)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(self.export)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        watch_layers(viewer, self.refresh_layers)
        self.refresh_layers()

    def refresh_layers(self, event: Any = None) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self._layer_changed(self.layer_combo.currentText())

    def _layer_changed(self, name: str) -> None:
        self.name_edit.setText(safe_name(name) if name else "")

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder",
                                                  self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    def export(self) -> RunHandle | None:
        """Export the chosen layer in the ticked formats (in a worker)."""
        name = self.layer_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        formats = [key for key, check in self.checks.items() if check.isChecked()]
        problem = None
        if not isinstance(layer, Labels):
            problem = "choose a Labels layer to export"
        elif not formats:
            problem = "tick at least one format"
        elif LayerMeta.from_layer(layer).complete is False:
            problem = (f"{name!r} is an unfinished result (interrupted run): it is not "
                       "exported as if it were complete")
        elif not self.folder_edit.text().strip():
            problem = "choose a folder"
        if problem:
            self.status.setText(f"Nothing exported: {problem}.")
            show_info(f"Export: {problem}.")
            return None
        assert layer is not None
        folder = Path(self.folder_edit.text().strip()).expanduser()
        stem = safe_name(self.name_edit.text().strip() or name)
        data = layer.data
        meta = {"scale": tuple(layer.scale), "translate": tuple(layer.translate),
                "units": tuple(str(u) for u in layer.units), "metadata": dict(layer.metadata)}
        self.export_button.setEnabled(False)
        self.written = []

        def on_return(paths: list[Path]) -> None:
            self.written = paths
            text = ", ".join(p.name for p in paths)
            self.status.setText(f"Exported to {folder}: {text}")
            show_info(f"Exported {len(paths)} file(s) to {folder}")

        def on_error(exc: BaseException) -> None:
            message = exc.problem if isinstance(exc, InputError) else f"{exc}"
            self.status.setText(f"Export failed: {message}")
            notify_error(exc, "Export")

        def on_finish(handle: RunHandle) -> None:
            self.export_button.setEnabled(True)

        options = {"class_names": CLASS_NAME_CHOICES[self.class_names_combo.currentText()]}
        self.handle = run_in_worker(
            lambda: export_job(data, meta, folder, stem, formats, options),
            description="LPD export", total=lambda v: v[1], done=lambda v: v[0],
            on_yield=lambda values: self.status.setText(values[-1][2]),
            on_return=on_return, on_error=on_error, on_finish=on_finish, owner=self,
        )
        return self.handle
