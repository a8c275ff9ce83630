"""Reading a region of one pyramid level through an output grid (``RegionSource``).

``RegionSource`` maps the output (processing) grid onto a pyramid level: output pixel ``p``
has its centre at level coordinate ``origin + (p + 0.5) / resize - 0.5``. With ``resize ==
1`` a window is a plain slice; otherwise it is resampled separably (linear interpolation
when enlarging, a triangle filter of width ``1 / resize`` when shrinking), with weights that
depend only on global coordinates, so any tiling gives the same pixels as one resize of the
whole region. Reads outside the readable bounds (the region, or the whole level for tiled
inference) are reflect-padded. Tiled inference (``lpd.infer``) and tagged regions
(``lpd.data.tags``) read through it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def read_array(array: object, ys: slice, xs: slice) -> np.ndarray:
    """``array[ys, xs, :3]`` as a numpy array, computed in the calling thread."""
    part = array[ys, xs]  # type: ignore[index]
    compute = getattr(part, "compute", None)
    if compute is not None:
        part = compute(scheduler="synchronous")
    out = np.asarray(part)
    return out[..., :3] if out.shape[-1] != 3 else out


@dataclass(frozen=True)
class RegionSource:
    """The region of one level, seen through the output grid (see the module docstring).

    Reads are confined to ``bounds`` (level px ``(y0, y1, x0, x1)``; default: the region,
    ``origin`` to ``origin + extent``) and reflect-padded past them. Tiled inference passes
    the whole level as bounds, so windows that reach past the region read the slide's own
    pixels there."""

    array: object  # (H, W, 3) uint8 array-like
    origin: tuple[float, float]  # (y, x) level coordinate of the output grid's corner
    extent: tuple[float, float]  # (h, w) of the region at this level
    resize: float  # output px per level px
    shape: tuple[int, int]  # output grid (H, W)
    bounds: tuple[int, int, int, int] | None = None  # level px reads are confined to

    def _limits(self, axis: int) -> tuple[int, int, int, int]:
        """(level px start, end, output px start, end) of the readable data on ``axis``."""
        o = self.origin[axis]
        if self.bounds is None:
            b0, b1 = int(math.floor(o)), int(math.ceil(o + self.extent[axis]))
            return b0, b1, 0, int(self.shape[axis])
        b0, b1 = self.bounds[2 * axis], self.bounds[2 * axis + 1]
        return b0, b1, round((b0 - o) * self.resize), round((b1 - o) * self.resize)

    def data_span(self, axis: int) -> tuple[int, int]:
        """Output px ``[start, end)`` of the readable data along ``axis`` (0: y, 1: x):
        reads past it are reflect-padded."""
        _, _, o0, o1 = self._limits(axis)
        return o0, o1

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Output pixels [y0, y1) x [x0, x1) (reflect-padded past the readable data)."""
        by0, by1, oy0, oy1 = self._limits(0)
        bx0, bx1, ox0, ox1 = self._limits(1)
        cy0, cy1 = min(max(y0, oy0), oy1), max(min(y1, oy1), oy0)
        cx0, cx1 = min(max(x0, ox0), ox1), max(min(x1, ox1), ox0)
        if self.resize == 1.0:
            oy, ox = int(self.origin[0]), int(self.origin[1])
            data = read_array(self.array, slice(oy + cy0, oy + cy1), slice(ox + cx0, ox + cx1))
        else:
            wy, sy0 = _resample_weights(cy0, cy1, self.resize, self.origin[0], by0, by1)
            wx, sx0 = _resample_weights(cx0, cx1, self.resize, self.origin[1], bx0, bx1)
            src = read_array(
                self.array, slice(sy0, sy0 + wy.shape[1]), slice(sx0, sx0 + wx.shape[1])
            ).astype(np.float32)
            rows = np.tensordot(wy, src, axes=(1, 0))  # (h, sw, 3)
            data = np.clip(np.rint(np.einsum("hwc,xw->hxc", rows, wx)), 0, 255).astype(np.uint8)
        pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
        if any(p for pair in pads for p in pair):
            data = _reflect_pad(data, pads)
        return np.ascontiguousarray(data, dtype=np.uint8)


def _resample_weights(
    p0: int, p1: int, resize: float, origin: float, lo: int, hi: int
) -> tuple[np.ndarray, int]:
    """Weights (p1 - p0, n) over level pixels [s0, s0 + n); taps outside level px
    ``[lo, hi)`` are clamped to its edge pixels (edge replication), so they stay inside."""
    centres = origin + (np.arange(p0, p1) + 0.5) / resize - 0.5
    radius = 1.0 if resize >= 1 else 1.0 / resize
    taps = np.arange(
        int(math.floor(centres.min() - radius)), int(math.ceil(centres.max() + radius)) + 1
    )
    weights = np.clip(1.0 - np.abs(taps[None, :] - centres[:, None]) / radius, 0.0, None)
    clamped = np.clip(taps, lo, hi - 1)
    first = int(clamped.min())
    onehot = np.zeros((taps.size, int(clamped.max()) - first + 1))
    onehot[np.arange(taps.size), clamped - first] = 1.0
    weights = weights @ onehot
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return weights.astype(np.float32), first


def _reflect_pad(data: np.ndarray, pads: tuple) -> np.ndarray:
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError("cannot pad an empty read")
    return np.pad(data, pads, mode="symmetric")
