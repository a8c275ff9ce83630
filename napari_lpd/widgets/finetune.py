"""Fine-tune widget: train the current checkpoint on the tagged regions of an image.

Runs ``lpd.finetune.fine_tune`` in a worker (live loss curve; the status line shows step,
loss and ETA, updated at most every 2 s like every worker update; Cancel), saves
the result under a new name, then re-segments the current view with it: through the
viewer's segmenter (a Segment widget, found through the viewer's ``Session``) when there is
one, else by predicting the visible region into the Labels layer "LPD labels (fine-tuned)".
``finished_checkpoint(str)`` is emitted with the new checkpoint's path, and relayed as the
session's ``checkpoint_changed`` (the Segment widget then selects it).

Cancel writes nothing (the last good checkpoint is the one fine-tuning started from);
"Stop && save" ends early and saves what was trained, marked incomplete in its metadata."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import napari.viewer
import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy import QtWidgets as qw
from qtpy.QtCore import Signal

from lpd.config import (
    FINETUNE_BATCH,
    FINETUNE_LR,
    FINETUNE_STEPS,
    FINETUNE_TRAINABLE,
    TrainConfig,
)
from lpd.data.tags import TagStore, sidecar_path
from lpd.default_model import default_checkpoint_path, is_cached, train_default_model
from lpd.errors import InputError
from lpd.finetune import FineTuneResult, fine_tune
from lpd.infer.device import available_devices
from lpd.io.checkpoint import load_checkpoint
from napari_lpd._layers import (
    class_colormap,
    grid_transform,
    layer_file,
    opened_pixels,
    tagged_image,
    upsert_layer,
    view_region,
)
from napari_lpd._metadata import LayerMeta
from napari_lpd._notify import error_message, notify_error
from napari_lpd._parts import LossPlot, row_of
from napari_lpd._session import Segmenter, Session
from napari_lpd._workers import RunHandle, run_in_worker

FINETUNED_LABELS = "LPD labels (fine-tuned)"
TRAINABLE_TEXT = {"all": "all parameters", "head": "prototypes only (backbone fixed)"}
TUNING = "LPD fine-tuning"  # the stage of the fine-tuning steps (the progress bar's text)
log = logging.getLogger(__name__)
MAX_VIEW_PIXELS = 4096 * 4096  # the fallback re-segmentation refuses bigger views


def _eta(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def step_line(progress: Any) -> str:
    """``"Step 12/40 · loss 0.734 · ETA 0:35"`` for a ``lpd.trainer.TrainProgress``.

    Parameters
    ----------
    progress : TrainProgress
        A training step's progress (``step``, ``total``, ``loss``, ``eta`` in seconds).

    Returns
    -------
    str
        One status line.
    """
    return (f"Step {progress.step}/{progress.total} · loss {progress.loss:.3f} · "
            f"ETA {_eta(progress.eta)}")


class FineTuneWidget(qw.QWidget):
    """Dock widget: fine-tune a checkpoint on the tags of an image layer."""

    finished_checkpoint = Signal(str)  # relayed as the session's checkpoint_changed

    def __init__(self, viewer: napari.viewer.Viewer, parent: qw.QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.handle: RunHandle | None = None
        self.result: FineTuneResult | None = None
        self._last: Any = None  # the last TrainProgress shown
        self.train_config = TrainConfig(warmup_iters=0)  # loss weights, augmentation...
        self._stop = threading.Event()
        self._image_layer: Image | None = None  # the layer of the last run
        self.session = Session.of(viewer)
        self.finished_checkpoint.connect(self.session.checkpoint_changed)
        self._build()
        viewer.layers.events.inserted.connect(self._refresh_images)
        viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()

    def _build(self) -> None:
        form = qw.QFormLayout()
        self.image_combo = qw.QComboBox()
        form.addRow("Image", self.image_combo)
        self.checkpoint_edit = qw.QLineEdit()
        self.checkpoint_edit.setPlaceholderText("default model")
        form.addRow("Start from", row_of(self.checkpoint_edit, qw.QPushButton("…", clicked=(
            lambda: self._browse(self.checkpoint_edit, "LPD checkpoint (*.safetensors)")))))
        self.extra_edit = qw.QLineEdit()
        self.extra_edit.setPlaceholderText("optional: BCSS-WSSS or tile folder")
        form.addRow("Extra data", row_of(self.extra_edit, qw.QPushButton(
            "…", clicked=lambda: self._browse(self.extra_edit, None))))
        self.output_edit = qw.QLineEdit()
        self.output_edit.setPlaceholderText("auto: <checkpoint>-finetuned.safetensors")
        form.addRow("Save as", self.output_edit)
        self.steps_spin = qw.QSpinBox(minimum=1, maximum=100000, value=FINETUNE_STEPS, toolTip="steps")
        self.batch_spin = qw.QSpinBox(minimum=1, maximum=256, value=FINETUNE_BATCH, toolTip="batch size")
        form.addRow("Steps, batch", row_of(self.steps_spin, self.batch_spin))
        self.lr_spin = qw.QDoubleSpinBox(decimals=7, minimum=1e-7, maximum=1e-2, value=FINETUNE_LR,
                                         singleStep=1e-5, toolTip="learning rate")
        self.device_combo = qw.QComboBox()
        self.device_combo.addItems(available_devices())
        form.addRow("Rate, device", row_of(self.lr_spin, self.device_combo))
        self.trainable_combo = qw.QComboBox(toolTip=(
            "all: every weight learns; prototypes only: the prototypes, their projections "
            "and temperatures learn, the backbone's weights stay (its BatchNorm statistics "
            "follow your images). Default from lpd bench adapt: prototypes only"))
        for key, text in TRAINABLE_TEXT.items():
            self.trainable_combo.addItem(text, key)
        self.trainable_combo.setCurrentIndex(list(TRAINABLE_TEXT).index(FINETUNE_TRAINABLE))
        form.addRow("Train", self.trainable_combo)
        self.resegment_check = qw.QCheckBox("Re-segment the view when done")
        self.resegment_check.setChecked(True)
        self.run_button = qw.QPushButton("Fine-tune", clicked=self.run)
        self.stop_button = qw.QPushButton("Stop && save", clicked=self.stop, toolTip=(
            "End after this step and save what was trained (marked incomplete)"))
        self.cancel_button = qw.QPushButton("Cancel", clicked=self.cancel, toolTip=(
            "End now and save nothing: the checkpoint stays as it was"))
        self.loss_plot = LossPlot()
        self.status = qw.QLabel("Tag regions with the tag annotator, then fine-tune.")
        self.status.setWordWrap(True)
        layout = qw.QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (self.resegment_check,
                       row_of(self.run_button, self.stop_button, self.cancel_button),
                       self.loss_plot, self.status):
            layout.addWidget(widget)
        self._set_running(False)

    def _browse(self, edit: qw.QLineEdit, pattern: str | None) -> None:
        path = (qw.QFileDialog.getOpenFileName(self, "Choose", "", pattern)[0] if pattern
                else qw.QFileDialog.getExistingDirectory(self, "Choose a folder"))
        if path:
            edit.setText(path)

    def _refresh_images(self, event: Any = None) -> None:
        names = [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)]
        tagged = [n for n in names if _has_tags(self.viewer.layers[n])]
        current = self.image_combo.currentText()
        self.image_combo.clear()
        self.image_combo.addItems(names)
        target = current if current in names else (tagged or names or [""])[0]
        self.image_combo.setCurrentText(target)
        if not self.checkpoint_edit.text():
            recorded = [LayerMeta.from_layer(lyr).checkpoint for lyr in self.viewer.layers]
            recorded = [path for path in recorded if path]
            if recorded:  # the checkpoint the last segmentation used
                self.checkpoint_edit.setText(str(recorded[-1]))

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.cancel_button.setEnabled(running)

    # ---- running ---------------------------------------------------------------------
    def run(self) -> RunHandle | None:
        """Start fine-tuning with the current settings (problems: a notification)."""
        if self.handle is not None and self.handle.running:
            show_info("Fine-tuning is already running.")
            return None
        try:
            job = self._job()
        except (InputError, OSError) as exc:
            notify_error(exc, "Fine-tuning")
            return None
        self.result = None
        self._stop.clear()
        self._last = None
        self.loss_plot.clear()
        self.status.setText("Starting…")
        self._set_running(True)
        self.handle = run_in_worker(
            job, description=TUNING, total=lambda v: v[1].total,
            done=lambda v: v[1].step, describe=lambda v: v[0],
            on_yield=self._on_progress, on_return=self._on_done,
            on_error=self._on_error, on_finish=self._on_finish)
        return self.handle

    def _job(self) -> Any:
        """Check the settings here (GUI thread) and return the worker's generator maker."""
        layer = self.viewer.layers[self.image_combo.currentText()] \
            if self.image_combo.currentText() in self.viewer.layers else None
        image = tagged_image(layer)
        if image is None:
            raise InputError(None, "choose an image layer opened from a file, with tags")
        store = TagStore.load(image.path, image_size=image.size)
        if not store.tagged():
            raise InputError(store.sidecar, "no tagged regions: draw rectangles or pick grid "
                             "cells with the tag annotator and tick their classes")
        text = self.checkpoint_edit.text().strip()
        checkpoint = Path(text).expanduser() if text else None
        if checkpoint is not None and not checkpoint.is_file():
            raise InputError(checkpoint, "checkpoint not found")
        extra = self.extra_edit.text().strip() or None
        out = self.output_edit.text().strip() or None
        options = dict(steps=self.steps_spin.value(), batch_size=self.batch_spin.value(),
                       lr=self.lr_spin.value(), trainable=self.trainable_combo.currentData(),
                       extra_data_folder=extra, out_path=out,
                       device=self.device_combo.currentText(), train=self.train_config,
                       should_stop=self._stop.is_set)
        self._image_layer = layer

        def job() -> Any:
            base = checkpoint
            if base is None:  # the shipped default model (trained only if it is missing)
                base = default_checkpoint_path()
                if not is_cached():
                    for p in train_default_model(device=options["device"]):
                        yield "Training the default model (its weights are missing)", p
            with opened_pixels(layer) as (pixels, mpp):
                result = yield from _tagged(fine_tune(base, store, pixels, mpp=mpp, **options))
            return result

        return job

    def stop(self) -> None:
        """End after the current step and save what was trained (marked incomplete)."""
        self._stop.set()
        self.status.setText("Stopping after this step; the partial model will be saved…")

    def cancel(self) -> None:
        """End now and save nothing."""
        if self.handle is not None and self.handle.running:
            self.handle.cancel()
            self.status.setText("Cancelling…")

    def _on_progress(self, values: list) -> None:
        """The values yielded since the last update (at most one update a second)."""
        stage, last = values[-1]
        tuning = [p for s, p in values if s == TUNING]
        if tuning:
            self.loss_plot.append([p.step for p in tuning], [p.loss for p in tuning])
            self._last = tuning[-1]
        if not self._stop.is_set():  # "Stopping…" stays until the end
            line = step_line(last)
            self.status.setText(line if stage == TUNING else f"{stage}: {line}")

    def _on_done(self, result: FineTuneResult) -> None:
        self.result = result
        ended = "done" if result.completed else "stopped"
        loss = f" · loss {self._last.loss:.3f}" if self._last is not None else ""
        self.status.setText(f"Fine-tuning {ended} after {result.steps_done} steps{loss}; "
                            f"saved {result.checkpoint}.")
        for note in result.notes:
            show_info(note)
        if result.checkpoint is None:
            return
        self.checkpoint_edit.setText(str(result.checkpoint))  # the next run continues it
        self.finished_checkpoint.emit(str(result.checkpoint))
        if self.resegment_check.isChecked():
            self.resegment(result.checkpoint)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Failed: {error_message(exc)}")
        notify_error(exc, "Fine-tuning")

    def _on_finish(self, handle: RunHandle) -> None:
        self._set_running(False)
        if handle.cancelled:
            at = f" at step {self._last.step}/{self._last.total}" if self._last else ""
            self.status.setText(f"Cancelled{at}: nothing was saved; the checkpoint is "
                                "unchanged.")

    # ---- re-segmentation ---------------------------------------------------------------
    def segment_widget(self) -> Segmenter | None:
        """The viewer's segmenter (a Segment widget of this viewer), if one is open."""
        return self.session.segmenter()

    def resegment(self, checkpoint: str | Path) -> RunHandle | None:
        """Segment the current view with ``checkpoint`` so the change is visible: by the
        viewer's segmenter (which ``checkpoint_changed`` gave the checkpoint), else here."""
        layer, seg = self._image_layer, self.segment_widget()
        if seg is not None:
            handle = _segment_via(seg, layer)
            if handle is not None:
                return handle
        if layer is None or layer not in self.viewer.layers:
            return None
        region = view_region(layer)

        def job() -> Any:
            from lpd.segmentation import halo_for, plan_tiled, segment_iter

            model = load_checkpoint(checkpoint)
            with opened_pixels(layer) as (pixels, mpp):
                plan = plan_tiled(model, pixels, region=region, mpp=mpp, halo=halo_for(model))
                if plan.shape[0] * plan.shape[1] > MAX_VIEW_PIXELS:
                    raise InputError(None, "the view is too large to re-segment here: zoom "
                                     "in, or use the segment widget")
                seg = yield from segment_iter(model, pixels, region=region, mpp=mpp, plan=plan,
                                              device=self.device_combo.currentText())
            with seg:  # a temporary store: the view's labels are read, then it goes
                return plan, np.asarray(seg.labels()[...])

        def show(result: Any) -> None:
            plan, labels = result
            scale, translate = grid_transform(layer.scale, layer.translate,
                                              plan.scale, plan.offset)
            shown = upsert_layer(self.viewer, labels, {
                "name": FINETUNED_LABELS, "scale": scale, "translate": translate,
                "units": tuple(layer.units), "colormap": class_colormap(), "opacity": 0.6,
                "metadata": LayerMeta(checkpoint=str(checkpoint)).to_metadata()}, "labels")
            self.session.result_ready.emit(shown)

        return run_in_worker(job, description="LPD segmentation (fine-tuned)",
                             total=lambda p: p.total, done=lambda p: p.done, on_return=show,
                             on_error=lambda exc: notify_error(exc, "Re-segmentation"))


def _tagged(gen: Any) -> Any:
    """Yield ``(TUNING, progress)`` for each step of ``gen``; return its value. Cancel closes
    this generator and so ``gen``: fine_tune saves nothing."""
    from lpd.progress import relay

    return (yield from relay(gen, lambda progress: (TUNING, progress)))


def _has_tags(layer: Any) -> bool:
    path = layer_file(layer)
    return path is not None and sidecar_path(path).exists()


def _segment_via(seg: Segmenter, layer: Any) -> RunHandle | None:
    """Ask the segmenter to segment the view of ``layer``; None if it cannot (then the
    caller segments the view itself)."""
    try:
        return seg.segment_view(layer)
    except Exception:  # another widget's problem must not lose the fine-tuned result
        log.warning("the segment widget could not re-segment the view", exc_info=True)
        return None
