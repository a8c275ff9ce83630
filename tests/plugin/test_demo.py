"""``napari-lpd demo``'s viewer side: layers and widgets in place, segmentation started."""

from __future__ import annotations

from napari_lpd._demo import show_demo, text_overlay


def test_show_demo_adds_layers_and_widgets(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    segment = show_demo(viewer, device="cpu", start=False)
    names = [layer.name for layer in viewer.layers]
    assert "cmu-1-small-region.svs" in names
    assert "Held-apart mosaic" in names and "Held-apart mosaic ground truth" in names
    mosaic, truth = viewer.layers["Held-apart mosaic"], viewer.layers["Held-apart mosaic ground truth"]
    assert mosaic.visible and truth.visible
    # side by side, right of the slide: slide | mosaic | ground truth
    slide_right = viewer.layers["cmu-1-small-region.svs"].extent.world[1][1]
    assert slide_right < mosaic.extent.world[0][1] < mosaic.extent.world[1][1] \
        < truth.extent.world[0][1]
    overlay = text_overlay(viewer)
    text = overlay.text
    assert overlay.visible and "held-apart" in text and "skin" in text
    assert "one class per patch" in text  # the card's scores are shown
    assert viewer.layers["cmu-1-small-region.svs"].visible
    assert segment.scope_combo.currentText() == "Whole image"
    assert segment.prototypes_check.isChecked()
    assert segment.image_combo.currentText() == "cmu-1-small-region.svs"
