"""The label overlay is actually visible on screen: a real canvas, screenshots with the
labels shown and hidden, pixel statistics per class region."""

from __future__ import annotations

import numpy as np
from helpers_segment import small_he

from lpd.classes import CLASS_COLOURS
from lpd.io.store_tools import store_from_labels
from napari_lpd._reader import read_store


def test_label_overlay_is_visible(make_napari_viewer, tmp_path) -> None:
    image = small_he((256, 256))
    labels = np.zeros((256, 256), np.uint8)
    labels[:, :128] = 1  # TUM (crimson) on the left half
    labels[:, 128:] = 3  # LYM (blue) on the right half
    labels[96:160, 96:160] = 0  # a background square: the image shows through unchanged
    store = store_from_labels(labels, tmp_path / "labels.zarr")
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="HE", rgb=True)
    data, meta, _ = read_store(store.path)
    layer = viewer.add_labels(data, **meta)
    viewer.reset_view()
    on = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    layer.visible = False
    off = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    # where the image is on the canvas (the canvas background is black)
    rows = np.flatnonzero(off.sum(axis=(1, 2)) > 0)
    cols = np.flatnonzero(off.sum(axis=(0, 2)) > 0)
    assert rows.size > 100 and cols.size > 100, "the image is not on the canvas"
    on = on[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    off = off[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = on.shape[:2]

    def region(a, y0, y1, x0, x1):  # fractions of the image, inset from the edges
        return a[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].reshape(-1, 3)

    alpha = meta["opacity"]
    for (x0, x1), name in (((0.05, 0.3), "TUM"), ((0.7, 0.95), "LYM")):
        shown, plain = region(on, 0.05, 0.95, x0, x1), region(off, 0.05, 0.95, x0, x1)
        expected = (1 - alpha) * plain + alpha * np.array(CLASS_COLOURS[name])
        # the overlay is there: the pixels moved towards the class colour, by the opacity
        assert np.abs(shown - plain).mean() > 20, name
        assert np.abs(shown - expected).mean() < 12, name
    centre_on = region(on, 0.42, 0.58, 0.42, 0.58)
    centre_off = region(off, 0.42, 0.58, 0.42, 0.58)
    assert np.abs(centre_on - centre_off).mean() < 2  # background label: no tint
