"""The geometry of tiled prediction, in output pixels of the region: tiles, model windows,
cells of the model's maps, and the store's chunks (whole tiles). Tiled inference
(``lpd.infer``) and the prediction store (``lpd.io.store``) both use it, so a tile, its
cells and its chunk are computed in one place.

- **Tiles**: tile ``i`` along an axis covers output pixels ``[i * tile, (i + 1) * tile)``,
  clipped to the region (``AxisGrid.tile_span``).
- **Windows**: a model input, the tile plus ``halo`` px on each side, shifted inwards at
  the image border (``AxisGrid.starts``); window (r, c) of a ``TileGrid`` has the index
  ``r * columns + c``, the order in which windows are read.
- **Cells**: a map at ``stride`` px per cell has cell ``u`` centred on output pixel
  ``(u + 0.5) * stride``; the cells of a pixel span are those whose centres lie in it
  (``cell_range``).
- **Chunks**: a store chunk is ``chunk`` px a side, a whole number of tiles
  (``tiles_per_chunk``); tile (i, j) lies in chunk ``chunk_of_tile``."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

WEIGHT_FLOOR = 1e-3  # the least blending weight of a window cell


@dataclass(frozen=True)
class AxisGrid:
    """Output tiles and model windows along one axis of the output grid.

    Local output pixel 0 is the region's first pixel; the image's data span
    ``[lo, hi)`` in the same coordinates (``lo <= 0``, ``hi >= length``: the rest of the
    level lies around the region). Windows may reach outside the region into that data:
    a window's place, pixels and blending weights then depend only on its position in the
    level's grid, never on the region asked for (``lo`` must be a multiple of ``tile``
    and ``align``; ``TilePlan`` anchors regions that way). Defaults: the region is the
    whole image."""

    length: int  # output pixels along this axis (the region)
    size: int  # model input size (window)
    halo: int
    align: int = 1  # window starts are multiples of this (the coarsest fused stride)
    lo: int = 0  # first output px with image data (0 or before the region)
    hi: int | None = None  # end of the image data (None: the region's end)

    @property
    def tile(self) -> int:
        return self.size - 2 * self.halo

    @property
    def end(self) -> int:
        """End of the image data along this axis (``hi``, or the region's end)."""
        return self.length if self.hi is None else self.hi

    @property
    def count(self) -> int:
        return max(1, math.ceil(self.length / self.tile))

    def tile_span(self, i: int) -> tuple[int, int]:
        """Output pixels of tile ``i`` inside the region."""
        return i * self.tile, min((i + 1) * self.tile, self.length)

    def tile_extent(self, i: int) -> tuple[int, int]:
        """Output pixels of tile ``i`` in the image (past the region's far end too): what
        its tissue check looks at, the same whatever region is asked."""
        return i * self.tile, min((i + 1) * self.tile, max(self.end, self.length))

    def _start_of_tile(self, i: int) -> int:
        room = max(self.end - self.lo - self.size, 0)
        last = self.lo + math.ceil(room / self.align) * self.align
        return int(np.clip(i * self.tile - self.halo, self.lo, last))

    @cached_property
    def starts(self) -> list[int]:
        """Window starts (distinct, increasing): a tile's start minus the halo, shifted
        inwards at the image border (to the next aligned start)."""
        return sorted({self._start_of_tile(i) for i in range(self.count)})

    @cached_property
    def tile_windows(self) -> list[int]:
        """The window of each tile."""
        index = {s: w for w, s in enumerate(self.starts)}
        return [index[self._start_of_tile(i)] for i in range(self.count)]

    @cached_property
    def window_tiles(self) -> list[list[int]]:
        """The tiles of each window (usually one; several where windows coincide)."""
        out: list[list[int]] = [[] for _ in self.starts]
        for i, w in enumerate(self.tile_windows):
            out[w].append(i)
        return out

    def valid_span(self, w: int) -> tuple[int, int]:
        """Window ``w`` clipped to the image data."""
        s = self.starts[w]
        return s, min(s + self.size, max(self.end, self.length))

    def edges(self, w: int) -> tuple[bool, bool]:
        """Whether window ``w`` has image data before / after it (then its weights ramp)."""
        s = self.starts[w]
        return s > self.lo, s + self.size < self.end

    def neighbours(self, w: int, margin: int = 0) -> range:
        """Windows overlapping [start - margin, start + size + margin) (``w`` included)."""
        starts = self.starts
        lo_px, hi_px = starts[w] - margin, starts[w] + self.size + margin
        return range(bisect.bisect_right(starts, lo_px - self.size),
                     bisect.bisect_left(starts, hi_px))

    def cell_weights(self, w: int, stride: int, cells: int) -> np.ndarray:
        """Blending weights of window ``w`` at its cell centres (cells,), in (0, 1]."""
        before, after = self.edges(w)
        centre = (np.arange(cells) + 0.5) * stride
        weights = np.ones(cells)
        ramp = 2 * self.halo
        if ramp > 0:
            if before:
                weights = np.minimum(weights, np.sin(0.5 * np.pi * np.clip(centre / ramp, 0, 1)) ** 2)
            if after:
                back = (self.size - centre) / ramp
                weights = np.minimum(weights, np.sin(0.5 * np.pi * np.clip(back, 0, 1)) ** 2)
        return np.maximum(weights, WEIGHT_FLOOR)


@dataclass(frozen=True)
class TileGrid:
    """Tiles and windows of the output grid in two dimensions: tile (i, j), window (r, c),
    window index ``r * windows[1] + c``."""

    y: AxisGrid
    x: AxisGrid

    @property
    def tiles(self) -> tuple[int, int]:
        """(rows, columns) of output tiles."""
        return self.y.count, self.x.count

    @property
    def windows(self) -> tuple[int, int]:
        """(rows, columns) of model windows."""
        return len(self.y.starts), len(self.x.starts)

    def window(self, index: int) -> tuple[int, int]:
        """(r, c) of window ``index``."""
        return divmod(index, self.windows[1])

    def index(self, r: int, c: int) -> int:
        return r * self.windows[1] + c

    def window_box(self, index: int) -> tuple[int, int, int, int]:
        """Output pixels ``(y0, y1, x0, x1)`` of window ``index``."""
        r, c = self.window(index)
        y, x = self.y, self.x
        return y.starts[r], y.starts[r] + y.size, x.starts[c], x.starts[c] + x.size

    def window_tiles(self, r: int, c: int) -> list[tuple[int, int]]:
        """The tiles (i, j) of window (r, c), row by row."""
        return [(i, j) for i in self.y.window_tiles[r] for j in self.x.window_tiles[c]]

    def tile_boxes(self, index: int) -> list[tuple[int, int, int, int]]:
        """``tile_extent`` boxes ``(y0, y1, x0, x1)`` of the tiles of window ``index``."""
        return [(*self.y.tile_extent(i), *self.x.tile_extent(j))
                for i, j in self.window_tiles(*self.window(index))]

    def tile_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """The window row of each tile row, the window column of each tile column."""
        return np.array(self.y.tile_windows), np.array(self.x.tile_windows)

    def neighbours(self, margin: int) -> tuple[list[range], list[range]]:
        """``AxisGrid.neighbours`` of every window row and every window column."""
        return ([self.y.neighbours(r, margin) for r in range(self.windows[0])],
                [self.x.neighbours(c, margin) for c in range(self.windows[1])])


def cell_start(px: float, stride: float) -> int:
    """The first cell (of a map at ``stride`` px) whose centre lies at or after ``px``."""
    return math.ceil(px / stride - 0.5)


def cell_range(span: tuple[int, int], stride: float) -> tuple[int, int]:
    """Cells (of a map at ``stride`` px) whose centres lie in the pixel span."""
    return cell_start(span[0], stride), cell_start(span[1], stride)


def cell_count(length: int, stride: float) -> int:
    """Cells of a map at ``stride`` px over ``length`` output px (at least one)."""
    return max(1, cell_start(length, stride))


def tiles_per_chunk(chunk: int, tile: int) -> int:
    """Tiles along a side of a store chunk (``chunk`` is a multiple of ``tile``)."""
    return chunk // tile


def chunk_of_tile(i: int, j: int, chunk: int, tile: int) -> tuple[int, int]:
    """The chunk (row, column) holding tile (i, j)."""
    k = tiles_per_chunk(chunk, tile)
    return i // k, j // k


def tiles_of_chunks(chunks: np.ndarray, chunk: int, tile: int,
                    grid: tuple[int, int]) -> np.ndarray:
    """A per-chunk mask (chunk rows, chunk columns) spread over the ``grid`` of tiles."""
    k = tiles_per_chunk(chunk, tile)
    return np.repeat(np.repeat(chunks, k, axis=0), k, axis=1)[: grid[0], : grid[1]]


def chunk_box(ci: int, cj: int, chunk: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Output pixels ``(y0, y1, x0, x1)`` of chunk (ci, cj), clipped to ``shape``."""
    h, w = shape
    return ci * chunk, min((ci + 1) * chunk, h), cj * chunk, min((cj + 1) * chunk, w)


def tiles_in(length: int, tile: int) -> int:
    """Tiles (the last one possibly partial) over ``length`` px."""
    return math.ceil(length / tile)
