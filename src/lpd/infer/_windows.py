"""Which tiles a run of tiled inference computes, which model windows it runs, and when a
window's blending is complete.

- A tile is *needed* unless a finished chunk of the store holds it; a needed tile is *to
  do* unless it lies outside the roi (label 0 at once, never finalised); a tile is
  *background* when its tissue fraction is under the threshold (label 0, no forward pass).
- The windows to *finalise* are those holding a tile to compute; the windows to *run* are
  those and their overlapping neighbours (their blending needs them), minus windows whose
  tiles are all known background. A window is *settled* when finished chunks hold all its
  tiles (it was computed before: running it again is a recomputation).
- Windows run in grid order (``TileGrid`` index); a window to finalise is *ready* once
  every window up to its last neighbour has been read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpd.tiling import TileGrid


@dataclass
class TileStates:
    """Boolean masks over the tiles (rows, columns of tiles)."""

    needed: np.ndarray  # not in a finished chunk (all tiles without a store)
    todo: np.ndarray  # still to hand to the sink (cleared as tiles are handed over)
    background: np.ndarray  # known background (completed by the reader when lazy)
    outside: np.ndarray | None  # needed tiles outside the roi (None without one)


def tile_states(needed: np.ndarray, fractions: np.ndarray | None,
                tissue_threshold: float | None, wanted: np.ndarray | None) -> TileStates:
    """The masks of a run from the needed tiles, the tiles' tissue ``fractions`` (None:
    unknown; NaN, a tile without a view pixel, counts as tissue) and the tiles ``wanted``
    (those touching the roi; None without one)."""
    todo = needed.copy()
    background = np.zeros(needed.shape, bool)
    if fractions is not None:
        background = np.nan_to_num(fractions, nan=1.0) < tissue_threshold
    outside = None
    if wanted is not None:  # their windows still feed the blending of the tiles inside
        outside = ~wanted & todo
        todo &= ~outside
    return TileStates(needed, todo, background, outside)


@dataclass
class WindowChoice:
    """The windows of a run (see the module docstring)."""

    finalise: np.ndarray  # (window rows, window columns): windows holding a tile to compute
    to_run: np.ndarray  # window indices to run, in grid order
    settled: np.ndarray  # (window rows, window columns): windows computed before
    neighbours_y: list[range]  # window rows overlapping each window row
    neighbours_x: list[range]  # window columns overlapping each window column


def choose_windows(grid: TileGrid, tiles: TileStates, margin: int) -> WindowChoice:
    """The windows to finalise and to run; neighbours overlap within ``margin`` px (the
    coarsest stride: one cell of the blending grid)."""
    twy, twx = grid.tile_windows()
    finalise = _windows_of(grid, tiles.todo & ~tiles.background, twy, twx)
    all_background = ~_windows_of(grid, ~tiles.background, twy, twx)
    nb_y, nb_x = grid.neighbours(margin)
    to_run = np.flatnonzero((dilate(finalise, nb_y, nb_x) & ~all_background).ravel())
    settled = ~_windows_of(grid, tiles.needed, twy, twx)
    return WindowChoice(finalise, to_run, settled, nb_y, nb_x)


def _windows_of(grid: TileGrid, tiles: np.ndarray, twy: np.ndarray,
                twx: np.ndarray) -> np.ndarray:
    """Windows holding at least one of the marked ``tiles``."""
    out = np.zeros(grid.windows, bool)
    ii, jj = np.nonzero(tiles)
    out[twy[ii], twx[jj]] = True
    return out


def dilate(mask: np.ndarray, nb_y: list[range], nb_x: list[range]) -> np.ndarray:
    """Windows overlapping any True window of ``mask`` (overlap is symmetric, so this is a
    dilation by each window's neighbour range), via a summed-area table."""
    sat = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    lo_y = np.array([r[0] for r in nb_y])
    hi_y = np.array([r[-1] + 1 for r in nb_y])
    lo_x = np.array([r[0] for r in nb_x])
    hi_x = np.array([r[-1] + 1 for r in nb_x])
    total = (sat[hi_y][:, hi_x] - sat[lo_y][:, hi_x] - sat[hi_y][:, lo_x] + sat[lo_y][:, lo_x])
    return total > 0


class FinaliseOrder:
    """The windows to finalise, row by row, handed out as they become ready."""

    def __init__(self, windows: WindowChoice) -> None:
        finalise = windows.finalise
        self._columns = finalise.shape[1]
        pending = {r: [int(c) for c in np.flatnonzero(finalise[r])] for r in range(len(finalise))}
        self.pending = {r: cs for r, cs in pending.items() if cs}
        self._last_y = [rng[-1] for rng in windows.neighbours_y]
        self._last_x = [rng[-1] for rng in windows.neighbours_x]

    def __bool__(self) -> bool:
        return bool(self.pending)

    def first_row(self) -> int:
        """The first window row with a window still to finalise."""
        return min(self.pending)

    def pop_ready(self, pointer: float) -> list[tuple[int, int]]:
        """The windows whose neighbours all lie before window index ``pointer`` (the first
        window not read yet; ``math.inf`` at the end), removed from the pending ones."""
        ready = []
        wx = self._columns
        for r in sorted(self.pending):
            if self._last_y[r] * wx >= pointer:
                break
            cs = self.pending[r]
            while cs and self._last_y[r] * wx + self._last_x[cs[0]] < pointer:
                ready.append((r, cs.pop(0)))
            if not cs:
                del self.pending[r]
        return ready
