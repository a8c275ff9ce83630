"""The tag annotator's "Import QuPath GeoJSON…": tissue-class annotations become tagged
polygons (shapes, sidecar version 2), one undoable edit; a moved polygon takes its hole
along; a bad file is one notification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from shapely.geometry import Polygon

from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore, sidecar_path
from napari_lpd.widgets.tags import TagAnnotatorWidget

pytestmark = pytest.mark.gui

OUTER = [[20, 20], [200, 30], [190, 170], [30, 160], [20, 20]]  # (x, y)
HOLE = [[80, 70], [120, 70], [120, 110], [80, 110], [80, 70]]



@pytest.fixture
def widget(make_napari_viewer, tmp_path: Path) -> TagAnnotatorWidget:
    rgb, _ = synthetic_tissue((192, 256), seed=2)
    path = tmp_path / "he.png"
    PILImage.fromarray(rgb).save(path)
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="HE", rgb=True, metadata={"lpd_path": str(path)})
    return TagAnnotatorWidget(viewer)


def qupath_file(tmp_path: Path) -> Path:
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [OUTER, HOLE]},
         "properties": {"objectType": "annotation",
                        "classification": {"names": ["Tumor", "Stroma"], "color": [9, 9, 9]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[210, 10], [250, 10], [250, 60], [210, 10]]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Other"}}},
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_import_adds_tagged_polygons_and_undo_takes_them_back(widget, tmp_path,
                                                              records) -> None:
    widget.shapes.add_rectangles([np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)])
    added = widget.import_geojson(qupath_file(tmp_path))
    assert [(r.id, r.classes, r.source) for r in added] == [(2, ("TUM", "STR"), "annotation")]
    shapes = widget.shapes
    assert list(shapes.shape_type) == ["rectangle", "polygon"]
    np.testing.assert_allclose(shapes.data[1], np.array(OUTER)[:-1, ::-1])
    assert list(shapes.features["label"]) == ["untagged", "TUM+STR"]
    assert shapes.selected_data == {1}  # the imported regions, selected
    data = json.loads(sidecar_path(widget.image.path).read_text())
    assert data["version"] == 2 and data["regions"][1]["polygon"][1] == HOLE
    [info] = [r for r in records if "imported" in str(r.message)]
    assert "1 tagged region(s) imported from qupath.geojson" in info.message
    assert "class Other skipped" in info.message
    widget.undo_button.click()  # the import was one edit
    assert [r.id for r in widget.store.regions] == [1] and len(shapes.data) == 1
    assert json.loads(sidecar_path(widget.image.path).read_text())["version"] == 1


def test_a_moved_polygon_takes_its_hole_along(widget, tmp_path) -> None:
    widget.import_geojson(qupath_file(tmp_path))
    moved = [d + np.array([5.0, 7.0]) for d in widget.shapes.data]  # (row, col): y+5, x+7
    widget.shapes.data = moved
    region = widget.store.regions[0]
    expected = Polygon(np.array(OUTER) + [7, 5], [np.array(HOLE) + [7, 5]])
    assert region.polygon.equals_exact(expected, 1e-6) and region.bbox == (27, 25, 180, 150)
    back = TagStore.load(widget.image.path)  # saved at once
    assert back.regions[0].polygon.equals_exact(expected, 1e-6)
    assert list(widget.shapes.shape_type) == ["polygon"]


def test_a_bad_file_is_one_notification(widget, tmp_path, records) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                   '"geometry": {"type": "Polygon", "coordinates": "x"}}]}')
    assert widget.import_geojson(bad) == []
    errors = [r for r in records if "bad.geojson" in str(r.message)]
    assert len(errors) == 1 and "feature 1" in errors[0].message
    assert widget.store.regions == [] and not sidecar_path(widget.image.path).exists()
