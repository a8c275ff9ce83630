"""Tag annotator in a real viewer: rectangles, classes, sidecar autosave and reload, grid
clicks, damaged sidecars, export."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import wrapt
from napari.utils.interactions import (
    mouse_move_callbacks,
    mouse_press_callbacks,
    mouse_release_callbacks,
)
from PIL import Image as PILImage

from lpd.classes import CLASS_COLOURS
from lpd.data.bcss import parse_tags
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore, sidecar_path
from napari_lpd.widgets.tags import GRID_LAYER, TAGS_LAYER, TagAnnotatorWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def image_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgb, _ = synthetic_tissue((192, 256), seed=2)
    path = tmp_path / "he.png"
    PILImage.fromarray(rgb).save(path)
    return path, rgb


def _viewer_with(make_napari_viewer, path: Path, rgb: np.ndarray, **kwargs):
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="HE", rgb=True, metadata={"lpd_path": str(path)}, **kwargs)
    return viewer, TagAnnotatorWidget(viewer)


def _rect(x: float, y: float, w: float, h: float) -> np.ndarray:
    return np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], float)


def test_rectangles_are_tagged_saved_and_reloaded(make_napari_viewer, image_file) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    shapes = viewer.layers[TAGS_LAYER]
    assert widget.shapes is shapes and widget.store is not None and not widget.store.regions
    widget.class_boxes["TUM"].setChecked(True)  # no selection: the classes of new regions
    shapes.add_rectangles([_rect(10, 20, 100, 50)])
    widget.class_boxes["TUM"].setChecked(False)
    shapes.add_rectangles([_rect(150.5, 100, 60, 60)])
    data = json.loads(sidecar_path(path).read_text())  # saved at once, atomically
    assert [(r["bbox"], r["classes"]) for r in data["regions"]] == [
        ([10, 20, 100, 50], ["TUM"]), ([150, 100, 61, 60], [])]
    shapes.selected_data = {0}
    assert widget.class_boxes["TUM"].isChecked()  # the boxes show the selection
    widget.class_boxes["LYM"].setChecked(True)
    assert widget.store.region(1).classes == ("TUM", "LYM")
    assert list(shapes.features["label"]) == ["TUM+LYM", "untagged"]
    np.testing.assert_allclose(shapes.edge_color[0][:3], np.array(CLASS_COLOURS["TUM"]) / 255)
    assert widget.table.rowCount() == 2 and widget.table.item(0, 1).text() == "TUM LYM"
    shapes.selected_data = {1}
    widget.class_boxes["NEC"].setChecked(True)
    shapes.selected_data = {0}
    shapes.remove_selected()
    assert [(r.id, r.classes) for r in TagStore.load(path).regions] == [(2, ("NEC",))]

    # A new viewer opening the same image shows its tags again.
    viewer2, widget2 = _viewer_with(make_napari_viewer, path, rgb)
    shapes2 = viewer2.layers[TAGS_LAYER]
    assert len(shapes2.data) == 1 and list(shapes2.features["region_id"]) == [2]
    assert list(shapes2.features["label"]) == ["NEC"]
    np.testing.assert_allclose(shapes2.data[0].min(axis=0), [100, 150])


def test_image_opened_by_napari_reader_and_layer_without_file(make_napari_viewer,
                                                              image_file) -> None:
    path, rgb = image_file
    store = TagStore(path)
    store.add((0, 0, 32, 32), ["STR"])
    store.save()
    viewer = make_napari_viewer()
    viewer.add_image(rgb[:50, :50].copy(), name="no file", rgb=True)
    widget = TagAnnotatorWidget(viewer)
    assert widget.store is None and "file" in widget.status.text()
    [layer] = viewer.open(str(path), plugin="napari")  # layer.source.path, no lpd metadata
    assert widget.image is not None and widget.image.layer is layer  # it has tags: shown
    assert list(viewer.layers[TAGS_LAYER].features["label"]) == ["STR"]


def test_grid_click_selects_a_cell(make_napari_viewer, image_file) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb, scale=(0.5, 0.5))
    widget.patch_spin.setValue(64)
    widget.mpp_spin.setValue(0)  # full resolution: one cell = 64 image pixels
    widget.grid_button.setChecked(True)
    grid = viewer.layers[GRID_LAYER]
    assert len(grid.data) == 12 and viewer.layers.selection.active is grid  # 3 x 4 cells

    def click(x: float, y: float) -> None:  # world coordinates (µm here)
        # napari swaps the event inside its proxy between press, moves and release
        for kind, run in (("mouse_press", mouse_press_callbacks),
                          ("mouse_release", mouse_release_callbacks)):
            run(grid, wrapt.ObjectProxy(SimpleNamespace(
                type=kind, position=(y, x), is_dragging=False, modifiers=[], handled=False)))

    def drag() -> None:  # a pan: press, move, release
        for kind, run, x in (("mouse_press", mouse_press_callbacks, 10),
                             ("mouse_move", mouse_move_callbacks, 30),
                             ("mouse_release", mouse_release_callbacks, 30)):
            run(grid, wrapt.ObjectProxy(SimpleNamespace(
                type=kind, position=(10, x), is_dragging=kind == "mouse_move", modifiers=[],
                handled=False)))

    drag()
    assert widget.store.regions == []  # panning picks no cell
    widget.class_boxes["STR"].setChecked(True)
    click(x=70 * 0.5, y=130 * 0.5)  # image pixel (70, 130): cell x 64..128, y 128..192
    [region] = widget.store.regions
    assert region.bbox == (64, 128, 64, 64) and region.source == "grid"
    assert region.classes == ("STR",) and widget.selected_ids() == [region.id]
    widget.class_boxes["NEC"].setChecked(True)  # tags the selected cell
    assert TagStore.load(path).regions[0].classes == ("STR", "NEC")
    assert widget.select_cell(100, 150) == region.id  # the same cell again: no new region
    assert len(widget.store.regions) == 1 and len(widget.shapes.data) == 1
    assert widget.select_cell(1000, 1000) is None  # outside the image
    widget.grid_button.setChecked(False)
    assert GRID_LAYER not in viewer.layers


def test_damaged_sidecar_is_reported_and_kept(make_napari_viewer, image_file,
                                              monkeypatch) -> None:
    path, rgb = image_file
    sidecar_path(path).write_text("{ this is not json")
    errors: list[str] = []
    monkeypatch.setattr("napari_lpd._workers.show_error", errors.append)
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    assert len(errors) == 1 and "not readable JSON" in errors[0] and str(sidecar_path(path)) in errors[0]
    assert widget.store is not None and widget.store.regions == []
    widget.shapes.add_rectangles([_rect(0, 0, 20, 20)])
    backup = sidecar_path(path).with_name(sidecar_path(path).name + ".bak")
    assert backup.read_text() == "{ this is not json"
    assert len(TagStore.load(path).regions) == 1


def test_export_training_folder_from_the_widget(make_napari_viewer, qtbot, image_file,
                                                tmp_path: Path) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    widget.patch_spin.setValue(64)
    widget.mpp_spin.setValue(0)
    widget.class_boxes["LYM"].setChecked(True)
    widget.shapes.add_rectangles([_rect(0, 0, 128, 64)])
    handle = widget.export_to(tmp_path / "out")
    qtbot.waitUntil(lambda: not handle.running, timeout=30_000)
    files = sorted((tmp_path / "out" / "train").iterdir())
    assert [f.name for f in files] == ["he_x0_y0+0[0010].png", "he_x64_y0+0[0010].png"]
    np.testing.assert_array_equal(parse_tags(files[0]), [0, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(PILImage.open(files[1])), rgb[0:64, 64:128])
    assert "Exported 2 patches" in widget.status.text()
