"""The viewer side of ``napari-lpd demo``: the same job as ``lpd demo``, as layers.

It leads with a mosaic of the default model's held-apart tiles (never trained on) beside
its ground truth, with the model card's held-apart scores in the canvas' text overlay,
then opens the bundled CMU-1 slide region (skin: the overlay says what to expect there),
docks the Segment and Prototype widgets and starts a whole-image segmentation with
prototype maps. Tiles appear in the Labels layer as they finish; the prototype explorer
then shows the per-prototype heatmaps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lpd.data.sample import CMU_SLIDE
from lpd.default_model import CARD_PATH, default_checkpoint_path
from lpd.demo import SLIDE_NOTE
from lpd.io.checkpoint import read_checkpoint_metadata
from lpd.io.files import read_json
from lpd.wsi.slide import open_slide
from napari_lpd._layers import slide_layer
from napari_lpd._sample_data import held_apart_mosaic_layers

if TYPE_CHECKING:
    import napari

    from napari_lpd.widgets.segment import SegmentWidget

GAP_UM = 50.0  # between the slide, the mosaic and its ground truth


def text_overlay(viewer: napari.Viewer):
    """The canvas' text overlay (``viewer.canvas.overlays.text`` since napari 0.9;
    ``viewer.text_overlay`` before)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    return overlays.text if overlays is not None else viewer.text_overlay


def overlay_text() -> str:
    """The held-apart scores of the default model (from its card) and the slide note."""
    lines = ["Right: held-apart mosaic (tiles never trained on) | its ground truth."]
    try:
        _, extra = read_checkpoint_metadata(default_checkpoint_path())
        card = read_json(CARD_PATH, "model card")
        if extra.get("recipe") == card.get("recipe") and "shipped" in card:
            held = card["shipped"]["held_apart"]
            lines.append(
                f"{extra.get('name', 'default model')} on 16 held-apart mosaics: mIoU "
                f"{held['predicted']['mIoU']:.2f} (predicted presence), "
                f"{held['oracle']['mIoU']:.2f} (oracle); one class per patch "
                f"{held['one_class_guess']['mIoU']:.2f}.")
    except (OSError, ValueError, KeyError):
        pass
    lines.append(SLIDE_NOTE)
    return "\n".join(lines)


def show_demo(
    viewer: napari.Viewer, device: str | None = None, start: bool = True
) -> SegmentWidget:
    """Add the demo's layers and widgets to ``viewer``; returns the Segment widget."""
    from napari_lpd.widgets.prototypes import PrototypeWidget
    from napari_lpd.widgets.segment import SegmentWidget

    data, meta, _ = slide_layer(open_slide(CMU_SLIDE))
    width_um = float(data[0].shape[1] if isinstance(data, list) else data.shape[1]) * \
        float(meta.get("scale", (1.0, 1.0))[1])
    x = width_um + GAP_UM
    for layer_data, layer_meta, kind in held_apart_mosaic_layers():
        side = layer_data.shape[1] * layer_meta["scale"][1]
        getattr(viewer, f"add_{kind}")(layer_data, **layer_meta, translate=(0.0, x))
        x += side + GAP_UM  # the ground truth beside the mosaic
    viewer.add_image(data, **meta)
    overlay = text_overlay(viewer)
    overlay.text = overlay_text()
    overlay.visible = True
    viewer.reset_view()
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
