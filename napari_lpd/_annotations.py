"""QuPath GeoJSON as a Shapes layer on its slide (the reader's ``read_geojson``), and a
shape of such a layer back as a polygon with its holes (``annotation_geometry``).

Shapes cannot have holes, so each polygon is one shape per ring: its exterior, then its
holes (feature ``hole`` True), all of one object sharing ``feature`` (its number in the
file) and ``part`` (its polygon, for a MultiPolygon). Vertices are (row, column) in the
slide's level-0 pixels, as the plugin's other shapes (the tags layer, the Segment widget's
scope): a GeoJSON vertex (x, y) is data point (y, x). The layer takes the slide layer's
scale and translate (µm when its microns per pixel are known) so it lies on the slide:
the open image layer read from the file of the same name (``slide.svs`` for
``slide.geojson`` or ``slide.svs.geojson``), else the selected image layer, else the top
one; without an image layer, level-0 pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from shapely.geometry import Polygon

from lpd.classes import CLASS_COLOURS
from lpd.errors import InputError
from lpd.io.annotations import GEOJSON_SUFFIXES, Annotation, read_annotations
from napari_lpd._layers import LayerData, layer_file, units_of
from napari_lpd._metadata import LayerMeta

UNCLASSIFIED = (255, 0, 0)  # QuPath's colour for an unclassified annotation


def read_geojson(path: Path) -> LayerData:
    """The polygons of a QuPath GeoJSON file as a Shapes layer (see the module docstring).

    Parameters
    ----------
    path : Path
        A ``.geojson`` or ``.geojson.gz`` file, coordinates in level-0 slide pixels.

    Returns
    -------
    LayerData
        ``(data, meta, "shapes")``: polygons (row, column); ``features`` per shape:
        ``feature``, ``part``, ``hole``, ``classification`` (the names joined by ": ",
        as QuPath shows them), ``tissue`` (our classes joined by "+"), ``name``,
        ``object_type``; edge colours from the classification (else the object's colour,
        else our class colour, else red); faces clear.

    Raises
    ------
    InputError
        Naming the file (and the feature) when it cannot be read or holds no polygon.
    """
    notes: list[str] = []
    annotations = read_annotations(path, notes=notes)
    if not annotations:
        raise InputError(path, "holds no polygon to show" + (f" ({notes[0]})" if notes else ""))
    if notes:
        from napari.utils.notifications import show_warning

        more = f" (and {len(notes) - 1} more)" if len(notes) > 1 else ""
        show_warning(f"{notes[0]}{more} — {path.name}")
    data, rows, colours = [], [], []
    for a in annotations:
        for part, polygon in enumerate(a.polygons()):
            for ring, coords in enumerate([polygon.exterior, *polygon.interiors]):
                data.append(np.asarray(coords.coords)[:-1, ::-1].copy())  # (row, col), open
                rows.append(_feature_row(a, part, ring > 0))
                colours.append((*np.array(_colour(a)) / 255.0, 1.0))
    extent = max(float(np.ptp(np.concatenate(data), axis=0).max()), 1.0)
    scale, translate, units = _slide_frame(path)
    meta = {
        "name": _stem(path), "shape_type": "polygon", "features": pd.DataFrame(rows),
        "edge_color": np.array(colours), "face_color": [0.0, 0.0, 0.0, 0.0],
        "edge_width": max(2.0, extent / 500), "scale": scale, "translate": translate,
        "units": units, "metadata": LayerMeta(path=str(path)).to_metadata(),
    }
    return data, meta, "shapes"


def _feature_row(a: Annotation, part: int, hole: bool) -> dict[str, Any]:
    return {"feature": a.index, "part": part, "hole": hole,
            "classification": ": ".join(a.names), "tissue": "+".join(a.classes()),
            "name": a.name or "", "object_type": a.object_type}


def _colour(a: Annotation) -> tuple[int, int, int]:
    if a.colour is not None:
        return a.colour
    classes = a.classes()
    return CLASS_COLOURS[classes[0]] if classes and classes[0] in CLASS_COLOURS else UNCLASSIFIED


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(GEOJSON_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _slide_frame(path: Path) -> tuple[tuple[float, float], tuple[float, float],
                                       tuple[str, str]]:
    """(scale, translate, units) of the slide layer the annotations belong to."""
    layer = slide_layer_for(path)
    if layer is None:
        return (1.0, 1.0), (0.0, 0.0), units_of(None)
    scale = tuple(float(v) for v in layer.scale[-2:])
    translate = tuple(float(v) for v in layer.translate[-2:])
    return scale, translate, tuple(str(u) for u in layer.units[-2:])  # type: ignore[return-value]


def slide_layer_for(path: Path, viewer: Any = None) -> Any:
    """The image layer of the current viewer a GeoJSON file's coordinates refer to (see
    the module docstring), or None.

    Parameters
    ----------
    path : Path
        The GeoJSON file.
    viewer : napari.viewer.Viewer, optional
        Default: ``napari.current_viewer()``.

    Returns
    -------
    napari.layers.Image or None
    """
    import napari
    from napari.layers import Image

    viewer = viewer if viewer is not None else napari.current_viewer()
    if viewer is None:
        return None
    images = [lyr for lyr in viewer.layers if isinstance(lyr, Image)]
    stem = _stem(path)
    for layer in images:
        file = layer_file(layer)
        if file is not None and stem in (file.name, file.stem, file.name.split(".")[0]):
            return layer
    active = viewer.layers.selection.active
    if isinstance(active, Image):
        return active
    return images[-1] if images else None


def annotation_geometry(shapes: Any, image: Any, index: int | None = None) -> Polygon | None:
    """A shape of a layer made by ``read_geojson`` as its polygon with its holes, in the
    image layer's level-0 pixels (x, y): what the Segment widget's "Selected shape" scope
    can pass as ``roi``.

    Parameters
    ----------
    shapes : napari.layers.Shapes
        The layer (features ``feature``, ``part``, ``hole``).
    image : napari.layers.Image
        The slide layer the region is for.
    index : int, optional
        The shape (an exterior or one of its holes); default the selected one, else the
        last.

    Returns
    -------
    shapely.Polygon or None
        None when the layer is not one of ours (no such features) or holds no shapes.
    """
    table = getattr(shapes, "features", None)
    if table is None or not len(shapes.data) or not {"feature", "part", "hole"} <= set(table):
        return None
    if index is None:
        selected = sorted(shapes.selected_data)
        index = selected[0] if selected else len(shapes.data) - 1
    same = ((table["feature"] == table["feature"].iloc[index])
            & (table["part"] == table["part"].iloc[index])).to_numpy()

    def xy(i: int) -> np.ndarray:
        vertices = np.asarray(shapes.data[i], dtype=float)
        return np.array([image.world_to_data(shapes.data_to_world(v))[-2:]
                         for v in vertices])[:, ::-1]

    rings = [i for i in np.flatnonzero(same)]
    holes = table["hole"].to_numpy()
    exterior = next((i for i in rings if not holes[i]), None)
    if exterior is None:
        return None
    return Polygon(xy(exterior), [xy(i) for i in rings if holes[i]])


def shape_roi(shapes: Any, image: Any) -> Polygon | np.ndarray:
    """The selected shape of ``shapes`` as the Segment widget's ``roi``, in the image
    layer's level-0 pixels (x, y).

    Parameters
    ----------
    shapes : napari.layers.Shapes
        A layer drawn by the user, or imported from QuPath GeoJSON (``read_geojson``).
    image : napari.layers.Image
        The slide layer the region is for.

    Returns
    -------
    shapely.Polygon or (N, 2) ndarray
        An imported annotation's polygon with its holes (``annotation_geometry``), else the
        drawn shape's vertices (``napari_lpd._layers.shape_polygon``).

    Raises
    ------
    ValueError
        The layer has no shapes, or the shape is a line or a path.
    """
    from napari_lpd._layers import shape_polygon

    geometry = annotation_geometry(shapes, image)
    return geometry if geometry is not None else shape_polygon(shapes, image)


def roi_vertices(roi: Any) -> list[list[float]] | None:
    """What a run's key records of its ROI: every ring's vertices (x, y), rounded to
    0.01 px; None without an ROI.

    Parameters
    ----------
    roi : None, (N, 2) array-like or shapely geometry
        As ``shape_roi`` gives it.

    Returns
    -------
    list of [x, y] or None
    """
    from lpd.io.roi import as_roi

    if roi is None:
        return None
    return [[round(float(x), 2), round(float(y), 2)] for x, y in as_roi(roi)]
