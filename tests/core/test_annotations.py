"""QuPath GeoJSON in (lpd.io.annotations): every form QuPath writes, bad files, class names,
the round trip through our export, and ``lpd predict --roi``."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon, shape

from lpd.cli.main import main
from lpd.errors import InputError
from lpd.io.annotations import Annotation, read_annotations, tissue_class
from lpd.io.export import export_geojson
from lpd.io.roi import Roi, as_roi
from lpd.io.store import OutputStore
from lpd.io.store_tools import store_from_labels

SQUARE = [[0, 0], [40, 0], [40, 40], [0, 40], [0, 0]]
HOLE = [[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]]


def feature(geometry: dict, **props) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def polygon(*rings) -> dict:
    return {"type": "Polygon", "coordinates": [list(r) for r in rings]}


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


# ---- what QuPath writes ---------------------------------------------------------------------
def test_a_feature_collection_of_current_qupath(tmp_path) -> None:
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "4b0c6e8e-7d5b-4d59-9d51-1b2f7a6e0c11",
         "geometry": polygon(SQUARE, HOLE),
         "properties": {"objectType": "annotation", "name": "A",
                        "classification": {"name": "Tumor", "color": [200, 0, 0]},
                        "measurements": {"Area µm^2": 375.0}}},
        feature({"type": "MultiPolygon", "coordinates": [
            [[[100, 0], [110, 0], [110, 10], [100, 0]]],
            [[[200, 0], [210, 0], [210, 10], [200, 0]]]]},
            objectType="detection",
            classification={"names": ["Stroma", "Immune cells"], "color": [1, 2, 3]}),
    ]}
    a, b = read_annotations(write(tmp_path / "a.geojson", doc))
    assert isinstance(a, Annotation) and a.index == 1 and b.index == 2
    assert (a.names, a.object_type, a.name, a.colour) == (("Tumor",), "annotation", "A",
                                                          (200, 0, 0))
    assert a.id == "4b0c6e8e-7d5b-4d59-9d51-1b2f7a6e0c11" and a.measurements == {
        "Area µm^2": 375.0}
    assert a.geometry.area == 1600 - 100 and len(a.geometry.interiors) == 1  # the hole
    assert a.classes() == ("TUM",) and b.classes() == ("STR", "LYM")  # several per region
    assert isinstance(b.geometry, MultiPolygon) and len(b.polygons()) == 2
    assert b.object_type == "detection" and b.colour == (1, 2, 3)


def test_legacy_qupath_02_a_bare_array_and_list_measurements(tmp_path) -> None:
    doc = [  # QuPath 0.2: no collection, the type in "id", colorRGB, parentClass, lists
        {"type": "Feature", "id": "PathAnnotationObject", "geometry": polygon(SQUARE),
         "properties": {"classification": {"name": "Positive", "colorRGB": -3670016,
                                           "parentClass": {"name": "Necrosis"}},
                        "isLocked": False,
                        "measurements": [{"name": "Area", "value": 1600},
                                         {"name": "Ratio", "value": None}]}},
        feature(polygon(SQUARE), object_type="tile", classification="STR"),
        feature(polygon(SQUARE), type="cell"),  # "type": QuPath's alias
    ]
    first, second, third = read_annotations(write(tmp_path / "old.geojson", doc))
    assert first.object_type == "annotation" and first.id is None
    assert first.names == ("Necrosis", "Positive") and first.classes() == ("NEC",)
    assert first.colour == (200, 0, 0)  # 0xFFC80000
    assert first.measurements["Area"] == 1600 and np.isnan(first.measurements["Ratio"])
    assert (second.object_type, second.names, second.classes()) == ("tile", ("STR",), ("STR",))
    assert third.object_type == "cell" and third.names == ()


def test_one_feature_a_bare_geometry_gzip_and_utf16(tmp_path) -> None:
    one = feature(polygon(SQUARE), classification={"name": "Stroma"})
    assert read_annotations(write(tmp_path / "one.geojson", one))[0].names == ("Stroma",)
    bare = read_annotations(write(tmp_path / "bare.geojson", polygon(SQUARE)))
    assert bare[0].names == () and bare[0].object_type == "annotation"
    packed = tmp_path / "c.geojson.gz"
    packed.write_bytes(gzip.compress(json.dumps([one]).encode()))
    assert read_annotations(packed)[0].geometry.area == 1600
    wide = tmp_path / "wide.geojson"
    wide.write_bytes(codecs.BOM_UTF16_LE + json.dumps([one]).replace("\n", "\r\n")
                     .encode("utf-16-le"))
    assert len(read_annotations(wide)) == 1


def test_points_lines_and_crossings_make_notes(tmp_path) -> None:
    doc = [feature({"type": "Point", "coordinates": [1, 2]}),
           feature({"type": "LineString", "coordinates": [[1, 2], [3, 4]]}),
           {"type": "Feature", "geometry": None, "properties": None},
           feature(polygon([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]), name="bow"),
           feature({"type": "GeometryCollection", "geometries": [
               polygon(SQUARE), {"type": "Point", "coordinates": [0, 0]}]})]
    notes: list[str] = []
    got = read_annotations(write(tmp_path / "n.geojson", doc), notes=notes)
    assert [a.index for a in got] == [4, 5]
    assert got[0].geometry.is_valid and got[0].geometry.area == pytest.approx(50)
    assert len(notes) == 4 and notes[0].startswith("feature 1: is a Point")
    assert "feature 4 ('bow')" in notes[3] and "repaired" in notes[3]


@pytest.mark.parametrize(("doc", "where", "words"), [
    ("not json", None, "not readable JSON"),
    ({"type": "Topology"}, None, "not GeoJSON"),
    ({"type": "FeatureCollection", "features": {}}, None, '"features" list'),
    ([feature(polygon(SQUARE)), 3], "feature 2", "not a GeoJSON Feature"),
    ([feature({"type": "Circle", "coordinates": []})], "feature 1", "unknown geometry"),
    ([feature(polygon([["a", 0], [1, 1], [0, 1], ["a", 0]]), name="x")], "feature 1 ('x')",
     "malformed"),
    ([feature(polygon([[0, 0], [1, 0], [float("nan"), 1], [0, 0]]))], "feature 1",
     "not finite"),
    ([feature(polygon([[0, 0], [1e13, 0], [0, 1], [0, 0]]))], "feature 1", "beyond"),
    ([feature(polygon(SQUARE), measurements={"Area": "big"})], "feature 1", "not a number"),
    ([feature(polygon(SQUARE), measurements=[{"value": 1}])], "feature 1", "measurements"),
    ([feature(polygon(SQUARE), classification=7)], "feature 1", "classification"),
    ([feature(polygon(SQUARE), classification={"names": "Tumor"})], "feature 1", "names"),
    ([feature(polygon(SQUARE), classification={"name": "T", "color": "red"})], "feature 1",
     "colour"),
    ([{"type": "Feature", "geometry": polygon(SQUARE), "properties": [1]}], "feature 1",
     "properties"),
])
def test_bad_files_are_one_line_naming_file_and_feature(tmp_path, doc, where, words) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(InputError) as info:
        read_annotations(path)
    exc = info.value
    assert Path(exc.path) == path and "\n" not in exc.problem and words in exc.problem
    if where is not None:
        assert exc.problem.startswith(where + ":"), exc.problem


def test_truncated_gzip_and_missing_file(tmp_path) -> None:
    cut = tmp_path / "cut.geojson.gz"
    cut.write_bytes(gzip.compress(b'{"type": "FeatureCollection", "features": []}')[:-6])
    with pytest.raises(InputError, match="decompress"):
        read_annotations(cut)
    with pytest.raises(InputError, match="cannot read"):
        read_annotations(tmp_path / "missing.geojson")


def test_class_names_map_to_ours() -> None:
    assert [tissue_class(n) for n in ("Tumor", "stroma", " Immune cells ", "NECROSIS", "tum",
                                      "Lymphocytic infiltrate", "Other", "Region*")] == [
        "TUM", "STR", "LYM", "NEC", "TUM", "LYM", None, None]
    assert tissue_class("Tumor", ["STR"]) is None  # only the model's classes


def test_roi_is_the_union_of_a_class(tmp_path) -> None:
    doc = [feature(polygon(SQUARE, HOLE), classification={"name": "Tumor"}),
           feature(polygon([[30, 0], [60, 0], [60, 10], [30, 10], [30, 0]]),
                   classification={"name": "TUM"}),
           feature(polygon([[100, 100], [110, 100], [110, 110], [100, 100]]),
                   classification={"name": "Other"})]
    path = write(tmp_path / "r.geojson", doc)
    annotations = read_annotations(path)
    tumour = Roi.from_annotations(annotations, "tumor", path)
    assert tumour.geometry.area == pytest.approx(1600 - 100 + 200)  # holes stay out
    assert Roi.from_annotations(annotations, "TUM").geometry.equals(tumour.geometry)
    assert Roi.from_annotations(annotations, "other").bounds == (100, 100, 10, 10)
    assert Roi.from_annotations(annotations).geometry.area == pytest.approx(1700 + 50)
    with pytest.raises(InputError, match="of class 'Necrosis'.*Other, TUM, Tumor"):
        Roi.from_annotations(annotations, "Necrosis", path)
    # as predict_tiled takes it: its vertices for a store's fingerprint, the geometry back
    assert len(tumour) == len(list(tumour)) == shapely.get_num_coordinates(tumour.geometry)
    assert shape(tumour).equals(tumour.geometry)
    assert isinstance(as_roi(tumour.geometry), Roi) and as_roi(None) is None
    assert as_roi([(0, 0), (1, 0), (0, 1)]) == [(0, 0), (1, 0), (0, 1)]


# ---- the round trip through our export -----------------------------------------------------
def label_map() -> np.ndarray:
    """Five regions of four classes: one with two holes (one of them another class's
    region), an island in a region touching the map's edge."""
    yy, xx = np.mgrid[:260, :300]
    labels = np.zeros((260, 300), np.uint8)
    labels[10:120, 20:160] = 1
    labels[30:60, 40:80] = 0  # holes of 30 x 40 px: larger than the 400 px² minimum
    labels[70:100, 100:140] = 3
    labels[((yy - 190) ** 2 + (xx - 80) ** 2) < 45**2] = 2
    labels[140:260, 200:300] = 4  # to the edge
    labels[150:200, 230:260] = 1  # an island inside it
    return labels


def rasterise(annotations: list[Annotation], shape_hw: tuple[int, int],
              names: list[str]) -> np.ndarray:
    """Pixels whose centres lie in each annotation (the rule of ``--roi``), as labels."""
    yy, xx = np.mgrid[: shape_hw[0], : shape_hw[1]] + 0.5
    out = np.zeros(shape_hw, np.uint8)
    for a in sorted(annotations, key=lambda a: -a.geometry.area):  # islands last
        (cls,) = a.classes()
        out[shapely.intersects_xy(a.geometry, xx, yy)] = names.index(cls) + 1
    return out


def features_of(path: Path) -> list[tuple[str, Polygon]]:
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as fh:
        doc = json.load(fh)
    out = [(f["properties"]["classification"]["name"], shape(f["geometry"]))
           for f in doc["features"]]  # in a stable order: by class, then place
    return sorted(out, key=lambda f: (tissue_class(f[0]), np.round(f[1].bounds, 1).tolist()))


@pytest.mark.parametrize("names", ["exported", "ours", "gzip"])
def test_import_then_export_again_reproduces_every_feature(tmp_path, names) -> None:
    labels = label_map()
    store = store_from_labels(labels, tmp_path / "a.zarr", scale=(0.5, 0.5),
                              units=("µm", "µm"))
    first = tmp_path / ("a.geojson.gz" if names == "gzip" else "a.geojson")
    export_geojson(store, first)
    if names == "ours":  # the file as our export wrote it before QuPath's names
        doc = json.loads(first.read_text())
        for f in doc["features"]:
            cls = f["properties"]["classification"]
            cls["name"] = tissue_class(cls["name"]) or cls["name"]
        first.write_text(json.dumps(doc))
    annotations = read_annotations(first)
    again = rasterise(annotations, labels.shape, list(store.class_names))
    assert np.array_equal(again, labels)  # exactly the pixels exported
    store2 = store_from_labels(again, tmp_path / "b.zarr", scale=(0.5, 0.5),
                               units=("µm", "µm"))
    second = export_geojson(store2, tmp_path / first.name.replace("a.", "b."))
    before, after = features_of(first), features_of(second)
    assert len(before) == len(after) == len(annotations) == 5
    assert [tissue_class(n) for n, _ in before] == [tissue_class(n) for n, _ in after]
    assert {tissue_class(n) for n, _ in before} == {"TUM", "STR", "LYM", "NEC"}
    error = max(shapely.hausdorff_distance(a, b) for (_, a), (_, b) in
                zip(before, after, strict=True))
    assert error <= 0.5
    holes = sorted(len(p.interiors) for _, p in before)
    assert holes == [0, 0, 0, 1, 2]


# ---- lpd predict --roi ----------------------------------------------------------------------
def test_predict_roi_labels_exactly_the_pixels_of_an_imported_polygon(
        tmp_path, tiny_checkpoint, small_slide, capsys) -> None:
    """A Tumor polygon with a hole and a second part (and an "Other" one, left out by
    --roi-class): outside them every label is 0; inside, the labels of the plain run."""
    doc = [feature({"type": "MultiPolygon", "coordinates": [
        [[[20, 30], [150, 40], [140, 180], [30, 170], [20, 30]],
         [[55, 75], [95, 70], [90, 120], [60, 115], [55, 75]]],
        [[[180, 120], [250, 125], [240, 215], [180, 120]]]]},
        objectType="annotation", classification={"name": "Tumor", "color": [200, 0, 0]}),
        feature(polygon([[0, 0], [440, 0], [440, 20], [0, 20], [0, 0]]),
                classification={"name": "Other"})]
    path = write(tmp_path / "roi.geojson", doc)
    geometry = read_annotations(path)[0].geometry
    common = ["predict", str(small_slide), "--checkpoint", str(tiny_checkpoint), "--device",
              "cpu", "--batch-size", "4", "--tissue-threshold", "0"]
    x0, y0, x1, y1 = geometry.bounds
    region = [str(int(v)) for v in (x0, y0, np.ceil(x1) - int(x0), np.ceil(y1) - int(y0))]
    assert main([*common, "--out", str(tmp_path / "plain.zarr"), "--region", *region]) == 0
    assert main([*common, "--out", str(tmp_path / "roi.zarr"), "--roi", str(path),
                 "--roi-class", "tumor"]) == 0
    assert f"region x={region[0]} y={region[1]} w={region[2]} h={region[3]}" in \
        capsys.readouterr().err
    plain, roi = OutputStore.open(tmp_path / "plain.zarr"), OutputStore.open(tmp_path / "roi.zarr")
    assert roi.shape == plain.shape and roi.offset == plain.offset
    h, w = roi.shape
    ox, oy = roi.offset
    rows, cols = np.mgrid[:h, :w] + 0.5
    mask = shapely.intersects_xy(geometry, ox + cols * roi.scale, oy + rows * roi.scale)
    got, ref = roi.labels[...], plain.labels[...]
    assert (got[~mask] == 0).all() and 0.3 < mask.mean() < 0.9
    assert np.array_equal(got[mask], ref[mask]) and (got[mask] > 0).mean() > 0.5


def test_predict_roi_errors_name_the_file(tmp_path, small_slide, capsys) -> None:
    far = write(tmp_path / "far.geojson",
                [feature(polygon([[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]))])
    base = ["predict", str(small_slide), "--out", str(tmp_path / "o.zarr"), "--checkpoint",
            "none.safetensors"]
    assert main([*base, "--roi", str(far)]) == 2  # before any model is loaded
    assert f"{far}: its polygons lie outside the slide" in capsys.readouterr().err
    assert main([*base, "--roi", str(far), "--roi-class", "Tumor"]) == 2
    assert "no polygon of class 'Tumor'" in capsys.readouterr().err
    assert main([*base, "--roi-class", "Tumor"]) == 2
    assert "--roi-class needs --roi" in capsys.readouterr().err
    near = write(tmp_path / "near.geojson",
                 [feature(polygon([[10, 10], [60, 10], [60, 60], [10, 10]]))])
    assert main([*base, "--roi", str(near), "--region", "100", "100", "50", "50"]) == 2
    assert f"{near}: its polygons do not overlap the region" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


# ---- anything else ---------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**13) | st.floats()
    | st.sampled_from(["Polygon", "MultiPolygon", "Feature", "Point", "Tumor", "NaN"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "geometry", "properties", "coordinates", "features",
                         "classification", "names", "name", "color", "measurements", "id",
                         "objectType", "parentClass", "value"]), inner, max_size=4),
    max_leaves=25)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=JSON, wrap=st.sampled_from(["bare", "feature", "collection"]))
def test_fuzz_any_json_is_read_or_one_clear_line(tmp_path, doc, wrap) -> None:
    if wrap == "feature":
        doc = [{"type": "Feature", "geometry": doc, "properties": {"classification": doc}}]
    elif wrap == "collection":
        doc = {"type": "FeatureCollection", "features": [doc, feature(polygon(SQUARE))]}
    path = tmp_path / "fuzz.geojson"
    path.write_text(json.dumps(doc))
    try:
        got = read_annotations(path)
    except InputError as exc:
        assert Path(exc.path) == path and exc.problem and "\n" not in exc.problem
        return
    for a in got:
        assert a.geometry.is_valid and a.geometry.area > 0
