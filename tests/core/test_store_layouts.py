"""Stores of the layout older lpd wrote (format_version 1, levels in ``labels/``) still open,
resume in their layout, and export in the current one; an NGFF 0.4 copy opens read-only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_layouts import as_v1_layout

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.data.synthetic import synthetic_tissue
from lpd.errors import InputError
from lpd.infer.tiled import predict_tiled, run_tiled
from lpd.io.ngff_export import write_ngff_v04, write_ome_zarr
from lpd.io.store import FORMAT_VERSION, OutputStore, mode_downsample

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]


def partial_store(path, labels, tile=50, chunk=100, done=4):
    """A store with its first ``done`` tiles (row-major) handed over: some chunks final."""
    store = OutputStore.create(path, shape=labels.shape, tile=tile, chunk=chunk,
                               class_names=CLASS_NAMES, class_colours=COLOURS, mpp=0.5,
                               scale=2.0, offset=(10.0, 20.0), fingerprint={"a": 1})
    tiles = [(i, j) for i in range(-(-labels.shape[0] // tile))
             for j in range(-(-labels.shape[1] // tile))]
    for i, j in tiles[:done]:
        store.put_tile(i, j, labels[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile])
    return store, tiles


def test_old_layout_opens_and_resumes_in_its_layout(tmp_path) -> None:
    labels = np.random.default_rng(0).integers(0, 5, (200, 150), dtype=np.uint8)
    path = tmp_path / "old.zarr"
    _, tiles = partial_store(path, labels, done=6)  # 4 x 3 tiles: chunk row 0 final
    as_v1_layout(path)
    old = OutputStore.open(path)
    assert old.format_version == 1 and FORMAT_VERSION == 2 and not old.complete
    assert old.finished().tolist() == [[True, True], [False, False]] and old.is_whole()
    np.testing.assert_array_equal(old.labels[:100], labels[:100])
    resumed = OutputStore.open(path, mode="r+")
    todo = resumed.needed_tiles((4, 3))
    for i, j in tiles:
        if todo[i, j]:
            resumed.put_tile(i, j, labels[i * 50 : (i + 1) * 50, j * 50 : (j + 1) * 50])
    list(resumed.build_pyramid())
    resumed.mark_complete()
    done = OutputStore.open(path)
    assert done.complete and done.format_version == 1 and done.n_levels == 2
    np.testing.assert_array_equal(done.labels[...], labels)
    np.testing.assert_array_equal(done.level(1)[...], mode_downsample(labels))
    assert (path / "labels" / "1" / "zarr.json").exists()  # the old places, nothing new
    assert not (path / "labels" / "classes").exists() and not (path / "0").exists()
    ms = done.label_group.attrs["ome"]["multiscales"][0]
    assert ms["name"] == "lpd labels" and [d["path"] for d in ms["datasets"]] == ["0", "1"]


def test_copies_of_an_old_store_are_in_the_current_layout(tmp_path) -> None:
    labels = np.random.default_rng(1).integers(0, 5, (200, 150), dtype=np.uint8)
    store, tiles = partial_store(tmp_path / "old.zarr", labels, done=12)
    list(store.build_pyramid())
    store.mark_complete()
    old = OutputStore.open(as_v1_layout(store.path))
    for copy in (write_ome_zarr(old, tmp_path / "new.ome.zarr"),
                 write_ngff_v04(old, tmp_path / "v04.ome.zarr")):
        again = OutputStore.open(copy)
        assert again.format_version == FORMAT_VERSION and again.complete
        assert (copy / "labels" / "classes").is_dir()
        np.testing.assert_array_equal(again.labels[...], labels)
        np.testing.assert_array_equal(again.level(1)[...], old.level(1)[...])
        assert again.class_names == old.class_names and again.finished().all()


def test_an_ngff_04_copy_is_read_only(tmp_path) -> None:
    labels = np.random.default_rng(2).integers(0, 5, (100, 100), dtype=np.uint8)
    store, _ = partial_store(tmp_path / "s.zarr", labels, done=4)
    copy = write_ngff_v04(store, tmp_path / "c.ome.zarr", allow_incomplete=True)
    assert OutputStore.is_store(copy) and not OutputStore.open(copy).complete
    with pytest.raises(InputError, match="read-only"):
        OutputStore.open(copy, mode="r+")
    with pytest.raises(InputError, match="incomplete"):
        write_ngff_v04(store, tmp_path / "refused.ome.zarr")
    assert not (tmp_path / "refused.ome.zarr").exists()


def test_a_run_stopped_by_older_lpd_resumes_in_the_old_layout(new_tiny_model, tmp_path) -> None:
    """The pipeline's own resume (fingerprint, finished chunks, resume state) on an old
    store: the result equals an uninterrupted run's, and the store keeps its layout."""
    model = new_tiny_model()  # input 96, halo 16: tiles of 64; 4 x 4 of them, 2 x 2 chunks
    image, _ = synthetic_tissue(256, 5, background=False)
    options = dict(tissue_threshold=None, batch_size=2, halo=16, chunk=128, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = run_tiled(predict_tiled(model, image, **options)).labels
        path = tmp_path / "run.zarr"
        gen = predict_tiled(model, image, store=path, **options)
        for _ in gen:
            if OutputStore.open(path).finished().any():
                break
        gen.close()
        stopped = OutputStore.open(path)
        assert not stopped.complete and 1 <= stopped.finished().sum() < 4
        as_v1_layout(path)
        resumed = run_tiled(predict_tiled(model, image, store=path, **options)).store
    finally:
        torch.set_num_threads(threads)
    assert resumed.complete and resumed.format_version == 1
    np.testing.assert_array_equal(resumed.labels[...], expected)
    assert (path / "labels" / "0" / "zarr.json").exists()
    assert not (path / "labels" / "classes").exists()
