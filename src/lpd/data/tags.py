"""Region tags drawn on an image, kept in ``<image>.lpd-tags.json`` beside it (see
``sidecar_path`` for the bundled sample data and read-only folders).

A ``TagStore`` holds ``TagRegion``s: boxes (x, y, w, h) or polygons (imported annotations,
holes allowed) in level-0 pixels with the classes present in them (none ticked: not tagged
yet, skipped by training and export). Sidecar: ``{"format": "lpd-tags", "version": 1 or 2,
"image": {"name", "width", "height", "file_bytes", "fingerprint" (sha256 of the first and
last 64 KiB)}, "class_names", "regions": [{"id", "bbox", "classes", "source"}]}``; version
2 adds ``"polygon": [exterior, hole, ...]`` (rings of [x, y]; ``lpd.data.tag_polygons``) to
polygon regions, whose ``bbox`` is then the polygon's, rounded outwards. A store is written
as version 1 while it has no polygon (older napari-lpd reads it), else 2; both are read.

Importable from here too, from their modules: the sidecar's place (``sidecar_path``,
``lpd.data.tag_files``), patches and the export of a training folder (``tag_patches``,
``export_training_folder``: ``lpd.data.tag_patches``), QuPath GeoJSON as tagged polygons
(``import_annotations``: ``lpd.data.tag_import``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from lpd._atomic import atomic_write_text
from lpd._userfile import read_json
from lpd.classes import CLASS_NAMES
from lpd.data.tag_files import (
    SIDECAR_SUFFIX,
    folder_writable,
    image_fingerprint,
    sidecar_path,
    tags_dir,
)
from lpd.data.tag_import import Imported, import_annotations
from lpd.data.tag_patches import (
    PatchPlan,
    TagPatch,
    cell_size,
    export_training_folder,
    grid_cells,
    iter_export,
    safe_stem,
    tag_patches,
)
from lpd.data.tag_polygons import polygon_box, polygon_from_json, polygon_to_json, reshaped
from lpd.errors import InputError

__all__ = ["FORMAT", "SIDECAR_SUFFIX", "SOURCES", "VERSION", "Imported", "PatchPlan",
           "TagPatch", "TagRegion", "TagStore", "cell_size", "export_training_folder",
           "folder_writable", "grid_cells", "image_fingerprint", "import_annotations",
           "iter_export", "safe_stem", "sidecar_path", "tag_patches", "tags_dir"]

FORMAT, VERSION = "lpd-tags", 2
SOURCES = ("rectangle", "grid", "annotation")  # drawn, a grid cell, imported (a polygon)
MAX_COORD = 1e12  # px: far beyond any slide, and exact as a float (no inf from x + w)
Box = tuple[int, int, int, int]


@dataclass
class TagRegion:
    id: int
    bbox: Box  # x, y, w, h in level-0 image pixels (a polygon's: its bounds, rounded out)
    classes: tuple[str, ...] = ()
    source: str = "rectangle"  # "rectangle", "grid" or "annotation"
    polygon: Polygon | None = None  # level-0 px, holes allowed; None: the box is the region

    def tags(self, class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
        """float32 0/1 vector in ``class_names`` order."""
        return np.array([float(c in self.classes) for c in class_names], np.float32)


@dataclass
class TagStore:
    image_path: Path
    regions: list[TagRegion] = field(default_factory=list)
    class_names: tuple[str, ...] = CLASS_NAMES
    image_size: tuple[int, int] | None = None  # level-0 (height, width)
    warnings: list[str] = field(default_factory=list)  # e.g. "the image file changed"
    last_backup: Path | None = None  # set when save() moved a damaged sidecar aside
    _written: tuple | None = field(default=None, repr=False)  # stat after our last write

    def __post_init__(self) -> None:
        self.image_path, self.class_names = Path(self.image_path), tuple(self.class_names)

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.image_path)

    def add(self, bbox: Sequence[float], classes: Sequence[str] = (),
            source: str = "rectangle") -> TagRegion:
        """A new region (next free id); ``bbox`` is rounded outwards to whole pixels."""
        if source not in SOURCES:
            raise InputError(self.sidecar, f"region source must be one of {SOURCES}")
        region = TagRegion(max((r.id for r in self.regions), default=0) + 1,
                           self._bbox(bbox), self._classes(classes), source)
        self.regions.append(region)
        return region

    def add_polygon(self, polygon: Polygon, classes: Sequence[str] = (),
                    source: str = "annotation") -> TagRegion:
        """A new polygon region (next free id); ``polygon`` (level-0 px) must be valid."""
        region = self.add(polygon_box(self._polygon(polygon)), classes, source)
        region.polygon = polygon
        return region

    def update(self, region_id: int, *, bbox: Sequence[float] | None = None,
               classes: Sequence[str] | None = None,
               outline: Sequence[Sequence[float]] | None = None) -> TagRegion:
        """Move/resize a region or replace its classes.

        ``bbox`` (x, y, w, h) is a box region's new box; ``outline`` ((N, 2) vertices
        (x, y)) a polygon region's new exterior (``lpd.data.tag_polygons.reshaped``: a move
        or resize takes the holes along); either raises ``InputError`` on the wrong kind.
        """
        region = self.region(region_id)
        if (bbox is not None and region.polygon is not None) or (
                outline is not None and region.polygon is None):
            kind = "a polygon" if region.polygon is not None else "a box"
            raise InputError(self.sidecar, f"region {region_id} is {kind}: give "
                             + ("its outline" if region.polygon is not None else "its bbox"))
        if outline is not None and region.polygon is not None:
            try:
                region.polygon = self._polygon(reshaped(region.polygon, outline))
            except ValueError as exc:
                raise InputError(self.sidecar, f"region {region_id}: {exc}") from None
            region.bbox = polygon_box(region.polygon)
        region.bbox = region.bbox if bbox is None else self._bbox(bbox)
        region.classes = region.classes if classes is None else self._classes(classes)
        return region

    def remove(self, region_id: int) -> None:
        self.regions.remove(self.region(region_id))

    def region(self, region_id: int) -> TagRegion:
        for region in (r for r in self.regions if r.id == region_id):
            return region
        raise KeyError(f"no tag region with id {region_id}")

    def tagged(self) -> list[TagRegion]:
        """Regions with at least one class ticked (the others are not used)."""
        return [r for r in self.regions if r.classes]

    def _bbox(self, bbox: Sequence[float]) -> Box:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError, OverflowError):
            raise InputError(self.sidecar, f"bbox must be (x, y, w, h), got {bbox!r}") from None
        if not all(abs(v) <= MAX_COORD for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise InputError(self.sidecar, f"bbox {tuple(bbox)} is empty, not finite or "
                             f"beyond {MAX_COORD:.0e} px")
        x0, y0 = math.floor(x), math.floor(y)
        return x0, y0, max(1, math.ceil(x + w) - x0), max(1, math.ceil(y + h) - y0)

    def _polygon(self, polygon: Polygon) -> Polygon:
        try:
            return polygon_from_json(polygon_to_json(polygon))  # what a save writes, checked
        except (ValueError, AttributeError) as exc:
            raise InputError(self.sidecar, f"not a tag region polygon: {exc}") from None

    def _classes(self, classes: Sequence[str]) -> tuple[str, ...]:
        chosen = {classes} if isinstance(classes, str) else set(classes)
        unknown = sorted(map(str, chosen - set(self.class_names)))
        if unknown:
            raise InputError(self.sidecar, f"unknown class(es) {', '.join(unknown)} (known: "
                             f"{', '.join(self.class_names)})")
        return tuple(c for c in self.class_names if c in chosen)  # always in class order

    # -- file ---------------------------------------------------------------------------
    @classmethod
    def load(cls, image_path: str | os.PathLike[str], class_names: Sequence[str] = CLASS_NAMES,
             image_size: tuple[int, int] | None = None) -> TagStore:
        """The image's tags (empty without a sidecar).

        The sidecar is read as UTF-8, with or without a byte-order mark, or as UTF-16/32
        with one, with any line endings (as Windows editors save it). Every region must
        be well formed: a file is loaded whole or refused, never in part.

        Parameters
        ----------
        image_path : str or PathLike
            The image the tags belong to.
        class_names : sequence of str
            The classes a new store offers (a sidecar's own list replaces them).
        image_size : tuple of int, optional
            The image's level-0 (height, width), to flag tags drawn on another size.

        Returns
        -------
        TagStore
            The tags; ``warnings`` lists what the caller should show.

        Raises
        ------
        InputError
            Naming the sidecar and the problem, when it is unreadable or malformed
            (``save`` then moves it aside as ``.bak`` rather than overwrite it).
        """
        store = cls(Path(image_path), [], tuple(class_names), image_size)
        path = store.sidecar
        if not path.exists():
            return store
        try:  # a BOM, UTF-16 (Windows editors) and CRLF are read as the same text
            data = read_json(path, "tag file")
        except InputError as exc:
            raise InputError(path, f"{exc.problem}; it will be kept as .bak when new tags "
                             "are saved") from None
        store._read(data)
        store._written = _stat(path)
        return store

    def _read(self, data: object) -> None:
        path = self.sidecar
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(path, f'not an LPD tag file (no "format": "{FORMAT}")')
        version = data.get("version")
        if not _is_int(version) or not 1 <= version <= VERSION:
            raise InputError(path, f"tag file version {version!r} is not supported (this "
                             f"napari-lpd reads versions 1 to {VERSION}; update it)")
        names, regions = data.get("class_names"), data.get("regions")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) \
                or len(set(names)) != len(names):
            raise InputError(path, 'tag file has no valid "class_names" list (distinct names)')
        if not isinstance(regions, list):
            raise InputError(path, 'tag file has no "regions" list')
        self.class_names, seen = tuple(names), set()
        for i, item in enumerate(regions):
            try:
                region = self._region(item, seen, version)
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                why = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__} {exc}"
                raise InputError(path, f"region {i + 1} is malformed ({why})") from None
            seen.add(region.id)
            self.regions.append(region)
        info = data.get("image") if isinstance(data.get("image"), dict) else {}
        size = (info.get("height"), info.get("width"))
        if self.image_size is not None and size != tuple(self.image_size) and None not in size:
            self.warnings.append(f"tags were drawn on an image of {size[1]}x{size[0]} px")
        if self.image_size is None and all(_is_int(v) and v > 0 for v in size):
            self.image_size = size  # type: ignore[assignment]
        now = image_fingerprint(self.image_path)
        if now and info.get("fingerprint") and list(now) != [info.get("file_bytes"),
                                                             info.get("fingerprint")]:
            self.warnings.append("the image file changed since these tags were saved")

    def _region(self, item: object, seen: set[int], version: int = VERSION) -> TagRegion:
        """One region of a sidecar, its types checked exactly (nothing coerced: a region
        is read as it was written, or refused). From version 2, a ``"polygon"`` (when not
        null) makes it a polygon region, its box taken from the polygon."""
        if not isinstance(item, dict):
            raise TypeError("not an object with id, bbox, classes, source")
        rid, bbox, classes, source = item["id"], item["bbox"], item["classes"], item["source"]
        if not _is_int(rid) or rid in seen:
            raise ValueError(f"id {rid!r} is not a whole number, or is used twice")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise ValueError(f"bbox {bbox!r} is not [x, y, w, h] numbers")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"classes {classes!r} is not a list of class names")
        if not isinstance(source, str) or source not in SOURCES:
            raise ValueError(f"source {source!r} is not one of {SOURCES}")
        region = TagRegion(rid, self._bbox(bbox), self._classes(classes), source)
        if version >= 2 and item.get("polygon") is not None:
            region.polygon = polygon_from_json(item["polygon"])
            region.bbox = polygon_box(region.polygon)
        return region

    def to_dict(self) -> dict:
        """The sidecar's content: version 1 while no region is a polygon, else 2."""
        finger = image_fingerprint(self.image_path) or (None, None)
        height, width = self.image_size or (None, None)
        polygons = any(r.polygon is not None for r in self.regions)
        return {"format": FORMAT, "version": VERSION if polygons else 1,
                "image": {"name": self.image_path.name, "width": width, "height": height,
                          "file_bytes": finger[0], "fingerprint": finger[1]},
                "class_names": list(self.class_names),
                "regions": [_region_json(r) for r in self.regions]}

    def save(self) -> Path:
        """Write the sidecar atomically; a damaged sidecar this store did not write is first
        moved aside as ``.bak`` (``.bak.1``, ... if taken; see ``last_backup``)."""
        path = self.sidecar
        try:
            if path.exists() and _stat(path) != self._written and not _is_tag_file(path):
                n, self.last_backup = 0, path.with_name(path.name + ".bak")
                while self.last_backup.exists():
                    n, self.last_backup = n + 1, path.with_name(f"{path.name}.bak.{n + 1}")
                os.replace(path, self.last_backup)
            atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        except OSError as exc:
            raise InputError(path, f"cannot write the tag file ({exc.strerror or exc})") from None
        self._written = _stat(path)
        return path


def _region_json(region: TagRegion) -> dict:
    out = {"id": region.id, "bbox": list(region.bbox), "classes": list(region.classes),
           "source": region.source}
    if region.polygon is not None:
        out["polygon"] = polygon_to_json(region.polygon)
    return out


def _stat(path: Path) -> tuple | None:
    with contextlib.suppress(OSError):
        st = path.stat()
        return st.st_ino, st.st_size, st.st_mtime_ns
    return None


def _is_tag_file(path: Path) -> bool:
    """Whether ``path`` holds tags ``TagStore.load`` reads (so saving over it loses
    nothing); read as ``load`` reads it, BOM and all."""
    try:
        TagStore(path.parent / path.name[: -len(SIDECAR_SUFFIX)])._read(
            read_json(path, "tag file"))
    except ValueError:  # InputError is a ValueError
        return False
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


