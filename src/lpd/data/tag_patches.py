"""Tagged regions as model patches: the grid of patch-sized cells, the patches of each
tagged region (``tag_patches``: resampled as tiled inference does, only inside a polygon
region), and their export as a BCSS-WSSS training folder (``export_training_folder``).

The tag store itself (``TagStore``, the sidecar) is ``lpd.data.tags``; its names are
importable from there too."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely

from lpd._atomic import atomic_path
from lpd.errors import InputError
from lpd.wsi.levels import as_pyramid, choose_level, resize_factor
from lpd.wsi.region import RegionSource

if TYPE_CHECKING:
    from lpd.data.tags import TagRegion, TagStore

Box = tuple[int, int, int, int]
#: A patch of a polygon region is used when at least this fraction of its pixels lies inside
#: the polygon.
MIN_INSIDE = 0.5
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


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
    """The model patches of the tagged regions of an image.

    Patches spread evenly over each region's bounding box (a region smaller than a patch:
    one centred patch, reflect-padded). A polygon region (imported annotations) keeps only
    the patches with at least ``MIN_INSIDE`` (half) of their pixels inside the polygon
    (holes are outside; so are padded pixels); a note names a polygon region left with
    none (narrower than about half a patch).

    Parameters
    ----------
    store : TagStore
        The tags (regions without a class are not used).
    image : Slide or array-like or list of array-likes
        A ``Slide``, an (H, W, 3|4) uint8 array-like or a list of them, level 0 first.
    patch_size : int
        Patch side in px, at the magnification read.
    level : int, optional
        Read this pyramid level as it is (default 0 when ``target_mpp`` is None).
    target_mpp : float, optional
        Read the coarsest fine-enough level for this µm/px, resampled to it (as tiled
        inference does).
    mpp : float, optional
        The image's level-0 µm/px (overrides the image's own).
    class_names : sequence of str, optional
        The model's classes, the order of the tags (default: the store's).

    Returns
    -------
    PatchPlan
        The patches, the level read, the resize factor, µm per patch px, notes.

    Raises
    ------
    InputError
        Tags naming classes the model does not know, a level that does not exist, or an
        image that is not RGB uint8.
    """
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
    patches: list[TagPatch] = []
    for region in store.tagged():
        patches += _region_patches(region, levels, float(downsamples[chosen]), chosen, resize,
                                   patch_size, names, notes)
    out_mpp = None if image_mpp is None else image_mpp * float(downsamples[chosen]) / resize
    return PatchPlan(patches, chosen, resize, out_mpp, notes)


def _region_patches(region: TagRegion, levels: list, d: float, chosen: int, resize: float,
                    size: int, names: tuple[str, ...], notes: list[str]) -> list[TagPatch]:
    """The patches of one region read from level ``chosen`` (downsample ``d``)."""
    arr = levels[chosen]
    (hl, wl), (h0, w0) = map(int, arr.shape[:2]), map(int, levels[0].shape[:2])
    x, y, w, h = region.bbox
    x1, y1, x, y = min(x + w, w0), min(y + h, h0), max(x, 0), max(y, 0)
    if x1 <= x or y1 <= y:
        notes.append(f"region {region.id} lies outside the image: skipped")
        return []
    yl0, xl0 = int(y // d), int(x // d)
    extent = (max(1, min(hl, math.ceil(y1 / d)) - yl0), max(1, min(wl, math.ceil(x1 / d)) - xl0))
    shape = (max(1, round(extent[0] * resize)), max(1, round(extent[1] * resize)))
    source = RegionSource(arr, (yl0, xl0), extent, resize, shape)
    tags, step = tuple(int(v) for v in region.tags(names)), d / resize
    starts = [(sy, sx) for sy in _starts(shape[0], size) for sx in _starts(shape[1], size)]
    if region.polygon is not None:
        corners = np.array([(xl0 * d + sx * step, yl0 * d + sy * step) for sy, sx in starts])
        boxes = shapely.box(corners[:, 0], corners[:, 1], corners[:, 0] + size * step,
                            corners[:, 1] + size * step)
        inside = shapely.area(shapely.intersection(region.polygon, boxes)) / (size * step) ** 2
        starts = [s for s, frac in zip(starts, inside, strict=True) if frac >= MIN_INSIDE]
        if not starts:
            notes.append(f"region {region.id}: no patch lies at least {MIN_INSIDE:.0%} inside "
                         "its polygon (too narrow for a patch): skipped")
    return [TagPatch(region.id, round(xl0 * d + max(sx, 0) * step),
                     round(yl0 * d + max(sy, 0) * step), tags, source,
                     (sy, sy + size, sx, sx + size)) for sy, sx in starts]


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
