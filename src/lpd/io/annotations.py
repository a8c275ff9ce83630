"""Annotations from QuPath (and our own GeoJSON export) read as shapely geometry.

``read_annotations`` reads a ``.geojson`` (or gzip-compressed ``.geojson.gz``) file as QuPath
writes it (``GsonTools`` / ``PathObjectTypeAdapters``, QuPath 0.2 to 0.5) and as
``lpd.io.export`` writes it:

- the document: a ``FeatureCollection``, a bare array of features (QuPath's "Export objects"
  without the collection), one ``Feature``, or one bare geometry;
- a feature: ``{"type": "Feature", "id", "geometry", "properties"}``; its object type is
  ``properties.objectType`` ("annotation", "detection", "cell", "tile", "tmaCore"), the
  legacy ``properties.object_type`` or ``properties.type``, or QuPath 0.2's
  ``"id": "PathAnnotationObject"`` (and the other ``Path...Object`` names); none:
  "annotation" (QuPath's default too);
- ``properties.classification``: ``{"name": ..., "color": [r, g, b]}``, the multi-class
  ``{"names": [...], "color": ...}`` of QuPath 0.4+, QuPath 0.2's ``{"name", "colorRGB":
  packed int, "parentClass": {...}}`` (the parents' names first), or a plain string;
- ``properties.measurements``: an object of name -> number, or the legacy list of
  ``{"name", "value"}``;
- geometry: ``Polygon`` and ``MultiPolygon`` with holes (a ``GeometryCollection``: its
  polygons), coordinates (x, y) in level-0 slide pixels, the origin at the top-left corner
  of pixel (0, 0). Points and lines enclose no area: skipped with a note; a self-crossing
  polygon is repaired (``shapely.make_valid``) with a note.

Whatever cannot be read is one ``InputError`` naming the file and the feature (1-based, in
file order, with its name when it has one). QuPath's tissue class names map to ours
(``tissue_class``): Tumor -> TUM, Stroma -> STR, Immune cells -> LYM, Necrosis -> NEC; our
names (and long names) are read as themselves, case-insensitively.

``lpd.io.roi.Roi`` turns annotations into the region of interest of ``lpd.segment(roi=...)``
and ``lpd predict --roi``: the union of their polygons, holes excluded."""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape

from lpd._userfile import loads, read_text
from lpd.classes import CLASS_LONG_NAMES, CLASS_NAMES
from lpd.errors import InputError

GEOJSON_SUFFIXES = (".geojson", ".geojson.gz")
#: QuPath's built-in class for each of ours (its default classes: Tumor, Stroma, Immune
#: cells, Necrosis, Other, Region*, Ignore*, Positive, Negative).
QUPATH_CLASS_NAMES: dict[str, str] = {"TUM": "Tumor", "STR": "Stroma", "LYM": "Immune cells",
                                      "NEC": "Necrosis"}
MAX_COORD = 1e12  # px: far beyond any slide
_LEGACY_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                 "PathCellObject": "cell", "PathTileObject": "tile", "TMACoreObject": "tmaCore",
                 "PathRootObject": "root"}
_GZIP_MAGIC = b"\x1f\x8b"
Area = Polygon | MultiPolygon


def tissue_class(name: str, class_names: Sequence[str] = CLASS_NAMES) -> str | None:
    """Our tissue class for a class name from a GeoJSON file, or None.

    Parameters
    ----------
    name : str
        A QuPath class name ("Tumor", "Stroma", "Immune cells", "Necrosis"), one of
        ``class_names`` ("TUM"...) or one of our long names ("Lymphocytic infiltrate"...);
        case and surrounding spaces do not matter.
    class_names : sequence of str
        The classes to map to (the model's).

    Returns
    -------
    str or None
        The class of ``class_names`` it names; None for any other name ("Other",
        "Region*", "Positive"...).
    """
    key = str(name).strip().casefold()
    aliases = {**{v.casefold(): k for k, v in QUPATH_CLASS_NAMES.items()},
               **{v.casefold(): k for k, v in CLASS_LONG_NAMES.items()}}
    for ours in class_names:
        if key == ours.casefold():
            return ours
    mapped = aliases.get(key)
    return mapped if mapped in class_names else None


@dataclass(frozen=True)
class Annotation:
    """One polygonal object of a GeoJSON file.

    Attributes
    ----------
    geometry : shapely.Polygon or shapely.MultiPolygon
        Valid, non-empty, holes included; (x, y) in level-0 slide pixels.
    names : tuple of str
        The classification's names as written (QuPath's or ours; empty: unclassified).
    object_type : str
        "annotation", "detection", "cell", "tile", "tmaCore"... (QuPath's words).
    name : str or None
        The object's name.
    id : str or None
        The feature's id (QuPath 0.4+: a UUID).
    colour : tuple of int or None
        The classification's (else the object's) RGB colour, 0-255.
    index : int
        The feature's number in the file (1-based), as errors and notes name it.
    measurements : dict
        Name -> value.
    """

    geometry: Area
    names: tuple[str, ...] = ()
    object_type: str = "annotation"
    name: str | None = None
    id: str | None = None
    colour: tuple[int, int, int] | None = None
    index: int = 0
    measurements: dict[str, float] = field(default_factory=dict, compare=False)

    def classes(self, class_names: Sequence[str] = CLASS_NAMES) -> tuple[str, ...]:
        """Our tissue classes among ``names`` (``tissue_class``), in ``class_names`` order."""
        found = {tissue_class(n, class_names) for n in self.names}
        return tuple(c for c in class_names if c in found)

    def polygons(self) -> list[Polygon]:
        """The geometry's polygons (one for a Polygon)."""
        return polygon_parts(self.geometry)


def polygon_parts(geom: shapely.Geometry) -> list[Polygon]:
    """The non-empty polygons of a geometry (of its parts, for collections)."""
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    return [p for part in getattr(geom, "geoms", []) for p in polygon_parts(part)]


def read_annotations(path: str | os.PathLike[str], *, notes: list[str] | None = None
                     ) -> list[Annotation]:
    """The polygonal objects of a QuPath GeoJSON file (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        A ``.geojson`` file, or one compressed with gzip (``.geojson.gz``); UTF-8, or
        UTF-16/32 with a byte-order mark.
    notes : list of str, optional
        Receives one line per feature skipped (a point, a line, no geometry) or repaired
        (a self-crossing polygon).

    Returns
    -------
    list of Annotation
        In file order (Annotation.index: the feature's number).

    Raises
    ------
    InputError
        Naming the file (and the feature, 1-based) when it cannot be read, is not GeoJSON,
        or a feature is malformed (a bad geometry, coordinates that are not finite
        numbers or lie beyond 1e12 px, a classification or measurement of the wrong type).
    """
    notes = [] if notes is None else notes
    out = []
    for i, item in enumerate(_features(_document(path), path), start=1):
        annotation = _feature(item, i, path, notes)
        if annotation is not None:
            out.append(annotation)
    return out


def _document(path: str | os.PathLike[str]) -> Any:
    """The parsed JSON of a plain or gzip-compressed file."""
    what = "GeoJSON file"
    try:
        with open(path, "rb") as fh:
            compressed = fh.read(2) == _GZIP_MAGIC
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    if not compressed:
        return loads(read_text(path, what), path, what)
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"cannot decompress the {what} ({exc})") from None
    return loads(raw, path, what)


def _features(doc: Any, path: str | os.PathLike[str]) -> list:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection" or (kind is None and "features" in doc):
            features = doc.get("features")
            if not isinstance(features, list):
                raise InputError(path, 'the FeatureCollection has no "features" list')
            return features
        if kind == "Feature":
            return [doc]
        if (isinstance(kind, str) and "coordinates" in doc) or kind == "GeometryCollection":
            return [{"type": "Feature", "geometry": doc}]
    raise InputError(path, "not GeoJSON: expected a FeatureCollection, a Feature or a list "
                     "of features")


def _where(i: int, item: Any) -> str:
    props = item.get("properties") if isinstance(item, dict) else None
    name = props.get("name") if isinstance(props, dict) else None
    if isinstance(name, str) and len(name) > 40:
        name = name[:39] + "…"
    return f"feature {i}" + (f" ({name!r})" if isinstance(name, str) and name else "")


def _feature(item: Any, i: int, path: str | os.PathLike[str], notes: list[str]
             ) -> Annotation | None:
    where = _where(i, item)
    try:
        if not isinstance(item, dict):
            raise ValueError(f"is {type(item).__name__}, not a GeoJSON Feature object")
        props = item.get("properties")
        props = {} if props is None else props
        if not isinstance(props, dict):
            raise ValueError('"properties" is not an object')
        geometry, note = _geometry(item.get("geometry"))
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"{where}: {_line(exc)}") from None
    if note is not None:
        notes.append(f"{where}: {note}")
    if geometry is None:
        return None
    try:
        names, colour = _classification(props.get("classification"))
        colour = colour or _colour(props.get("color"))
        object_type = _object_type(item, props)
        measurements = _measurements(props.get("measurements"))
        name, fid = props.get("name"), item.get("id")
        if name is not None and not isinstance(name, str):
            raise ValueError(f'"name" {name!r} is not text')
    except RecursionError:  # a chain of parentClass nested past Python's limit
        raise InputError(path, f"{where}: its classification is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise InputError(path, f"{where}: {_line(exc)}") from None
    fid = None if fid is None or fid in _LEGACY_TYPES else str(fid)  # 0.2: a type, no id
    return Annotation(geometry, names, object_type, name, fid, colour, i, measurements)


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())  # one line, whatever a library's message holds


def _geometry(geom: Any) -> tuple[Area | None, str | None]:
    """A feature's area (None: skipped) and a note (why it was skipped or repaired)."""
    if geom is None:
        return None, "has no geometry: skipped"
    if not isinstance(geom, dict) or not isinstance(geom.get("type"), str):
        raise ValueError('its "geometry" is not a GeoJSON geometry object')
    kind = geom["type"]
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        return None, f"is a {kind}, not an area: skipped"
    if kind not in ("Polygon", "MultiPolygon", "GeometryCollection"):
        raise ValueError(f"unknown geometry type {kind!r}")
    try:
        with warnings.catch_warnings():  # NaN coordinates: refused just below
            warnings.simplefilter("ignore", RuntimeWarning)
            made = shape(geom)
        coords = shapely.get_coordinates(made)
    except Exception as exc:  # shapely raises many kinds for malformed coordinates
        raise ValueError(f"its {kind} is malformed ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(coords).all() or (len(coords) and np.abs(coords).max() > MAX_COORD):
        raise ValueError(f"its {kind} has coordinates that are not finite or lie beyond "
                         f"{MAX_COORD:.0e} px")
    parts, note = polygon_parts(made), None
    if parts and not all(p.is_valid for p in parts):
        note = f"its {kind} crosses itself ({shapely.is_valid_reason(made)}): repaired"
        parts = polygon_parts(shapely.make_valid(MultiPolygon(parts)))
    parts = [p for p in parts if p.area > 0]
    if not parts:
        return None, f"has an empty {kind}, or one of zero area: skipped"
    if len(parts) > 1 and not MultiPolygon(parts).is_valid:  # overlapping parts
        parts = polygon_parts(shapely.union_all(parts))
    return (parts[0] if len(parts) == 1 else MultiPolygon(parts)), note


def _classification(value: Any) -> tuple[tuple[str, ...], tuple[int, int, int] | None]:
    """(names, colour) of a QuPath classification (any of its forms) or a plain name."""
    if value is None:
        return (), None
    if isinstance(value, str):
        return (value,), None
    if not isinstance(value, dict):
        raise ValueError(f"classification {value!r} is neither an object nor a name")
    names = value.get("names")
    if names is None:
        name = value.get("name")
        parent = value.get("parentClass")  # QuPath 0.2: derived classes as a chain
        names = (_classification(parent)[0] if parent is not None else ()) + \
            ((name,) if name is not None else ())
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"classification names {names!r} are not a list of text")
    colour = _colour(value.get("color", value.get("colorRGB")))
    return tuple(n for n in names if n.strip()), colour


def _colour(value: Any) -> tuple[int, int, int] | None:
    """RGB of ``[r, g, b]`` (0-255) or QuPath's packed (A)RGB integer."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        v = value & 0xFFFFFF
        return (v >> 16) & 255, (v >> 8) & 255, v & 255
    if (isinstance(value, list) and len(value) in (3, 4)
            and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                    and math.isfinite(c) for c in value)):
        r, g, b = (int(min(max(round(c), 0), 255)) for c in value[:3])
        return r, g, b
    raise ValueError(f"colour {value!r} is neither [r, g, b] nor a packed RGB number")


def _object_type(item: dict, props: dict) -> str:
    for key in ("objectType", "object_type", "type"):
        if key in props:
            if not isinstance(props[key], str):
                raise ValueError(f'"{key}" {props[key]!r} is not text')
            return props[key]
    fid = item.get("id")
    return _LEGACY_TYPES.get(fid, "annotation") if isinstance(fid, str) else "annotation"


def _measurements(value: Any) -> dict[str, float]:
    """QuPath's measurements: an object of name -> number, or the legacy list of
    ``{"name", "value"}``; a null value or "NaN" is NaN."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        if not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in value):
            raise ValueError('measurements are not a list of {"name", "value"} objects')
        pairs = [(m["name"], m.get("value")) for m in value]
    else:
        raise ValueError("measurements are neither an object nor a list")
    out = {}
    for key, v in pairs:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("nan", "-nan")):
            v = math.nan
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"measurement {key!r} is {v!r}, not a number")
        out[key] = float(v)
    return out
