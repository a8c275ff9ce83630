"""QuPath GeoJSON opened in napari: a Shapes layer on its slide (scale in µm), class colours
and names as features, holes as their own shapes; the Segment widget's "Selected shape"
scope on it; a bad file is one notification naming the file and the feature."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from napari.layers import Shapes
from shapely.geometry import Polygon

from lpd.classes import CLASS_COLOURS
from lpd.data.sample import CMU_SLIDE
from napari_lpd._annotations import annotation_geometry, read_geojson
from napari_lpd._layers import shape_polygon
from napari_lpd._reader import napari_get_reader, read_paths
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")

OUTER = [[100, 200], [900, 220], [880, 1400], [120, 1300], [100, 200]]  # (x, y)
HOLE = [[300, 500], [600, 500], [600, 800], [300, 800], [300, 500]]


def collection() -> dict:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [OUTER, HOLE]},
         "properties": {"objectType": "annotation", "name": "tumour 1",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
            [[[1000, 100], [1200, 100], [1200, 300], [1000, 100]]],
            [[[1500, 100], [1700, 100], [1700, 300], [1500, 100]]]]},
         "properties": {"classification": {"names": ["LYM"]}}},
    ]}



def test_geojson_opens_as_shapes_on_its_slide(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(CMU_SLIDE), plugin="napari-lpd")
    path = tmp_path / f"{CMU_SLIDE.stem}.geojson"  # the slide's name: its layer's frame
    path.write_text(json.dumps(collection()))
    assert napari_get_reader(str(path)) is not None
    [layer] = viewer.open(str(path), plugin="napari-lpd")
    assert isinstance(layer, Shapes) and layer.name == CMU_SLIDE.stem
    assert tuple(slide.scale) == pytest.approx((0.499, 0.499))
    assert tuple(layer.scale) == pytest.approx(tuple(slide.scale))
    assert tuple(layer.units) == tuple(slide.units)
    assert set(layer.shape_type) == {"polygon"} and len(layer.data) == 4  # outer, hole, 2 parts
    np.testing.assert_allclose(layer.data[0], np.array(OUTER)[:-1, ::-1])  # (row, col)
    table = layer.features
    assert list(table["feature"]) == [1, 1, 2, 2] and list(table["hole"]) == [
        False, True, False, False]
    assert list(table["classification"]) == ["Tumor", "Tumor", "LYM", "LYM"]
    assert list(table["tissue"]) == ["TUM", "TUM", "LYM", "LYM"]
    assert table["name"][0] == "tumour 1"
    np.testing.assert_allclose(layer.edge_color[0][:3], np.array([200, 0, 0]) / 255)
    np.testing.assert_allclose(layer.edge_color[2][:3], np.array(CLASS_COLOURS["LYM"]) / 255)
    # back in the slide's level-0 pixels: the exterior as drawn, and with its hole
    np.testing.assert_allclose(shape_polygon(layer, slide, 0), np.array(OUTER)[:-1])
    whole = annotation_geometry(layer, slide, 1)  # the hole's shape picks its polygon too
    assert whole.equals_exact(Polygon(OUTER, [HOLE]), 1e-6)  # µm and back: rounding only


def test_selected_shape_of_an_imported_layer_is_the_segment_scope(make_napari_viewer,
                                                                  tmp_path) -> None:
    viewer = make_napari_viewer()
    [slide] = viewer.open(str(CMU_SLIDE), plugin="napari-lpd")
    path = tmp_path / "annotations.geojson.gz"  # another name: the selected image's frame
    path.write_bytes(gzip.compress(json.dumps(collection()).encode()))
    viewer.layers.selection.active = slide
    [layer] = viewer.open(str(path), plugin="napari-lpd")
    assert tuple(layer.scale) == pytest.approx(tuple(slide.scale))
    widget = SegmentWidget(viewer)
    widget.image_combo.setCurrentText(slide.name)
    widget.scope_combo.setCurrentText("Selected shape")
    widget.shapes_combo.setCurrentText(layer.name)
    layer.selected_data = {0}
    request = widget._request()
    x, y, w, h = request.region  # the outline's box (µm and back may add a pixel a side)
    assert 99 <= x <= 100 and 199 <= y <= 200 and 900 <= x + w <= 901 and 1400 <= y + h <= 1401
    # the ROI is the annotation's polygon with its hole (a segmentation leaves the hole out)
    assert request.roi.normalize().equals_exact(Polygon(OUTER, [HOLE]).normalize(), 1e-6)


def test_without_a_slide_the_shapes_are_in_pixels(tmp_path) -> None:
    path = tmp_path / "alone.geojson"
    path.write_text(json.dumps(collection()["features"]))  # a bare array
    data, meta, kind = read_geojson(path)
    assert kind == "shapes" and meta["scale"] == (1.0, 1.0) and meta["units"] == (
        "pixel", "pixel")
    assert meta["metadata"]["lpd_path"] == str(path)


def test_a_bad_file_is_one_notification_naming_it_and_the_feature(tmp_path, records) -> None:
    doc = collection()
    doc["features"][1]["geometry"]["coordinates"][0][0][1] = ["x", 1]
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(doc))
    assert read_paths(str(path)) == [(None,)]
    [note] = [r for r in records if "Could not open" in str(r.message)]
    assert "feature 2" in note.message and "bad.geojson" in note.message
    assert "\n" not in note.message
