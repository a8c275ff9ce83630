"""Segment widget: pick image, model, device and scope; run tiled LPD inference in a worker
with live tiles, a progress bar, Cancel, and a class legend.

Layers: ``LPD labels [<image>] <scope> · <model>``, one per run (results stay). The Run
click only starts the job; in the next event-loop turns a new ``... (running)`` layer
appears, and tiles are painted into it as they finish (a preview of at most
``PREVIEW_MAX`` px a side; one repaint per throttled update); when the run completes it
becomes the result read from its zarr store (in memory up to 4096² px, else its lazy
pyramid). ``_live_labels`` holds that layer's life. A cancelled or failed run removes it
(the store stays in the cache: the same run started again resumes from its finished
chunks); so does deleting the widget mid-run. The job itself (``_segment_job``: model,
slide, plan, store) runs in a napari worker at a lower CPU priority."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari.viewer
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lpd.default_model import describe_default, is_cached
from lpd.errors import InputError
from lpd.infer.device import available_devices
from lpd.io.checkpoint import read_checkpoint_metadata
from napari_lpd._annotations import roi_vertices, shape_roi
from napari_lpd._layers import (
    image_source,
    layer_mpp,
    remove_layers,
    run_key,
    shape_region,
    shown_result,
    visible_region,
    watch_layers,
)
from napari_lpd._live_labels import LiveLabels
from napari_lpd._metadata import LayerMeta
from napari_lpd._notify import notify_error
from napari_lpd._parts import LegendWidget, row_of
from napari_lpd._segment_job import (
    JobEvent,
    SegmentOutcome,
    SegmentRequest,
    default_name,
    describe_stage,
    done_text,
    prune_runs,
    runs_dir,
    segment_job,
)
from napari_lpd._session import Session
from napari_lpd._workers import RunHandle, run_in_worker

DEFAULT_MODEL = "Default model"
CHECKPOINT_FILE = "Checkpoint file…"
SCOPES = ("Current view", "Whole image", "Selected shape")
#: µm/px used for an image whose magnification is unknown until the user gives it: the
#: default model's (20x); shown as "assumed" in the widget and next to every area.
ASSUMED_MPP = 0.5


class SegmentWidget(QWidget):
    """Dock widget: segment the current view, the whole image or a drawn shape.

    In the viewer's ``Session`` it is the segmenter (``segment_view``), selects the
    checkpoints of ``checkpoint_changed`` and announces results with ``result_ready``."""

    run_finished = Signal(object)  # the result Labels layer (also the session's result_ready)

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.handle: RunHandle | None = None
        self.outcome: SegmentOutcome | None = None
        self._result: Labels | None = None  # the result layer, until the end's turn
        self.live = LiveLabels(viewer)  # the layer a run paints into
        self._image: Image | None = None
        self._build()
        # deleted mid-run (dock closed): the running layer goes too (a closure: the
        # widget itself is gone by then)
        running = self.live.running
        self.destroyed.connect(lambda *_: remove_layers(viewer, list(running)))
        watch_layers(viewer, self._refresh_layers)
        self._refresh_layers()
        self.session = Session.of(viewer)
        self.session.add_segmenter(self)
        self.session.checkpoint_changed.connect(self.set_checkpoint)
        self.run_finished.connect(self.session.result_ready)

    # ---- construction ---------------------------------------------------------------
    def _build(self) -> None:
        form = QFormLayout()
        self.image_combo = QComboBox()
        form.addRow("Image", self.image_combo)
        self.model_combo = QComboBox()
        self.model_combo.addItems([DEFAULT_MODEL, CHECKPOINT_FILE])
        self.model_combo.currentTextChanged.connect(self._model_changed)
        form.addRow("Model", self.model_combo)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("a .safetensors checkpoint")
        browse = QPushButton("…", maximumWidth=30, clicked=self._browse)
        self._checkpoint_row = row_of(self.checkpoint_edit, browse)
        form.addRow("Checkpoint", self._checkpoint_row)
        self.model_note = QLabel(wordWrap=True)
        form.addRow("", self.model_note)
        self.mpp_label = QLabel(wordWrap=True)
        form.addRow("Magnification", self.mpp_label)
        self.mpp_spin = QDoubleSpinBox(  # 0: not given
            minimum=0.0, maximum=100.0, decimals=4, singleStep=0.05, suffix=" µm/px",
            specialValueText="not set", toolTip="The slide's microns per pixel at full "
            "resolution (0.25 at 40x, 0.5 at 20x on most scanners)")
        self.mpp_spin.valueChanged.connect(self._mpp_entered)
        form.addRow("Slide µm/px", self.mpp_spin)
        self._user_mpp: dict[str, float] = {}  # image layer name -> µm/px the user gave
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        form.addRow("Device", self.device_combo)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self.scope_combo.currentTextChanged.connect(self._scope_changed)
        form.addRow("Scope", self.scope_combo)
        self.shapes_combo = QComboBox()
        form.addRow("Shapes layer", self.shapes_combo)
        self.prototypes_check = QCheckBox("Compute prototype maps")
        self.prototypes_check.setChecked(True)
        form.addRow("", self.prototypes_check)
        self.resample_check = QCheckBox("Allow resampling beyond 8×")
        self.resample_check.setToolTip(
            "A level more than 8 times finer or coarser than the model's magnification usually "
            "means a wrong µm/px (check the value above); tick to segment it anyway")
        form.addRow("", self.resample_check)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status = QLabel("Ready.", wordWrap=True)
        self.legend = LegendWidget()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.legend)
        layout.addStretch(1)
        self._model_changed(DEFAULT_MODEL)
        self._scope_changed(SCOPES[0])
        self.image_combo.currentTextChanged.connect(lambda _: self._show_mpp())

    def _refresh_layers(self, event: Any = None) -> None:
        for combo, kind in ((self.image_combo, Image), (self.shapes_combo, Shapes)):
            current = combo.currentText()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._show_mpp()

    def _current_image(self) -> Image | None:
        name = self.image_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    def image_mpp(self) -> tuple[float | None, str, bool]:
        """(µm/px, where it comes from, assumed?) of the chosen image: its own, the
        value the user entered, or ``ASSUMED_MPP``; None without an image."""
        layer = self._current_image()
        if layer is None:
            return None, "", False
        own = layer_mpp(layer)
        if own is not None:
            source = LayerMeta.from_layer(layer).mpp_source or "the layer's scale"
            return own, f"from {source}", False
        if layer.name in self._user_mpp:
            return self._user_mpp[layer.name], "entered by you", False
        return ASSUMED_MPP, "assumed: the file does not say", True

    def _show_mpp(self) -> None:
        layer = self._current_image()
        mpp, source, assumed = self.image_mpp()
        known = source.startswith("from ")  # the image's own value: nothing to enter
        self.mpp_spin.blockSignals(True)
        self.mpp_spin.setValue(0.0 if mpp is None or assumed else mpp)
        self.mpp_spin.blockSignals(False)
        self.mpp_spin.setEnabled(layer is not None and not known)
        if mpp is None:
            self.mpp_label.setText("–")
        elif assumed:
            self.mpp_label.setText(f"<b>{mpp:g} µm/px assumed</b>: the file does not say. "
                                   "Enter the slide's value below for the right "
                                   "magnification and areas.")
        else:  # and how the file was read (vendor, tifffile or OpenSlide), when known
            reader = LayerMeta.from_layer(layer).reader if layer is not None else None
            self.mpp_label.setText(f"{mpp:.4g} µm/px ({source})" + (f"; {reader}" if reader else ""))

    def _mpp_entered(self, value: float) -> None:
        layer = self._current_image()
        if layer is None:
            return
        if value > 0:
            self._user_mpp[layer.name] = float(value)
        else:
            self._user_mpp.pop(layer.name, None)
        self._show_mpp()

    def _model_changed(self, text: str) -> None:
        default = text == DEFAULT_MODEL
        self._checkpoint_row.setEnabled(not default)
        if default:
            self.model_note.setText(
                describe_default() if is_cached() else
                "Default model: not trained yet; the first run trains it on the bundled "
                "tiles (a few minutes, shown with its own progress; cancellable).")
        else:
            self.model_note.setText("")

    def _scope_changed(self, text: str) -> None:
        self.shapes_combo.setEnabled(text == "Selected shape")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "LPD checkpoint", "",
                                              "LPD checkpoints (*.safetensors)")
        if path:
            self.set_checkpoint(path)

    def set_checkpoint(self, path: str | Path | None) -> None:
        """Use a checkpoint file (None: the default model)."""
        if path is None:
            self.model_combo.setCurrentText(DEFAULT_MODEL)
            return
        self.model_combo.setCurrentText(CHECKPOINT_FILE)
        self.checkpoint_edit.setText(str(path))

    # ---- running --------------------------------------------------------------------
    def _request(self) -> SegmentRequest:
        layer = self.viewer.layers[self.image_combo.currentText()] \
            if self.image_combo.currentText() in self.viewer.layers else None
        if not isinstance(layer, Image):
            raise InputError(None, "choose an image layer to segment (open a slide first)")
        checkpoint = None
        if self.model_combo.currentText() == CHECKPOINT_FILE:
            text = self.checkpoint_edit.text().strip()
            if not text:
                raise InputError(None, "choose a checkpoint file, or the default model")
            checkpoint = Path(text).expanduser()
            read_checkpoint_metadata(checkpoint)  # a bad file fails here, clearly
        scope = self.scope_combo.currentText()
        region, roi, scope_text = None, None, "whole image"
        if scope == "Current view":
            region = visible_region(layer, self.viewer)
            if region is None:
                show_info("The view has not been drawn yet: segmenting the whole image.")
            else:
                scope_text = "view x{} y{} {}×{}".format(*region)
        elif scope == "Selected shape":
            name = self.shapes_combo.currentText()
            if name not in self.viewer.layers:
                raise InputError(None, "draw a rectangle or polygon in a Shapes layer first")
            try:
                region = shape_region(self.viewer.layers[name], layer)
                roi = shape_roi(self.viewer.layers[name], layer)  # holes kept
            except ValueError as exc:
                raise InputError(None, str(exc)) from None
            scope_text = f"shape in {name}"
        image, _, source = image_source(layer)
        mpp, _, assumed = self.image_mpp()
        ck = None if checkpoint is None else (str(checkpoint), checkpoint.stat().st_mtime_ns)
        prototypes = self.prototypes_check.isChecked()
        key = run_key(source or (layer.name, id(layer.data)), region, ck, prototypes, mpp,
                      roi_vertices(roi))
        self._image = layer
        model = default_name() if checkpoint is None else checkpoint.stem
        self.live.result_name = f"LPD labels [{layer.name}] {scope_text} · {model}"
        return SegmentRequest(
            image=image, mpp=mpp, region=region, checkpoint=checkpoint,
            device=self.device_combo.currentText(), prototypes=prototypes,
            store=runs_dir() / f"{key}.zarr", resume=bool(source), roi=roi,
            mpp_assumed=assumed, allow_resample=self.resample_check.isChecked(),
        )

    def run(self) -> RunHandle | None:
        """Start a segmentation with the current settings (errors: a notification)."""
        if self.handle is not None and self.handle.running:
            show_info("A segmentation is already running; cancel it first.")
            return None
        try:
            request = self._request()
        except (InputError, OSError) as exc:
            notify_error(exc, "Segmentation")
            return None
        image = self._image
        self.outcome, self._result = None, None
        self.legend.clear_counts("running…")
        self.status.setText("Starting…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.handle = run_in_worker(  # returns at once: the layer, bar and job come after
            lambda: segment_job(request), description="LPD segmentation",
            total=lambda e: e.total, done=lambda e: e.done, describe=describe_stage,
            on_yield=self._on_events, on_return=self._on_done, on_error=self._on_error,
            on_finish=self._on_finish, on_start=lambda: self.live.open(image),
            quick_start=True, owner=self)
        return self.handle

    def segment_view(self, layer: Image | None = None) -> RunHandle | None:
        """The session's segmenter call (Fine-tune's re-segmentation): segment the visible
        part of ``layer`` (when listed; default: the chosen image) with the chosen model.
        Returns the run, or None when it did not start (a notification says why)."""
        if layer is not None and self.image_combo.findText(layer.name) >= 0:
            self.image_combo.setCurrentText(layer.name)
        self.scope_combo.setCurrentText("Current view")
        return self.run()

    def cancel(self) -> None:
        if self.handle is not None and self.handle.running:
            self.status.setText("Cancelling (within one batch)…")
            self.handle.cancel()

    # ---- GUI-thread callbacks (throttled by run_in_worker) --------------------------
    def _on_events(self, events: list[JobEvent]) -> None:
        assert self._image is not None and self.handle is not None  # set by ``run``
        painted = False
        for event in events:
            if event.plan is not None:
                self.live.start(self._image, event.plan, later=self.handle.later)
            if event.tiles:
                self.live.paint(event.tiles)
                painted = True
        if painted:
            self.live.repaint()  # one repaint per throttled update
        event = events[-1]
        if event.stage in ("plan", "training"):  # the short end stages: the bar only
            self.status.setText(event.text)
        elif not self.status.text().startswith("Tiles"):  # counts: the bar only (a label
            # changed each second recomposites the window: ~40 ms under software GL)
            self.status.setText("Tiles are painted as they finish; progress in napari's "
                                "activity dock (bottom right).")

    def _on_done(self, outcome: SegmentOutcome) -> None:
        assert self._image is not None
        self.outcome = outcome
        shown = shown_result(self.viewer, outcome.store.path)
        if shown is not None and outcome.forward_passes == 0:
            # an identical run's result, reused whole and still on screen: no duplicate
            self.live.drop()
            self.viewer.layers.selection.active = layer = shown
        else:
            layer = self.live.finish(self._image, outcome)
        self._result = layer  # the rest in the end's turn (``_on_finish``): one repaint each

    def _show_result(self, outcome: SegmentOutcome, layer: Labels) -> None:
        store = outcome.store
        self.legend.set_classes(store.class_names, store.class_colours)
        self.legend.set_counts(outcome.counts, store.mpp,
                               assumed=store.mpp if outcome.mpp_assumed else None)
        self.status.setText(done_text(outcome))
        stores = [LayerMeta.from_layer(lyr).store for lyr in self.viewer.layers
                  if isinstance(lyr, Labels)]
        prune_runs({Path(store) for store in stores if store})
        self.run_finished.emit(layer)

    def _on_error(self, exc: BaseException) -> None:
        self.live.drop()
        self.status.setText(f"Failed: {exc}")
        self.legend.clear_counts()
        notify_error(exc, "Segmentation")

    def _on_finish(self, handle: RunHandle) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        result, self._result = self._result, None
        if result is not None and self.outcome is not None:  # (a cancel came too late)
            self._show_result(self.outcome, result)
        elif handle.cancelled:
            self.live.drop()
            self.legend.clear_counts("cancelled")
            self.status.setText("Cancelled: this run's partial result was discarded (earlier "
                                "results stay). Run again with the same settings to resume "
                                "from the finished chunks.")
