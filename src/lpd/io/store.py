"""The output store of whole-slide prediction: a chunked zarr v3 group (OME-Zarr 0.5).

Layout of ``OUT.zarr`` (``format_version`` 2; docs/architecture.md, "The prediction store")::

    zarr.json          attributes: "lpd" (format, complete, geometry, classes, model, ...)
                       and "ome": an NGFF image whose levels 0/ 1/ ... are a placeholder
    0/ 1/ ...          the placeholder's levels: the label levels' shapes, never written
    labels/            NGFF labels group: {"labels": ["classes"]}
      classes/         NGFF multiscale label image (+ image-label: colours, class names):
        0/ 1/ ...      uint8, 0 background, 1..C classes; level l is 2**l times coarser
    prototypes/0       optional, float16 (P, h, w): per-prototype logit maps of the deepest
                       scale, P = C*k class-major, one cell = ``prototype_stride`` output px
    finished           uint8 (chunk rows, chunk cols): 1 = that labels chunk is final

Version 1 (older lpd: levels in ``labels/``) is read and resumed as it is (``lpd.io._ngff``).

Geometry: output pixel (row u, col v) covers level-0 slide pixels
``[offset.y + u*scale, offset.y + (u+1)*scale) x [offset.x + v*scale, ...)``; ``mpp`` is its
size in µm (None when the slide's is unknown). OME coordinate transformations follow
napari's pixel-centre convention: in µm when ``mpp`` is known, else in level-0 pixels.

Writes: inference hands over finished tiles; a labels chunk (``chunk`` = whole tiles, about
512 px) is written only once all its tiles are there, in one write (zarr's local store
writes each file atomically), then marked in ``finished`` (the writer thread's marks a row of
chunks at a time: ``lpd.io._writes``, never before the data). A rerun skips finished chunks. The
pyramid is built after the last chunk, then ``complete`` becomes true, last. While
``complete`` is false the multiscale's name ends in "(incomplete)" and only level 0 exists."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from lpd.errors import InputError
from lpd.io._ngff import label_path, new_level, write_metadata
from lpd.io._pyramid import build_levels, mode_downsample, pyramid_shapes
from lpd.io._store_meta import check_meta, check_version
from lpd.io._writes import FinishedMarks, new_buffer, write_chunk
from lpd.tiling import cell_count, cell_start, chunk_of_tile, tiles_of_chunks

FORMAT = "lpd-prediction"
#: 2: the NGFF labels layout (image group, ``labels/classes``); 1: labels at ``labels/``.
FORMAT_VERSION = 2
TARGET_CHUNK = 512

__all__ = ["FORMAT", "FORMAT_VERSION", "OutputStore", "check_meta", "mode_downsample",
           "pyramid_shapes"]


class OutputStore:
    """A prediction store on disk; see the module docstring."""

    def __init__(self, path: Path, group: zarr.Group, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.group = group
        self.meta: dict[str, Any] = dict(group.attrs["lpd"]) if meta is None else meta
        self._buffers: dict[tuple[int, int], dict[str, Any]] = {}
        self._marks: FinishedMarks | None = None
        self._arrays: dict[str, zarr.Array] = {}  # the arrays written, looked up once
        self._files: dict[str, Any] = {}  # their chunk writers (``_writes.write_chunk``)
        self._labels_at = label_path(int(self.meta["format_version"]))

    # ---- creation and opening -------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        shape: tuple[int, int],
        tile: int,
        class_names: Sequence[str],
        class_colours: Sequence[Sequence[int]],
        mpp: float | None,
        scale: float,
        offset: tuple[float, float],
        chunk: int | None = None,
        prototypes: int | None = None,
        prototype_stride: float | None = None,
        prototype_names: Sequence[str] | None = None,
        fingerprint: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> OutputStore:
        """A new, empty, incomplete store. ``offset``: (x, y) of the region in level-0 px;
        ``scale``: level-0 px per output px. ``overwrite`` replaces an existing lpd store
        (never anything else)."""
        path = Path(path)
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1 or tile < 1:
            raise InputError(path, f"bad store geometry: shape {shape}, tile {tile}")
        chunk = chunk or tile * max(1, round(TARGET_CHUNK / tile))
        if chunk % tile:
            raise InputError(path, f"chunk {chunk} must be a multiple of the tile {tile}")
        if path.exists():
            if not overwrite:
                raise InputError(path, "already exists")
            if not cls.is_store(path):
                raise InputError(path, "exists and is not an lpd prediction store; not replaced")
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        grid = (math.ceil(h / chunk), math.ceil(w / chunk))
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": False,
            "shape": [h, w],
            "tile": int(tile),
            "chunk": int(chunk),
            "levels": 1,
            "class_names": list(class_names),
            "class_colours": [list(map(int, c)) for c in class_colours],
            "mpp": None if mpp is None else float(mpp),
            "scale": float(scale),
            "offset": {"x": float(offset[0]), "y": float(offset[1])},
            "prototypes": None,
            "fingerprint": fingerprint or {},
            "info": info or {},
        }
        group.attrs["lpd"] = meta  # recognisable (and incomplete) from the first write on
        levels = group.create_group(label_path(FORMAT_VERSION))
        new_level(levels, "0", (h, w), (chunk, chunk))
        group.create_array(
            "finished", shape=grid, chunks=(1, grid[1]), dtype="uint8", fill_value=0
        )
        if prototypes:
            stride = float(prototype_stride or 1.0)
            cells = (cell_count(h, stride), cell_count(w, stride))
            cchunk = max(1, round(chunk / stride))
            protos = group.create_group("prototypes")
            protos.create_array(
                "0", shape=(int(prototypes), *cells), chunks=(int(prototypes), cchunk, cchunk),
                dtype="float16", fill_value=0.0, dimension_names=("c", "y", "x"),
            )
            names = list(prototype_names or [f"p{i}" for i in range(prototypes)])
            meta["prototypes"] = {"count": int(prototypes), "stride": stride, "names": names}
        new_level(group, "0", (h, w), (chunk, chunk))  # the placeholder image's level 0
        store = cls(path, group, meta)
        store._write_ome()
        group.attrs["lpd"] = meta
        return store

    @staticmethod
    def is_store(path: str | Path) -> bool:
        try:
            group = zarr.open_group(str(path), mode="r")
            return dict(group.attrs.get("lpd", {})).get("format") == FORMAT
        except Exception:  # not zarr, or not a group: not ours
            return False

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> OutputStore:
        """Open an existing store.

        Its metadata (``zarr.json``, read by zarr: a byte-order mark or UTF-16 is fine) is
        checked key by key, and a complete store's label levels against it, so a store
        edited by hand or damaged is refused here rather than failing later. The layout
        follows ``format_version``: 1 (older lpd: levels in ``labels/``) is read and
        resumed as it is; an NGFF 0.4 copy (zarr v2, ``lpd.io.ngff_export``) opens to read.

        Parameters
        ----------
        path : str or Path
            The ``.zarr`` folder.
        mode : str
            ``"r"`` to read, ``"r+"`` to resume writing.

        Returns
        -------
        OutputStore
            The store.

        Raises
        ------
        InputError
            Naming the store: missing, not zarr, not ours, from a newer lpd, with
            metadata of the wrong shape or type, or an NGFF 0.4 copy opened to write.
        """
        path = Path(path)
        if not path.exists():
            raise InputError(path, "prediction store not found")
        try:
            group = zarr.open_group(str(path), mode=mode)
            meta = group.attrs.get("lpd", {})
        except Exception as exc:
            raise InputError(path, f"not a readable zarr store ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputError(path, "a zarr store, but not an lpd prediction store")
        check_version(path, meta, FORMAT_VERSION)
        if mode != "r" and group.metadata.zarr_format == 2:
            raise InputError(path, "an NGFF 0.4 copy (zarr v2) is read-only; predict into a "
                             "new store, or into the store it was exported from")
        check_meta(path, meta)
        store = cls(path, group, dict(meta))
        if store.complete:
            store._check_levels()
        return store

    def _check_levels(self) -> None:
        """Every level the metadata promises exists, with the pyramid's shape."""
        for lv, expected in enumerate(pyramid_shapes(self.shape, self.chunk)[: self.n_levels]):
            try:
                shape = tuple(self.group[f"{self._labels_at}/{lv}"].shape)
            except Exception:  # missing or unreadable array metadata
                shape = None
            if shape != expected:
                raise InputError(self.path, f"labels level {lv} is {shape or 'missing'}, "
                                 f"{expected} expected: the store is damaged")

    # ---- properties -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    @property
    def tile(self) -> int:
        return int(self.meta["tile"])

    @property
    def chunk(self) -> int:
        return int(self.meta["chunk"])

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def class_colours(self) -> list[tuple[int, int, int]]:
        """The classes' display colours (a store written before NEC's colour became
        readable on a dark canvas shows the new one: ``lpd.classes.readable_colours``)."""
        from lpd.classes import readable_colours

        return [tuple(c) for c in readable_colours(  # type: ignore[misc]
            self.class_names, self.meta["class_colours"])]

    @property
    def mpp(self) -> float | None:
        return self.meta["mpp"]

    @property
    def scale(self) -> float:
        return float(self.meta["scale"])

    @property
    def offset(self) -> tuple[float, float]:
        """(x, y) of output pixel (0, 0)'s corner in level-0 slide pixels."""
        return float(self.meta["offset"]["x"]), float(self.meta["offset"]["y"])

    @property
    def n_levels(self) -> int:
        return int(self.meta["levels"])

    def level(self, index: int = 0) -> zarr.Array:
        """Labels at pyramid level ``index`` (2**index times coarser than level 0)."""
        if not 0 <= index < self.n_levels:
            raise IndexError(f"level {index} not in 0..{self.n_levels - 1}")
        return self.group[f"{self._labels_at}/{index}"]  # type: ignore[return-value]

    @property
    def labels(self) -> zarr.Array:
        return self.level(0)

    @property
    def format_version(self) -> int:
        """The store's layout: 2 NGFF labels (``labels/classes``), 1 older (``labels/``)."""
        return int(self.meta["format_version"])

    @property
    def label_group(self) -> zarr.Group:
        """The group of the label pyramid's levels; its attributes hold the multiscale and
        ``image-label`` metadata (under ``ome`` in a zarr v3 store)."""
        return self.group[self._labels_at]  # type: ignore[return-value]

    @property
    def prototypes(self) -> zarr.Array | None:
        return self.group["prototypes/0"] if self.meta.get("prototypes") else None  # type: ignore[return-value]

    def finished(self) -> np.ndarray:
        """Boolean (chunk rows, chunk cols): labels chunks marked final on disk (deferred
        marks count once written: ``write_marks``)."""
        return self._finished_marks().done

    def _finished_marks(self) -> FinishedMarks:
        if self._marks is None:
            self._marks = FinishedMarks(self.group["finished"])  # type: ignore[arg-type]
        return self._marks

    def write_marks(self) -> None:
        """Mark the chunks written with ``put_tile(..., defer_mark=True)`` and not yet
        marked (their data is on disk already)."""
        if self._marks is not None:
            self._marks.write()

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]  # type: ignore[assignment]
        return self._arrays[name]

    def needed_tiles(self, grid: tuple[int, int]) -> np.ndarray:
        """Tiles (rows, cols of ``tile`` px) not in a finished chunk: what a rerun computes."""
        return tiles_of_chunks(~self.finished(), self.chunk, self.tile, grid)

    def is_whole(self) -> bool:
        """Every array the metadata promises exists (False: creation was interrupted)."""
        names = [f"{self._labels_at}/0", "finished", *(["0"] if self.format_version > 1 else []),
                 *(["prototypes/0"] if self.meta.get("prototypes") else [])]
        try:
            return all(self.group.get(name) is not None for name in names)
        except Exception:  # a damaged zarr.json
            return False

    def chunk_of_tile(self, i: int, j: int) -> tuple[int, int]:
        return chunk_of_tile(i, j, self.chunk, self.tile)

    # ---- writing tiles --------------------------------------------------------------
    def put_tile(
        self, i: int, j: int, labels: np.ndarray | None, prototypes: np.ndarray | None = None,
        *, defer_mark: bool = False,
    ) -> bool:
        """Hand over tile (i, j) (None = background). Writes its chunk once all the chunk's
        tiles are in; returns True when that happened. The chunk is then marked in
        ``finished`` at once, or with ``defer_mark`` once its row of chunks is written,
        about a second later, or at ``write_marks`` (``build_pyramid`` and
        ``mark_complete`` write them too)."""
        key = self.chunk_of_tile(i, j)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = new_buffer(key, self.chunk, self.shape, self.tile,
                                                  self.meta.get("prototypes"))
        ch, cw, t = self.chunk, self.chunk, self.tile
        y0, x0 = i * t - key[0] * ch, j * t - key[1] * cw
        if labels is not None:
            buf["labels"][y0 : y0 + labels.shape[0], x0 : x0 + labels.shape[1]] = labels
        if prototypes is not None and buf["protos"] is not None:
            stride = self.meta["prototypes"]["stride"]
            u0 = cell_start(i * t, stride) - buf["cells"][0]
            v0 = cell_start(j * t, stride) - buf["cells"][1]
            ph, pw = prototypes.shape[-2:]
            buf["protos"][:, u0 : u0 + ph, v0 : v0 + pw] = prototypes
        buf["remaining"] -= 1
        if buf["remaining"] > 0:
            return False
        self._flush(key, self._buffers.pop(key))
        self._finished_marks().add(key, defer_mark)  # after the data: a crash recomputes
        return True

    def _flush(self, key: tuple[int, int], buf: dict[str, Any]) -> None:
        write_chunk(self._array(f"{self._labels_at}/0"), self._files, key, self.chunk,
                    buf["labels"])
        if buf["protos"] is not None and self.meta.get("prototypes"):
            u0, v0, u1, v1 = buf["cells"]
            self._array("prototypes/0")[:, u0:u1, v0:v1] = buf["protos"]

    # ---- finishing --------------------------------------------------------------------
    def build_pyramid(self) -> Iterator[tuple[int, int]]:
        """Levels 1.. by 2x2 mode downsampling, chunk by chunk (memory: 4 chunks); yields
        (level, levels) after each row of chunks, so a caller can stop between them (the
        store stays incomplete; a rerun builds the pyramid again). Needs every chunk."""
        self.write_marks()
        if not self.finished().all():
            raise RuntimeError(f"{self.path}: cannot build the pyramid, chunks are missing")
        shapes = pyramid_shapes(self.shape, self.chunk)
        placeholder = self.group if self.format_version >= 2 else None
        yield from build_levels(self.label_group, shapes, self.chunk, placeholder)
        self.meta["levels"] = len(shapes)
        self._write_ome()
        self.group.attrs["lpd"] = self.meta

    def record_passes(self, passes: int) -> None:
        """Model passes made for this store so far, over all its runs (each window once):
        how a rerun knows what it reused."""
        self.meta["passes"] = int(passes)
        self.group.attrs["lpd"] = self.meta

    @property
    def passes(self) -> int:
        return int(self.meta.get("passes", 0))

    def mark_complete(self) -> None:
        """The last write of a run: from now on readers may present the store as whole."""
        self.write_marks()
        self.meta["complete"] = True
        self._write_ome()
        self.group.attrs["lpd"] = self.meta

    def _write_ome(self) -> None:
        write_metadata(self.group, self.meta)
