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
from napari.utils.key_bindings import coerce_keybinding
from PIL import Image as PILImage

from lpd.classes import CLASS_COLOURS
from lpd.data.bcss import parse_tags
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore, sidecar_path
from napari_lpd.widgets.tags import GRID_LAYER, MAX_UNDO, TAGS_LAYER, UNDO_KEY, TagAnnotatorWidget

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
    monkeypatch.setattr("napari_lpd._notify.show_error", errors.append)
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    sidecar = sidecar_path(path)  # named as "<problem> — <file> (<folder>)"
    assert len(errors) == 1 and "not readable JSON" in errors[0]
    assert f"{sidecar.name} ({sidecar.parent})" in errors[0]
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


def _classes(widget) -> list[tuple[str, ...]]:
    return [r.classes for r in TagStore.load(widget.store.image_path).regions]


def test_class_boxes_edit_only_the_one_selected_region(make_napari_viewer, image_file) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    shapes, boxes = widget.shapes, widget.class_boxes
    boxes["TUM"].setChecked(True)
    shapes.add_rectangles([_rect(0, 0, 40, 40), _rect(50, 50, 40, 40)])
    assert "next region" in widget.boxes_label.text()
    shapes.selected_data = {1}  # loading a region's tags into the boxes edits nothing
    assert widget.boxes_label.text() == "Editing the tags of region 2"
    assert boxes["TUM"].isChecked() and not boxes["LYM"].isChecked()
    assert _classes(widget) == [("TUM",), ("TUM",)]
    boxes["LYM"].setChecked(True)  # one region selected: it is edited
    assert _classes(widget) == [("TUM",), ("TUM", "LYM")]
    shapes.selected_data = set()  # deselected: the boxes are the next region's classes again
    assert "next region" in widget.boxes_label.text() and not boxes["LYM"].isChecked()
    boxes["TUM"].setChecked(False)
    boxes["NEC"].setChecked(True)
    assert _classes(widget) == [("TUM",), ("TUM", "LYM")]  # no stored region changed
    shapes.selected_data = {0, 1}  # two selected: the boxes edit neither
    assert "2 regions selected" in widget.boxes_label.text()
    boxes["STR"].setChecked(True)
    assert _classes(widget) == [("TUM",), ("TUM", "LYM")]
    shapes.selected_data = set()
    shapes.add_rectangles([_rect(100, 100, 40, 40)])
    assert _classes(widget) == [("TUM",), ("TUM", "LYM"), ("STR", "NEC")]


def test_undo_reverts_the_last_edits_in_order(make_napari_viewer, image_file) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    shapes = widget.shapes
    assert not widget.undo_button.isEnabled()
    widget.class_boxes["TUM"].setChecked(True)  # not an edit of a region
    shapes.add_rectangles([_rect(0, 0, 40, 40)])  # edit 1: add
    shapes.add_rectangles([_rect(50, 50, 40, 40)])  # edit 2: add
    shapes.selected_data = {0}
    widget.class_boxes["STR"].setChecked(True)  # edit 3: classes
    shapes.remove_selected()  # edit 4: delete
    assert _classes(widget) == [("TUM",)]
    widget.undo_button.click()  # the deleted region is back, with its classes
    assert _classes(widget) == [("TUM", "STR"), ("TUM",)]
    assert list(shapes.features["label"]) == ["TUM+STR", "TUM"] and len(shapes.data) == 2
    shapes.keymap[coerce_keybinding(UNDO_KEY)](shapes)  # Ctrl+Z on the tags layer
    assert _classes(widget) == [("TUM",), ("TUM",)]
    widget.undo_button.click()
    assert _classes(widget) == [("TUM",)] and len(shapes.data) == 1
    widget.undo_button.click()
    assert _classes(widget) == [] and len(shapes.data) == 0
    assert not widget.undo_button.isEnabled()
    assert str(sidecar_path(path)) in widget.status.text()

    for i in range(MAX_UNDO + 5):  # only the last MAX_UNDO edits are kept
        shapes.add_rectangles([_rect(i, i, 10, 10)])
    while widget.undo_button.isEnabled():
        widget.undo_button.click()
    assert len(widget.store.regions) == 5 and len(TagStore.load(path).regions) == 5


def test_status_shows_the_full_sidecar_path(make_napari_viewer, image_file, tmp_path,
                                            monkeypatch) -> None:
    path, rgb = image_file
    viewer, widget = _viewer_with(make_napari_viewer, path, rgb)
    assert str(sidecar_path(path)) in widget.status.text()
    widget.shapes.add_rectangles([_rect(0, 0, 20, 20)])
    assert f"Tags saved to {sidecar_path(path)}" in widget.status.text()

    # The bundled sample's tags go to the user data folder, not into the package.
    from lpd.data.sample import SAMPLE_ROOT

    monkeypatch.setenv("LPD_DATA_DIR", str(tmp_path / "data"))
    sample = SAMPLE_ROOT / "tiles" / "he.png"
    viewer.add_image(rgb, name="sample", rgb=True, metadata={"lpd_path": str(sample)})
    widget.set_image("sample")
    widget.shapes.add_rectangles([_rect(0, 0, 20, 20)])
    saved = sidecar_path(sample)
    assert saved.parent == tmp_path / "data" / "tags" and saved.exists()
    assert f"Tags saved to {saved}" in widget.status.text()
    assert not (SAMPLE_ROOT / "tiles" / "he.png.lpd-tags.json").exists()
