"""The viewer side of ``napari-lpd demo``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_lpd._sample_data import cmu_slide_region

if TYPE_CHECKING:
    import napari


def show_demo(viewer: napari.Viewer, device: str | None = None) -> None:
    """Add the demo's layers to ``viewer``.

    Currently this is the bundled CMU-1 H&E region as an image layer; the segmentation
    layers (label map, per-prototype heatmaps) computed by ``lpd.demo.run_demo`` on
    ``device`` are added on top of it by the lead's demo integration.
    """
    for data, meta, _kind in cmu_slide_region():
        viewer.add_image(data, **meta)
