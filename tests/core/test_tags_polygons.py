"""Polygon tag regions: QuPath annotations imported as tagged regions, the version-2
sidecar (version 1 still read), reshaping, and patches cut only inside the polygons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely import affinity
from shapely.geometry import Polygon, box

from lpd.data.bcss import parse_tags
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tag_patches import MIN_INSIDE
from lpd.data.tags import TagStore, export_training_folder, import_annotations, tag_patches
from lpd.errors import InputError

RING = Polygon([(20, 20), (280, 20), (280, 180), (20, 180)],
               [[(60, 50), (240, 50), (240, 150), (60, 150)]])  # a frame 40 px wide


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rgb, _ = synthetic_tissue((200, 300), seed=5)
    path = tmp_path / "slide.png"
    Image.fromarray(rgb).save(path)
    return path


def feature(geometry: dict, names=None, object_type: str = "annotation", **extra) -> dict:
    props = {"objectType": object_type, **extra}
    if names is not None:
        props["classification"] = {"names": names, "color": [1, 2, 3]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def geojson(tmp_path: Path) -> Path:
    features = [
        feature(shapely.geometry.mapping(RING), ["Tumor", "Immune cells"]),  # QuPath's
        feature({"type": "MultiPolygon", "coordinates": [
            [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
            [[[290, 190], [330, 190], [330, 230], [290, 230], [290, 190]]]]}, ["nec"]),
        feature(shapely.geometry.mapping(box(5, 5, 50, 50)), ["Other"]),
        feature(shapely.geometry.mapping(box(5, 5, 50, 50)), None),
        feature(shapely.geometry.mapping(box(5, 5, 50, 50)), ["Stroma"], "detection"),
        feature(shapely.geometry.mapping(box(5, 5, 50, 50)), ["Stroma", "Positive"]),
        feature(shapely.geometry.mapping(box(400, 400, 450, 450)), ["Stroma"]),
    ]
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_tissue_class_annotations_become_tagged_polygons(image, tmp_path) -> None:
    store = TagStore.load(image, image_size=(200, 300))
    added, notes = import_annotations(store, geojson(tmp_path))
    assert [(r.id, r.classes, r.source) for r in added] == [
        (1, ("TUM", "LYM"), "annotation"), (2, ("NEC",), "annotation"),
        (3, ("NEC",), "annotation"), (4, ("STR",), "annotation")]
    assert added[0].polygon.equals(RING) and len(added[0].polygon.interiors) == 1
    assert added[0].bbox == (20, 20, 260, 160)
    assert added[2].polygon.equals(box(290, 190, 300, 200))  # cut to the image
    assert added[3].polygon.equals(box(5, 5, 50, 50))
    text = "\n".join(notes)
    assert "feature 7: lies outside the image" in text
    assert "1 detection object(s) skipped" in text
    assert "1 annotation(s) of class Other skipped" in text
    assert "1 annotation(s) of class unclassified skipped" in text
    assert "Positive ignored" in text
    again, notes = import_annotations(store, geojson(tmp_path))  # the same file twice
    assert again == [] and sum("already a tag region" in n for n in notes) == 4


def test_polygons_stay_polygons_in_a_version_2_sidecar(image, tmp_path) -> None:
    store = TagStore.load(image, image_size=(200, 300))
    store.add((0, 0, 64, 64), ["STR"], source="grid")
    import_annotations(store, geojson(tmp_path))
    data = json.loads(store.save().read_text())
    assert data["version"] == 2
    regions = {r["id"]: r for r in data["regions"]}
    assert "polygon" not in regions[1] and len(regions[2]["polygon"]) == 2  # exterior, hole
    back = TagStore.load(image)
    assert [r.polygon is None for r in back.regions] == [True, False, False, False, False]
    for before, after in zip(store.regions, back.regions, strict=True):
        assert (before.id, before.bbox, before.classes, before.source) == (
            after.id, after.bbox, after.classes, after.source)
        assert before.polygon is None or before.polygon.equals_exact(after.polygon, 0)
    for rid in (2, 3, 4, 5):
        back.remove(rid)
    assert json.loads(back.save().read_text())["version"] == 1  # no polygon: version 1


def test_a_version_1_sidecar_is_still_read(image) -> None:
    old = {"format": "lpd-tags", "version": 1,
           "image": {"name": "slide.png", "width": 300, "height": 200, "file_bytes": None,
                     "fingerprint": None},
           "class_names": ["TUM", "STR", "LYM", "NEC"],
           "regions": [{"id": 1, "bbox": [10, 20, 30, 40], "classes": ["TUM"],
                        "source": "rectangle"},
                       {"id": 5, "bbox": [0, 0, 64, 64], "classes": [], "source": "grid",
                        "polygon": "ignored in version 1"}]}
    (image.parent / "slide.png.lpd-tags.json").write_text(json.dumps(old))
    store = TagStore.load(image)
    assert [(r.id, r.bbox, r.classes, r.source, r.polygon) for r in store.regions] == [
        (1, (10, 20, 30, 40), ("TUM",), "rectangle", None), (5, (0, 0, 64, 64), (), "grid", None)]


@pytest.mark.parametrize(("polygon", "problem"), [
    ([[[0, 0], [10, 10], [10, 0], [0, 10]]], "not a valid polygon"),
    ([[[0, 0], [1, 0]]], "three or more"),
    ("square", "list of rings"),
    ([[[0, 0], [1e13, 0], [0, 1]]], "beyond"),
])
def test_a_bad_polygon_is_refused_naming_the_region(image, polygon, problem) -> None:
    doc = {"format": "lpd-tags", "version": 2, "class_names": ["TUM"], "regions": [
        {"id": 1, "bbox": [0, 0, 1, 1], "classes": ["TUM"], "source": "annotation",
         "polygon": polygon}]}
    (image.parent / "slide.png.lpd-tags.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=f"region 1 is malformed.*{problem}"):
        TagStore.load(image)


def test_an_edited_outline_moves_the_holes_along_or_keeps_those_inside(image) -> None:
    store = TagStore(image)
    region = store.add_polygon(RING, ["TUM"])
    outline = np.asarray(RING.exterior.coords)[:-1]
    store.update(region.id, outline=outline * 0.5 + [3, 4])  # moved and shrunk
    expected = affinity.affine_transform(RING, [0.5, 0, 0, 0.5, 3, 4])
    assert region.polygon.equals_exact(expected, 1e-9) and region.bbox == (13, 14, 130, 80)
    hole = Polygon(region.polygon.interiors[0])  # (33, 29) to (123, 79)
    store.update(region.id, outline=[(0, 0), (200, 0), (200, 100), (100, 120), (0, 100)])
    assert region.polygon.exterior.bounds == (0, 0, 200, 120)  # a new outline, not a move:
    assert Polygon(region.polygon.interiors[0]).equals(hole)  # the hole inside it stays
    store.update(region.id, outline=[(0, 0), (100, 0), (100, 100), (30, 130), (0, 100)])
    assert len(region.polygon.interiors) == 0  # the hole reaches past this one: gone
    with pytest.raises(InputError, match="region 1 is a polygon"):
        store.update(region.id, bbox=(0, 0, 5, 5))
    with pytest.raises(InputError, match="no area"):
        store.update(region.id, outline=[(0, 0), (1, 1), (2, 2)])


def test_patches_are_cut_only_inside_the_polygon(image) -> None:
    rgb = np.asarray(Image.open(image))
    store = TagStore(image, image_size=(200, 300))
    ring = store.add_polygon(RING, ["TUM"])
    store.add((20, 20, 260, 160), ["STR"])  # the ring's box, as a rectangle
    store.add_polygon(box(100, 90, 120, 110), ["NEC"])  # smaller than half a patch
    plan = tag_patches(store, rgb, patch_size=32)
    by_region = {i: [p for p in plan.patches if p.region_id == i] for i in (1, 2, 3)}
    assert len(by_region[2]) > len(by_region[1]) > 0  # the frame's patches only
    for patch in by_region[1]:
        cut = box(patch.x, patch.y, patch.x + 32, patch.y + 32)
        assert shapely.intersection(ring.polygon, cut).area / cut.area >= MIN_INSIDE
        assert patch.read().shape == (32, 32, 3)
    outside = [p for p in by_region[2] if shapely.intersection(
        RING, box(p.x, p.y, p.x + 32, p.y + 32)).area < MIN_INSIDE * 32 * 32]
    assert outside  # the rectangle's patches in the hole: left out of the polygon's
    assert by_region[3] == [] and any("region 3: no patch" in n for n in plan.notes)


def test_exported_training_patches_lie_inside_the_imported_polygons(image, tmp_path) -> None:
    rgb = np.asarray(Image.open(image))
    store = TagStore.load(image, image_size=(200, 300))
    import_annotations(store, geojson(tmp_path))
    written = export_training_folder(store, rgb, tmp_path / "out", patch_size=32)
    assert written
    polygons = {}  # classes -> the union of the regions tagged so
    for r in store.regions:
        polygons[r.classes] = shapely.union_all([polygons.get(r.classes, Polygon()), r.polygon])
    for path in written:
        x, y = (int(v) for v in path.stem.split("_x")[1].split("+")[0].split("_y"))
        tags = tuple(int(t) for t in parse_tags(path.name))
        names = tuple(n for n, t in zip(("TUM", "STR", "LYM", "NEC"), tags, strict=True) if t)
        cut = box(x, y, x + 32, y + 32)
        assert shapely.intersection(polygons[names], cut).area >= MIN_INSIDE * cut.area
