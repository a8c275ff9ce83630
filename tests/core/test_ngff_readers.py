"""OME-Zarr others can open: ome-zarr-py's reader finds our store's labels as labels (class
names, colours, pixels), in the store itself (NGFF 0.5) and in its NGFF 0.4 copy (zarr v2,
for Bio-Formats/QuPath); ome-zarr-models validates both against the spec."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from helpers_layouts import as_v1_layout

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.io.formats import FORMATS, export
from lpd.io.ngff_export import write_ngff_v04, write_ome_zarr
from lpd.io.store import OutputStore

ome_reader = pytest.importorskip("ome_zarr.reader")
ome_io = pytest.importorskip("ome_zarr.io")

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> OutputStore:
    """A complete store, 3 levels (chunk 100 for 300 x 260), with prototype maps."""
    path = tmp_path_factory.mktemp("ngff") / "s.zarr"
    labels = np.random.default_rng(0).integers(0, 5, (300, 260), dtype=np.uint8)
    st = OutputStore.create(path, shape=labels.shape, tile=50, chunk=100,
                            class_names=CLASS_NAMES, class_colours=COLOURS, mpp=0.5,
                            scale=2.0, offset=(1000.0, 2000.0), prototypes=4,
                            prototype_stride=10.0)
    for i in range(6):
        for j in range(6):
            st.put_tile(i, j, labels[i * 50 : (i + 1) * 50, j * 50 : (j + 1) * 50])
    list(st.build_pyramid())
    st.mark_complete()
    return OutputStore.open(path)


def label_nodes(path) -> list:
    """The nodes ome-zarr-py's Reader finds that are label images (``image-label``)."""
    nodes = list(ome_reader.Reader(ome_io.parse_url(str(path)))())
    return [n for n in nodes if n.load(ome_reader.Label)]


def check_labels_node(node, store: OutputStore) -> None:
    """Class names, colours and pixels (level 0 and the coarsest) as the store has them."""
    meta = node.metadata
    assert {v: p["class"] for v, p in meta["properties"].items()} == {
        0: "background", **{i + 1: n for i, n in enumerate(store.class_names)}}
    assert meta["color"][0][3] == 0  # background transparent
    for i, colour in enumerate(store.class_colours):
        assert meta["color"][i + 1] == pytest.approx([c / 255 for c in colour] + [1.0])
    assert len(node.data) == store.n_levels == 3
    for lv in (0, store.n_levels - 1):
        np.testing.assert_array_equal(np.asarray(node.data[lv]), store.level(lv)[...])
    scale = meta["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([store.mpp, store.mpp])  # µm per output pixel


def test_ome_zarr_py_finds_the_store_labels_as_labels(store) -> None:
    [node] = label_nodes(store.path)
    assert node.zarr.subpath("").rstrip("/").endswith("labels/classes")
    check_labels_node(node, store)
    image = pytest.importorskip("ome_zarr_models.v05.image")
    root = image.Image.from_zarr(zarr.open_group(str(store.path), mode="r"))
    assert root.labels.label_paths == ["classes"]


def test_the_old_layout_was_not_found_and_its_copy_is(store, tmp_path) -> None:
    """Why the layout moved: ome-zarr-py sees no labels in an older store; a copy of it
    (``write_ome_zarr``) is in the current layout."""
    old = tmp_path / "old.zarr"
    write_ome_zarr(store, old)  # a plain copy of a current store ...
    as_v1_layout(old)  # ... as older lpd wrote it
    assert label_nodes(old) == []
    copy = write_ome_zarr(OutputStore.open(old), tmp_path / "new.ome.zarr")
    [node] = label_nodes(copy)
    check_labels_node(node, store)


def test_ngff_04_copy_is_zarr_v2_and_read_by_ome_zarr_py(store, tmp_path) -> None:
    copy = write_ngff_v04(store, tmp_path / "v04.ome.zarr")
    assert json.loads((copy / ".zgroup").read_text())["zarr_format"] == 2
    assert not (copy / "zarr.json").exists()
    root = json.loads((copy / ".zattrs").read_text())
    [ms] = root["multiscales"]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert [t["type"] for t in ms["datasets"][1]["coordinateTransformations"]] == [
        "scale", "translation"]
    assert json.loads((copy / "labels" / ".zattrs").read_text()) == {"labels": ["classes"]}
    label_attrs = json.loads((copy / "labels" / "classes" / ".zattrs").read_text())
    assert label_attrs["image-label"]["version"] == "0.4"
    assert label_attrs["image-label"]["source"] == {"image": "../../"}
    zarray = json.loads((copy / "labels" / "classes" / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "blosc" and zarray["dtype"] == "|u1"
    assert (copy / "labels" / "classes" / "0" / "0" / "0").is_file()  # nested chunk keys
    [node] = label_nodes(copy)
    check_labels_node(node, store)
    # the root image (what Bio-Formats shows) is the class map itself
    image = zarr.open_group(str(copy), mode="r")
    np.testing.assert_array_equal(image["1"][...], store.level(1)[...])
    assert not (copy / "prototypes").exists()
    models = pytest.importorskip("ome_zarr_models.v04.image")
    models.Image.from_zarr(image)


def test_the_export_registry_writes_either_version(store, tmp_path) -> None:
    written = export(store, tmp_path, formats=["zarr"], ngff_version="0.4")
    assert written["zarr"].name == "s" + FORMATS["zarr"].suffix
    assert (written["zarr"] / ".zgroup").exists()
    [node] = label_nodes(written["zarr"])
    check_labels_node(node, store)
    written = export(store, tmp_path / "v05", formats=["zarr"])
    assert (written["zarr"] / "labels" / "classes" / "zarr.json").exists()
    with pytest.raises(ValueError, match="0.3"):
        export(store, tmp_path / "bad", formats=["zarr"], ngff_version="0.3")
    assert not (tmp_path / "bad").exists()


def test_lpd_export_ome_zarr_04_on_the_command_line(store, tmp_path, capsys) -> None:
    from lpd.cli.main import main

    assert main(["export", str(store.path), "--out-dir", str(tmp_path), "--ome-zarr", "0.4"]) == 0
    copy = tmp_path / "s.ome.zarr"
    assert f"wrote zarr    {copy}" in capsys.readouterr().out
    assert json.loads((copy / ".zgroup").read_text())["zarr_format"] == 2
    assert (tmp_path / "s-labels.tiff").exists() and (tmp_path / "s.geojson").exists()
    [node] = label_nodes(copy)
    check_labels_node(node, store)
    assert main(["export", str(store.path), "--out-dir", str(tmp_path / "v05"),
                 "--ome-zarr"]) == 0  # without a version: NGFF 0.5
    assert (tmp_path / "v05" / "s.ome.zarr" / "labels" / "classes" / "zarr.json").exists()
