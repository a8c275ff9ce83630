"""Region tags drawn on an image, kept in ``<image>.lpd-tags.json`` beside it (see
``sidecar_path`` for the bundled sample data and read-only folders).

A ``TagStore`` holds ``TagRegion``s: boxes (x, y, w, h) in level-0 pixels with the classes
present in them (none ticked: not tagged yet, skipped by training and export). Sidecar:
``{"format": "lpd-tags", "version": 1, "image": {"name", "width", "height", "file_bytes",
"fingerprint" (sha256 of the first and last 64 KiB)}, "class_names", "regions": [{"id",
"bbox", "classes", "source"}]}``. ``tag_patches`` cuts tagged regions into model patches
(resampled as tiled inference does) for export and ``lpd.finetune.TagDataset``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from lpd._atomic import atomic_path, atomic_write_text
from lpd._userfile import read_json
from lpd.classes import CLASS_NAMES
from lpd.data.sample import SAMPLE_ROOT
from lpd.errors import InputError
from lpd.wsi.levels import as_pyramid, choose_level, resize_factor
from lpd.wsi.region import RegionSource

FORMAT, VERSION, SIDECAR_SUFFIX = "lpd-tags", 1, ".lpd-tags.json"
SOURCES = ("rectangle", "grid")
MAX_COORD = 1e12  # px: far beyond any slide, and exact as a float (no inf from x + w)
_FINGERPRINT_BYTES = 65536
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
Box = tuple[int, int, int, int]


def tags_dir() -> Path:
    """The user data folder for tags that cannot stay beside their image.

    Returns
    -------
    Path
        ``$LPD_DATA_DIR/tags`` if that variable is set, else
        ``platformdirs.user_data_dir("napari-lpd")/tags`` (not created here).
    """
    root = os.environ.get("LPD_DATA_DIR") or platformdirs.user_data_dir("napari-lpd")
    return Path(root) / "tags"


def folder_writable(folder: str | os.PathLike[str]) -> bool:
    """Whether new files can be created in a folder.

    ``os.access`` alone misses read-only mounts, ACLs and the like, so a temporary file
    is also created (and removed at once).

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to check; a missing folder is not writable.

    Returns
    -------
    bool
        True if a file could be created there.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".lpd-write-test-"):
            return True
    except OSError:
        return False


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """Where an image's tags are kept.

    ``<image>.lpd-tags.json`` beside the image; for the bundled sample data (under
    ``lpd.data.sample.SAMPLE_ROOT``, which may be an installed package) and for images in
    folders that cannot be written, ``<name>-<hash>.lpd-tags.json`` in ``tags_dir()``, the
    hash being of the image's absolute path (same-named images of different folders do
    not share tags).

    Parameters
    ----------
    image_path : str or os.PathLike
        The image file.

    Returns
    -------
    Path
        The sidecar file (it may not exist yet).

    Raises
    ------
    InputError
        If ``image_path`` has no file name (``""``, ``"."``, ``".."``, ``"/"``).
    """
    image = Path(image_path)
    if not image.name or image.name in (".", ".."):
        raise InputError(image, "not an image file name; tags are stored beside an image")
    absolute = image.resolve()
    if not absolute.is_relative_to(SAMPLE_ROOT.resolve()) and folder_writable(image.parent):
        return image.parent / (image.name + SIDECAR_SUFFIX)
    key = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]
    return tags_dir() / f"{safe_stem(image.name)}-{key}{SIDECAR_SUFFIX}"


def image_fingerprint(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(file size, sha256 of the first and last 64 KiB) or None: cheap, changes with the file."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            digest = hashlib.sha256(fh.read(_FINGERPRINT_BYTES))
            fh.seek(max(size - _FINGERPRINT_BYTES, 0))
            digest.update(fh.read(_FINGERPRINT_BYTES))
    except OSError:
        return None
    return size, digest.hexdigest()


@dataclass
class TagRegion:
    id: int
    bbox: Box  # x, y, w, h in level-0 image pixels
    classes: tuple[str, ...] = ()
    source: str = "rectangle"  # "rectangle" or "grid"

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

    def update(self, region_id: int, *, bbox: Sequence[float] | None = None,
               classes: Sequence[str] | None = None) -> TagRegion:
        """Move/resize a region or replace its classes."""
        region = self.region(region_id)
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
                             f"napari-lpd reads version {VERSION}; update it)")
        names, regions = data.get("class_names"), data.get("regions")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names) \
                or len(set(names)) != len(names):
            raise InputError(path, 'tag file has no valid "class_names" list (distinct names)')
        if not isinstance(regions, list):
            raise InputError(path, 'tag file has no "regions" list')
        self.class_names, seen = tuple(names), set()
        for i, item in enumerate(regions):
            try:
                region = self._region(item, seen)
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

    def _region(self, item: object, seen: set[int]) -> TagRegion:
        """One region of a sidecar, its types checked exactly (nothing coerced: a region
        is read as it was written, or refused)."""
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
        return TagRegion(rid, self._bbox(bbox), self._classes(classes), source)

    def to_dict(self) -> dict:
        finger = image_fingerprint(self.image_path) or (None, None)
        height, width = self.image_size or (None, None)
        return {"format": FORMAT, "version": VERSION,
                "image": {"name": self.image_path.name, "width": width, "height": height,
                          "file_bytes": finger[0], "fingerprint": finger[1]},
                "class_names": list(self.class_names),
                "regions": [{"id": r.id, "bbox": list(r.bbox), "classes": list(r.classes),
                             "source": r.source} for r in self.regions]}

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


# -- grid -------------------------------------------------------------------------------
def grid_cells(image_size: tuple[int, int], cell: int, region: Sequence[float] | None = None
               ) -> list[Box]:
    """Cells (x, y, w, h) of a ``cell``-px grid from (0, 0) over an image of level-0 size
    (height, width), clipped at its edges; ``region`` (x, y, w, h): only cells meeting it."""
    height, width = (int(v) for v in image_size)
    if cell < 1:
        raise ValueError(f"cell size must be >= 1, got {cell}")
    x0, y0, x1, y1 = 0, 0, width, height
    if region is not None:
        rx, ry, rw, rh = region
        x0, y0 = max(0, math.floor(rx) // cell * cell), max(0, math.floor(ry) // cell * cell)
        x1, y1 = min(width, math.ceil(rx + rw)), min(height, math.ceil(ry + rh))
    return [(x, y, min(cell, width - x), min(cell, height - y))
            for y in range(y0, y1, cell) for x in range(x0, x1, cell)]


def cell_size(patch_size: int, target_mpp: float | None, image_mpp: float | None) -> int:
    """Level-0 pixels covered by one model patch (so grid cells are exactly patches)."""
    if target_mpp is None or image_mpp is None:
        return int(patch_size)
    return max(1, round(patch_size * target_mpp / image_mpp))


# -- patches ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TagPatch:
    """A patch: level-0 top-left (x, y), tags, ``source`` pixels ``window`` (y0, y1, x0, x1)."""

    region_id: int
    x: int
    y: int
    tags: tuple[int, ...]
    source: RegionSource = field(repr=False, compare=False)
    window: tuple[int, int, int, int]

    def read(self) -> np.ndarray:
        return self.source.read(*self.window)


@dataclass
class PatchPlan:
    patches: list[TagPatch]
    level: int  # level read; resize: patch px per level px; mpp: µm per patch px or None
    resize: float
    mpp: float | None
    notes: list[str]


def tag_patches(store: TagStore, image: object, *, patch_size: int = 224,
                level: int | None = None, target_mpp: float | None = None,
                mpp: float | None = None, class_names: Sequence[str] | None = None) -> PatchPlan:
    """``patch_size`` px patches covering the tagged regions of ``image`` (a Slide, an (H, W,
    3|4) uint8 array-like or a list of them, level 0 first) at ``target_mpp`` (coarsest
    fine-enough level, resampled) or at ``level`` as it is (default 0); ``mpp`` overrides
    the image's. Big regions: evenly spread crops; small: centred, reflect-padded."""
    names = tuple(class_names or store.class_names)
    missing = sorted({c for r in store.tagged() for c in r.classes} - set(names))
    if missing:
        raise InputError(store.sidecar, f"tags use class(es) {', '.join(missing)} that the "
                         f"model does not know ({', '.join(names)})")
    levels, downsamples, image_mpp = _pyramid(image, mpp, store.image_path)
    chosen, resize, notes = int(level or 0), 1.0, []
    if not 0 <= chosen < len(levels):
        raise InputError(store.image_path, f"level {level} does not exist (0..{len(levels) - 1})")
    if level is None and target_mpp is not None and image_mpp is None:
        notes.append(f"the image has no microns per pixel: tags used at full resolution, "
                     f"not at {target_mpp} µm/px")
    elif level is None and target_mpp is not None:
        chosen = choose_level(downsamples, image_mpp, target_mpp)
        resize = resize_factor(image_mpp * downsamples[chosen], target_mpp)
    d, arr = float(downsamples[chosen]), levels[chosen]
    (hl, wl), (h0, w0) = map(int, arr.shape[:2]), map(int, levels[0].shape[:2])
    patches: list[TagPatch] = []
    for region in store.tagged():
        x, y, w, h = region.bbox
        x1, y1, x, y = min(x + w, w0), min(y + h, h0), max(x, 0), max(y, 0)
        if x1 <= x or y1 <= y:
            notes.append(f"region {region.id} lies outside the image: skipped")
            continue
        yl0, xl0 = int(y // d), int(x // d)
        extent = (max(1, min(hl, math.ceil(y1 / d)) - yl0),
                  max(1, min(wl, math.ceil(x1 / d)) - xl0))
        shape = (max(1, round(extent[0] * resize)), max(1, round(extent[1] * resize)))
        source = RegionSource(arr, (yl0, xl0), extent, resize, shape)
        tags, step = tuple(int(v) for v in region.tags(names)), d / resize
        patches += [TagPatch(region.id, round(xl0 * d + max(sx, 0) * step),
                             round(yl0 * d + max(sy, 0) * step), tags, source,
                             (sy, sy + patch_size, sx, sx + patch_size))
                    for sy in _starts(shape[0], patch_size) for sx in _starts(shape[1], patch_size)]
    out_mpp = None if image_mpp is None else image_mpp * d / resize
    return PatchPlan(patches, chosen, resize, out_mpp, notes)


def _starts(length: int, size: int) -> list[int]:
    if length <= size * 1.05:  # one patch: centred (cropped a little, or padded)
        return [(length - size) // 2]
    return [round(v) for v in np.linspace(0, length - size, math.ceil(length / size))]


def _pyramid(image: object, mpp: float | None, name: Path) -> tuple[list, list[float], float | None]:
    pyramid = as_pyramid(image, mpp, str(name))
    for i, lv in enumerate(pyramid.levels):
        shape, dtype = tuple(lv.shape), getattr(lv, "dtype", None)
        if len(shape) != 3 or shape[-1] not in (3, 4) or dtype is None or np.dtype(dtype) != np.uint8:
            raise InputError(name, f"level {i} is {shape} {dtype}; tags need an RGB uint8 image")
    return pyramid.levels, pyramid.downsamples, pyramid.mpp


# -- export -----------------------------------------------------------------------------
def safe_stem(name: str, default: str = "image") -> str:
    """A file-name stem that can neither leave its folder nor break a BCSS name: letters,
    digits and ``._-`` only, no leading dot, at most 100 characters."""
    return _UNSAFE.sub("_", str(name)).lstrip("._-")[:100].rstrip(".") or default


def iter_export(store: TagStore, image: object, out_dir: str | os.PathLike[str], *,
                patch_size: int = 224, level: int | None = None, target_mpp: float | None = None,
                mpp: float | None = None, name: str | None = None,
                ) -> Generator[tuple[int, int], None, list[Path]]:
    """``export_training_folder`` as a generator: yields (done, total), returns the files."""
    plan = tag_patches(store, image, patch_size=patch_size, level=level,
                       target_mpp=target_mpp, mpp=mpp)
    if not plan.patches:
        raise InputError(store.sidecar, "no tagged regions to export (tick at least one "
                         "class for a region)")
    from PIL import Image

    train = Path(out_dir) / "train"
    root = train.resolve()
    stem = safe_stem(Path(name).name if name else
                     Path(store.image_path.name).stem.removesuffix(".ome"))
    written: list[Path] = []
    for patch in plan.patches:
        digits = "".join(str(t) for t in patch.tags)
        path = train / f"{stem}_x{patch.x}_y{patch.y}+0[{digits}].png"
        if path.resolve().parent != root:  # belt and braces: safe_stem already ensures it
            raise InputError(path, "export file name would leave the output folder")
        with atomic_path(path) as tmp:
            Image.fromarray(patch.read()).save(tmp, format="PNG")
        written.append(path)
        yield len(written), len(plan.patches)
    return written


def export_training_folder(store: TagStore, image: object, out_dir: str | os.PathLike[str],
                           **options: object) -> list[Path]:
    """Write each tagged region's patches as ``out_dir/train/<stem>_x<X>_y<Y>+0[1010].png``
    (the BCSS-WSSS training layout; X, Y: level-0 top-left; digits: TUM STR LYM NEC) and
    return the written files. ``options``: ``patch_size`` (224), ``level`` /
    ``target_mpp`` / ``mpp`` as in ``tag_patches``, ``name`` (the stem; default: the
    image's), always passed through ``safe_stem``."""
    from lpd.progress import drive

    return drive(iter_export(store, image, out_dir, **options))  # type: ignore[arg-type]
