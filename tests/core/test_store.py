"""The prediction store: layout, chunk-wise writes, finished record, pyramid, OME metadata."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.errors import InputError
from lpd.io.store import OutputStore, mode_downsample, pyramid_shapes

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


def new_store(path, shape=(300, 260), tile=50, chunk=100, prototypes=None, stride=10.0):
    return OutputStore.create(
        path, shape=shape, tile=tile, chunk=chunk, class_names=CLASS_NAMES,
        class_colours=COLOURS, mpp=0.5, scale=2.0, offset=(1000.0, 2000.0),
        prototypes=prototypes, prototype_stride=stride, fingerprint={"a": 1},
        info={"source": "x.svs"},
    )


def tiles_of(shape, tile):
    for i in range(-(-shape[0] // tile)):
        for j in range(-(-shape[1] // tile)):
            yield i, j


def fill(store, labels, protos=None):
    t = store.tile
    for i, j in tiles_of(store.shape, t):
        part = labels[i * t : (i + 1) * t, j * t : (j + 1) * t]
        cells = None
        if protos is not None:
            s = store.meta["prototypes"]["stride"]
            u0, u1 = int(np.ceil(i * t / s - 0.5)), int(np.ceil(min((i + 1) * t, store.shape[0]) / s - 0.5))
            v0, v1 = int(np.ceil(j * t / s - 0.5)), int(np.ceil(min((j + 1) * t, store.shape[1]) / s - 0.5))
            cells = protos[:, u0:u1, v0:v1]
        store.put_tile(i, j, part, cells)


def test_create_open_and_attributes(tmp_path) -> None:
    path = tmp_path / "s.zarr"
    store = new_store(path)
    assert OutputStore.is_store(path) and not store.complete
    again = OutputStore.open(path)
    assert again.shape == (300, 260) and again.tile == 50 and again.chunk == 100
    assert again.class_names == list(CLASS_NAMES) and again.class_colours == COLOURS
    assert again.mpp == 0.5 and again.scale == 2.0 and again.offset == (1000.0, 2000.0)
    assert again.meta["info"]["source"] == "x.svs" and again.meta["fingerprint"] == {"a": 1}
    assert again.labels.dtype == np.uint8 and again.labels.chunks == (100, 100)
    assert again.finished().shape == (3, 3) and not again.finished().any()
    assert again.is_whole()


def test_chunk_written_only_when_all_its_tiles_are_in(tmp_path) -> None:
    store = new_store(tmp_path / "s.zarr")
    labels = np.random.default_rng(0).integers(0, 5, store.shape, dtype=np.uint8)
    assert not store.put_tile(0, 0, labels[:50, :50])
    assert not store.put_tile(0, 1, labels[:50, 50:100])
    assert not store.put_tile(1, 0, labels[50:100, :50])
    assert not store.labels[:100, :100].any()  # nothing on disk yet
    assert store.put_tile(1, 1, None)  # a background tile completes the chunk
    reopened = OutputStore.open(tmp_path / "s.zarr")
    assert reopened.finished()[0, 0] and reopened.finished().sum() == 1
    expected = labels[:100, :100].copy()
    expected[50:, 50:] = 0
    assert np.array_equal(reopened.labels[:100, :100], expected)
    todo = reopened.needed_tiles((6, 6))
    assert not todo[:2, :2].any() and todo[2:, :].all() and todo[:, 2:].all()


def test_pyramid_complete_flag_and_ome_metadata(tmp_path) -> None:
    path = tmp_path / "s.zarr"
    store = new_store(path, prototypes=8)
    labels = np.random.default_rng(1).integers(0, 5, store.shape, dtype=np.uint8)
    protos = np.random.default_rng(2).normal(size=(8, 30, 26)).astype(np.float16)
    fill(store, labels, protos)
    assert store.finished().all()
    ome = store.label_group.attrs["ome"]
    assert ome["multiscales"][0]["name"].endswith("(incomplete)")
    list(store.build_pyramid())
    store.mark_complete()
    st = OutputStore.open(path)
    assert st.complete and st.n_levels == len(pyramid_shapes((300, 260), 100)) == 3
    assert [st.level(i).shape for i in range(3)] == [(300, 260), (150, 130), (75, 65)]
    assert np.array_equal(st.labels[...], labels)
    assert np.array_equal(st.level(1)[...], mode_downsample(labels))
    assert np.array_equal(st.level(2)[...], mode_downsample(mode_downsample(labels)))
    assert st.prototypes.dtype == np.float16 and st.prototypes.shape == (8, 30, 26)
    assert np.array_equal(st.prototypes[...], protos)
    ome = st.label_group.attrs["ome"]
    ms = ome["multiscales"][0]
    assert ms["name"] == "lpd labels" and [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    # µm: level 0 pixel = 2 level-0 slide px of 0.25 µm; pixel centres (napari convention)
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0]
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == [
        (2000 + 0.5) * 0.25, (1000 + 0.5) * 0.25]
    colours = {c["label-value"]: c["rgba"] for c in ome["image-label"]["colors"]}
    assert colours[1] == [*COLOURS[0], 255] and colours[0][3] == 0
    models = pytest.importorskip("ome_zarr_models.v05.image_label")
    models.ImageLabel.from_zarr(zarr.open_group(str(path / "labels" / "classes"), mode="r"))
    image = pytest.importorskip("ome_zarr_models.v05.image")
    image.Image.from_zarr(zarr.open_group(str(path / "prototypes"), mode="r"))
    # the root: an image (a placeholder, never written) whose labels/ lists "classes", with
    # as many levels as the label pyramid (the model checks both)
    root = image.Image.from_zarr(zarr.open_group(str(path), mode="r"))
    assert root.labels.label_paths == ["classes"] and len(root.datasets[0]) == 3
    assert not any((path / "0").glob("c/*")), "the placeholder image stores no chunks"


def test_mode_downsample_majority_and_ties() -> None:
    block = np.array([[1, 2, 3, 3], [2, 2, 4, 3], [5, 6, 0, 0], [7, 8, 1, 1]], np.uint8)
    assert mode_downsample(block).tolist() == [[2, 3], [5, 0]]  # 2 of 4; 3 of 4; ties: top-left
    odd = np.array([[1, 1, 4], [1, 2, 4], [3, 3, 4]], np.uint8)
    assert mode_downsample(odd).tolist() == [[1, 4], [3, 4]]


def test_refuses_to_replace_what_is_not_a_store(tmp_path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not an lpd prediction store"):
        OutputStore.create(other, shape=(10, 10), tile=5, class_names=CLASS_NAMES,
                           class_colours=COLOURS, mpp=None, scale=1.0, offset=(0, 0),
                           overwrite=True)
    assert (other / "notes.txt").read_text() == "precious"
    with pytest.raises(InputError, match="not a readable zarr store"):
        OutputStore.open(other)
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(InputError, match="not an lpd prediction store"):
        OutputStore.open(tmp_path / "plain.zarr")
    with pytest.raises(InputError, match="not found"):
        OutputStore.open(tmp_path / "missing.zarr")
    path = tmp_path / "s.zarr"
    new_store(path)
    with pytest.raises(InputError, match="already exists"):
        new_store(path)
    with pytest.raises(InputError, match="multiple of the tile"):
        new_store(tmp_path / "t.zarr", chunk=120)


def test_pyramid_needs_every_chunk(tmp_path) -> None:
    store = new_store(tmp_path / "s.zarr")
    store.put_tile(0, 0, np.ones((50, 50), np.uint8))
    with pytest.raises(RuntimeError, match="chunks are missing"):
        list(store.build_pyramid())
