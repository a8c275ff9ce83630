"""Blocks of the output grid that tiled inference reads whole and cuts windows from.

Neighbouring windows overlap by ``2 * halo`` px and a JPEG file tile decodes whole, so
reading window by window decodes most file tiles several times. Instead the readable data
(``RegionSource``'s bounds, in output px of the region) is cut into blocks fixed in the
*level's* grid, whatever region is asked:

- a level read as it is (``resize == 1``) is cut at the boundaries of its chunks (a dask
  array's chunks hold whole file tiles, ``lpd.wsi``), or every ``BLOCK`` level px when it
  has none (numpy, zarr);
- a resampled level is cut every ``BLOCK`` px of the level's output grid (its ``phase``),
  so a window's pixels do not depend on the region either (the resampling weights depend
  only on slide coordinates).

A window's pixels are the parts of the blocks it covers, reflect-padded past the data as
``RegionSource.read`` pads them (the same ``np.pad`` of the same clipped pixels), so for a
level read as it is they equal ``RegionSource.read`` of the window bit for bit.
``BlockCache`` reads blocks in a pool of threads (decoders such as imagecodecs release the
GIL), keeps them while windows still need them (an LRU of bounded size), and assembles
windows into a caller's buffer."""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from lpd.wsi.region import RegionSource

BLOCK = 512  # px of a block where the level has no chunks of its own, or is resampled
CACHE_BYTES = 256 * 2**20  # blocks kept beyond those windows ahead still need


def axis_cuts(source: RegionSource, axis: int, phase: int) -> list[int]:
    """Block boundaries along ``axis`` in output px of the region: increasing, from the
    start of the readable data to its end (see the module docstring)."""
    o0, o1 = source.data_span(axis)
    if o1 <= o0:
        return [o0, o0]
    if source.resize == 1.0:
        origin = int(source.origin[axis])
        inner = [v - origin for v in level_cuts(source.array, axis)]
    else:
        start = math.floor((phase + o0) / BLOCK) * BLOCK - phase
        inner = list(range(start, o1 + BLOCK, BLOCK))
    return [o0, *(v for v in inner if o0 < v < o1), o1]


def level_cuts(array: object, axis: int) -> list[int]:
    """Chunk boundaries of an array along ``axis`` (dask: its chunks; zarr: its chunk size;
    otherwise every ``BLOCK`` px), from 0 to its size."""
    size = int(array.shape[axis])  # type: ignore[attr-defined]
    chunks = getattr(array, "chunks", None)
    step = BLOCK
    if isinstance(chunks, tuple) and len(chunks) > axis:
        along = chunks[axis]
        if isinstance(along, tuple) and along and all(int(c) > 0 for c in along):
            return [0, *np.cumsum(along).astype(int).tolist()]
        if isinstance(along, int) and along > 0:
            step = along
    return list(range(0, size, step)) + [size]


class BlockCache:
    """Blocks of a ``RegionSource`` read in ``threads`` threads, kept while needed.

    ``prefetch(boxes)`` starts reading the blocks of window boxes to come (in order);
    ``window(box, out)`` writes a window's pixels into ``out`` (waiting for its blocks);
    ``release_above(y)`` forgets blocks that end at or above output row ``y`` (windows
    come row by row). Memory: the blocks of the windows in flight plus ``cache_bytes``."""

    def __init__(self, source: RegionSource, threads: int, phase: tuple[int, int] = (0, 0),
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.source = source
        self.ys = axis_cuts(source, 0, phase[0])
        self.xs = axis_cuts(source, 1, phase[1])
        self.limits = (self.ys[0], self.ys[-1], self.xs[0], self.xs[-1])
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="lpd-decode")
        self._blocks: OrderedDict[tuple[int, int], Future] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_bytes = cache_bytes

    def _span(self, cuts: list[int], lo: int, hi: int) -> range:
        """Indices of the blocks along one axis that intersect [lo, hi)."""
        first = max(bisect.bisect_right(cuts, lo) - 1, 0)
        last = min(bisect.bisect_left(cuts, hi), len(cuts) - 1)
        return range(first, last)

    def blocks_of(self, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        """The blocks a window box (y0, y1, x0, x1) needs (those of its part in the data)."""
        y0, y1, x0, x1 = self._clip(box)
        if y1 <= y0 or x1 <= x0:
            return []
        return [(i, j) for i in self._span(self.ys, y0, y1) for j in self._span(self.xs, x0, x1)]

    def _clip(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        ly0, ly1, lx0, lx1 = self.limits
        y0, y1, x0, x1 = box
        return (min(max(y0, ly0), ly1), max(min(y1, ly1), ly0),
                min(max(x0, lx0), lx1), max(min(x1, lx1), lx0))

    def prefetch(self, boxes: Iterable[tuple[int, int, int, int]]) -> None:
        """Start reading the blocks of ``boxes`` not read or being read yet."""
        for box in boxes:
            for key in self.blocks_of(box):
                self._get(key)

    def _get(self, key: tuple[int, int]) -> Future:
        with self._lock:
            fut = self._blocks.get(key)
            if fut is None:
                fut = self._blocks[key] = self._pool.submit(self._read, key)
            else:
                self._blocks.move_to_end(key)
            return fut

    def _read(self, key: tuple[int, int]) -> np.ndarray:
        i, j = key
        return self.source.read(self.ys[i], self.ys[i + 1], self.xs[j], self.xs[j + 1])

    def window(self, box: tuple[int, int, int, int], out: np.ndarray) -> np.ndarray:
        """Write the pixels of window ``box`` into ``out`` (h, w, 3) uint8 and return it:
        the blocks' pixels, reflect-padded past the data as ``RegionSource.read`` does."""
        y0, y1, x0, x1 = box
        cy0, cy1, cx0, cx1 = self._clip(box)
        pads = ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0))
        if cy1 <= cy0 or cx1 <= cx0:  # nothing of it in the data: the source decides
            out[...] = self.source.read(y0, y1, x0, x1)
            return out
        padded = any(p for pair in pads for p in pair)
        target = np.empty((cy1 - cy0, cx1 - cx0, 3), np.uint8) if padded else out
        for i, j in self.blocks_of(box):
            block = self._get((i, j)).result()
            by0, bx0 = self.ys[i], self.xs[j]
            a0, a1 = max(cy0, by0), min(cy1, self.ys[i + 1])
            b0, b1 = max(cx0, bx0), min(cx1, self.xs[j + 1])
            target[a0 - cy0 : a1 - cy0, b0 - cx0 : b1 - cx0] = block[a0 - by0 : a1 - by0,
                                                                     b0 - bx0 : b1 - bx0]
        if padded:
            out[...] = np.pad(target, pads, mode="symmetric")
        return out

    def release_above(self, y: int, keep: Iterable[tuple[int, int]] = ()) -> None:
        """Forget blocks ending at or above output row ``y``, then the least recently
        used finished ones beyond ``cache_bytes`` (never those in ``keep``)."""
        kept = set(keep)
        with self._lock:
            for key in [k for k in self._blocks if self.ys[k[0] + 1] <= y and k not in kept]:
                self._blocks.pop(key).cancel()  # a read in progress ends unused
            sizes = {k: _nbytes(f) for k, f in self._blocks.items()}
            held = sum(sizes.values())
            for key in list(self._blocks):  # least recently used first
                if held <= self._cache_bytes:
                    break
                if key not in kept and sizes[key]:
                    held -= sizes[key]
                    del self._blocks[key]

    def close(self) -> None:
        """Stop the threads (reads in progress finish) and forget every block."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._blocks.clear()
            self._held = 0


def _nbytes(fut: Future) -> int:
    """Bytes of a finished read (0 while reading, or when it failed)."""
    if not fut.done() or fut.cancelled() or fut.exception() is not None:
        return 0
    return int(fut.result().nbytes)
