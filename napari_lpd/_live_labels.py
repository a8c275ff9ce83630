"""The Labels layer a segmentation run paints into, from the Run click to the result.

Opened right after the click, before the job starts (always a new layer: finished results
stay until the user removes them, so a view and the whole image, or a model before and
after fine-tuning, can be compared; its name says the scope and the model), sized when
the job's plan arrives,
painted once per throttled update, and at the end turned into the result in place - or,
after a cancel or an error, removed (only this run's layer), so nothing half-done stays on
screen looking like a result. Every layer
setter re-slices the layer (15-25 ms under software GL, measured), so only what changed is
set, and a full-resolution preview already is the result: the end costs no re-slice."""

from __future__ import annotations

from typing import Any

import napari.viewer
import numpy as np
from napari.layers import Labels

from napari_lpd._layers import (
    LABELS_OPACITY,
    RUNNING,
    class_colormap,
    grid_transform,
    labels_name,
    remove_layers,
    store_labels_layer,
    upsert_layer,
)
from napari_lpd._metadata import LayerMeta
from napari_lpd._segment_job import Preview, SegmentOutcome


class LiveLabels:
    """The running layer of one Segment widget (one run at a time)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.layer: Labels | None = None
        self.preview: Preview | None = None
        self.result_name = ""  # the next result's name (set by the widget per run)
        # the running layer's name while a run is on, for the widget's clean-up when it is
        # deleted mid-run (a list the clean-up closure shares)
        self.running: list[str] = []

    def open(self, image: Any) -> None:
        """A new, empty layer, in the event-loop turn after the Run click (adding a layer
        costs napari 0.1-0.6 s: not in the click, nor mid-run with the first tiles)."""
        name = self.result_name or labels_name(image.name)
        self.running[:] = [name + RUNNING]
        remove_layers(self.viewer, [name + RUNNING])  # a stale one of a crashed run
        placeholder = np.zeros((1, 1), np.uint8)
        self.layer = upsert_layer(self.viewer, placeholder, {
            "name": name + RUNNING, "scale": tuple(image.scale[-2:]),
            "translate": tuple(image.translate[-2:]), "units": tuple(image.units),
            "colormap": class_colormap(), "opacity": LABELS_OPACITY,
            "metadata": LayerMeta(complete=False).to_metadata(),
        }, "labels")

    def start(self, image: Any, plan: Any) -> None:
        """A new output grid: size the layer to it (no new layer mid-run)."""
        self.preview = Preview(plan.shape)
        scale, translate = grid_transform(image.scale, image.translate, plan.scale,
                                          plan.offset, self.preview.factor)
        if self.layer is None or self.layer not in self.viewer.layers:  # the user deleted it
            self.open(image)
        layer = self.layer
        assert layer is not None
        _set_transform(layer, scale, translate)  # first, while the data is small
        layer.data = self.preview.data

    def paint(self, tiles: list[tuple[int, int, np.ndarray]]) -> None:
        """Finished tiles into the preview (shown at the next ``repaint``)."""
        if self.preview is not None:
            for y, x, labels in tiles:
                self.preview.paint(y, x, labels)

    def repaint(self) -> None:
        """Show what was painted: a re-read of the layer's data, without the thumbnail and
        extent work of a full refresh (the extent is unchanged; the thumbnail: at the end)."""
        if self.layer is not None:
            try:
                self.layer.refresh(thumbnail=False, extent=False, highlight=False)
            except TypeError:  # napari < 0.5: no keyword arguments
                self.layer.refresh()

    def finish(self, image: Any, outcome: SegmentOutcome) -> Labels:
        """The running layer becomes the result (in memory when small; a large result's
        lazy pyramid replaces it in a new layer). Returns the result layer."""
        name = self.result_name or labels_name(image.name)
        data, meta, kind = store_labels_layer(outcome.store, name, image.scale, image.translate,
                                              in_memory=outcome.labels)
        meta["units"] = tuple(image.units)
        meta["metadata"].update(LayerMeta(
            image=image.name, k=outcome.k,
            prototypes=outcome.store.prototypes is not None,
            image_scale=tuple(float(s) for s in image.scale[-2:]),
            image_translate=tuple(float(t) for t in image.translate[-2:]),
            checkpoint=str(outcome.checkpoint),
            counts=[int(c) for c in outcome.counts],
        ).to_metadata())
        layer, preview = self.layer, self.preview
        if not meta["multiscale"] and layer is not None and layer in self.viewer.layers:
            same_grid = _set_transform(layer, meta["scale"], meta["translate"])
            if same_grid and preview is not None and np.array_equal(preview.data, data):
                _refresh_thumbnail(layer)  # painted in full already: nothing to upload
            else:
                layer.data = data
            layer.metadata = meta["metadata"]
            layer.name = _free_name(self.viewer, name)  # "name [1]" beside a kept result
        else:
            running = [] if layer is None else [layer.name]
            meta["name"] = _free_name(self.viewer, name)
            layer = upsert_layer(self.viewer, data, meta, kind, replace=running)
        self.layer, self.preview = None, None
        self.running.clear()
        return layer

    def drop(self) -> None:
        """Remove this run's layer (a cancelled or failed run); results stay."""
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer, self.preview = None, None
        self.running.clear()


def _free_name(viewer: Any, name: str) -> str:
    """``name``, or ``name [n]`` when a kept result already has it."""
    n, candidate = 1, name
    while candidate in viewer.layers:
        candidate, n = f"{name} [{n}]", n + 1
    return candidate


def _set_transform(layer: Labels, scale: Any, translate: Any) -> bool:
    """Set what differs; True when nothing had to change."""
    same = True
    if not np.allclose(layer.scale, scale):
        layer.scale, same = scale, False
    if not np.allclose(layer.translate, translate):
        layer.translate, same = translate, False
    return same


def _refresh_thumbnail(layer: Labels) -> None:
    """The layer-list thumbnail of a layer whose displayed data is already current."""
    try:
        layer.refresh(data_displayed=False, extent=False, highlight=False)
    except TypeError:  # napari < 0.5: no keyword arguments
        layer.refresh()
