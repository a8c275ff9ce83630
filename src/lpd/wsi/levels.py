"""An image as a pyramid (``as_pyramid``) and the one rule for which level to read
(``choose_level``, ``resize_factor``).

Everything that reads pixels at a magnification - tiled inference, tagged-region patches,
``Slide.best_level_for_mpp``, the viewer's image layers - goes through these, so they agree
on the level and the resampling factor: the coarsest level whose microns per pixel is at
most the target's (within ``MPP_TOLERANCE``), resized by ``level mpp / target mpp`` unless
that is within ``MPP_TOLERANCE`` of 1 (then read as it is, never resampled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lpd.errors import InputError

MPP_TOLERANCE = 0.02  # a level within 2 % of the target mpp is read as it is


@dataclass(frozen=True)
class Pyramid:
    """Lazy levels of one image, finest first.

    Attributes
    ----------
    levels : list of array-like
        ``levels[i]`` is ``(H_i, W_i, C)`` (dask, zarr or numpy); level 0 is full resolution.
    downsamples : list of float
        Level-0 pixels per level-i pixel (``downsamples[0] == 1``).
    mpp : float or None
        Level-0 microns per pixel; None when unknown.
    name : str or None
        What error messages name (the file, or the layer).
    notes : tuple of str
        The source's notes for the user (e.g. an implausible mpp).
    """

    levels: list
    downsamples: list[float]
    mpp: float | None = None
    name: str | None = None
    notes: tuple[str, ...] = field(default=())

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level``; None when the mpp is unknown."""
        return None if self.mpp is None else self.mpp * float(self.downsamples[level])


def as_pyramid(image: object, mpp: float | None = None, name: str | None = None) -> Pyramid:
    """The pyramid of a slide, a list of levels or a single array.

    Parameters
    ----------
    image : Slide, Pyramid, sequence of array-like, or array-like
        An opened slide (``lpd.wsi.open_slide``) or a ``Pyramid``; a list or tuple of
        ``(H, W, C)`` levels, finest first; or one ``(H, W, C)`` array.
    mpp : float, optional
        Level-0 microns per pixel, overriding the image's (µm/px; a 2-vector is averaged).
    name : str, optional
        What error messages name; default: the slide's path.

    Returns
    -------
    Pyramid
        Downsamples are the slide's own, else level-0 height / level height.

    Raises
    ------
    InputError
        A level that is not an array, or an mpp that is not positive. (Callers check the
        channels and dtype they need.)
    """
    if isinstance(image, Pyramid):
        if mpp is None and name is None:
            return image
        name = name or image.name
    name = name or (str(getattr(image, "path", "") or "") or None)
    notes = tuple(str(n) for n in (getattr(image, "notes", None)
                                   or (getattr(image, "metadata", None) or {}).get("notes", [])))
    if hasattr(image, "levels"):
        levels = list(image.levels)  # type: ignore[attr-defined]
        downsamples = [float(d) for d in getattr(image, "downsamples", None) or []]
        own_mpp = getattr(image, "mpp", None)
    else:
        levels = list(image) if isinstance(image, (list, tuple)) else [image]
        downsamples, own_mpp = [], None
    for i, lv in enumerate(levels):
        shape = getattr(lv, "shape", None)
        if shape is None or len(shape) < 2 or not hasattr(lv, "__getitem__"):
            raise InputError(name, f"level {i} is not an image array (expected an (H, W, 3) "
                             "uint8 array-like)")
    if not downsamples:
        h0 = int(levels[0].shape[0])
        downsamples = [h0 / max(1, int(lv.shape[0])) for lv in levels]
    mpp = own_mpp if mpp is None else mpp
    if mpp is not None:
        mpp = float(np.mean(mpp))
        if not (math.isfinite(mpp) and mpp > 0):
            raise InputError(name, f"microns per pixel must be positive, got {mpp}")
    return Pyramid(levels, downsamples, mpp, name, notes)


def choose_level(downsamples: Sequence[float], mpp: float | None, target: float | None) -> int:
    """The level to read for ``target`` µm/px.

    Parameters
    ----------
    downsamples : sequence of float
        Level-0 pixels per level pixel, one per level.
    mpp : float or None
        Level-0 microns per pixel.
    target : float or None
        The wanted microns per pixel.

    Returns
    -------
    int
        The coarsest level whose mpp is at most ``target * (1 + MPP_TOLERANCE)``; level 0
        when none is (level 0 is coarser than the target: it is then enlarged) or when
        ``mpp`` or ``target`` is unknown.
    """
    if mpp is None or target is None:
        return 0
    fine = [i for i, d in enumerate(downsamples) if mpp * float(d) <= target * (1 + MPP_TOLERANCE)]
    return max(fine, key=lambda i: float(downsamples[i])) if fine else 0


def resize_factor(level_mpp: float | None, target: float | None) -> float:
    """Output pixels per level pixel that bring ``level_mpp`` to ``target`` (< 1 shrinks).

    Parameters
    ----------
    level_mpp : float or None
        Microns per pixel of the chosen level.
    target : float or None
        The wanted microns per pixel.

    Returns
    -------
    float
        ``level_mpp / target``; exactly 1.0 within ``MPP_TOLERANCE``, or when either is
        unknown.
    """
    if level_mpp is None or target is None:
        return 1.0
    factor = float(level_mpp) / float(target)
    return 1.0 if abs(factor - 1.0) <= MPP_TOLERANCE else factor
