"""Fine-tune widget in a real viewer: a few steps write a new checkpoint and re-segment the
view; Cancel keeps the original and writes nothing; Stop & save keeps a partial model."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from lpd.config import FINETUNE_TRAINABLE, TrainConfig
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from lpd.model import create_model
from napari_lpd.widgets.finetune import FINETUNED_LABELS, FineTuneWidget

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LPD_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def setup(tmp_path: Path, make_napari_viewer):
    torch.manual_seed(0)
    model = create_model("resnet18", prototypes_per_class=2, prototype_dim=16, input_size=64)
    checkpoint = save_checkpoint(tmp_path / "models" / "tiny.safetensors", model)
    rgb, _ = synthetic_tissue((128, 192), seed=4)
    image = tmp_path / "he.png"
    PILImage.fromarray(rgb).save(image)
    store = TagStore(image, image_size=(128, 192))
    store.add((0, 0, 64, 64), ["TUM"])
    store.add((64, 64, 128, 64), ["STR", "LYM"], source="grid")
    store.save()
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="HE", rgb=True, metadata={"lpd_path": str(image)})
    widget = FineTuneWidget(viewer)
    widget.checkpoint_edit.setText(str(checkpoint))
    widget.steps_spin.setValue(2)
    widget.batch_spin.setValue(2)
    widget.lr_spin.setValue(1e-3)
    widget.device_combo.setCurrentText("cpu")
    # one torch thread: on 2 shared cores more threads make each step ~3x slower
    widget.train_config = TrainConfig(threads=1, warmup_iters=0)
    return viewer, widget, checkpoint


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait(qtbot, handle, timeout: int = 60_000) -> None:
    qtbot.waitUntil(lambda: not handle.running, timeout=timeout)
    qtbot.wait(20)


def test_fine_tune_writes_a_new_checkpoint_and_resegments(setup, qtbot) -> None:
    viewer, widget, checkpoint = setup
    before = _digest(checkpoint)
    emitted: list[str] = []
    widget.finished_checkpoint.connect(emitted.append)
    _wait(qtbot, widget.run())
    new = checkpoint.parent / "tiny-finetuned.safetensors"
    assert emitted == [str(new)] and widget.result is not None and widget.result.completed
    assert _digest(checkpoint) == before  # the original is untouched
    _, extra = read_checkpoint_metadata(new)
    assert extra["completed"] is True and extra["steps_done"] == 2 and extra["patches"] == 3
    old, tuned = load_checkpoint(checkpoint).state_dict(), load_checkpoint(new).state_dict()
    assert any(not torch.equal(old[k], tuned[k]) for k in old if old[k].is_floating_point())
    assert widget.loss_plot.steps == [1, 2] and all(np.isfinite(widget.loss_plot.losses))
    assert widget.status.text().startswith("Fine-tuning done after 2 steps · loss ")
    assert widget.checkpoint_edit.text() == str(new)  # the next run continues from it
    # No segment widget is docked: the view is re-segmented into its own Labels layer.
    qtbot.waitUntil(lambda: FINETUNED_LABELS in viewer.layers, timeout=60_000)
    labels = viewer.layers[FINETUNED_LABELS]
    assert labels.data.shape == (128, 192) and labels.data.dtype == np.uint8
    assert labels.metadata["lpd_checkpoint"] == str(new)
    # Again (from the new one): the first result stays, the second gets the next name.
    # ... and with the other "Train" choice (it reaches fine_tune)
    assert extra["trainable"] == FINETUNE_TRAINABLE  # the default, from lpd.config
    other = "all" if FINETUNE_TRAINABLE == "head" else "head"
    widget.steps_spin.setValue(1)
    widget.resegment_check.setChecked(False)
    widget.trainable_combo.setCurrentIndex(widget.trainable_combo.findData(other))
    _wait(qtbot, widget.run())
    second = checkpoint.parent / "tiny-finetuned-1.safetensors"
    assert second.is_file() and read_checkpoint_metadata(second)[1]["trainable"] == other
    assert read_checkpoint_metadata(new)[1]["finetuned_from"] == str(checkpoint)


def test_cancel_keeps_the_original_and_writes_nothing(setup, qtbot) -> None:
    viewer, widget, checkpoint = setup
    before = _digest(checkpoint)
    widget.steps_spin.setValue(500)
    handle = widget.run()
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 1, timeout=60_000)
    widget.cancel()
    _wait(qtbot, handle)
    assert handle.cancelled and widget.result is None
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["tiny.safetensors"]
    assert _digest(checkpoint) == before
    assert "Cancelled" in widget.status.text() and widget.run_button.isEnabled()


def test_status_shows_step_loss_and_eta_while_training(setup, qtbot) -> None:
    viewer, widget, checkpoint = setup
    widget.steps_spin.setValue(500)
    handle = widget.run()
    assert widget.status.text() == "Starting…"
    line = re.compile(r"Step (\d+)/500 · loss \d+\.\d{3} · ETA \d+:\d\d")
    qtbot.waitUntil(lambda: line.fullmatch(widget.status.text()) is not None, timeout=60_000)
    step = int(line.fullmatch(widget.status.text()).group(1))
    assert 1 <= step < 500
    widget.cancel()
    _wait(qtbot, handle)
    assert re.fullmatch(r"Cancelled at step \d+/500: nothing was saved; the checkpoint is "
                        r"unchanged\.", widget.status.text())


def test_stop_and_save_keeps_a_partial_model(setup, qtbot) -> None:
    viewer, widget, checkpoint = setup
    widget.resegment_check.setChecked(False)
    widget.steps_spin.setValue(500)
    widget.output_edit.setText(str(checkpoint.parent / "partial.safetensors"))
    handle = widget.run()
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 1, timeout=60_000)
    widget.stop()
    _wait(qtbot, handle)
    result = widget.result
    assert result is not None and not result.completed and 1 <= result.steps_done < 500
    _, extra = read_checkpoint_metadata(checkpoint.parent / "partial.safetensors")
    assert extra["completed"] is False and extra["steps_done"] == result.steps_done


def test_no_tags_is_a_notification_and_segment_checkpoint_is_the_default(
        make_napari_viewer, tmp_path: Path, monkeypatch) -> None:
    errors: list[str] = []
    monkeypatch.setattr("napari_lpd._notify.show_error", errors.append)
    viewer = make_napari_viewer()
    rgb, _ = synthetic_tissue(64, seed=1)
    viewer.add_image(rgb, name="HE", rgb=True, metadata={"lpd_path": str(tmp_path / "x.png")})
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="LPD labels [HE]",
                      metadata={"lpd_checkpoint": "/models/segmented-with.safetensors"})
    widget = FineTuneWidget(viewer)
    assert widget.checkpoint_edit.text() == "/models/segmented-with.safetensors"
    widget.checkpoint_edit.setText("")
    assert widget.run() is None
    assert len(errors) == 1 and "no tagged regions" in errors[0]


def test_a_docked_segment_widget_re_segments_with_the_new_checkpoint(setup, qtbot) -> None:
    from napari_lpd.widgets.segment import SegmentWidget

    viewer, widget, checkpoint = setup
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    assert widget.segment_widget() is segment
    _wait(qtbot, widget.run())
    new = str(checkpoint.parent / "tiny-finetuned.safetensors")
    assert segment.checkpoint_edit.text() == new  # it was asked to use the new model

    def resegmented() -> bool:
        return any(layer.metadata.get("lpd_checkpoint") == new and "running" not in layer.name
                   for layer in viewer.layers if layer is not viewer.layers["HE"])

    qtbot.waitUntil(resegmented, timeout=60_000)
