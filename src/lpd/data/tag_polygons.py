"""Polygon tag regions (``TagRegion.polygon``): their rings in a sidecar, checked on
reading, and how an edited outline changes them.

A polygon region is one shapely ``Polygon`` (holes allowed) in level-0 pixels (x right,
y down). In a version-2 sidecar it is ``"polygon": [exterior, hole, ...]``, each ring a
list of ``[x, y]``: the coordinates of a GeoJSON Polygon."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Polygon

MAX_COORD = 1e12  # px, as for boxes
_EPS = 1e-6


def polygon_to_json(polygon: Polygon) -> list[list[list[float]]]:
    """Rings (exterior first, then holes) as lists of [x, y], each closed (its first
    vertex repeated), as GeoJSON writes a Polygon."""
    rings = [polygon.exterior, *polygon.interiors]
    return [[[float(x), float(y)] for x, y in ring.coords] for ring in rings]


def polygon_from_json(rings: object) -> Polygon:
    """The polygon of a sidecar's ``"polygon"`` value, checked exactly.

    Parameters
    ----------
    rings : object
        A list of rings (exterior, then holes), each a list of three or more [x, y]
        numbers (closed or not).

    Returns
    -------
    shapely.Polygon
        Valid, of positive area.

    Raises
    ------
    ValueError
        What is wrong with it (wrong types, non-finite or huge coordinates, a ring crossing
        itself, a hole outside the exterior...).
    """
    if not isinstance(rings, list) or not rings:
        raise ValueError("polygon is not a list of rings")
    checked = []
    for ring in rings:
        if (not isinstance(ring, list) or len(ring) < 3
                or not all(isinstance(p, list) and len(p) == 2 and all(map(_is_number, p))
                           for p in ring)):
            raise ValueError("a polygon ring is not a list of three or more [x, y] numbers")
        if not all(math.isfinite(v) and abs(v) <= MAX_COORD for p in ring for v in p):
            raise ValueError(f"polygon coordinates are not finite or beyond {MAX_COORD:.0e} px")
        checked.append(ring)
    polygon = Polygon(checked[0], checked[1:])
    if not polygon.is_valid or polygon.area <= 0:
        reason = shapely.is_valid_reason(polygon) if not polygon.is_valid else "no area"
        raise ValueError(f"polygon is not a valid polygon ({reason})")
    return polygon


def polygon_box(polygon: Polygon) -> tuple[int, int, int, int]:
    """(x, y, w, h): the polygon's bounding box rounded outwards to whole pixels (bounds
    within 1e-6 px of a whole pixel count as on it: an affine edit's rounding errors)."""
    x0, y0, x1, y1 = polygon.bounds
    x, y = math.floor(x0 + _EPS), math.floor(y0 + _EPS)
    return x, y, max(1, math.ceil(x1 - _EPS) - x), max(1, math.ceil(y1 - _EPS) - y)


def reshaped(polygon: Polygon, outline: Sequence[Sequence[float]], tol: float = 1e-6
             ) -> Polygon:
    """A polygon region after its outline was edited (as napari edits a shape).

    When the new outline is the old exterior moved, scaled or rotated (the same vertices
    under one affine map, within ``tol`` px), the whole polygon, holes included, is mapped
    so; otherwise the outline becomes the exterior and the holes that still lie inside it
    are kept.

    Parameters
    ----------
    polygon : shapely.Polygon
        The region as it was.
    outline : (N, 2) array-like
        The new exterior (x, y), open or closed.
    tol : float
        Largest vertex error (px) of an affine fit that still counts as a move.

    Returns
    -------
    shapely.Polygon
        Valid (a self-crossing outline is repaired to its largest part).

    Raises
    ------
    ValueError
        When the outline encloses no area.
    """
    new = np.asarray(outline, dtype=float)
    old = np.asarray(polygon.exterior.coords)[:-1]
    if len(new) > 1 and np.array_equal(new[0], new[-1]):
        new = new[:-1]
    if len(new) == len(old) and len(old) >= 3:
        design = np.hstack([old, np.ones((len(old), 1))])
        coef, *_ = np.linalg.lstsq(design, new, rcond=None)  # (3, 2): [A^T; t]
        if np.abs(design @ coef - new).max() <= tol:
            matrix = [coef[0, 0], coef[1, 0], coef[0, 1], coef[1, 1], coef[2, 0], coef[2, 1]]
            return _valid(affinity.affine_transform(polygon, matrix))
    exterior = _valid(Polygon(new))
    holes = [h for h in polygon.interiors if exterior.contains(Polygon(h))]
    return _valid(Polygon(exterior.exterior.coords, [h.coords for h in holes]))


def _valid(polygon: Polygon) -> Polygon:
    if not polygon.is_valid:
        parts = shapely.make_valid(polygon)
        candidates = [p for p in getattr(parts, "geoms", [parts]) if isinstance(p, Polygon)]
        polygon = max(candidates, key=lambda p: p.area, default=Polygon())
    if polygon.is_empty or polygon.area <= 0:
        raise ValueError("the outline encloses no area")
    return polygon


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
