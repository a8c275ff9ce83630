"""Prototype explorer: hidden until asked, follows class and prototype, dominant map,
side-by-side grid mode."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_segment import tiny_checkpoint, wait_for

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.colours import class_shades, contrast_ratio
from lpd.viz import dominant_prototype
from napari_lpd._layers import dominant_name, heatmap_name, labels_name
from napari_lpd.widgets.prototypes import PrototypeWidget, dominant_palette, grid_of
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")
# the Segment widget's result layer: image, scope and model (tiny_checkpoint's file)
RESULT = f"{labels_name('HE')} whole image · tiny"


@pytest.fixture
def segmented(make_napari_viewer, qtbot, tmp_path):
    from helpers_segment import small_he

    viewer = make_napari_viewer()
    viewer.add_image(small_he(), name="HE", rgb=True, scale=(0.5, 0.5))
    segment = SegmentWidget(viewer)
    segment.set_checkpoint(tiny_checkpoint(tmp_path))
    segment.scope_combo.setCurrentText("Whole image")
    wait_for(qtbot, segment.run())
    assert RESULT in viewer.layers
    return viewer


def test_heatmap_hidden_until_asked_then_follows_controls(segmented, qtbot) -> None:
    viewer = segmented
    widget = PrototypeWidget(viewer)
    assert widget.result_combo.currentText() == RESULT
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
    assert ((dominant.data > 0) == widget._tissue_cells()).all()
    # label (c - 1) * k + j = prototype j of class c: the class is the one predicted there
    k, tissue = widget.k, dominant.data > 0
    assert set(np.unique(dominant.data).tolist()) <= set(range(4 * k + 1))
    np.testing.assert_array_equal((dominant.data[tissue] - 1) // k + 1, widget._cells[tissue])
    names = dominant.metadata["lpd_dominant_labels"]
    assert names == {c * k + j: (n, j) for c, n in enumerate(CLASS_NAMES) for j in (1, 2)}
    # shades of the class colour, set through a direct colormap; background clear
    palette = dominant_palette(CLASS_NAMES, [CLASS_COLOURS[c] for c in CLASS_NAMES], k)
    for value, (_, _, rgb) in palette.items():
        np.testing.assert_allclose(dominant.colormap.map(value)[:3], np.array(rgb) / 255,
                                   atol=1e-6)
    assert dominant.colormap.map(0)[3] == 0
    # the legend: per class, k numbered swatches
    assert widget.legend.isVisibleTo(widget)
    assert [s.text() for s in widget.legend.swatches] == ["1", "2"] * 4
    assert "NEC 2" in widget.legend.swatches[-1].toolTip()


def test_dominant_palette_shades_by_class() -> None:
    colours = [CLASS_COLOURS[c] for c in CLASS_NAMES]
    palette = dominant_palette(CLASS_NAMES, colours, 3)
    assert sorted(palette) == list(range(1, 13))
    assert [palette[v][:2] for v in (1, 3, 4, 12)] == [("TUM", 1), ("TUM", 3), ("STR", 1),
                                                       ("NEC", 3)]
    for c, name in enumerate(CLASS_NAMES):
        shades = [palette[c * 3 + j][2] for j in (1, 2, 3)]
        assert shades == [tuple(s) for s in class_shades(CLASS_COLOURS[name], 3).tolist()]
        assert contrast_ratio(shades[1], (0, 0, 0)) >= 3  # the mid shade on napari's canvas
    # a checkpoint's retired near-black NEC is painted in the readable grey
    old = dominant_palette(CLASS_NAMES, [*colours[:3], (40, 40, 40)], 3)
    assert old == palette


def test_side_by_side_grid(segmented, qtbot) -> None:
    viewer = segmented
    viewer.add_shapes(name="notes")
    widget = PrototypeWidget(viewer)
    widget.side_button.setChecked(True)
    grid = grid_of(viewer)
    assert grid.enabled
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert shown == ["HE", RESULT, heatmap_name("HE")]
    assert grid.actual_shape(viewer.layers) == (1, 3)
    # image | labels | heatmap, left to right; napari's grid is one canvas with one camera,
    # so the three views pan and zoom together
    cells = {layer.name: grid.position(i, viewer.layers) for i, layer in enumerate(viewer.layers)}
    assert cells["HE"] == (0, 0) and cells[RESULT] == (0, 1)
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
    labels = viewer.layers[f"{RESULT} [1]"]  # the first result is kept beside it
    assert RESULT in viewer.layers
    assert widget.result_combo.currentText() == labels.name  # the newest result
    assert str(widget.store.path) == labels.metadata["lpd_store"] != str(first)
