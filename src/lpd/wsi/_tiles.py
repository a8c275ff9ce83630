"""Direct reads of a tiled TIFF level: the tiles' bytes read with ``os.pread`` at the
page's offsets and decoded by tifffile's own decode function for that page (the one its
zarr store calls, with the same JPEG tables and header), without zarr's event loop and
thread pool. The pixels are those of the zarr store bit for bit (a test checks it); a read
costs about a third of the CPU. ``TileReader.for_level`` says which levels qualify:
compressed, tiled, one page, samples contiguous, every tile present; the others are read
through the zarr store."""

from __future__ import annotations

import os

import numpy as np


class TileReader:
    """Reads regions of one tiled TIFF page (a pyramid level) tile by tile.

    Thread-safe: ``os.pread`` has no file position, and tifffile's decode function is
    the one its zarr store runs in several threads at once."""

    def __init__(self, page, keyframe, fd: int) -> None:
        self.page, self.fd = page, fd
        self.tile = (int(page.tilelength), int(page.tilewidth))
        self.shape = (int(page.imagelength), int(page.imagewidth))
        self.across = -(-self.shape[1] // self.tile[1])
        self.samples = int(page.samplesperpixel)
        self.offsets = [int(v) for v in page.dataoffsets]
        self.counts = [int(v) for v in page.databytecounts]
        self.args: dict = {"_fullsize": True}
        if page.jpegtables is not None:
            self.args["jpegtables"] = page.jpegtables
        if keyframe.jpegheader is not None:
            self.args["jpegheader"] = keyframe.jpegheader
        self.decode = keyframe.decode  # as the zarr store: the keyframe's (cached) function

    @classmethod
    def for_level(cls, tif, level, fd: int) -> TileReader | None:
        """A reader for a level (``tifffile.TiffPageSeries`` level) when it qualifies, else
        None.

        Parameters
        ----------
        tif : tifffile.TiffFile
            The open file.
        level : tifffile.TiffPageSeries
            One level of the slide's series.
        fd : int
            A file descriptor of the same file, for ``os.pread``.

        Returns
        -------
        TileReader or None
            None for strips, uncompressed or volumetric data, separate sample planes,
            levels of several pages, NDPI, or a missing tile (zarr fills those).
        """
        keyframe = page = level.keyframe
        if (len(level.pages) != 1 or not page.is_tiled or int(page.compression) == 1
                or int(page.planarconfig) != 1 or int(getattr(page, "imagedepth", 1)) != 1
                or getattr(tif, "is_ndpi", False) or level.dataoffset is not None):
            return None
        page = level.pages[0]
        if page is None or not hasattr(page, "dataoffsets"):
            return None
        reader = cls(page, keyframe, fd)
        tiles = -(-reader.shape[0] // reader.tile[0]) * reader.across
        if len(reader.offsets) != tiles or min(reader.offsets) <= 0 or min(reader.counts) <= 0:
            return None
        return reader

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """Pixels ``[ys, xs]`` of the level, (h, w, S) in the page's dtype."""
        (th, tw), (h, w) = self.tile, self.shape
        y0, y1 = ys.indices(h)[:2]
        x0, x1 = xs.indices(w)[:2]
        y1, x1 = max(y0, y1), max(x0, x1)
        out = np.empty((y1 - y0, x1 - x0, self.samples), self.page.dtype)
        for ty in range(y0 // th, -(-y1 // th)):
            for tx in range(x0 // tw, -(-x1 // tw)):
                tile = self.tile_pixels(ty * self.across + tx)
                ty0, tx0 = ty * th, tx * tw
                a, b = max(y0, ty0), min(y1, ty0 + th)
                c, d = max(x0, tx0), min(x1, tx0 + tw)
                out[a - y0 : b - y0, c - x0 : d - x0] = tile[a - ty0 : b - ty0, c - tx0 : d - tx0]
        return out

    def tile_pixels(self, index: int) -> np.ndarray:
        """Tile ``index`` (row-major), decoded at full tile size (th, tw, S)."""
        data = os.pread(self.fd, self.counts[index], self.offsets[index])
        decoded = self.decode(data, index, **self.args)[0]
        return decoded.reshape(self.tile[0], self.tile[1], self.samples)
