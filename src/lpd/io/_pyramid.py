"""The label pyramid of a prediction store: its level shapes, 2x2 mode downsampling, and
building levels 1.. from level 0 chunk by chunk. Private to ``lpd.io`` (``lpd.io.store``
re-exports ``pyramid_shapes`` and ``mode_downsample``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import zarr

from lpd.io._ngff import new_level


def pyramid_shapes(shape: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """Level shapes: halve (rounding up) until the level fits in one chunk."""
    shapes = [(int(shape[0]), int(shape[1]))]
    while max(shapes[-1]) > chunk:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def mode_downsample(block: np.ndarray) -> np.ndarray:
    """2x2 majority of a label block; ties go to the top-left pixel. Odd edges repeat."""
    if block.shape[0] % 2 or block.shape[1] % 2:
        block = np.pad(block, ((0, block.shape[0] % 2), (0, block.shape[1] % 2)), mode="edge")
    q = np.stack([block[0::2, 0::2], block[0::2, 1::2], block[1::2, 0::2], block[1::2, 1::2]])
    counts = (q[:, None] == q[None, :]).sum(axis=1)  # (4, h, w): how often each value occurs
    pick = counts.argmax(axis=0)  # first maximum: the top-left pixel wins ties
    return np.take_along_axis(q, pick[None], axis=0)[0]


def build_levels(levels: zarr.Group, shapes: list[tuple[int, int]], chunk: int,
                 placeholder: zarr.Group | None = None) -> Iterator[tuple[int, int]]:
    """Write levels 1.. of ``levels`` (level 0 given) by 2x2 mode downsampling, chunk by
    chunk (memory: 4 chunks), yielding (level, last level) after each row of chunks; in
    ``placeholder`` (the NGFF image group) each level's array is made, never written."""
    c = chunk
    for lv in range(1, len(shapes)):
        prev = levels[str(lv - 1)]
        h, w = shapes[lv]
        arr = new_level(levels, str(lv), (h, w), (c, c), overwrite=True)
        if placeholder is not None:
            new_level(placeholder, str(lv), (h, w), (c, c), overwrite=True)
        for y in range(0, h, c):
            for x in range(0, w, c):
                block = np.asarray(prev[2 * y : 2 * y + 2 * c, 2 * x : 2 * x + 2 * c])
                arr[y : y + c, x : x + c] = mode_downsample(block)
            yield lv, len(shapes) - 1
