"""Exports of a prediction store: label TIFF, QuPath GeoJSON, per-class area CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.errors import InputError
from lpd.io import geojson
from lpd.io.export import export_csv, export_tiff
from lpd.io.geojson import export_geojson
from lpd.io.store import OutputStore

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]
SHAPE = (300, 260)


def known_labels() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[100:150, 190:250] = 1  # a rectangle
    labels[20:90, 20:90] = 2  # a square ring: hole 40..70
    labels[40:70, 40:70] = 0
    labels[200:280, :] = 3  # a band across the whole width (several blocks)
    return labels


def make_store(path, labels=None, mpp=0.5, complete=True) -> OutputStore:
    labels = known_labels() if labels is None else labels
    store = OutputStore.create(
        path, shape=labels.shape, tile=50, chunk=100, class_names=CLASS_NAMES,
        class_colours=COLOURS, mpp=mpp, scale=2.0, offset=(1000.0, 2000.0),
    )
    for i in range(-(-labels.shape[0] // 50)):
        for j in range(-(-labels.shape[1] // 50)):
            store.put_tile(i, j, labels[i * 50 : (i + 1) * 50, j * 50 : (j + 1) * 50])
    if complete:
        list(store.build_pyramid())
        store.mark_complete()
    return store


def test_tiff_is_pyramidal_tiled_and_matches(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    store = make_store(tmp_path / "s.zarr")
    out = export_tiff(store, tmp_path / "labels.tif")
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.compression == 8  # deflate
        assert np.array_equal(page.asarray(), known_labels())
        assert len(page.subifds) == store.n_levels - 1 == 2
        assert np.array_equal(tif.series[0].levels[1].asarray(), store.level(1)[...])
        meta = json.loads(page.description)
        assert [c["name"] for c in meta["classes"]] == ["background", *CLASS_NAMES]
        assert meta["classes"][1]["colour"] == list(COLOURS[0]) and meta["mpp"] == 0.5
        assert page.tags["XResolution"].value == (20000, 1)  # px per cm at 0.5 µm/px


def test_geojson_polygons_in_level0_pixels(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(geojson, "BLOCK", 64)  # many blocks: polygons must merge across them
    store = make_store(tmp_path / "s.zarr")
    data = json.loads(export_geojson(store, tmp_path / "out.geojson",
                                     class_names="lpd").read_text())
    assert data["type"] == "FeatureCollection"
    by_class: dict[str, list] = {}
    for f in data["features"]:
        props = f["properties"]
        assert props["objectType"] == "annotation"
        name = props["classification"]["name"]
        assert props["classification"]["color"] == list(COLOURS[CLASS_NAMES.index(name)])
        geom = shape(f["geometry"])
        assert geom.geom_type == "Polygon" and geom.is_valid
        by_class.setdefault(name, []).append(geom)
    assert sorted(by_class) == ["LYM", "STR", "TUM"] and all(len(v) == 1 for v in by_class.values())
    # pixel (row, col) -> level-0 (x, y) = offset + (col, row) * scale (up to the default
    # simplification, 0.25 px = 0.5 level-0 px here)
    assert by_class["TUM"][0].bounds == pytest.approx((1380, 2200, 1500, 2300), abs=0.5)
    ring = by_class["STR"][0]
    assert len(ring.interiors) == 1
    hole = shapely.Polygon(ring.interiors[0]).bounds
    assert hole == pytest.approx((1080, 2080, 1140, 2140), abs=0.5)
    band = by_class["LYM"][0]
    assert band.bounds == pytest.approx((1000, 2400, 1520, 2560), abs=0.5)
    assert band.area == pytest.approx(260 * 80 * 4, rel=1e-3)
    assert len(band.exterior.coords) <= 10  # seams between blocks left no vertices


def test_geojson_from_a_coarser_level(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    data = json.loads(export_geojson(store, tmp_path / "c.geojson", level=1,
                                     class_names="lpd").read_text())
    tum = [shape(f["geometry"]) for f in data["features"]
           if f["properties"]["classification"]["name"] == "TUM"]
    assert len(tum) == 1 and tum[0].bounds == pytest.approx((1380, 2200, 1500, 2300), abs=4)
    with pytest.raises(InputError, match="level 5"):
        export_geojson(store, tmp_path / "x.geojson", level=5)


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_csv_areas_and_percentages(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    rows = read_csv(export_csv(store, tmp_path / "areas.csv"))
    assert [r["class"] for r in rows] == ["background", *CLASS_NAMES]
    counts = np.bincount(known_labels().ravel(), minlength=5)
    for r in rows:
        assert int(r["pixels"]) == counts[int(r["label"])]
        assert float(r["area_um2"]) == pytest.approx(counts[int(r["label"])] * 0.25)
        assert r["note"] == ""
    assert sum(float(r["percent_tissue"]) for r in rows[1:]) == pytest.approx(100, abs=1e-4)
    assert sum(float(r["percent_region"]) for r in rows) == pytest.approx(100, abs=1e-4)
    assert rows[0]["percent_tissue"] == ""


def test_csv_flags_unknown_mpp(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr", mpp=None)
    rows = read_csv(export_csv(store, tmp_path / "areas.csv"))
    assert all(r["area_um2"] == "" for r in rows)
    assert all("microns per pixel unknown" in r["note"] for r in rows)
    assert sum(float(r["percent_tissue"]) for r in rows[1:]) == pytest.approx(100, abs=1e-4)


def test_incomplete_store_is_refused_unless_asked(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr", complete=False)
    for fn, name in ((export_tiff, "a.tif"), (export_geojson, "a.geojson"), (export_csv, "a.csv")):
        with pytest.raises(InputError, match="incomplete"):
            fn(store, tmp_path / name)
        assert not (tmp_path / name).exists()
    rows = read_csv(export_csv(store, tmp_path / "a.csv", allow_incomplete=True))
    assert len(rows) == 5
