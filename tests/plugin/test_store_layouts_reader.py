"""The napari reader opens prediction stores of every layout as Labels with their class
names and colours: the current (NGFF labels) layout, the older one (levels in ``labels/``),
and the NGFF 0.4 copy (zarr v2) written for Bio-Formats/QuPath."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_layouts import as_v1_layout

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.io.ngff_export import write_ngff_v04, write_ome_zarr
from lpd.io.store import OutputStore
from lpd.io.store_tools import store_from_labels
from napari_lpd._reader import napari_get_reader


def labels_map() -> np.ndarray:
    """A 700 x 600 map: two pyramid levels (chunks of 512)."""
    labels = np.zeros((700, 600), np.uint8)
    labels[10:300, 20:450] = 1
    labels[320:650, 30:220] = 3
    labels[330:600, 260:590] = 2
    labels[660:690, 500:580] = 4
    return labels


@pytest.mark.parametrize("layout", ["current", "older", "ngff-0.4"])
def test_every_layout_opens_as_labels_with_names_and_colours(tmp_path, layout) -> None:
    store = store_from_labels(labels_map(), tmp_path / "s.zarr", scale=(0.5, 0.5),
                              units=("µm", "µm"))
    path = store.path
    if layout == "older":
        path = as_v1_layout(write_ome_zarr(store, tmp_path / "old.zarr"))
    elif layout == "ngff-0.4":
        path = write_ngff_v04(store, tmp_path / "v04.ome.zarr")
    assert OutputStore.open(path).format_version == (1 if layout == "older" else 2)
    reader = napari_get_reader(str(path))
    assert reader is not None, layout
    [(data, meta, kind)] = reader(str(path))
    assert kind == "labels" and meta["metadata"]["lpd_complete"]
    assert meta["metadata"]["lpd_class_names"] == list(CLASS_NAMES)
    for value, name in enumerate(CLASS_NAMES, start=1):
        colour = meta["colormap"].map(np.array([value]))[0]
        assert np.allclose(colour[:3] * 255, CLASS_COLOURS[name], atol=1), (layout, name)
    assert meta["colormap"].map(np.array([0]))[0][3] == 0  # background is clear
    assert meta["scale"] == pytest.approx((0.5, 0.5)) and meta["units"] == ("µm", "µm")
    np.testing.assert_array_equal(np.asarray(data), labels_map())


def test_viewer_shows_a_current_store_with_class_colours(make_napari_viewer, tmp_path) -> None:
    store = store_from_labels(labels_map(), tmp_path / "s.zarr")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(store.path), plugin="napari-lpd")
    assert layer.metadata["lpd_class_names"] == list(CLASS_NAMES)
    tum = layer.colormap.map(np.array([1]))[0]
    assert np.allclose(tum[:3] * 255, CLASS_COLOURS["TUM"], atol=1)
    assert layer.data[400, 50] == 3 and layer.get_value((400, 50)) == 3
