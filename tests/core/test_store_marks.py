"""Deferred ``finished`` marks: written a row of chunks at a time, only after the data."""

from __future__ import annotations

import numpy as np
import zarr

from lpd.io.store import OutputStore


def test_deferred_marks_follow_the_data_a_row_at_a_time(tmp_path) -> None:
    path = tmp_path / "s.zarr"
    store = OutputStore.create(path, shape=(200, 300), tile=50, chunk=100, class_names=["A"],
                               class_colours=[(1, 2, 3)], mpp=None, scale=1.0,
                               offset=(0.0, 0.0))
    labels = np.random.default_rng(0).integers(1, 5, (200, 300), dtype=np.uint8)

    def put(i: int, j: int) -> bool:
        tile = labels[i * 50 : (i + 1) * 50, j * 50 : (j + 1) * 50]
        return store.put_tile(i, j, tile, defer_mark=True)

    written = [put(i, j) for i in range(2) for j in range(4)]  # chunks (0, 0), (0, 1)
    assert sum(written) == 2
    on_disk = np.asarray(zarr.open_array(str(path / "finished"), mode="r")[...])
    assert not on_disk.any() and not store.finished().any()  # written, not yet marked
    np.testing.assert_array_equal(OutputStore.open(path).labels[:100, :200], labels[:100, :200])
    written = [put(i, j) for i in range(2) for j in range(4, 6)]  # the row's last chunk
    assert written[-1]
    reopened = OutputStore.open(path).finished()
    assert reopened[0].all() and not reopened[1].any()  # the whole row in one write
    assert store.finished()[0].all()
    for i in range(2, 4):
        for j in range(4):
            put(i, j)
    assert not OutputStore.open(path).finished()[1].any()
    store.write_marks()  # what a writer's flush or close does
    assert OutputStore.open(path).finished().tolist() == [[True] * 3, [True, True, False]]
    for i in range(2, 4):
        for j in range(4, 6):
            put(i, j)
    list(store.build_pyramid())  # writes the last marks first
    store.mark_complete()
    done = OutputStore.open(path)
    assert done.complete and done.finished().all()
    np.testing.assert_array_equal(done.labels[...], labels)


def test_a_deferred_mark_is_written_after_a_while(tmp_path, monkeypatch) -> None:
    from lpd.io import _writes

    path = tmp_path / "s.zarr"
    store = OutputStore.create(path, shape=(100, 300), tile=50, chunk=50, class_names=["A"],
                               class_colours=[(1, 2, 3)], mpp=None, scale=1.0,
                               offset=(0.0, 0.0))
    clock = iter([0.0, 0.0, 5.0, 5.0])
    monkeypatch.setattr(_writes, "_clock", lambda: next(clock))
    assert store.put_tile(0, 0, None, defer_mark=True)
    assert not OutputStore.open(path).finished().any()
    assert store.put_tile(0, 1, None, defer_mark=True)  # 5 s after the first: both marked
    assert OutputStore.open(path).finished()[0].tolist() == [True, True] + [False] * 4
