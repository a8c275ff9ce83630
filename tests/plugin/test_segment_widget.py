"""Segment widget in a real viewer: run, live preview, rerun replaces, cancel, errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers_segment import small_he, tiny_checkpoint, wait_for

import napari_lpd._segment_job as seg_job
from napari_lpd._layers import RUNNING, labels_name, visible_region
from napari_lpd._segment_job import Preview
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")


@pytest.fixture
def checkpoint(tmp_path):
    return tiny_checkpoint(tmp_path)


def make_widget(make_napari_viewer, checkpoint, image=None, **image_kwargs):
    viewer = make_napari_viewer()
    viewer.add_image(small_he() if image is None else image, name="HE", rgb=True,
                     **image_kwargs)
    widget = SegmentWidget(viewer)
    widget.set_checkpoint(checkpoint)
    widget.scope_combo.setCurrentText("Whole image")
    return viewer, widget


def test_segment_whole_image(make_napari_viewer, qtbot, checkpoint) -> None:
    viewer, widget = make_widget(make_napari_viewer, checkpoint, scale=(0.5, 0.5),
                                 units=("µm", "µm"))
    seen = []
    widget.run_finished.connect(seen.append)
    handle = widget.run()
    assert handle is not None
    wait_for(qtbot, handle)
    name = f"{labels_name('HE')} whole image · {checkpoint.stem}"  # scope and model
    assert [layer.name for layer in viewer.layers] == ["HE", name]
    labels = viewer.layers[name]
    assert seen == [labels]
    assert labels.data.shape == (192, 256) and labels.data.dtype == np.uint8
    assert labels.metadata["lpd_complete"] and labels.metadata["lpd_k"] == 2
    assert np.allclose(labels.scale, (0.5, 0.5))  # on top of the image, in µm
    assert str(labels.units[0]) == "micrometer"
    assert labels.data.max() > 0
    percents = widget.legend.percentages()
    assert all(p.endswith("%") for p in percents)
    total = sum(float(p.split()[0]) for p in percents)
    assert abs(total - 100) < 0.5
    assert widget.status.text().startswith("Done"), widget.status.text()


def running_layers(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers if layer.name.endswith(RUNNING)]


def test_finished_results_are_kept_and_a_rerun_says_what_it_reused(
        make_napari_viewer, qtbot, checkpoint, tmp_path) -> None:
    from PIL import Image as PILImage

    path = tmp_path / "he.png"  # a file-backed image: its finished store can be reused
    PILImage.fromarray(small_he()).save(path)
    viewer, widget = make_widget(make_napari_viewer, checkpoint,
                                 metadata={"lpd_path": str(path)})
    widget.prototypes_check.setChecked(False)
    for _ in range(2):
        wait_for(qtbot, widget.run())
    name = f"{labels_name('HE')} whole image · {checkpoint.stem}"
    # the second, identical run reused the first's finished store, says so, and shows the
    # result already on screen instead of a duplicate
    assert [layer.name for layer in viewer.layers] == ["HE", name]
    text = widget.status.text()
    assert "reused" in text and "none made" in text, text
    assert viewer.layers.selection.active is viewer.layers[name]
    widget.scope_combo.setCurrentText("Current view")  # another scope: kept beside it
    wait_for(qtbot, widget.run())
    assert len(viewer.layers) == 3 and viewer.layers[name].metadata["lpd_complete"]


def test_cancel_removes_only_its_own_partial_layer(make_napari_viewer, qtbot, checkpoint):
    viewer, widget = make_widget(make_napari_viewer, checkpoint, image=small_he((512, 512)))
    widget.prototypes_check.setChecked(False)
    widget.scope_combo.setCurrentText("Selected shape")
    shapes = viewer.add_shapes([[[0, 0], [100, 0], [100, 100], [0, 100]]], name="ROI")
    shapes.selected_data = {0}
    widget.shapes_combo.setCurrentText("ROI")
    wait_for(qtbot, widget.run())  # a small finished result
    kept = [layer.name for layer in viewer.layers]
    widget.scope_combo.setCurrentText("Whole image")
    handle = widget.run()
    qtbot.waitUntil(lambda: bool(running_layers(viewer)), timeout=30_000)
    widget.cancel()
    wait_for(qtbot, handle)
    assert handle.cancelled
    assert [layer.name for layer in viewer.layers] == kept  # the earlier result stays
    assert "Cancelled" in widget.status.text()
    assert widget.run_button.isEnabled()


def test_bad_checkpoint_is_a_notification(make_napari_viewer, qtbot, tmp_path,
                                          monkeypatch) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    viewer, widget = make_widget(make_napari_viewer, bad)
    shown = []
    monkeypatch.setattr("napari_lpd._notify.show_error", shown.append)
    assert widget.run() is None
    assert len(shown) == 1 and "bad.safetensors" in shown[0]
    assert [layer.name for layer in viewer.layers] == ["HE"]


def test_preview_sampling() -> None:
    preview = Preview((10, 10), max_side=5)
    assert preview.factor == 2 and preview.data.shape == (5, 5)
    tile = np.arange(16, dtype=np.uint8).reshape(4, 4)
    preview.paint(4, 4, tile)
    # output pixels 5 and 7 (the middle of 2-px blocks) land on preview pixels 2 and 3
    assert preview.data[2:4, 2:4].tolist() == [[5, 7], [13, 15]]


def test_current_view_segments_what_the_canvas_shows(make_napari_viewer, qtbot,
                                                      checkpoint) -> None:
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(small_he((512, 512)), name="HE", rgb=True)
    widget = SegmentWidget(viewer)
    widget.set_checkpoint(checkpoint)
    widget.prototypes_check.setChecked(False)
    assert widget.scope_combo.currentText() == "Current view"  # the default scope
    scene = getattr(viewer, "scene", None)  # napari >= 0.9: viewer.scene.camera
    camera = scene.camera if scene is not None else viewer.camera
    camera.center = (100, 150)
    camera.zoom = 4
    qtbot.waitUntil(lambda: image.corner_pixels[1, 0] < 400, timeout=5000)
    x, y, w, h = visible_region(image, viewer)
    canvas_h, canvas_w = viewer.canvas.size
    # the canvas shows canvas/zoom data pixels around the camera centre
    assert w == pytest.approx(canvas_w / 4, abs=2) and h == pytest.approx(canvas_h / 4, abs=2)
    assert x == pytest.approx(150 - canvas_w / 8, abs=1) and y == pytest.approx(100 - canvas_h / 8, abs=1)
    # napari's own corner pixels agree
    assert visible_region(image) == pytest.approx((x, y, w, h), abs=3)
    wait_for(qtbot, widget.run())
    store = widget.outcome.store
    labels = viewer.layers[-1]
    assert labels.name.startswith(f"{labels_name('HE')} view x")
    # the view, from the corner of the slide's tile grid it lies on (same labels as any
    # other region there)
    t = store.tile
    x0, y0 = x // t * t, y // t * t
    assert store.shape == (y + h - y0, x + w - x0) and store.offset == (x0, y0)
    assert labels.translate[0] == pytest.approx(y0) and labels.translate[1] == pytest.approx(x0)


def test_selected_shape_scope(make_napari_viewer, qtbot, checkpoint) -> None:
    viewer, widget = make_widget(make_napari_viewer, checkpoint, image=small_he((256, 320)),
                                 scale=(0.5, 0.5))
    widget.prototypes_check.setChecked(False)
    shapes = viewer.add_shapes([[[10, 20], [60, 20], [60, 90], [10, 90]]], name="ROI")
    shapes.selected_data = {0}
    widget.scope_combo.setCurrentText("Selected shape")
    widget.shapes_combo.setCurrentText("ROI")
    wait_for(qtbot, widget.run())
    # the rectangle (world µm) covers image pixels y 20..120, x 40..180; the store starts
    # at the corner of the tile grid those lie on
    t = widget.outcome.store.tile
    x0, y0 = 40 // t * t, 20 // t * t
    assert widget.outcome.store.offset == (x0, y0)
    assert widget.outcome.store.shape == (120 - y0, 180 - x0)


def test_the_shipped_default_model_is_named_with_its_scope(make_napari_viewer, checkpoint,
                                                            monkeypatch) -> None:
    monkeypatch.delenv("LPD_DEFAULT_MODEL", raising=False)
    viewer, widget = make_widget(make_napari_viewer, checkpoint)
    widget.set_checkpoint(None)
    note = widget.model_note.text()
    assert "lpd-crc-v1" in note and "0.5 µm/px" in note and "not a diagnostic device" in note


def test_default_model_is_trained_first_with_its_own_progress(
    make_napari_viewer, qtbot, checkpoint, monkeypatch, tmp_path
) -> None:
    """A stripped install without the shipped weights trains the default model once."""
    import shutil
    import time

    monkeypatch.setenv("LPD_DEFAULT_MODEL", str(tmp_path / "default.safetensors"))

    from lpd.default_model import default_checkpoint_path
    from napari_lpd import _segment_job, _workers

    def fake_training(device):  # stands in for the minutes-long real one
        for step in range(1, 4):
            time.sleep(0.05)
            yield SimpleNamespace(step=step, total=3, loss=1.0 / step, eta=3 - step)
        path = default_checkpoint_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkpoint, path)
        return path

    bars = []
    real_progress = _workers.progress

    def recording_progress(**kwargs):  # one bar per run; a new stage renames it
        bars.append(kwargs["desc"])
        bar = real_progress(**kwargs)
        bar.events.description.connect(lambda event: bars.append(event.value))
        return bar

    monkeypatch.setattr(_segment_job, "train_default_model", fake_training)
    monkeypatch.setattr(_workers, "progress", recording_progress)
    # every value updates the bar: a throttled update could skip the short tile stage
    monkeypatch.setattr(_workers, "UPDATE_INTERVAL_S", 0.0)
    viewer, widget = make_widget(make_napari_viewer, checkpoint)
    widget.set_checkpoint(None)
    assert "not trained yet" in widget.model_note.text()
    wait_for(qtbot, widget.run())
    training = bars.index("Training the default LPD model")
    assert "LPD segmentation" in bars[training:]  # training first, then segmenting
    assert len([b for b in bars if b == "Training the default LPD model"]) == 1
    assert default_checkpoint_path().is_file()
    assert any(layer.name.startswith(labels_name("HE")) for layer in viewer.layers)


def test_cancel_during_default_training_writes_no_model(
    make_napari_viewer, qtbot, checkpoint, monkeypatch, tmp_path
) -> None:
    import time

    monkeypatch.setenv("LPD_DEFAULT_MODEL", str(tmp_path / "default.safetensors"))

    from lpd.default_model import default_checkpoint_path
    from napari_lpd import _segment_job

    def slow_training(device):
        for step in range(1, 200):
            time.sleep(0.05)
            yield SimpleNamespace(step=step, total=200, loss=1.0, eta=10)
        raise AssertionError("not reached: cancelled before")

    monkeypatch.setattr(_segment_job, "train_default_model", slow_training)
    viewer, widget = make_widget(make_napari_viewer, checkpoint)
    widget.set_checkpoint(None)
    handle = widget.run()
    qtbot.waitUntil(lambda: "Training" in widget.status.text(), timeout=10_000)
    widget.cancel()
    wait_for(qtbot, handle)
    assert handle.cancelled and not default_checkpoint_path().exists()
    assert [layer.name for layer in viewer.layers] == ["HE"]


def test_visible_region_of_a_multiscale_layer_is_in_level0_pixels() -> None:
    from napari.layers import Image

    levels = [np.zeros((4000, 6000, 3), np.uint8), np.zeros((2000, 3000, 3), np.uint8)]
    layer = Image(levels, rgb=True, multiscale=True, scale=(0.5, 0.5))
    camera = SimpleNamespace(center=(500.0, 1000.0), zoom=2.0)
    viewer = SimpleNamespace(canvas=SimpleNamespace(size=(400, 600)),
                             scene=SimpleNamespace(camera=camera))
    # 400 x 600 screen px at zoom 2 = 200 x 300 µm = 400 x 600 level-0 px around (1000, 2000);
    # pixels cut by the edge count (+1)
    assert visible_region(layer, viewer) == (1700, 800, 601, 401)
    camera.center = (-5000.0, -5000.0)  # looking away from the image
    assert visible_region(layer, viewer) is None


def test_closing_the_widget_mid_run_cancels_quietly(make_napari_viewer, qtbot, checkpoint):
    viewer, widget = make_widget(make_napari_viewer, checkpoint, image=small_he((512, 512)))
    handle = widget.run()
    qtbot.waitUntil(lambda: bool(running_layers(viewer)), timeout=30_000)
    widget.deleteLater()  # as when the viewer closes with the dock widget in it
    qtbot.waitUntil(lambda: handle.orphaned, timeout=5_000)
    wait_for(qtbot, handle)  # no callback touches the deleted widget (pytest-qt would fail)
    assert handle.cancelled and handle.failed is None
    assert [layer.name for layer in viewer.layers] == ["HE"]  # no orphaned partial layer


def test_a_polygon_is_segmented_inside_only(make_napari_viewer, qtbot, checkpoint) -> None:
    from skimage.draw import polygon2mask

    viewer, widget = make_widget(make_napari_viewer, checkpoint, image=small_he((256, 320)))
    widget.prototypes_check.setChecked(False)
    tri = np.array([[10.0, 20.0], [200.0, 60.0], [40.0, 300.0]])  # (y, x) data px
    shapes = viewer.add_shapes([tri], shape_type="polygon", name="ROI")
    shapes.selected_data = {0}
    widget.scope_combo.setCurrentText("Selected shape")
    widget.shapes_combo.setCurrentText("ROI")
    wait_for(qtbot, widget.run())
    layer = viewer.layers[-1]
    assert layer.name.startswith(f"{labels_name('HE')} shape in ROI")
    ox, oy = widget.outcome.store.offset
    inside = polygon2mask(layer.data.shape, tri - [oy, ox] - 0.5)
    assert (layer.data[~inside] == 0).all() and (layer.data[inside] > 0).mean() > 0.5


def test_unknown_magnification_is_asked_for_and_flagged(make_napari_viewer, qtbot,
                                                        checkpoint) -> None:
    from napari_lpd.widgets.segment import ASSUMED_MPP

    viewer, widget = make_widget(make_napari_viewer, checkpoint)  # pixels, no µm/px
    widget.prototypes_check.setChecked(False)
    assert "assumed" in widget.mpp_label.text() and f"{ASSUMED_MPP:g}" in widget.mpp_label.text()
    assert widget.mpp_spin.isEnabled() and widget.mpp_spin.value() == 0
    wait_for(qtbot, widget.run())
    areas = [row[3].text() for row in widget.legend._rows]
    assert all(f"(assumed {ASSUMED_MPP:g} µm/px)" in a for a in areas), areas
    assert "(assumed)" in widget.status.text()
    widget.mpp_spin.setValue(0.25)  # the user gives it
    assert "0.25 µm/px (entered by you)" in widget.mpp_label.text()
    assert widget.image_mpp() == (0.25, "entered by you", False)
    wait_for(qtbot, widget.run())
    areas = [row[3].text() for row in widget.legend._rows]
    assert not any("assumed" in a for a in areas) and widget.outcome.store.mpp == 0.25


def test_known_magnification_is_shown_with_its_source(make_napari_viewer, checkpoint) -> None:
    viewer, widget = make_widget(make_napari_viewer, checkpoint, scale=(0.5, 0.5),
                                 units=("µm", "µm"))
    assert widget.mpp_label.text() == "0.5 µm/px (from the layer's scale)"
    assert not widget.mpp_spin.isEnabled()


def test_the_slide_reader_is_shown(make_napari_viewer, checkpoint) -> None:
    """A slide opened by our reader: its µm/px source and how it was read (vendor and
    backend, issue 16) in the widget."""
    from lpd.data.sample import CMU_SLIDE
    from lpd.wsi import open_slide
    from napari_lpd._layers import slide_layer

    viewer = make_napari_viewer()
    with open_slide(CMU_SLIDE) as slide:
        data, meta, _ = slide_layer(slide)
        viewer.add_image(data, **meta)
        widget = SegmentWidget(viewer)
        widget.set_checkpoint(checkpoint)
        assert widget.mpp_label.text().endswith("; aperio, read with tifffile")
        assert "0.499 µm/px (from " in widget.mpp_label.text()


def test_legend_areas_use_one_unit() -> None:
    from napari_lpd._parts import format_areas

    assert format_areas([52_600, 1_260, 0]) == ["0.053 mm²", "0.001 mm²", "0.000 mm²"]
    assert format_areas([5_000, 12.5]) == ["5000 µm²", "12 µm²"]


def test_legend_keeps_its_rows_for_the_same_classes(qtbot) -> None:
    """A result with the classes already shown fills in figures only (a rebuild of the
    rows relays the dock out); other classes or colours rebuild it."""
    from napari_lpd._parts import LegendWidget

    legend = LegendWidget()
    qtbot.addWidget(legend)
    names, colours = list(legend.names), [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)]
    legend.set_classes(names, colours)
    rows = list(legend._rows)
    legend.set_classes(names, [(*c, 255) for c in colours])  # RGBA: the same colours
    assert legend._rows == rows
    legend.set_counts([0, 1, 1, 2, 0], 0.5)
    assert legend.percentages() == ["25.0 %", "25.0 %", "50.0 %", "0.0 %"]
    legend.set_classes(names, [(1, 2, 3), *colours[1:]])
    assert legend._rows != rows and legend.percentages() == ["–"] * 4


def test_resampling_beyond_8x_is_refused_unless_ticked(make_napari_viewer, qtbot, tmp_path,
                                                       monkeypatch) -> None:
    """A layer at 0.05 µm/px for a 0.5 µm/px model means shrinking it 10x: refused with one
    notification (a wrong µm/px, usually); ticking the box lets it through to the plan."""
    ckpt = tiny_checkpoint(tmp_path, microns_per_pixel=0.5)
    viewer, widget = make_widget(make_napari_viewer, ckpt, scale=(0.05, 0.05),
                                 units=("µm", "µm"))
    shown = []
    monkeypatch.setattr("napari_lpd._notify.show_error", shown.append)
    wait_for(qtbot, widget.run())
    assert len(shown) == 1 and "8x" in shown[0] and "allow" in shown[0]
    assert [layer.name for layer in viewer.layers] == ["HE"]
    asked = []
    real = seg_job.plan_tiled

    def spy(*args, **kwargs):
        asked.append(kwargs.get("allow_resample"))
        return real(*args, **kwargs)

    monkeypatch.setattr(seg_job, "plan_tiled", spy)
    widget.resample_check.setChecked(True)
    widget.prototypes_check.setChecked(False)
    wait_for(qtbot, widget.run())
    assert asked == [True] and len(shown) == 1  # planned and run, no new error
