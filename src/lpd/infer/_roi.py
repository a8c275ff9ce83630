"""A region of interest for tiled inference (``predict_tiled(roi=...)``): a polygon as
(N, 2) vertices (x, y), or any (Multi)Polygon with holes (a shapely geometry, an
``lpd.io.roi.Roi``, anything with ``__geo_interface__``), in level-0 px; here on
the output grid (shapely, x = column, y = row), the tiles it touches, the pixels inside it
(centres inside or on the boundary; inside a hole: out)."""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape

from lpd.errors import InputError
from lpd.infer._plan import TilePlan

_NOT_A_POLYGON = "roi must be a polygon: three or more (x, y) vertices, or a (Multi)Polygon"


def roi_geometry(roi) -> Polygon | MultiPolygon | None:
    """The ROI as a valid shapely (Multi)Polygon in level-0 px; None without an ROI.

    Parameters
    ----------
    roi : (N, 2) array-like, shapely geometry, object with ``__geo_interface__``, or None
        Vertices (x, y) of one polygon (a self-crossing outline is filled even-odd, as
        ``shapely.make_valid`` repairs it), or polygons with holes.

    Returns
    -------
    shapely.Polygon or shapely.MultiPolygon or None

    Raises
    ------
    InputError
        When ``roi`` is not a polygon, has non-finite coordinates or no area.
    """
    if roi is None:
        return None
    if isinstance(roi, shapely.Geometry) or hasattr(roi, "__geo_interface__"):
        try:
            geom = roi if isinstance(roi, shapely.Geometry) else shape(roi)
        except Exception as exc:  # a malformed __geo_interface__
            raise InputError(None, f"{_NOT_A_POLYGON} ({exc})") from None
    else:
        try:
            pts = np.asarray(roi, dtype=float)
        except (TypeError, ValueError):
            raise InputError(None, _NOT_A_POLYGON) from None
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3:
            raise InputError(None, _NOT_A_POLYGON)
        geom = Polygon(pts)
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise InputError(None, "roi has coordinates that are not finite")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = _polygons(geom)
    if not parts or sum(p.area for p in parts) <= 0:
        raise InputError(None, f"{_NOT_A_POLYGON}, with an area")
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def roi_key(roi) -> list | None:
    """What a store's fingerprint records of an ROI (a rerun resumes only when equal):
    its vertices (x, y) rounded to 0.001 px, ring by ring."""
    geom = roi_geometry(roi)
    if geom is None:
        return None
    return [[round(float(x), 3), round(float(y), 3)] for x, y in shapely.get_coordinates(geom)]


def roi_polygon(roi, plan: TilePlan) -> Polygon | MultiPolygon | None:
    """The ROI on the output grid (x = column, y = row, in output px); None without one."""
    geom = roi_geometry(roi)
    if geom is None:
        return None
    ox, oy = plan.offset
    out = shapely.transform(geom, lambda xy: (xy - np.array([ox, oy])) / plan.scale)
    shapely.prepare(out)
    return out


def inside(polygon: Polygon | MultiPolygon, rows: tuple[int, int], cols: tuple[int, int]
           ) -> np.ndarray:
    """uint8 mask of the output pixels [rows) x [cols) whose centres lie in the geometry
    (inside or on its boundary; holes excluded)."""
    (r0, r1), (c0, c1) = rows, cols
    tile = box(c0, r0, c1, r1)
    if polygon.contains(tile):
        return np.ones((r1 - r0, c1 - c0), np.uint8)
    if not polygon.intersects(tile):
        return np.zeros((r1 - r0, c1 - c0), np.uint8)
    shapely.prepare(polygon)  # indexed edges: a point costs log(vertices); a no-op if done
    yy, xx = np.mgrid[r0:r1, c0:c1] + 0.5
    return shapely.intersects_xy(polygon, xx, yy).astype(np.uint8)


def tiles_touching(polygon: Polygon | MultiPolygon, gy, gx) -> np.ndarray:
    """(ty, tx): tiles that overlap the geometry."""
    out = np.zeros((gy.count, gx.count), bool)
    for i in range(gy.count):
        y0, y1 = gy.tile_span(i)
        boxes = [box(x0, y0, x1, y1) for x0, x1 in map(gx.tile_span, range(gx.count))]
        out[i] = shapely.intersects(polygon, boxes)
    return out


def _polygons(geom) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for part in getattr(geom, "geoms", []) for p in _polygons(part)]
