"""A polygon region of interest for tiled inference (``predict_tiled(roi=...)``): its
vertices on the output grid, the tiles it touches (shapely), the pixels inside it."""

from __future__ import annotations

import numpy as np

from lpd.errors import InputError
from lpd.infer._plan import TilePlan


def roi_polygon(roi, plan: TilePlan) -> np.ndarray | None:
    """The ROI's vertices in output px, (N, 2) as (row, col); None without an ROI."""
    if roi is None:
        return None
    pts = np.asarray(roi, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
        raise InputError(None, "roi must be a polygon: three or more (x, y) vertices")
    ox, oy = plan.offset
    return np.stack([(pts[:, 1] - oy) / plan.scale, (pts[:, 0] - ox) / plan.scale], axis=1)


def inside(polygon: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """uint8 mask of the output pixels [rows) x [cols) whose centres lie in the polygon."""
    from skimage.draw import polygon2mask

    shape = (rows[1] - rows[0], cols[1] - cols[0])
    shifted = polygon - np.array([rows[0] + 0.5, cols[0] + 0.5])
    return polygon2mask(shape, shifted).astype(np.uint8)


def tiles_touching(polygon: np.ndarray, gy, gx) -> np.ndarray:
    """(ty, tx): tiles that overlap the polygon (shapely)."""
    from shapely import box, intersects, polygons

    poly = polygons(polygon[:, ::-1])  # (x, y)
    out = np.zeros((gy.count, gx.count), bool)
    for i in range(gy.count):
        y0, y1 = gy.tile_span(i)
        boxes = [box(x0, y0, x1, y1) for x0, x1 in map(gx.tile_span, range(gx.count))]
        out[i] = intersects(poly, boxes)
    return out
