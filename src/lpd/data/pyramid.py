"""Pyramidal (tiled, multi-resolution) TIFF structure: write generated slides tile by tile,
and check a given file's structure before the slide reader trusts it.

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

Checks (``check_tiff_structure``, ``check_tiff_level``, used by ``lpd.data.slide``) read
only directories and tag values, never pixel data, and raise ``InputError`` for truncated
files and for headers that can't describe the file (absurd sizes, missing tiles).
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from lpd._atomic import atomic_path
from lpd.errors import InputError

CONSTANT_RGB = (226, 170, 200)  # a pale eosin pink
MAX_TILE_BYTES = 256 * 2**20  # a TIFF tile or strip larger than this can't be read lazily
CONVERT_HINT = "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)"
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
               13: 4, 16: 8, 17: 8, 18: 8}
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


# ------------------------------------------------ checking a given TIFF before reading it
def check_tiff_structure(path: Path, max_ifds: int = 100_000) -> None:
    """Walk every image directory (and SubIFD) with a few small reads: in a file cut
    anywhere, a directory, a tag value or a link lies past the end. (tifffile would only log
    a warning and silently drop the pages after the cut: levels, or the whole image.)"""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order, big = ("<" if head[:2] == b"II" else ">"), head[2:4] in (b"+\x00", b"\x00+")
        if len(head) < (16 if big else 8):
            raise InputError(path, f"the file is truncated ({size} bytes, a TIFF header only)")
        if not big and size > 2**32:
            return  # classic TIFF past 4 GiB: vendor offset hacks (NDPI); leave it to tifffile
        cfmt, ofmt, entry = ("Q", "Q", 20) if big else ("H", "I", 12)
        csize, osize = struct.calcsize(cfmt), struct.calcsize(ofmt)
        todo = [struct.unpack(order + ofmt, head[8:16] if big else head[4:8])[0]]
        seen: set[int] = set()
        while todo:
            offset = todo.pop()
            if not offset or offset in seen:
                continue
            if len(seen) >= max_ifds:
                raise InputError(path, f"more than {max_ifds} image directories: corrupt file")
            seen.add(offset)
            if offset >= size:  # also: seek() fails (EINVAL) on offsets past 2**63
                raise InputError(path, f"the file is truncated or corrupt: an image directory "
                                 f"at byte {offset} lies past the end of the file ({size} bytes)")
            fh.seek(offset)
            raw = fh.read(csize)
            count = struct.unpack(order + cfmt, raw)[0] if len(raw) == csize else 0
            table = fh.read(count * entry + osize)
            if len(raw) < csize or len(table) < count * entry + osize:
                raise InputError(path, f"the file is truncated: the image directory at byte "
                                 f"{offset} runs past the end of the file ({size} bytes)")
            for i in range(count):
                e = table[i * entry:(i + 1) * entry]
                tag, kind, n = struct.unpack(order + ("HHQ" if big else "HHI"), e[:-osize])
                nbytes, where = n * _TYPE_SIZES.get(kind, 1), e[-osize:]
                if nbytes > osize:
                    at = struct.unpack(order + ofmt, where)[0]
                    if at + nbytes > size:
                        raise InputError(path, f"the file is truncated: tag {tag} of the image "
                                         f"directory at byte {offset} points past the end "
                                         f"of the file ({size} bytes)")
                    if tag == 330 and n <= max_ifds:  # SubIFDs: reduced levels live there
                        fh.seek(at)
                        where = fh.read(nbytes)
                if tag == 330 and kind in (4, 13, 16, 18) and n <= max_ifds:
                    step = 8 if kind in (16, 18) else 4
                    todo += struct.unpack(f"{order}{n}{'Q' if step == 8 else 'I'}",
                                          where[:n * step])
            todo.append(struct.unpack(order + ofmt, table[-osize:])[0])


def check_tiff_level(path: Path, page, lv: int, filesize: int) -> None:
    """Refuse a level whose header can't describe this file, reading no pixel data (its
    colour model is checked by ``lpd.data.pixels.tiff_pixel_format``)."""
    h, w = int(page.imagelength), int(page.imagewidth)
    if h < 1 or w < 1:
        raise InputError(path, f"level {lv} declares an empty image ({w}x{h} px)")
    dtype = page.dtype
    if dtype is None or dtype.kind != "u" or dtype.itemsize > 4 or page.samplesperpixel > 4:
        raise InputError(path, f"level {lv}: {page.samplesperpixel} samples of type {dtype} "
                         "per pixel are not supported (expected unsigned 8/16-bit grayscale, "
                         "RGB or RGBA)")
    chunk_bytes = math.prod(page.chunks) * dtype.itemsize
    if chunk_bytes > MAX_TILE_BYTES:
        raise InputError(path, f"level {lv} is stored in {'tiles' if page.is_tiled else 'strips'}"
                         f" of {chunk_bytes / 2**20:.0f} MiB each and can't be read lazily; "
                         f"{CONVERT_HINT}")
    try:
        expected = math.prod(page.chunked)
    except Exception as exc:
        raise InputError(path, f"level {lv}: invalid tile layout ({exc})") from None
    offsets = np.asarray(page.dataoffsets, dtype=np.int64)
    counts = np.asarray(page.databytecounts, dtype=np.int64)
    if offsets.size != expected or counts.size != offsets.size:
        raise InputError(path, f"level {lv} declares {w}x{h} px, i.e. {expected} tiles or "
                         f"strips, but lists {offsets.size} tile offsets: corrupt header")
    present = counts > 0
    end = int((offsets + counts)[present].max()) if present.any() else 0
    if end > filesize or (present.any() and int(offsets[present].min()) < 0):
        raise InputError(path, f"level {lv}: tile data runs to byte {end} but the file has "
                         f"{filesize} bytes: the file is truncated")
