"""Reader and writers: slides as scaled multiscale images, stores as Labels (incomplete ones
marked), label TIFF / GeoJSON written and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lpd.classes import CLASS_COLOURS
from lpd.data.sample import CMU_SLIDE, TCGA_SLIDE
from lpd.io.store import OutputStore
from lpd.io.store_tools import store_from_labels
from napari_lpd._layers import INCOMPLETE
from napari_lpd._reader import napari_get_reader
from napari_lpd._writer import write_labels_geojson, write_labels_tiff


def read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    return reader(str(path))


def labels_map() -> np.ndarray:
    labels = np.zeros((260, 300), np.uint8)
    labels[10:100, 20:150] = 1
    labels[120:250, 30:120] = 3
    labels[130:200, 160:290] = 2
    return labels


def test_svs_is_a_scaled_rgb_image() -> None:
    [(data, meta, kind)] = read(CMU_SLIDE)
    assert kind == "image" and meta["rgb"]
    assert meta["scale"] == pytest.approx((0.499, 0.499)) and meta["units"] == ("µm", "µm")
    assert meta["metadata"]["lpd_path"] == str(CMU_SLIDE)
    assert data.shape == (2967, 2220, 3)


def test_two_level_slide_is_multiscale_without_mpp() -> None:
    [(data, meta, kind)] = read(TCGA_SLIDE)
    assert meta["multiscale"] and [lv.shape[:2] for lv in data] == [(3567, 4443), (1783, 2221)]
    assert meta["units"] == ("pixel", "pixel") and meta["scale"] == (1.0, 1.0)


def test_not_ours_is_declined(tmp_path) -> None:
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    other = tmp_path / "other.zarr"
    other.mkdir()
    assert napari_get_reader(str(other)) is None


def test_store_reads_as_labels_and_incomplete_is_marked(tmp_path) -> None:
    done = store_from_labels(labels_map(), tmp_path / "done.zarr", scale=(0.5, 0.5),
                             units=("µm", "µm"))
    [(data, meta, kind)] = read(done.path)
    assert kind == "labels" and meta["name"] == "LPD labels [done]"
    assert meta["metadata"]["lpd_complete"] and meta.get("visible", True)
    np.testing.assert_array_equal(np.asarray(data), labels_map())
    colour = meta["colormap"].map(np.array([1]))[0]
    assert np.allclose(colour[:3] * 255, CLASS_COLOURS["TUM"], atol=1)
    assert meta["colormap"].map(np.array([0]))[0][3] == 0  # background is clear
    # an interrupted run: the store exists but is not complete
    part = OutputStore.create(tmp_path / "part.zarr", shape=(260, 300), tile=256,
                              class_names=["TUM", "STR", "LYM", "NEC"],
                              class_colours=[CLASS_COLOURS[c] for c in CLASS_COLOURS],
                              mpp=0.5, scale=1.0, offset=(0, 0))
    [(data, meta, kind)] = read(part.path)
    assert meta["name"].endswith(INCOMPLETE) and not meta["visible"]
    assert meta["metadata"]["lpd_complete"] is False


def test_labels_tiff_round_trip(tmp_path) -> None:
    meta = {"scale": (0.25, 0.25), "translate": (0.0, 0.0), "units": ("µm", "µm"),
            "metadata": {}}
    [written] = write_labels_tiff(str(tmp_path / "labels"), labels_map(), meta)
    assert written.endswith("labels.tif")
    [(data, back, kind)] = read(written)
    assert kind == "labels" and back["scale"] == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(data), labels_map())
    assert back["metadata"]["lpd_class_names"] == ["TUM", "STR", "LYM", "NEC"]


def test_geojson_writer(tmp_path) -> None:
    [written] = write_labels_geojson(str(tmp_path / "labels.geojson"), labels_map(),
                                     {"metadata": {}})
    collection = json.loads(open(written).read())
    assert collection["type"] == "FeatureCollection"
    by_class = {f["properties"]["classification"]["name"]: f for f in collection["features"]}
    assert set(by_class) == {"Tumor", "Stroma", "Immune cells"}  # QuPath's built-in classes
    xs = [x for x, _ in by_class["Tumor"]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(20, abs=0.6) and max(xs) == pytest.approx(150, abs=0.6)


def test_writer_refuses_an_incomplete_result(tmp_path) -> None:
    part = OutputStore.create(tmp_path / "part.zarr", shape=(10, 10), tile=10,
                              class_names=["TUM"], class_colours=[(1, 2, 3)], mpp=None,
                              scale=1.0, offset=(0, 0))
    from lpd.errors import InputError

    with pytest.raises(InputError, match="incomplete"):
        write_labels_tiff(str(tmp_path / "x.tif"), np.zeros((10, 10), np.uint8),
                          {"metadata": {"lpd_store": str(part.path)}})
    assert not (tmp_path / "x.tif").exists()


def test_viewer_opens_a_slide_with_the_plugin(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(CMU_SLIDE), plugin="napari-lpd")
    assert layer.rgb and layer.scale[0] == pytest.approx(0.499)
    assert str(layer.units[0]) == "micrometer"


def test_manifest_menus_and_widgets() -> None:
    """Widgets sit in napari's own menus (Layers > Segment / Visualize / Annotate, File >
    IO utilities), under ids napari defines."""
    from pathlib import Path

    import npe2
    from napari._app_model.constants import MenuId

    manifest = npe2.PluginManifest.from_file(Path(__file__).resolve().parents[2] / "napari.yaml")
    widgets = {w.command: w.display_name for w in manifest.contributions.widgets}
    assert widgets["napari-lpd.tags"] == "Tag regions"
    assert widgets["napari-lpd.finetune"] == "Fine-tune"
    menus = manifest.contributions.menus
    napari_menus = {m.value for m in MenuId}
    assert set(menus) <= napari_menus
    placed = {item.command for items in menus.values() for item in items}
    assert placed == set(widgets)
    assert "napari-lpd.segment" in {i.command for i in menus["napari/layers/segment"]}
    readers = manifest.contributions.readers[0].filename_patterns
    assert {"*.svs", "*.ome.tif", "*.ndpi", "*.zarr", "*.png", "*.jpg"} <= set(readers)


def test_nct_mosaic_sample_has_image_and_exact_ground_truth() -> None:
    from napari_lpd._sample_data import MOSAIC_SIZE, nct_mosaic_layers

    [(rgb, image_meta, image_kind), (labels, labels_meta, labels_kind)] = nct_mosaic_layers()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert rgb.shape == (MOSAIC_SIZE, MOSAIC_SIZE, 3) and labels.shape == rgb.shape[:2]
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}  # every class, and background
    assert image_meta["scale"] == labels_meta["scale"] == (0.5, 0.5)
    assert labels_meta["colormap"].map(np.array([4]))[0][:3] * 255 == pytest.approx(
        CLASS_COLOURS["NEC"], abs=1)
