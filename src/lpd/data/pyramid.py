"""Generated pyramidal (tiled, multi-resolution) TIFF slides, written tile by tile.

For tests and benchmarks of the lazy slide reader: any size (10^5 x 10^5 included) without
holding the image in memory. The layout is the common "generic" one (level 0 as the main
page, reduced levels in its SubIFDs with NewSubfileType = 1, as libvips and bfconvert write
it), with the physical pixel size in XResolution / YResolution (ResolutionUnit centimetre).

Content:

- ``"synthetic"``: tissue-like tiles from :func:`lpd.data.synthetic.synthetic_slide_tile`
  (about 50 ms per 512² tile: for slides up to a few thousand pixels a side). Each reduced
  level is the 2x2 area mean of the level above, so levels agree with each other; the next
  level is held in memory (a temporary memory-mapped file beside the output when larger
  than 256 MiB).
- ``"constant"``: one uniform tissue-pink tile, compressed once and its bytes repeated
  (tifffile accepts an iterator of encoded tiles), so a 100,000² JPEG pyramid is written in
  seconds. Every level is then exactly the downsample of level 0.

The checks a given file's structure passes before it is read are in
``lpd.wsi.tiff_checks``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from lpd._atomic import atomic_path

CONSTANT_RGB = (226, 170, 200)  # a pale eosin pink
_MEMMAP_ABOVE = 256 * 2**20


def pyramid_shapes(
    size: tuple[int, int], tile: int = 512, levels: int | None = None
) -> list[tuple[int, int]]:
    """(H, W) of each level, halving (rounding up) until the slide fits in one tile."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"slide size must be positive, got {size}")
    if levels is None:
        levels = 1 + max(0, math.ceil(math.log2(max(h, w) / tile)))
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    shapes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        shapes.append((h, w))
    return shapes


def write_synthetic_pyramid(
    path: str | os.PathLike[str],
    size: tuple[int, int] = (100_000, 100_000),
    tile: int = 512,
    levels: int | None = None,
    seed: int = 0,
    mpp: float | None = 0.5,
    compression: str | None = "jpeg",
    content: str = "synthetic",
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a tiled pyramidal RGB TIFF of ``size`` = (H, W) at ``mpp`` µm/px (None: no
    resolution tags) and return its path. ``progress(done, total)`` is called per tile.
    The file is written to a temp file and renamed when complete."""
    if tile % 16 or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if content not in ("synthetic", "constant"):
        raise ValueError(f"content must be 'synthetic' or 'constant', got {content!r}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    shapes = pyramid_shapes(size, tile, levels)
    total = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in shapes)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    comp_args: dict = {}
    if compression == "jpeg":
        comp_args = {"compression": "jpeg", "compressionargs": {"level": quality}}
    elif compression is not None:
        comp_args = {"compression": compression}
    options: dict = {
        "photometric": "rgb", "tile": (tile, tile), "metadata": None, **comp_args,
    }
    if mpp is not None:
        # Pixels per centimetre; tifffile stores it as a rational.
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    # Compressed data may still exceed 4 GiB: decide on the uncompressed size.
    bigtiff = sum(h * w * 3 for h, w in shapes) > 2**31
    path = Path(path)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            if content == "constant":
                encoded = _encode_tile(np.full((tile, tile, 3), CONSTANT_RGB, np.uint8), options)
                for i, shape in enumerate(shapes):
                    n = math.ceil(shape[0] / tile) * math.ceil(shape[1] / tile)
                    tif.write(_repeat(encoded, n, tick), shape=(*shape, 3), dtype=np.uint8,
                              **_level_options(i, len(shapes), options))
            else:
                current: np.ndarray | None = None
                for i, shape in enumerate(shapes):
                    nxt = None
                    if i + 1 < len(shapes):
                        nxt = _buffer((*shapes[i + 1], 3), Path(scratch) / f"level{i + 1}.npy")
                    if current is None:
                        tiles = _synthetic_tiles(shape, tile, seed, nxt, tick)
                    else:
                        tiles = _array_tiles(current, tile, nxt, tick)
                    tif.write(tiles, shape=(*shape, 3), dtype=np.uint8,
                              **_level_options(i, len(shapes), options))
                    del current
                    current = nxt
    return path


def _level_options(index: int, count: int, options: dict) -> dict:
    if index == 0:
        return {**options, "subifds": count - 1}
    return {**options, "subfiletype": 1}


def _encode_tile(tile: np.ndarray, options: dict) -> bytes:
    """The bytes tifffile stores for ``tile`` with these options (so that repeated bytes are
    exactly what the tags declare: JPEG colour space, subsampling, predictor...)."""
    buf = io.BytesIO()
    opts = {k: v for k, v in options.items() if k not in ("resolution", "resolutionunit")}
    tifffile.imwrite(buf, tile, **opts)
    buf.seek(0)
    with tifffile.TiffFile(buf) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    return buf.getvalue()[offset:offset + count]


def _repeat(encoded: bytes, n: int, tick: Callable[[], None]) -> Iterator[bytes]:
    for _ in range(n):
        tick()
        yield encoded


def _buffer(shape: tuple[int, int, int], path: Path) -> np.ndarray:
    if int(np.prod(shape)) > _MEMMAP_ABOVE:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    return np.zeros(shape, np.uint8)


def _half(block: np.ndarray) -> np.ndarray:
    """2x2 area mean (odd edges repeat their last row / column), rounded."""
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    b = block.astype(np.uint16)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _synthetic_tiles(
    shape: tuple[int, int], tile: int, seed: int, nxt: np.ndarray | None,
    tick: Callable[[], None],
) -> Iterator[np.ndarray]:
    from lpd.data.synthetic import synthetic_slide_tile

    h, w = shape
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = synthetic_slide_tile(y, x, min(tile, h - y), min(tile, w - x), seed)
            _store_half(nxt, block, y, x)
            tick()
            yield block


def _array_tiles(
    source: np.ndarray, tile: int, nxt: np.ndarray | None, tick: Callable[[], None]
) -> Iterator[np.ndarray]:
    h, w = source.shape[:2]
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            block = np.asarray(source[y:y + tile, x:x + tile])
            _store_half(nxt, block, y, x)
            tick()
            yield block


def _store_half(nxt: np.ndarray | None, block: np.ndarray, y: int, x: int) -> None:
    # Tiles are a multiple of 16 px, so every tile but the last of a row/column is even
    # and its half lands exactly on the next level's grid.
    if nxt is not None:
        half = _half(block)
        nxt[y // 2:y // 2 + half.shape[0], x // 2:x // 2 + half.shape[1]] = half
