"""Checks a given TIFF's structure passes before the slide reader trusts it.

They read only directories and tag values, never pixel data, and raise ``InputError`` for
truncated files and for headers that can't describe the file (absurd sizes, missing tiles):
tifffile alone would log a warning and silently drop the pages after a cut.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from lpd.errors import InputError

MAX_TILE_BYTES = 256 * 2**20  # a TIFF tile or strip larger than this can't be read lazily
CONVERT_HINT = "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)"
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8,
               13: 4, 16: 8, 17: 8, 18: 8}


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
    colour model is checked by ``lpd.wsi.pixels.tiff_pixel_format``)."""
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
