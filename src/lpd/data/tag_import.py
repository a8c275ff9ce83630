"""QuPath annotations as tagged regions: ``import_annotations`` adds the polygons of a
GeoJSON file (``lpd.io.annotations``) whose classes are tissue classes to a ``TagStore``."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

import shapely
from shapely.geometry import box

from lpd.io.annotations import polygon_parts, read_annotations, tissue_class

if TYPE_CHECKING:
    from lpd.data.tags import TagRegion, TagStore


class Imported(NamedTuple):
    """What ``import_annotations`` did: the regions added, and one line per thing left out."""

    regions: list[TagRegion]
    notes: list[str]


def import_annotations(store: TagStore, path: str | os.PathLike[str]) -> Imported:
    """Add a GeoJSON file's tissue-class annotations to ``store`` as tagged polygon regions.

    Each annotation (QuPath's object type "annotation"; detections, cells and tiles are
    left out) whose classification names a tissue class (``lpd.io.annotations.
    tissue_class``: QuPath's Tumor, Stroma, Immune cells, Necrosis or our TUM, STR, LYM,
    NEC; several per region through QuPath's ``names``) becomes one region per polygon
    (holes kept; a MultiPolygon gives several), tagged with those classes, source
    ``"annotation"``. Other class names are ignored, and annotations with none of ours are
    skipped, each with a note; so are polygons already in the store (same vertices and
    classes: a second import of the same file adds nothing). With the image size known,
    polygons are cut to the image (wholly outside: skipped). The store is not saved.

    Parameters
    ----------
    store : TagStore
        The image's tags (its ``class_names`` are the classes recognised).
    path : str or PathLike
        A ``.geojson`` / ``.geojson.gz`` file in level-0 pixels of the store's image.

    Returns
    -------
    Imported
        ``regions`` added, in file order; ``notes``: one line each for what was skipped.

    Raises
    ------
    InputError
        Naming the file and the feature, when the file cannot be read
        (``lpd.io.annotations.read_annotations``).
    """
    notes: list[str] = []
    annotations = read_annotations(path, notes=notes)
    kinds: Counter[str] = Counter()
    unclassed: Counter[str] = Counter()
    ignored: set[str] = set()
    added: list[TagRegion] = []
    image = None if store.image_size is None else box(0, 0, store.image_size[1],
                                                      store.image_size[0])
    for a in annotations:
        if a.object_type.lower() not in ("annotation", "unknown"):
            kinds[a.object_type] += 1
            continue
        classes = a.classes(store.class_names)
        if not classes:
            unclassed[", ".join(a.names) or "unclassified"] += 1
            continue
        ignored |= {n for n in a.names if tissue_class(n, store.class_names) is None}
        geometry = a.geometry  # as in the file (its vertices, their order) unless cut
        if image is not None and not image.contains(geometry):
            geometry = shapely.intersection(geometry, image)
        parts = [p for p in polygon_parts(geometry) if p.area > 0]
        if not parts:
            notes.append(f"feature {a.index}: lies outside the image: skipped")
        for polygon in parts:
            if _known(store, polygon, classes):
                notes.append(f"feature {a.index}: already a tag region: skipped")
                continue
            added.append(store.add_polygon(polygon, classes, source="annotation"))
    notes += _summary(kinds, unclassed, ignored, store.class_names)
    return Imported(added, notes)


def _known(store: TagStore, polygon: shapely.Geometry, classes: tuple[str, ...]) -> bool:
    return any(r.polygon is not None and r.classes == classes
               and r.polygon.equals_exact(polygon, 1e-6) for r in store.regions)


def _summary(kinds: Counter, unclassed: Counter, ignored: set[str],
             class_names: tuple[str, ...]) -> list[str]:
    out = [f"{n} {kind} object(s) skipped: only annotations become tag regions"
           for kind, n in sorted(kinds.items())]
    out += [f"{n} annotation(s) of class {name} skipped: not a tissue class "
            f"({', '.join(class_names)})" for name, n in sorted(unclassed.items())]
    if ignored:
        out.append(f"class name(s) {', '.join(sorted(ignored))} ignored: not tissue classes")
    return out
