"""A region of interest for segmentation from annotations: ``Roi`` (a (Multi)Polygon with
holes in level-0 slide pixels, e.g. the union of a QuPath GeoJSON file's polygons) and
``as_roi``, which ``lpd.segmentation.segment_iter`` applies to its ``roi``. Pixels whose
centres lie in the geometry are segmented (``lpd.infer`` rasterises it per tile)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, shape

from lpd.errors import InputError
from lpd.io.annotations import Annotation, Area, polygon_parts, tissue_class


class Roi:
    """A region of interest for ``lpd.segment(roi=...)``: a (Multi)Polygon with holes, in
    level-0 slide pixels; pixels whose centres lie inside it are segmented.

    ``__geo_interface__`` is the geometry's (``shapely.geometry.shape(roi)`` gives it back);
    iterating gives every vertex (x, y) of every ring in order, which a prediction store
    records (its fingerprint) so that a resume needs the same region.

    Parameters
    ----------
    geometry : shapely geometry or GeoJSON geometry dict
        Its polygonal parts are kept; invalid ones are repaired (``shapely.make_valid``).

    Raises
    ------
    InputError
        When nothing of positive area is left.
    """

    def __init__(self, geometry: shapely.Geometry) -> None:
        if not isinstance(geometry, shapely.Geometry):
            geometry = shape(geometry)  # e.g. a GeoJSON geometry dict
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        parts = polygon_parts(geometry)
        if not parts or sum(p.area for p in parts) <= 0:
            raise InputError(None, "the region of interest has no area (no polygon in it)")
        self.geometry: Area = parts[0] if len(parts) == 1 else MultiPolygon(parts)

    @property
    def __geo_interface__(self) -> dict:
        return self.geometry.__geo_interface__

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return (tuple(map(float, xy)) for xy in shapely.get_coordinates(self.geometry))

    def __len__(self) -> int:
        return int(shapely.get_num_coordinates(self.geometry))

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) in whole level-0 pixels: the bounding box, rounded outwards."""
        x0, y0, x1, y1 = self.geometry.bounds
        x, y = math.floor(x0), math.floor(y0)
        return x, y, max(1, math.ceil(x1) - x), max(1, math.ceil(y1) - y)

    def __repr__(self) -> str:
        return f"Roi({self.geometry.geom_type}, {len(self)} vertices, area {self.geometry.area:g})"

    @classmethod
    def from_annotations(cls, annotations: Sequence[Annotation], class_name: str | None = None,
                         path: str | os.PathLike[str] | None = None) -> Roi:
        """The union of the annotations' polygons (those of one class when ``class_name``).

        Parameters
        ----------
        annotations : sequence of Annotation
            As ``read_annotations`` returns them.
        class_name : str, optional
            Keep the objects classified so: a name as written (case-insensitive) or one of
            our tissue classes (``tissue_class``: "Tumor" and "TUM" pick the same).
        path : str or PathLike, optional
            The file they came from, named in errors.

        Returns
        -------
        Roi

        Raises
        ------
        InputError
            When no annotation (of that class) is left.
        """
        chosen = list(annotations)
        if class_name is not None:
            want, tissue = class_name.strip().casefold(), tissue_class(class_name)
            chosen = [a for a in chosen if any(n.strip().casefold() == want for n in a.names)
                      or (tissue is not None and tissue in a.classes())]
        if not chosen:
            found = sorted({n for a in annotations for n in a.names})
            which = f"of class {class_name!r} " if class_name is not None else ""
            raise InputError(path, f"no polygon {which}to use as the region of interest"
                             + (f" (classes in the file: {', '.join(found)})" if found else ""))
        return cls(shapely.union_all([a.geometry for a in chosen]))


def as_roi(roi: Any) -> Any:
    """``roi`` as ``predict_tiled`` takes it: a shapely geometry (or any object with
    ``__geo_interface__``) becomes a ``Roi``; None, vertex lists and ``Roi``s stay as they
    are.

    Parameters
    ----------
    roi : None, (N, 2) array-like of (x, y), Roi, shapely geometry or geo-interface object
        Level-0 slide pixels.

    Returns
    -------
    None, the vertex list, or a Roi
    """
    if roi is None or isinstance(roi, Roi) or not (
            isinstance(roi, shapely.Geometry) or hasattr(roi, "__geo_interface__")):
        return roi
    return Roi(roi if isinstance(roi, shapely.Geometry) else roi.__geo_interface__)
