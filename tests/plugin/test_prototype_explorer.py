"""Prototype explorer: hidden until asked, follows class and prototype, dominant map,
side-by-side grid mode."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_segment import tiny_checkpoint, wait_for

from napari_lpd._layers import dominant_name, dominant_prototype, heatmap_name, labels_name
from napari_lpd.widgets.prototypes import PrototypeWidget, grid_of
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")


@pytest.fixture
def segmented(make_napari_viewer, qtbot, tmp_path):
    from helpers_segment import small_he

    viewer = make_napari_viewer()
    viewer.add_image(small_he(), name="HE", rgb=True, scale=(0.5, 0.5))
    segment = SegmentWidget(viewer)
    segment.set_checkpoint(tiny_checkpoint(tmp_path))
    segment.scope_combo.setCurrentText("Whole image")
    wait_for(qtbot, segment.run())
    assert labels_name("HE") in viewer.layers
    return viewer


def test_heatmap_hidden_until_asked_then_follows_controls(segmented, qtbot) -> None:
    viewer = segmented
    widget = PrototypeWidget(viewer)
    assert widget.result_combo.currentText() == labels_name("HE")
    assert widget.k == 2 and widget.slider.maximum() == 2
    assert widget.class_combo.count() == 4
    name = heatmap_name("HE")
    assert name not in viewer.layers  # hidden until asked
    widget.show_check.setChecked(True)
    heat = viewer.layers[name]
    assert heat.blending == "additive" and heat.colormap.name == "inferno"
    assert heat.metadata["lpd_prototype"] == "TUM-1"
    store = widget.store
    tissue = widget._tissue_cells()
    assert tissue.any()
    np.testing.assert_array_equal(heat.data[tissue], np.asarray(store.prototypes[0])[tissue])
    assert (heat.data[~tissue] == heat.contrast_limits[0]).all()  # off tissue: adds nothing
    # a prototype cell spans `stride` output pixels: scale is the image's times the stride
    stride = store.meta["prototypes"]["stride"]
    assert np.allclose(heat.scale, (0.5 * stride, 0.5 * stride))
    widget.class_combo.setCurrentText("LYM")
    widget.slider.setValue(2)
    qtbot.waitUntil(lambda: heat.metadata["lpd_prototype"] == "LYM-2", timeout=2000)
    assert viewer.layers[name] is heat  # updated in place, not re-added
    np.testing.assert_array_equal(heat.data[tissue], np.asarray(store.prototypes[5])[tissue])
    widget.show_check.setChecked(False)
    assert name not in viewer.layers


def test_dominant_prototype_map(segmented, qtbot) -> None:
    viewer = segmented
    widget = PrototypeWidget(viewer)
    wait_for(qtbot, widget.show_dominant())
    dominant = viewer.layers[dominant_name("HE")]
    assert dominant.data.shape == widget.store.prototypes.shape[1:]
    values = set(np.unique(dominant.data).tolist())
    assert values <= {0, 1, 2} and values & {1, 2}
    assert ((dominant.data > 0) == widget._tissue_cells()).all()


def test_side_by_side_grid(segmented, qtbot) -> None:
    viewer = segmented
    viewer.add_shapes(name="notes")
    widget = PrototypeWidget(viewer)
    widget.side_button.setChecked(True)
    grid = grid_of(viewer)
    assert grid.enabled
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert shown == ["HE", labels_name("HE"), heatmap_name("HE")]
    assert grid.actual_shape(viewer.layers) == (1, 3)
    # image | labels | heatmap, left to right; napari's grid is one canvas with one camera,
    # so the three views pan and zoom together
    cells = {layer.name: grid.position(i, viewer.layers) for i, layer in enumerate(viewer.layers)}
    assert cells["HE"] == (0, 0) and cells[labels_name("HE")] == (0, 1)
    assert cells[heatmap_name("HE")] == (0, 2) and cells["notes"] == (-1, -1)
    widget.side_button.setChecked(False)
    assert not grid.enabled and viewer.layers["notes"].visible
    assert grid.shape == (-1, -1)


def test_dominant_prototype_pure() -> None:
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    protos = np.zeros((8, 2, 2), np.float32)  # 4 classes x k=2
    protos[1, 0, 1] = 5  # class 1, prototype 2 strongest at (0, 1)
    protos[2, 1, 0] = 3  # class 2, prototype 1 at (1, 0)
    protos[3, 1, 1] = 4  # class 2, prototype 2 at (1, 1)
    assert dominant_prototype(labels, protos, 2).tolist() == [[0, 2], [1, 2]]


def test_explorer_follows_a_rerun(segmented, qtbot, tmp_path) -> None:
    viewer = segmented
    widget = PrototypeWidget(viewer)
    first = widget.store.path
    segment = SegmentWidget(viewer)
    segment.set_checkpoint(tiny_checkpoint(tmp_path / "other", seed=1))
    segment.scope_combo.setCurrentText("Whole image")
    wait_for(qtbot, segment.run())
    labels = viewer.layers[labels_name("HE")]
    assert widget.result_combo.currentText() == labels_name("HE")
    assert str(widget.store.path) == labels.metadata["lpd_store"] != str(first)
