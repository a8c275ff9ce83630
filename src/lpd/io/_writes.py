"""A prediction store's write path: the buffer of a labels chunk, and the ``finished`` mask
of a store (uint8, chunk rows x chunk cols) and its
in-memory copy. Marks may be deferred: written a row of chunks at a time (one zarr write),
always after the chunks' data, so a run killed in between recomputes those chunks and
never takes unwritten data for final."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path
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


class ChunkFiles:
    """Whole chunks of a zarr v3 uint8 array in a local store, written as zarr writes them
    (the same files, byte for byte: a test checks it) without zarr's event loop, thread
    pool and per-write checks: C-order bytes (``BytesCodec``), compressed by numcodecs'
    Zstd with the array's level and checksum (what zarr's ``ZstdCodec`` runs), edge chunks
    padded with the fill value, a chunk equal to the fill value not stored (zarr's
    ``write_empty_chunks=False``), each file written to a temporary name and renamed.
    About a fifth of the CPU of an array write. ``for_array`` says which arrays qualify."""

    def __init__(self, folder: Path, chunks: tuple[int, int], level: int, checksum: bool,
                 encode_key) -> None:
        from numcodecs.zstd import Zstd

        self.folder, self.chunks, self.encode_key = folder, chunks, encode_key
        self.codec = Zstd(level=level, checksum=checksum)
        self._folders: set[str] = set()  # made already
        self._tag, self._count = uuid.uuid4().hex[:12], itertools.count()  # temp names

    @classmethod
    def for_array(cls, array: zarr.Array) -> ChunkFiles | None:
        """The writer of ``array``'s chunks, or None when zarr must write them.

        Parameters
        ----------
        array : zarr.Array
            A 2-D array.

        Returns
        -------
        ChunkFiles or None
            For a zarr v3 uint8 array with fill value 0 and regular chunks in a
            ``LocalStore``, whose codecs are exactly ``BytesCodec`` and ``ZstdCodec`` and
            whose config is C order without empty chunks; else None.
        """
        from zarr.codecs import BytesCodec, ZstdCodec
        from zarr.storage import LocalStore

        md = array.metadata
        try:
            codecs = tuple(md.codecs)
            ok = (md.zarr_format == 3 and isinstance(array.store, LocalStore)
                  and array.dtype == np.uint8 and md.fill_value == 0 and array.ndim == 2
                  and len(codecs) == 2 and type(codecs[0]) is BytesCodec
                  and type(codecs[1]) is ZstdCodec and array.order == "C"
                  and not array._async_array.config.write_empty_chunks)
            chunks = tuple(int(c) for c in md.chunk_grid.chunk_shape)
        except (AttributeError, TypeError):  # another zarr's metadata: let zarr write
            return None
        if not ok:
            return None
        folder = Path(array.store.root) / array.path
        return cls(folder, chunks, codecs[1].level, codecs[1].checksum,
                   md.chunk_key_encoding.encode_chunk_key)

    def write(self, key: tuple[int, int], block: np.ndarray) -> None:
        """Chunk ``key``'s data (its part of the array: the chunk, cut at the edges)."""
        ch, cw = self.chunks
        if block.shape != (ch, cw):
            full = np.zeros((ch, cw), np.uint8)
            full[: block.shape[0], : block.shape[1]] = block
            block = full
        path = os.path.join(self.folder, self.encode_key(key))
        if not np.count_nonzero(block):  # the fill value: no file, as zarr
            Path(path).unlink(missing_ok=True)
            return
        data = self.codec.encode(np.ascontiguousarray(block))
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        tmp = f"{path}.{self._tag}-{next(self._count)}.partial"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_chunk(array: zarr.Array, files: dict, key: tuple[int, int], chunk: int,
                block: np.ndarray) -> None:
    """Write chunk ``key`` (of ``chunk`` px) of a 2-D array: with ``ChunkFiles`` where the
    array qualifies (``files`` caches its writer by array path), else through zarr."""
    if array.path not in files:
        files[array.path] = ChunkFiles.for_array(array)
    if files[array.path] is not None:
        files[array.path].write(key, block)
        return
    ci, cj = key
    array[ci * chunk : ci * chunk + block.shape[0], cj * chunk : cj * chunk + block.shape[1]] = block
