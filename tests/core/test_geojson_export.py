"""QuPath GeoJSON export (lpd.io.geojson): QuPath's classes, measurements, object types,
gzip, the minimum region area, level-0 coordinates; its options in lpd.export and lpd export."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

import lpd
from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.cli import export_cmd
from lpd.cli.main import main
from lpd.io import geojson
from lpd.io.geojson import QUPATH_CLASSES, export_geojson
from lpd.io.store import OutputStore

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


def make_store(path: Path, labels: np.ndarray, *, mpp: float | None = 0.5, scale: float = 1.0,
               offset: tuple[float, float] = (0.0, 0.0)) -> OutputStore:
    store = OutputStore.create(path, shape=labels.shape, tile=32, chunk=64,
                               class_names=CLASS_NAMES, class_colours=COLOURS, mpp=mpp,
                               scale=scale, offset=offset)
    t = 32
    for i in range(-(-labels.shape[0] // t)):
        for j in range(-(-labels.shape[1] // t)):
            store.put_tile(i, j, labels[i * t:(i + 1) * t, j * t:(j + 1) * t])
    list(store.build_pyramid())
    store.mark_complete()
    return store


def four_classes() -> np.ndarray:
    labels = np.zeros((96, 128), np.uint8)
    labels[4:44, 4:60] = 1
    labels[4:44, 68:124] = 2
    labels[52:92, 4:60] = 3
    labels[52:92, 68:124] = 4
    return labels


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    assert data["type"] == "FeatureCollection"
    return data["features"]


def by_name(features: list[dict]) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in features:
        out.setdefault(f["properties"]["classification"]["name"], []).append(f)
    return out


def test_qupath_classes_and_colours_by_default(tmp_path) -> None:
    # QuPath's PathClass.StandardPathClasses (qupath-core): names and packRGB colours
    assert QUPATH_CLASSES == {"TUM": ("Tumor", (200, 0, 0)), "STR": ("Stroma", (150, 200, 150)),
                              "LYM": ("Immune cells", (160, 90, 160)),
                              "NEC": ("Necrosis", (50, 50, 50))}
    store = make_store(tmp_path / "s.zarr", four_classes())
    features = read(export_geojson(store, tmp_path / "q.geojson"))
    classes = by_name(features)
    assert sorted(classes) == ["Immune cells", "Necrosis", "Stroma", "Tumor"]
    for name, colour in QUPATH_CLASSES.values():
        [f] = classes[name]
        assert f["properties"]["classification"] == {"name": name, "color": list(colour)}
        assert f["properties"]["objectType"] == "annotation"
        assert "isLocked" not in f["properties"]
    assert store.class_colours[0] == CLASS_COLOURS["TUM"]  # the store keeps its palette


def test_lpd_class_names_on_request(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr", four_classes())
    classes = by_name(read(export_geojson(store, tmp_path / "l.geojson", class_names="lpd")))
    assert sorted(classes) == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        assert classes[name][0]["properties"]["classification"]["color"] == list(
            CLASS_COLOURS[name])
    with pytest.raises(ValueError, match="class_names"):
        export_geojson(store, tmp_path / "x.geojson", class_names="QuPath")


def test_measurements_in_um_and_in_px(tmp_path) -> None:
    labels = np.zeros((80, 100), np.uint8)
    labels[10:60, 20:80] = 1  # 50 x 60 store px; at scale 2: 100 x 120 level-0 px
    store = make_store(tmp_path / "s.zarr", labels, mpp=0.5, scale=2.0)
    [f] = read(export_geojson(store, tmp_path / "m.geojson", simplify=0))
    poly = shape(f["geometry"])
    m = f["properties"]["measurements"]
    assert set(m) == {"Area µm^2", "Perimeter µm"}
    # level-0 px are 0.5 / 2 = 0.25 µm: area = pixel area x mpp² of the store's pixels
    assert m["Area µm^2"] == pytest.approx(poly.area * 0.25**2, abs=1e-3)
    assert m["Area µm^2"] == pytest.approx(50 * 60 * 0.5**2, rel=1e-3)  # corners cut: 1/8 px
    assert m["Perimeter µm"] == pytest.approx(poly.length * 0.25, abs=1e-3)
    assert m["Perimeter µm"] == pytest.approx(2 * (50 + 60) * 0.5, rel=0.01)
    nompp = make_store(tmp_path / "n.zarr", labels, mpp=None, scale=2.0)
    [f] = read(export_geojson(nompp, tmp_path / "n.geojson", simplify=0))
    m = f["properties"]["measurements"]
    assert set(m) == {"Area px^2", "Perimeter px"}
    assert m["Area px^2"] == pytest.approx(100 * 120, rel=1e-3)  # level-0 px
    assert m["Perimeter px"] == pytest.approx(2 * (100 + 120), rel=0.01)


def test_detections_and_gzip(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr", four_classes())
    out = export_geojson(store, tmp_path / "d.geojson.gz", object_type="detection")
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip, chosen by the name
    features = read(out)
    assert len(features) == 4
    assert all(f["properties"]["objectType"] == "detection" for f in features)
    plain = export_geojson(store, tmp_path / "d.geojson", object_type="detection")
    assert json.loads(plain.read_text())["features"] == features
    forced = export_geojson(store, tmp_path / "forced.json", compress=True)
    assert gzip.decompress(forced.read_bytes()).startswith(b'{"type": "FeatureCollection"')
    with pytest.raises(ValueError, match="object_type"):
        export_geojson(store, tmp_path / "x.geojson", object_type="cell")


def test_specks_go_small_holes_fill_big_holes_stay(tmp_path) -> None:
    # 0.5 µm/px at scale 1: 100 µm² = 400 px
    labels = np.zeros((128, 160), np.uint8)
    labels[8:108, 8:108] = 1  # Tumor, 100 x 100 px
    labels[20:30, 20:30] = 0  # a 10 x 10 px hole (25 µm²): filled
    labels[23:26, 23:26] = 3  # a speck of LYM inside it (2.25 µm²): left out
    labels[50:80, 50:80] = 0  # a 30 x 30 px hole (225 µm²): kept
    labels[10:15, 120:125] = 2  # a 5 x 5 px speck of STR (6.25 µm²): left out
    labels[60:85, 125:150] = 4  # 25 x 25 px of NEC (156 µm²): kept
    store = make_store(tmp_path / "s.zarr", labels)
    classes = by_name(read(export_geojson(store, tmp_path / "a.geojson", class_names="lpd",
                                          simplify=0)))
    assert sorted(classes) == ["NEC", "TUM"]
    [tum] = [shape(f["geometry"]) for f in classes["TUM"]]
    assert len(tum.interiors) == 1
    assert shapely.Polygon(tum.interiors[0]).bounds == pytest.approx((50, 50, 80, 80), abs=0.5)
    everything = by_name(read(export_geojson(store, tmp_path / "b.geojson", class_names="lpd",
                                             min_area_um2=0, simplify=0)))
    assert sorted(everything) == ["LYM", "NEC", "STR", "TUM"]
    assert len(shape(everything["TUM"][0]["geometry"]).interiors) == 2
    # a stricter minimum: NEC (156 µm²) goes too
    strict = by_name(read(export_geojson(store, tmp_path / "c.geojson", min_area_um2=200)))
    assert sorted(strict) == ["Tumor"]


def test_minimum_in_px_when_the_mpp_is_unknown(tmp_path) -> None:
    labels = np.zeros((64, 96), np.uint8)
    labels[4:12, 4:12] = 1  # 8 x 8 store px = 16 x 16 = 256 level-0 px² at scale 2: out
    labels[20:35, 40:55] = 2  # 15 x 15 store px = 900 level-0 px²: kept
    store = make_store(tmp_path / "s.zarr", labels, mpp=None, scale=2.0)
    assert geojson.min_area_level0(store) == 400
    kept = by_name(read(export_geojson(store, tmp_path / "a.geojson", class_names="lpd")))
    assert sorted(kept) == ["STR"]
    both = by_name(read(export_geojson(store, tmp_path / "b.geojson", class_names="lpd",
                                       min_area_px=0)))
    assert sorted(both) == ["STR", "TUM"]


def test_coordinates_are_level0_px_with_offset_and_scale(tmp_path) -> None:
    labels = np.zeros((64, 96), np.uint8)
    labels[10:40, 30:90] = 1  # rows 10..40, cols 30..90
    store = make_store(tmp_path / "s.zarr", labels, mpp=0.75, scale=3.0, offset=(500.0, 700.0))
    [f] = read(export_geojson(store, tmp_path / "c.geojson", level=0))
    # x = 500 + col * 3, y = 700 + row * 3 (up to the corners cut by half a store pixel)
    assert shape(f["geometry"]).bounds == pytest.approx((590, 730, 770, 820), abs=1e-6)
    ring = np.asarray(f["geometry"]["coordinates"][0])
    assert shapely.LinearRing(ring).is_ccw  # exterior counter-clockwise, as GeoJSON wants


def test_lpd_export_passes_options_through(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr", four_classes())
    files = lpd.export(store, tmp_path / "out", formats=("geojson", "csv"), class_names="lpd",
                       object_type="detection", compress=True)
    assert files["geojson"] == tmp_path / "out" / "s.geojson.gz"
    features = read(files["geojson"])
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert sorted(by_name(features)) == sorted(CLASS_NAMES)
    with pytest.raises(TypeError, match="colour_names"):
        lpd.export(store, tmp_path / "bad", colour_names="lpd")
    with pytest.raises(ValueError, match="class_names"):  # refused before any file
        lpd.export(store, tmp_path / "bad", class_names="x")
    assert not (tmp_path / "bad").exists()


def test_cli_options(tmp_path, capsys) -> None:
    assert export_cmd.CLASS_NAME_STYLES == geojson.CLASS_NAME_STYLES
    assert export_cmd.OBJECT_TYPES == geojson.OBJECT_TYPES
    assert (export_cmd.MIN_AREA_UM2, export_cmd.MIN_AREA_PX) == (geojson.MIN_AREA_UM2,
                                                                 geojson.MIN_AREA_PX)
    make_store(tmp_path / "s.zarr", four_classes())
    assert main(["export", str(tmp_path / "s.zarr"), "--out-dir", str(tmp_path / "o"),
                 "--class-names", "lpd", "--object-type", "detection", "--min-area", "0",
                 "--gzip"]) == 0
    assert "s.geojson.gz" in capsys.readouterr().out
    features = read(tmp_path / "o" / "s.geojson.gz")
    assert sorted(by_name(features)) == sorted(CLASS_NAMES)
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert main(["export", str(tmp_path / "s.zarr"), "--geojson", str(tmp_path / "g.geojson"),
                 "--gzip"]) == 2
    assert ".geojson.gz" in capsys.readouterr().err
