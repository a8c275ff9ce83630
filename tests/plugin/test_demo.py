"""``napari-lpd demo``'s viewer side: layers and widgets in place, segmentation started."""

from __future__ import annotations

from napari_lpd._demo import show_demo


def test_show_demo_adds_layers_and_widgets(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    segment = show_demo(viewer, device="cpu", start=False)
    names = [layer.name for layer in viewer.layers]
    assert "cmu-1-small-region.svs" in names
    assert "NCT mosaic" in names and "NCT mosaic ground truth" in names
    assert viewer.layers["cmu-1-small-region.svs"].visible
    assert segment.scope_combo.currentText() == "Whole image"
    assert segment.prototypes_check.isChecked()
    assert segment.image_combo.currentText() == "cmu-1-small-region.svs"
