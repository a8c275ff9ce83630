"""Where tiled inference reads: level, resize, region and output grid (``TilePlan``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lpd.errors import InputError
from lpd.infer.patch import FUSED_SCALES
from lpd.tiling import AxisGrid, TileGrid
from lpd.wsi.levels import as_pyramid, choose_level, resize_factor
from lpd.wsi.pixels import dark_note
from lpd.wsi.region import RegionSource, read_array
from lpd.wsi.slide import Slide, mpp_note, reader_info
from lpd.wsi.tissue import DEFAULT_SATURATION, saturation_threshold, tile_tissue_fractions

MAX_RESIZE = 8.0  # resampling a level by more than this, either way, needs allow_resample
SAMPLES_PER_TILE = 4  # tissue view: at least this many pixels along a tile side


@dataclass(frozen=True)
class TilePlan:
    """Geometry of one tiled prediction. Output pixel (u, v) covers level-0 pixels
    ``offset + [v, v+1) * scale`` (x) and ``[u, u+1) * scale`` (y).

    The output grid is a window of the level's own grid (the level resized by ``resize``,
    ``full`` pixels), starting at ``phase``, a multiple of the tile: tiles and model windows
    sit at fixed places of the slide, so the same slide pixel gets the same label whatever
    region is asked (a requested corner off that grid moves back to it, by less than a
    tile)."""

    level: int
    downsample: float  # level-0 px per level px
    resize: float  # output px per level px
    origin: tuple[float, float]  # (y, x) level coordinate of the output grid's corner
    extent: tuple[float, float]  # (h, w) of the output grid in level px
    shape: tuple[int, int]  # output grid (H, W)
    input_size: int
    halo: int
    mpp: float | None  # µm per output px (None: unknown)
    scale: float  # level-0 px per output px
    offset: tuple[float, float]  # (x, y) level-0 px of output pixel (0, 0)'s corner
    target_mpp: float | None
    slide_mpp: float | None
    region: tuple[int, int, int, int]  # the requested region (x, y, w, h), level-0 px
    notes: tuple[str, ...] = ()
    strides: tuple[int, ...] = (8, 16, 16)  # px per cell of each fused scale
    levels: Sequence[object] = field(default=(), repr=False, compare=False)
    downsamples: Sequence[float] = field(default=(), repr=False, compare=False)
    source_name: str | None = None
    phase: tuple[int, int] = (0, 0)  # (y, x) of output px (0, 0) in the level's grid
    full: tuple[int, int] | None = None  # (H, W) of the level's grid (None: the output's)
    slide: object = field(default=None, repr=False, compare=False)  # read_region, if any

    @property
    def tile(self) -> int:
        return self.input_size - 2 * self.halo

    @property
    def grid(self) -> tuple[int, int]:
        return (math.ceil(self.shape[0] / self.tile), math.ceil(self.shape[1] / self.tile))

    def axis_grids(self) -> tuple[AxisGrid, AxisGrid]:
        align = max(self.strides)
        full = self.full or self.shape
        return tuple(  # type: ignore[return-value]
            AxisGrid(self.shape[a], self.input_size, self.halo, align, -self.phase[a],
                     full[a] - self.phase[a])
            for a in (0, 1))

    def tile_grid(self) -> TileGrid:
        """Tiles and windows of the output grid in two dimensions."""
        return TileGrid(*self.axis_grids())

    def source(self) -> RegionSource:
        """The output grid's pixels; windows past the region read the level's own pixels
        (through ``Slide.read_region`` when the image is a slide: no dask graph per read)."""
        array = self.levels[self.level]
        hl, wl = (int(v) for v in array.shape[:2])  # type: ignore[attr-defined]
        if self.slide is not None:
            array = SlideLevel(self.slide, self.level, array)
        return RegionSource(array, self.origin, self.extent, self.resize, self.shape,
                            bounds=(0, hl, 0, wl))

    def info(self) -> dict:
        """JSON-able description kept in a store."""
        return {
            "source": self.source_name, "level": self.level, "downsample": self.downsample,
            "resize": self.resize, "target_mpp": self.target_mpp, "slide_mpp": self.slide_mpp,
            "region": list(self.region), "input_size": self.input_size, "halo": self.halo,
            "notes": list(self.notes),
            # level-0 (height, width) of the slide: exports clip to it (lpd.io.export)
            "image_size": ([int(v) for v in self.levels[0].shape[:2]]  # type: ignore[attr-defined]
                           if self.levels else None),
            # how the slide was read (backend, vendor, OpenSlide bounds); None for arrays
            "reader": reader_info(self.slide) if isinstance(self.slide, Slide) else None,
        }


class SlideLevel:
    """A slide's level as an array-like whose reads go straight to the slide's reader
    (``Slide.read_region``): the same pixels as its dask level, whose shape and chunks it
    shows, without building and scheduling a dask graph for every read (measured: 4x
    less CPU per pixel for a 720 px JPEG block)."""

    def __init__(self, slide: object, level: int, array: object) -> None:
        self.slide, self.level = slide, level
        self.shape = tuple(int(v) for v in array.shape)  # type: ignore[attr-defined]
        self.dtype = np.dtype(np.uint8)
        self.chunks = getattr(array, "chunks", None)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        return self.slide.read_region(self.level, y0, x0,  # type: ignore[attr-defined]
                                      max(0, y1 - y0), max(0, x1 - x0))


def plan_tiled(
    model: object,
    image: object,
    *,
    region: Sequence[int] | None = None,
    level: int | None = None,
    target_mpp: float | None = None,
    mpp: float | None = None,
    halo: int = 32,
    allow_resample: bool = False,
) -> TilePlan:
    """Choose level, resize and output grid (see ``lpd.infer.tiled``).

    Parameters
    ----------
    model : LPDModel
        The model (its input size, strides and training microns per pixel).
    image : Slide or array-like
        A slide, or an ``(H, W, 3) uint8`` array-like.
    region, level, target_mpp, mpp, halo
        As for ``lpd.infer.tiled.predict_tiled``.
    allow_resample : bool
        Resample the chosen level even by more than ``MAX_RESIZE`` times either way (which
        usually means a wrong microns per pixel).

    Returns
    -------
    TilePlan
        Its ``notes`` hold what the user should know: the slide's notes (an implausible
        microns per pixel), a nearly black image, an unmatched magnification.

    Raises
    ------
    InputError
        A bad region, level, halo or microns per pixel, or a resampling factor beyond
        ``MAX_RESIZE`` without ``allow_resample``.
    """
    cfg = model.config  # type: ignore[attr-defined]
    pyramid = as_pyramid(image, mpp)
    levels, downsamples, slide_mpp, name = (pyramid.levels, pyramid.downsamples, pyramid.mpp,
                                            pyramid.name)
    size = int(cfg.input_size)
    strides = fused_strides(model)
    _check_window(size, halo, max(strides))
    halo = int(halo)
    h0, w0 = _check_level(levels[0], name, 0)
    x, y, w, h = _region(region, (h0, w0), name)
    notes = _input_notes(pyramid.notes, region, (x, y, w, h), mpp, slide_mpp)
    model_mpp = cfg.microns_per_pixel
    target = target_mpp if target_mpp is not None else (model_mpp if level is None else None)
    if target is not None and not (math.isfinite(target) and target > 0):
        raise InputError(None, f"target_mpp must be a positive number, got {target}")
    chosen = _choose_level(level, len(levels), downsamples, target, slide_mpp, name)
    if target is None and model_mpp is None and level is None:
        notes.append("the checkpoint records no training magnification: level 0 used as is")
    if target is not None and slide_mpp is None:
        notes.append(f"the image has no microns per pixel: magnification not matched to "
                     f"{target} µm/px (give the slide's: --mpp on the command line, mpp= "
                     "in Python)")
    d = float(downsamples[chosen])
    resize = _resize(chosen, d, target, slide_mpp, allow_resample, name, notes)
    dark = dark_note_of(levels)
    if dark:
        notes.append(dark)
    hl, wl = _check_level(levels[chosen], name, chosen)
    full, (u0, v0), shape = _output_grid((hl, wl), (x, y, w, h), d, resize, size - 2 * halo)
    origin: tuple[float, float] = (u0 / resize, v0 / resize)
    if resize == 1.0:
        origin = (u0, v0)
    return TilePlan(
        level=chosen, downsample=d, resize=resize, origin=origin,
        extent=(shape[0] / resize, shape[1] / resize),
        shape=shape, input_size=size, halo=halo,
        mpp=None if slide_mpp is None else slide_mpp * d / resize, scale=d / resize,
        offset=(origin[1] * d, origin[0] * d), target_mpp=target, slide_mpp=slide_mpp,
        region=(x, y, w, h), notes=tuple(notes), strides=strides, levels=levels,
        downsamples=downsamples,
        source_name=name, phase=(u0, v0), full=full, slide=_reader_of(image, levels),
    )


def _reader_of(image: object, levels: Sequence[object]) -> object | None:
    """``image`` when it is a slide whose ``read_region`` reads these very levels."""
    own = getattr(image, "levels", None)
    if not callable(getattr(image, "read_region", None)) or own is None:
        return None
    if len(own) != len(levels) or any(a is not b for a, b in zip(own, levels, strict=True)):
        return None
    return image


def _check_window(size: int, halo: int, align: int) -> None:
    """The input size and the halo must be multiples of the coarsest stride ``align``."""
    if size % align:
        raise InputError(None, f"input size {size} is not a multiple of the model's coarsest "
                         f"stride {align}")
    if halo < 0 or 2 * halo >= size or halo % align:
        raise InputError(None, f"halo must be a multiple of {align} (the model's coarsest "
                         f"stride) below {size // 2}, got {halo}")


def _input_notes(own: Sequence[str], region: Sequence[int] | None, clipped: tuple[int, ...],
                 mpp: float | None, slide_mpp: float | None) -> list[str]:
    """The image's own notes, an overridden implausible mpp, a clipped region."""
    notes: list[str] = list(own)
    if mpp is not None and slide_mpp is not None and mpp_note(slide_mpp, "override"):
        notes.append(mpp_note(slide_mpp, "override"))  # type: ignore[arg-type]
    if region is not None and tuple(int(v) for v in region) != clipped:
        notes.append(f"region {tuple(region)} clipped to the image: {clipped}")
    return notes


def _choose_level(level: int | None, count: int, downsamples: Sequence[float],
                  target: float | None, slide_mpp: float | None, name: str | None) -> int:
    """``level`` when given (checked); else ``lpd.wsi.levels.choose_level``."""
    if level is not None:
        if not 0 <= level < count:
            raise InputError(name, f"level {level} does not exist (0..{count - 1})")
        return level
    return choose_level(downsamples, slide_mpp, target)


def _resize(chosen: int, d: float, target: float | None, slide_mpp: float | None,
            allow_resample: bool, name: str | None, notes: list[str]) -> float:
    """Output px per px of level ``chosen`` (downsample ``d``), by
    ``lpd.wsi.levels.resize_factor``; beyond ``MAX_RESIZE`` either way only with
    ``allow_resample``. Adds the user's notes to ``notes``."""
    if target is None or slide_mpp is None:
        return 1.0
    resize = resize_factor(slide_mpp * d, target)
    if not 1.0 / MAX_RESIZE <= resize <= MAX_RESIZE:
        how = f"{'enlarging' if resize > 1 else 'shrinking'} it {max(resize, 1 / resize):.3g}x"
        if not allow_resample:
            raise InputError(name, f"level {chosen} is {slide_mpp * d:.3g} µm/px and the "
                             f"model works at {target:.3g} µm/px: that means {how}, more "
                             f"than {MAX_RESIZE:g}x, which usually means a wrong microns "
                             "per pixel. Give the slide's with --mpp (mpp= in Python), "
                             "or confirm with --allow-resample (allow_resample=True)")
        notes.append(f"level {chosen} resampled beyond {MAX_RESIZE:g}x ({how}), as asked")
    elif resize > 1.0:
        notes.append(f"level {chosen} ({slide_mpp * d:.3g} µm/px) is coarser than the "
                     f"target {target:.3g} µm/px: enlarged {resize:.3g}x")
    return resize


def _output_grid(level_shape: tuple[int, int], region: tuple[int, int, int, int], d: float,
                 resize: float, tile: int
                 ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The level's output grid (its ``full`` shape), and the region on it: its corner
    ``phase`` (moved back to the tile grid) and its ``shape``."""
    hl, wl = level_shape
    x, y, w, h = region
    full = (max(1, round(hl * resize)), max(1, round(wl * resize)))
    yl0, xl0 = int(math.floor(y / d)), int(math.floor(x / d))
    yl1, xl1 = min(hl, int(math.ceil((y + h) / d))), min(wl, int(math.ceil((x + w) / d)))
    u0, v0 = (int(math.floor(yl0 * resize)) // tile * tile,
              int(math.floor(xl0 * resize)) // tile * tile)
    u1, v1 = min(full[0], max(u0 + 1, round(yl1 * resize))), min(full[1], max(v0 + 1, round(xl1 * resize)))
    return full, (u0, v0), (max(1, u1 - u0), max(1, v1 - v0))


def fused_strides(model: object) -> tuple[int, ...]:
    """Pixels per cell of the fused scales' maps (timm reports dilation in reductions)."""
    reductions = model.backbone.feature_info.reduction()  # type: ignore[attr-defined]
    return tuple(int(reductions[s]) for s in FUSED_SCALES)


def tissue_fractions(plan: TilePlan, grids: tuple[AxisGrid, AxisGrid]) -> tuple[np.ndarray | None, float]:
    """Per-tile tissue fractions from a cheap low-resolution view, or (None, default
    saturation) when there is none (a lazy array without a coarser level): the reader then
    checks each tile's pixels as it reads them. Each tile is judged on its whole extent in
    the slide (past the region's far end too) with one saturation threshold for the whole
    slide, so the decision does not depend on the region asked."""
    gy, gx = grids
    ty, tx = gy.count, gx.count
    lvl = plan.level
    per_tile = plan.tile / SAMPLES_PER_TILE  # wanted: view pixel <= this many output px
    coarse = [c for c in range(lvl + 1, len(plan.levels))
              if plan.downsamples[c] / plan.downsample * plan.resize <= per_tile]
    yl0, xl0 = plan.origin
    # the tiles' whole extent, in level px (clipped to the level)
    hl = min(gy.tile_extent(ty - 1)[1], max(gy.end, gy.length)) / plan.resize
    wl = min(gx.tile_extent(tx - 1)[1], max(gx.end, gx.length)) / plan.resize
    if coarse:
        c = coarse[-1]
        f = plan.downsamples[c] / plan.downsample  # level px per view px
        arr = plan.levels[c]
        a0, a1 = int(math.floor(yl0 / f)), min(int(arr.shape[0]), int(math.ceil((yl0 + hl) / f)))
        b0, b1 = int(math.floor(xl0 / f)), min(int(arr.shape[1]), int(math.ceil((xl0 + wl) / f)))
        view = arr[a0:a1, b0:b1]  # type: ignore[index]
        rows = ((np.arange(a0, a1) + 0.5) * f - yl0) * plan.resize
        cols = ((np.arange(b0, b1) + 0.5) * f - xl0) * plan.resize
    elif isinstance(plan.levels[lvl], np.ndarray):
        step = max(1, int(per_tile / plan.resize))
        iy0, ix0 = int(math.floor(yl0)), int(math.floor(xl0))
        view = plan.levels[lvl][iy0 : int(math.ceil(yl0 + hl)) : step,
                                ix0 : int(math.ceil(xl0 + wl)) : step]
        rows = ((np.arange(view.shape[0]) * step + iy0 + 0.5) - yl0) * plan.resize
        cols = ((np.arange(view.shape[1]) * step + ix0 + 0.5) - xl0) * plan.resize
    else:
        return None, DEFAULT_SATURATION
    return tile_tissue_fractions(view, rows, cols, plan.tile, (ty, tx),
                                 threshold=slide_saturation(plan.levels))


def slide_saturation(levels: Sequence[object], max_side: int = 1024) -> float:
    """The tissue saturation threshold of the whole slide: Otsu's on its coarsest level,
    read with a stride of at most ``max_side`` px a side (one value per slide, so tiles
    are judged alike whatever region is asked)."""
    arr = levels[-1]
    h, w = int(arr.shape[0]), int(arr.shape[1])  # type: ignore[attr-defined]
    step = max(1, math.ceil(max(h, w) / max_side))
    return saturation_threshold(read_array(arr, slice(0, h, step), slice(0, w, step)))


def dark_note_of(levels: Sequence[object], side: int = 1024) -> str | None:
    """``lpd.wsi.pixels.dark_note`` of the coarsest level (read with a stride when it is
    small, else a central window of ``side`` px: a few chunks, never the whole level).

    Parameters
    ----------
    levels : sequence of array-like
        ``(H, W, 3) uint8`` pyramid levels, finest first.
    side : int
        Pixels a side of what is read.

    Returns
    -------
    str or None
        The note, or None when the image is not nearly black.
    """
    arr = levels[-1]
    h, w = int(arr.shape[0]), int(arr.shape[1])  # type: ignore[attr-defined]
    if isinstance(arr, np.ndarray) or h * w <= 4 * side * side:
        step = max(1, math.ceil(max(h, w) / side))
        view = read_array(arr, slice(0, h, step), slice(0, w, step))
    else:
        y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
        view = read_array(arr, slice(y0, y0 + side), slice(x0, x0 + side))
    return dark_note(view)


def _check_level(array: object, name: str | None, index: int) -> tuple[int, int]:
    shape = getattr(array, "shape", None)
    dtype = getattr(array, "dtype", None)
    if shape is None or dtype is None or not hasattr(array, "__getitem__"):
        raise InputError(name, "not an image array (expected an (H, W, 3) uint8 array-like)")
    if len(shape) != 3 or shape[-1] != 3 or np.dtype(dtype) != np.uint8:
        raise InputError(
            name, f"level {index} is {tuple(shape)} {np.dtype(dtype)}; tiled inference needs "
            "(H, W, 3) uint8 RGB (convert with lpd.wsi.images.as_rgb_uint8 or open_slide)",
        )
    if shape[0] < 1 or shape[1] < 1:
        raise InputError(name, f"level {index} is empty ({tuple(shape)})")
    return int(shape[0]), int(shape[1])


def _region(region: Sequence[int] | None, shape: tuple[int, int], name: str | None):
    h0, w0 = shape
    if region is None:
        return 0, 0, w0, h0
    try:
        x, y, w, h = (int(v) for v in region)
    except (TypeError, ValueError):
        raise InputError(name, f"region must be (x, y, width, height), got {region!r}") from None
    if w < 1 or h < 1:
        raise InputError(name, f"region {w}x{h} is empty")
    x1, y1 = min(x + w, w0), min(y + h, h0)
    x, y = max(x, 0), max(y, 0)
    if x1 <= x or y1 <= y:
        raise InputError(name, f"region {tuple(region)} lies outside the image ({w0}x{h0})")
    return x, y, x1 - x, y1 - y
