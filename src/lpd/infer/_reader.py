"""Reading model windows from a slide level, and the one background reader thread.

``RegionSource`` maps the output (processing) grid onto a pyramid level: output pixel ``p``
has its centre at level coordinate ``origin + (p + 0.5) / resize - 0.5``. With ``resize ==
1`` a window is a plain slice; otherwise it is resampled separably (linear interpolation
when enlarging, a triangle filter of width ``1 / resize`` when shrinking), with weights that
depend only on global coordinates, so any tiling gives the same pixels as one resize of the
whole region. Reads outside the readable bounds (the region, or the whole level for tiled
inference) are reflect-padded.

``WindowReader`` reads the windows of the next batch while the model computes the current
one: one thread, one batch ahead (a queue of one), dask read synchronously in this thread
(never in dask's own pool, which would compete with torch for the cores)."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lpd.infer.tissue import DEFAULT_SATURATION, tissue_fraction


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


@dataclass
class WindowItem:
    """One window of a batch: its index, its pixels (None when all its tiles were found to
    be background) and, when checked here, which of its tiles are background."""

    index: int
    pixels: np.ndarray | None
    tiles_background: tuple[bool, ...] | None = None


_END = object()


class WindowReader:
    """Reads batches of windows in one background thread, one batch ahead.

    ``segments`` yields lists of window indices that are read with one bounding-box read
    (neighbours in one row of the grid). ``window_box(i)`` gives a window's output-pixel box
    ``(y0, y1, x0, x1)``; ``tile_boxes(i)`` the boxes of its output tiles, for the tissue
    check when ``check_tissue(i)`` is true. A batch holds ``batch_size`` windows to compute,
    with any windows found to be background on the way."""

    def __init__(
        self,
        source: RegionSource,
        segments: Iterator[Sequence[int]],
        window_box: Callable[[int], tuple[int, int, int, int]],
        tile_boxes: Callable[[int], list[tuple[int, int, int, int]]],
        check_tissue: Callable[[int], bool],
        batch_size: int,
        tissue_min_fraction: float,
        saturation: float = DEFAULT_SATURATION,
    ) -> None:
        self._source = source
        self._segments = segments
        self._window_box = window_box
        self._tile_boxes = tile_boxes
        self._check_tissue = check_tissue
        self._batch_size = batch_size
        self._min_fraction = tissue_min_fraction
        self._saturation = saturation
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lpd-window-reader", daemon=True)

    def start(self) -> WindowReader:
        self._thread.start()
        return self

    def batches(self) -> Iterator[list[WindowItem]]:
        """Batches in order; re-raises an error of the reader thread here."""
        while True:
            got = self._queue.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread: it ends after the read in progress (at most one batch)."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a pending put
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
            timeout -= 0.05
            if timeout <= 0:
                break

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            pending: list[WindowItem] = []
            computed = 0
            for segment in self._segments:
                if self._stop.is_set():
                    return
                for item in self._read_segment(segment):
                    pending.append(item)
                    if item.pixels is not None:
                        computed += 1
                    if computed == self._batch_size:
                        if not self._put(pending):
                            return
                        pending, computed = [], 0
            if pending and not self._put(pending):
                return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _read_segment(self, segment: Sequence[int]) -> list[WindowItem]:
        boxes = [self._window_box(i) for i in segment]
        y0 = min(b[0] for b in boxes)
        y1 = max(b[1] for b in boxes)
        x0 = min(b[2] for b in boxes)
        x1 = max(b[3] for b in boxes)
        block = self._source.read(y0, y1, x0, x1)
        items = []
        for index, (wy0, wy1, wx0, wx1) in zip(segment, boxes, strict=True):
            pixels = block[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0]
            flags = None
            if self._check_tissue(index):
                flags = tuple(
                    tissue_fraction(pixels[ty0 - wy0 : ty1 - wy0, tx0 - wx0 : tx1 - wx0],
                                    self._saturation) < self._min_fraction
                    for ty0, ty1, tx0, tx1 in self._tile_boxes(index)
                )
                if all(flags):
                    items.append(WindowItem(index, None, flags))
                    continue
            items.append(WindowItem(index, np.ascontiguousarray(pixels), flags))
        return items
