"""The viewer side of ``napari-lpd demo``: the same job as ``lpd demo``, as layers.

It opens the bundled CMU-1 slide region and a held-apart nct mosaic with its ground truth,
docks the Segment and Prototype widgets and starts a whole-image segmentation with
prototype maps (the default model is trained first if it is not cached yet: its progress
shows in napari's activity dock). Tiles appear in the Labels layer as they finish; the
prototype explorer then shows the per-prototype heatmaps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpd.data.sample import CMU_SLIDE
from lpd.data.slide import open_slide
from napari_lpd._layers import slide_layer
from napari_lpd._sample_data import nct_mosaic_layers

if TYPE_CHECKING:
    import napari

    from napari_lpd.widgets.segment import SegmentWidget


def show_demo(
    viewer: napari.Viewer, device: str | None = None, start: bool = True
) -> SegmentWidget:
    """Add the demo's layers and widgets to ``viewer``; returns the Segment widget."""
    from napari_lpd.widgets.prototypes import PrototypeWidget
    from napari_lpd.widgets.segment import SegmentWidget

    for data, meta, kind in nct_mosaic_layers():
        meta = {**meta, "visible": False}  # the slide is the main view; tick to compare
        getattr(viewer, f"add_{kind}")(data, **meta)
    data, meta, _ = slide_layer(open_slide(CMU_SLIDE))
    viewer.add_image(data, **meta)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="LPD segment", area="right")
    viewer.window.add_dock_widget(PrototypeWidget(viewer), name="LPD prototypes",
                                  area="right")
    segment.image_combo.setCurrentText(meta["name"])
    segment.scope_combo.setCurrentText("Whole image")
    segment.prototypes_check.setChecked(True)
    if device:
        segment.device_combo.setCurrentText(device)
    if start:
        segment.run()
    return segment
