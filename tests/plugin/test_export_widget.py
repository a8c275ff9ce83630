"""Export widget: every format is written and opens again; unfinished results refused."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from helpers_segment import wait_for

from lpd.io.store import OutputStore
from lpd.io.store_tools import copy_store
from napari_lpd._reader import napari_get_reader
from napari_lpd.widgets.export import ExportWidget, safe_name


def labels_map() -> np.ndarray:
    labels = np.zeros((300, 400), np.uint8)
    labels[20:120, 30:200] = 1
    labels[150:280, 50:150] = 2
    labels[160:260, 220:380] = 3
    labels[200:240, 260:300] = 4  # a hole of NEC inside LYM
    return labels


def test_export_all_formats_and_open_again(make_napari_viewer, qtbot, tmp_path) -> None:
    viewer = make_napari_viewer()
    viewer.add_labels(labels_map(), name="GT [demo]", scale=(0.5, 0.5), units=("µm", "µm"))
    widget = ExportWidget(viewer)
    assert widget.name_edit.text() == "GT_demo"
    widget.folder_edit.setText(str(tmp_path / "out"))
    wait_for(qtbot, widget.export())
    names = sorted(p.name for p in widget.written)
    assert names == ["GT_demo-areas.csv", "GT_demo-labels.tiff", "GT_demo.geojson", "GT_demo.ome.zarr"]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == names  # no temp files left behind
    # TIFF: the same labels, read back by the plugin's reader as Labels in µm
    np.testing.assert_array_equal(tifffile.imread(out / "GT_demo-labels.tiff"), labels_map())
    [(data, meta, kind)] = napari_get_reader(str(out / "GT_demo-labels.tiff"))(str(out / "GT_demo-labels.tiff"))
    assert kind == "labels" and np.allclose(meta["scale"], (0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(data), labels_map())
    # OME-Zarr: a complete store with the same labels
    store = OutputStore.open(out / "GT_demo.ome.zarr")
    assert store.complete and store.mpp == pytest.approx(0.5)
    np.testing.assert_array_equal(np.asarray(store.labels[...]), labels_map())
    # GeoJSON: QuPath annotations with QuPath's built-in class names (the default)
    features = json.loads((out / "GT_demo.geojson").read_text())["features"]
    classes = {f["properties"]["classification"]["name"] for f in features}
    assert classes == {"Tumor", "Stroma", "Immune cells", "Necrosis"}
    assert all(f["properties"]["objectType"] == "annotation" for f in features)
    # CSV: areas in µm² (0.25 µm² per pixel)
    rows = {r["class"]: r for r in csv.DictReader((out / "GT_demo-areas.csv").open())}
    assert int(rows["TUM"]["pixels"]) == 100 * 170
    assert float(rows["TUM"]["area_um2"]) == pytest.approx(100 * 170 * 0.25)
    assert "Exported" in widget.status.text()


def test_unfinished_result_is_refused(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    viewer.add_labels(labels_map(), name="LPD labels [x] (running)",
                      metadata={"lpd_complete": False})
    widget = ExportWidget(viewer)
    widget.folder_edit.setText(str(tmp_path))
    assert widget.export() is None
    assert "unfinished" in widget.status.text()
    assert list(tmp_path.iterdir()) == []


def test_copy_store_replaces_atomically(tmp_path) -> None:
    from lpd.io.store_tools import store_from_labels

    a = store_from_labels(labels_map(), tmp_path / "a.zarr")
    target = copy_store(a, tmp_path / "copy.zarr")
    again = copy_store(a, target)
    assert again == target and OutputStore.open(target).complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "copy.zarr"]


def test_safe_name() -> None:
    assert safe_name("LPD labels [CMU-1 region]") == "LPD_labels_CMU-1_region"
    assert safe_name("///") == "labels"
