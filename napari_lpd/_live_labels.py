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

from collections.abc import Callable
from typing import Any

import napari.viewer
import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer

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
from napari_lpd._workers import TURN_MS


class LiveLabels:
    """The running layer of one Segment widget (one run at a time)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.layer: Labels | None = None
        self.preview: Preview | None = None
        #: the preview's box (y0, y1, x0, x1) painted since the last repaint
        self.dirty: tuple[int, int, int, int] | None = None
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
        }, "labels", prepare=defer_edit_overlays)

    def start(self, image: Any, plan: Any,
              later: Callable[[Callable[[], None]], None] | None = None) -> None:
        """A new output grid: the layer takes its transform now, while its data is small,
        and the empty preview as its data in a later event-loop turn (each a repaint of
        its own; together they stalled the turn 116-149 ms, apart 69 and 105): through
        ``later`` (the job's ``RunHandle.later``: after the job's other screen changes, in
        a turn of its own), else TURN_MS from now. No new layer mid-run."""
        preview = Preview(plan.shape)
        self.preview, self.dirty = preview, None
        scale, translate = grid_transform(image.scale, image.translate, plan.scale,
                                          plan.offset, preview.factor)
        if self.layer is None or self.layer not in self.viewer.layers:  # the user deleted it
            self.open(image)
        layer = self.layer
        assert layer is not None
        with quiet_layer_list(self.viewer):
            _set_transform(layer, scale, translate)
        show = lambda: self._show(layer, preview)  # noqa: E731
        if later is not None:
            later(show)
        else:
            QTimer.singleShot(TURN_MS, show)

    def _show(self, layer: Labels, preview: Preview) -> None:
        """The preview becomes ``layer``'s data (unless the run has moved on)."""
        if layer is self.layer and preview is self.preview and layer in self.viewer.layers:
            layer.data = preview.data
            self.dirty = None  # what was painted so far came with it

    def paint(self, tiles: list[tuple[int, int, np.ndarray]]) -> None:
        """Finished tiles into the preview (shown at the next ``repaint``)."""
        if self.preview is not None:
            for y, x, labels in tiles:
                self.dirty = _union(self.dirty, self.preview.paint(y, x, labels))

    def repaint(self) -> None:
        """Show what was painted since the last repaint: only that part of the layer's
        texture is uploaded again (napari's partial Labels update, as its brush does),
        or, where napari cannot, a re-read of the layer's data without the thumbnail and
        extent work of a full refresh (the extent is unchanged; the thumbnail: at the
        end)."""
        layer, dirty = self.layer, self.dirty
        if layer is None or dirty is None or self.preview is None \
                or layer.data is not self.preview.data:  # not shown yet: ``_show`` will
            return
        self.dirty = None
        with quiet_layer_list(self.viewer):
            if _partial_refresh(layer, dirty):
                return
        try:
            layer.refresh(thumbnail=False, extent=False, highlight=False)
        except TypeError:  # napari < 0.5: no keyword arguments
            layer.refresh()

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
            if same_grid and preview is not None and layer.data is preview.data \
                    and np.array_equal(preview.data, data):
                _refresh_thumbnail(layer)  # painted in full already: nothing to upload
            else:
                layer.data = data
            layer.metadata = meta["metadata"]
            layer.name = _free_name(self.viewer, name)  # "name [1]" beside a kept result
        else:
            running = [] if layer is None else [layer.name]
            meta["name"] = _free_name(self.viewer, name)
            layer = upsert_layer(self.viewer, data, meta, kind, replace=running,
                                 prepare=defer_edit_overlays)
        self.layer, self.preview = None, None
        self.running.clear()
        return layer

    def drop(self) -> None:
        """Remove this run's layer (a cancelled or failed run); results stay."""
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer, self.preview = None, None
        self.running.clear()


#: napari's Labels editing overlays: the polygon tool's and the brush's outline
EDIT_OVERLAYS = ("polygon", "brush_stroke")


def defer_edit_overlays(layer: Labels) -> None:
    """Build ``layer``'s editing overlays when the user first picks a tool, not when
    the layer is added.

    napari builds an overlay's canvas visuals only once the overlay is visible
    (``napari._vispy.canvas.VispyCanvas._update_layer_overlays``), and a new Labels
    layer's polygon and brush overlays are visible from the start: half the time of
    adding the running layer (97-117 against 142-366 ms here under software GL,
    measured), in the event-loop turn right after the Run click. They are hidden before
    the layer is added and shown again at the first mode other than pan/zoom, before
    napari draws that tool. A napari without these private overlays: nothing happens.
    """
    overlays = getattr(layer, "_overlays", None)
    if overlays is None:
        return
    hidden = [overlays[key] for key in EDIT_OVERLAYS
              if key in overlays and getattr(overlays[key], "visible", False)]
    if not hidden:
        return
    for overlay in hidden:
        overlay.visible = False

    def on_mode(event: Any = None) -> None:
        if str(layer.mode) != "pan_zoom":
            layer.events.mode.disconnect(on_mode)
            for overlay in hidden:
                overlay.visible = True

    layer.events.mode.connect(on_mode)


def quiet_layer_list(viewer: napari.viewer.Viewer) -> Any:
    """A context in which the events of the viewer's layers are not re-emitted by the
    layer list (``viewer.layers.events``): the layer list widget then does not repaint.

    napari's layer list re-emits every event of every layer, and its Qt model turns each
    one into a repaint of the list, whatever the event (a texture update, a new scale).
    Under software GL that is a second recomposition of the whole window, 30 ms after the
    canvas's own, for each preview update (measured: 40-60 ms of CPU each, a quarter of
    the GUI's share of a run). The layers' own events, which the canvas and the viewer
    follow, are emitted as usual. Use it only around changes the layer list does not
    show (texture, transform); the thumbnail is refreshed at the end."""
    return viewer.layers.events.blocker()


def _union(box: tuple[int, int, int, int] | None, other: tuple[int, int, int, int]
           ) -> tuple[int, int, int, int]:
    if box is None:
        return other
    return (min(box[0], other[0]), max(box[1], other[1]),
            min(box[2], other[2]), max(box[3], other[3]))


def _partial_refresh(layer: Labels, box: tuple[int, int, int, int]) -> bool:
    """Upload the texture of ``box`` (y0, y1, x0, x1 in the layer's data) only, as napari's
    own painting does (``Labels._partial_labels_refresh``): a 2000² px layer repainted in
    74 ms against 89 ms for a refresh (median of 6 here, under software GL). Only where
    the displayed slice is the data itself (a 2-D numpy layer whose colours need no
    mapping: the view then already holds the new labels); False where it is not, or
    where this napari has no partial update (the caller refreshes)."""
    try:
        view = layer._slice.image.view
        if not (isinstance(layer.data, np.ndarray) and layer.data.ndim == 2
                and np.shares_memory(layer.data, view)):
            return False
        y0, y1, x0, x1 = box
        layer._accumulate_updated_slice((slice(y0, y1), slice(x0, x1)))
        layer._partial_labels_refresh()
    except AttributeError:
        return False
    return True


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
