"""The plugin reopens its own label TIFF exports (issue 14, item 5): one above 4096 px a
side (read lazily, one zarr array per pyramid level; it used to fail with "'Group' object
has no attribute 'size'") and a small one (read into memory), without a tifffile log."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.io.export import export_tiff
from lpd.io.store import OutputStore
from napari_lpd._layers import IN_MEMORY_MAX
from napari_lpd._reader import napari_get_reader


def _store(path, labels, tile, chunk) -> OutputStore:
    store = OutputStore.create(path, shape=labels.shape, tile=tile, chunk=chunk,
                               class_names=CLASS_NAMES,
                               class_colours=[CLASS_COLOURS[c] for c in CLASS_NAMES],
                               mpp=0.5, scale=1.0, offset=(0.0, 0.0))
    for i in range(-(-labels.shape[0] // tile)):
        for j in range(-(-labels.shape[1] // tile)):
            part = labels[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
            store.put_tile(i, j, part if part.any() else None)
    list(store.build_pyramid())
    store.mark_complete()
    return store


@pytest.mark.parametrize("shape", [(4100, 4301), (300, 260)], ids=["large", "small"])
def test_label_tiff_export_reopens_as_labels(tmp_path, caplog, shape) -> None:
    labels = np.zeros(shape, np.uint8)
    labels[10:200, 20:250] = 1
    labels[-60:, -70:] = 3
    store = _store(tmp_path / "s.zarr", labels, *((512, 1024) if shape[0] > 4096 else (50, 100)))
    path = export_tiff(store, tmp_path / "labels.tif")
    caplog.set_level(logging.DEBUG, logger="tifffile")
    reader = napari_get_reader(str(path))
    assert reader is not None
    [(data, meta, kind)] = reader(str(path))
    assert kind == "labels" and meta["metadata"]["lpd_class_names"] == list(CLASS_NAMES)
    assert meta["scale"] == pytest.approx((0.5, 0.5))
    if shape[0] * shape[1] > IN_MEMORY_MAX:
        assert meta["multiscale"] and len(data) == store.n_levels == 4
        assert [tuple(d.shape) for d in data] == [store.level(lv).shape for lv in range(4)]
        for lv, level in enumerate(data):
            np.testing.assert_array_equal(level[-300:, -300:], store.level(lv)[-300:, -300:])
        np.testing.assert_array_equal(data[0][:300, :300], labels[:300, :300])
    else:
        np.testing.assert_array_equal(np.asarray(data), labels)
    colour = meta["colormap"].map(np.array([3]))[0]
    assert np.allclose(colour[:3] * 255, CLASS_COLOURS["LYM"], atol=1)
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []
