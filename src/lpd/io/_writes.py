"""A prediction store's write path: the buffer of a labels chunk, and the ``finished`` mask
of a store (uint8, chunk rows x chunk cols) and its
in-memory copy. Marks may be deferred: written a row of chunks at a time (one zarr write),
always after the chunks' data, so a run killed in between recomputes those chunks and
never takes unwritten data for final."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from lpd.tiling import cell_range, chunk_box, tiles_in

#: A deferred mark is written at the latest this long (s) after its chunk's data.
MARK_EVERY_S = 1.0
_clock = time.monotonic  # (a test's clock)


class FinishedMarks:
    """The ``finished`` array with a copy of it (``done``: as on disk) and the marks of
    chunks written but not marked yet."""

    def __init__(self, array: zarr.Array, every_s: float = MARK_EVERY_S) -> None:
        self.array = array
        self.done = np.asarray(array[...]).astype(bool)
        self.every_s = every_s
        self._pending: set[tuple[int, int]] = set()
        self._since = 0.0

    def add(self, key: tuple[int, int], defer: bool) -> None:
        """Chunk ``key``'s data is on disk: mark it now (``defer`` False), or once its row
        of chunks is whole, ``every_s`` after the oldest pending mark, or at ``write``."""
        if not self._pending:
            self._since = _clock()
        self._pending.add(key)
        row = self.done[key[0]].copy()
        row[[cj for ci, cj in self._pending if ci == key[0]]] = True
        if not defer or row.all() or _clock() - self._since >= self.every_s:
            self.write()

    def write(self) -> None:
        """Write the pending marks: each row of chunks they touch in one write."""
        if not self._pending:
            return
        new = self.done.copy()
        for ci, cj in self._pending:
            new[ci, cj] = True
        for ci in sorted({ci for ci, _ in self._pending}):
            self.array[ci, :] = new[ci].astype(np.uint8)
        self.done[...] = new  # in place: callers holding ``done`` see the marks
        self._pending.clear()


def new_buffer(key: tuple[int, int], chunk: int, shape: tuple[int, int], tile: int,
               prototypes: dict[str, Any] | None) -> dict[str, Any]:
    """An empty buffer for labels chunk ``key`` (and its prototype cells, when the store has
    them: ``prototypes`` is the store's ``prototypes`` metadata): the count of its tiles."""
    y0, y1, x0, x1 = chunk_box(key[0], key[1], chunk, shape)
    tiles = tiles_in(y1 - y0, tile) * tiles_in(x1 - x0, tile)
    buf: dict[str, Any] = {
        "labels": np.zeros((y1 - y0, x1 - x0), np.uint8), "remaining": tiles, "protos": None,
    }
    if prototypes:
        s = prototypes["stride"]
        u0, u1 = cell_range((y0, y1), s)
        v0, v1 = cell_range((x0, x1), s)
        buf["cells"] = (u0, v0, u1, v1)
        buf["protos"] = np.zeros((prototypes["count"], u1 - u0, v1 - v0), np.float16)
    return buf
