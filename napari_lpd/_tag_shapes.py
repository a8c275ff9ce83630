"""Tag regions as napari shapes and back, for the tag annotator (``widgets/tags.py``).

A box region is a rectangle, a polygon region (imported annotations) a polygon of its
exterior (Shapes have no holes: the holes stay in the store, and move with the outline);
vertices are (row, column) in level-0 pixels. ``apply_shape`` takes an edited shape back
into the store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.layers import Shapes

from lpd.data.tags import TagRegion, TagStore


def rectangle(bbox: tuple[int, int, int, int]) -> np.ndarray:
    """The (row, column) corners of a box (x, y, w, h)."""
    x, y, w, h = bbox
    return np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], float)


def region_shape(region: TagRegion) -> tuple[np.ndarray, str]:
    """(vertices (row, column), napari shape type) of a region."""
    if region.polygon is None:
        return rectangle(region.bbox), "rectangle"
    return np.asarray(region.polygon.exterior.coords)[:-1, ::-1].copy(), "polygon"


def add_region_shapes(layer: Shapes, regions: Sequence[TagRegion]) -> None:
    """Add one shape per region to ``layer``, in order."""
    if regions:
        shapes = [region_shape(r) for r in regions]
        layer.add([s[0] for s in shapes], shape_type=[s[1] for s in shapes])


def apply_shape(store: TagStore, region: TagRegion, vertices: np.ndarray) -> bool:
    """Take a region's shape as it is now (moved, resized, reshaped) into ``store``.

    Parameters
    ----------
    store : TagStore
        The image's tags.
    region : TagRegion
        The region the shape shows.
    vertices : (N, 2) array
        The shape's vertices (row, column), level-0 px.

    Returns
    -------
    bool
        Whether the region changed.
    """
    if region.polygon is None:
        (y0, x0), (y1, x1) = np.min(vertices, axis=0), np.max(vertices, axis=0)
        before = region.bbox
        return store.update(region.id, bbox=(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1))
                            ).bbox != before
    outline = np.asarray(vertices, float)[:, ::-1]
    old = np.asarray(region.polygon.exterior.coords)[:-1]
    if outline.shape == old.shape and np.allclose(outline, old, rtol=0, atol=1e-9):
        return False
    store.update(region.id, outline=outline)
    return True
