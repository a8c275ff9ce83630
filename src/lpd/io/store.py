"""The output store of whole-slide prediction: a chunked zarr v3 group (OME-Zarr 0.5).

Layout of ``OUT.zarr``::

    zarr.json          attributes["lpd"]: format, complete, geometry, classes, model, ...
    labels/            OME-Zarr multiscale (+ image-label colours): uint8, 0 background,
      0/ 1/ ...        1..C classes; level l is 2**l times coarser (2x2 mode downsampling)
    prototypes/0       optional, float16 (P, h, w): per-prototype logit maps of the deepest
                       scale, P = C*k class-major, one cell = ``prototype_stride`` output px
    finished           uint8 (chunk rows, chunk cols): 1 = that labels chunk is final

Geometry: output pixel (row u, col v) covers level-0 slide pixels
``[offset.y + u*scale, offset.y + (u+1)*scale) x [offset.x + v*scale, ...)``; ``mpp`` is its
size in µm (None when the slide's is unknown). OME coordinate transformations follow
napari's pixel-centre convention: in µm when ``mpp`` is known, else in level-0 pixels.

Writes: inference hands over finished tiles; a labels chunk (``chunk`` = whole tiles, about
512 px) is written only once all its tiles are there, in one write (zarr's local store
writes each file atomically), then marked in ``finished``. A rerun skips finished chunks. The
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
from lpd.tiling import (
    cell_count,
    cell_range,
    cell_start,
    chunk_box,
    chunk_of_tile,
    tiles_in,
    tiles_of_chunks,
)

FORMAT = "lpd-prediction"
FORMAT_VERSION = 1
TARGET_CHUNK = 512


class OutputStore:
    """A prediction store on disk; see the module docstring."""

    def __init__(self, path: Path, group: zarr.Group, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.group = group
        self.meta: dict[str, Any] = dict(group.attrs["lpd"]) if meta is None else meta
        self._buffers: dict[tuple[int, int], dict[str, Any]] = {}
        self._finished_cache: np.ndarray | None = None

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
        labels = group.create_group("labels")
        labels.create_array(
            "0", shape=(h, w), chunks=(chunk, chunk), dtype="uint8", fill_value=0,
            dimension_names=("y", "x"),
        )
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
        edited by hand or damaged is refused here rather than failing later.

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
            Naming the store: missing, not zarr, not ours, from a newer lpd, or with
            metadata of the wrong shape or type.
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
        version = meta.get("format_version")
        if not _whole(version, 1):
            raise InputError(path, f"format_version {version!r} is not a whole number >= 1")
        if version > FORMAT_VERSION:
            raise InputError(path, "written by a newer lpd; upgrade to read it")
        check_meta(path, meta)
        store = cls(path, group, dict(meta))
        if store.complete:
            store._check_levels()
        return store

    def _check_levels(self) -> None:
        """Every level the metadata promises exists, with the pyramid's shape."""
        for lv, expected in enumerate(pyramid_shapes(self.shape, self.chunk)[: self.n_levels]):
            try:
                shape = tuple(self.group[f"labels/{lv}"].shape)
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
        return self.group[f"labels/{index}"]  # type: ignore[return-value]

    @property
    def labels(self) -> zarr.Array:
        return self.level(0)

    @property
    def prototypes(self) -> zarr.Array | None:
        return self.group["prototypes/0"] if self.meta.get("prototypes") else None  # type: ignore[return-value]

    def finished(self) -> np.ndarray:
        """Boolean (chunk rows, chunk cols): labels chunks that are final."""
        if self._finished_cache is None:
            self._finished_cache = np.asarray(self.group["finished"][...]).astype(bool)
        return self._finished_cache

    def needed_tiles(self, grid: tuple[int, int]) -> np.ndarray:
        """Tiles (rows, cols of ``tile`` px) not in a finished chunk: what a rerun computes."""
        return tiles_of_chunks(~self.finished(), self.chunk, self.tile, grid)

    def is_whole(self) -> bool:
        """Every array the metadata promises exists (False: creation was interrupted)."""
        names = ["labels/0", "finished"] + (["prototypes/0"] if self.meta.get("prototypes") else [])
        try:
            return all(self.group.get(name) is not None for name in names)
        except Exception:  # a damaged zarr.json
            return False

    def chunk_of_tile(self, i: int, j: int) -> tuple[int, int]:
        return chunk_of_tile(i, j, self.chunk, self.tile)

    # ---- writing tiles --------------------------------------------------------------
    def put_tile(
        self, i: int, j: int, labels: np.ndarray | None, prototypes: np.ndarray | None = None
    ) -> bool:
        """Hand over tile (i, j) (None = background). Writes its chunk once all the chunk's
        tiles are in; returns True when that happened."""
        key = self.chunk_of_tile(i, j)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = self._new_buffer(*key)
        ch, cw = self.chunk, self.chunk
        t = self.tile
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
        return True

    def _new_buffer(self, ci: int, cj: int) -> dict[str, Any]:
        y0, y1, x0, x1 = chunk_box(ci, cj, self.chunk, self.shape)
        tiles = tiles_in(y1 - y0, self.tile) * tiles_in(x1 - x0, self.tile)
        buf: dict[str, Any] = {
            "labels": np.zeros((y1 - y0, x1 - x0), np.uint8), "remaining": tiles, "protos": None,
        }
        info = self.meta.get("prototypes")
        if info:
            s = info["stride"]
            u0, u1 = cell_range((y0, y1), s)
            v0, v1 = cell_range((x0, x1), s)
            buf["cells"] = (u0, v0, u1, v1)
            buf["protos"] = np.zeros((info["count"], u1 - u0, v1 - v0), np.float16)
        return buf

    def _flush(self, key: tuple[int, int], buf: dict[str, Any]) -> None:
        ci, cj = key
        c = self.chunk
        lab = buf["labels"]
        self.labels[ci * c : ci * c + lab.shape[0], cj * c : cj * c + lab.shape[1]] = lab
        if buf["protos"] is not None and self.prototypes is not None:
            u0, v0, u1, v1 = buf["cells"]
            self.prototypes[:, u0:u1, v0:v1] = buf["protos"]
        self.group["finished"][ci, cj] = 1  # after the data: a crash before this recomputes
        if self._finished_cache is not None:
            self._finished_cache[ci, cj] = True

    # ---- finishing --------------------------------------------------------------------
    def build_pyramid(self) -> Iterator[tuple[int, int]]:
        """Levels 1.. by 2x2 mode downsampling, chunk by chunk (memory: 4 chunks); yields
        (level, levels) after each row of chunks, so a caller can stop between them (the
        store stays incomplete; a rerun builds the pyramid again). Needs every chunk."""
        if not self.finished().all():
            raise RuntimeError(f"{self.path}: cannot build the pyramid, chunks are missing")
        shapes = pyramid_shapes(self.shape, self.chunk)
        labels_group = self.group["labels"]
        c = self.chunk
        for lv in range(1, len(shapes)):
            prev = labels_group[str(lv - 1)]
            h, w = shapes[lv]
            arr = labels_group.create_array(
                str(lv), shape=(h, w), chunks=(c, c), dtype="uint8", fill_value=0,
                dimension_names=("y", "x"), overwrite=True,
            )
            for y in range(0, h, c):
                for x in range(0, w, c):
                    block = np.asarray(prev[2 * y : 2 * y + 2 * c, 2 * x : 2 * x + 2 * c])
                    arr[y : y + c, x : x + c] = mode_downsample(block)
                yield lv, len(shapes) - 1
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
        self.meta["complete"] = True
        self._write_ome()
        self.group.attrs["lpd"] = self.meta

    def _write_ome(self) -> None:
        name = "lpd labels" + ("" if self.meta["complete"] else " (incomplete)")
        mpp = self.meta["mpp"]
        s = self.meta["scale"]
        oy, ox = self.meta["offset"]["y"], self.meta["offset"]["x"]
        unit = 1.0 if mpp is None else mpp / s  # µm per level-0 px (or px)
        axes = [{"name": a, "type": "space", **({"unit": "micrometer"} if mpp else {})}
                for a in ("y", "x")]
        datasets = []
        for lv in range(self.meta["levels"]):
            f = s * 2**lv
            datasets.append({
                "path": str(lv),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [f * unit, f * unit]},
                    {"type": "translation",
                     "translation": [(oy + 0.5 * f - 0.5) * unit, (ox + 0.5 * f - 0.5) * unit]},
                ],
            })
        colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + [
            {"label-value": i + 1, "rgba": [*c, 255]}
            for i, c in enumerate(self.meta["class_colours"])
        ]
        props = [{"label-value": 0, "class": "background"}] + [
            {"label-value": i + 1, "class": n} for i, n in enumerate(self.meta["class_names"])
        ]
        self.group["labels"].attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"name": name, "axes": axes, "datasets": datasets}],
            "image-label": {"version": "0.5", "colors": colours, "properties": props},
        }
        info = self.meta.get("prototypes")
        if info:
            f = s * info["stride"]
            self.group["prototypes"].attrs["ome"] = {
                "version": "0.5",
                "multiscales": [{
                    "name": "lpd prototypes" + ("" if self.meta["complete"] else " (incomplete)"),
                    "axes": [{"name": "c", "type": "channel"}, *axes],
                    "datasets": [{"path": "0", "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, f * unit, f * unit]},
                        {"type": "translation", "translation": [
                            0.0, (oy + 0.5 * f - 0.5) * unit, (ox + 0.5 * f - 0.5) * unit]},
                    ]}],
                }],
            }


def check_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Check a store's ``lpd`` metadata: every key the store reads, of the right type.

    Keys this version does not know are kept and ignored (a newer minor addition);
    ``fingerprint``, ``info``, ``prototypes`` and ``passes`` may be missing.

    Parameters
    ----------
    path : str or Path
        The store, named in the error.
    meta : dict
        The ``lpd`` attribute of its root group.

    Raises
    ------
    InputError
        Naming the store and the first key that is missing or wrong.
    """
    def bad(key: str, want: str) -> InputError:
        shown = repr(meta.get(key, "missing"))[:80]
        return InputError(path, f"damaged store metadata: {key} is {shown}, expected {want}")

    if not isinstance(meta.get("complete"), bool):
        raise bad("complete", "true or false")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(_whole(v, 1) for v in shape)):
        raise bad("shape", "[height, width] in pixels")
    for key in ("tile", "chunk", "levels"):
        if not _whole(meta.get(key), 1):
            raise bad(key, "a whole number >= 1")
    if meta["chunk"] % meta["tile"]:
        raise bad("chunk", f"a multiple of the tile ({meta['tile']})")
    if meta["levels"] > len(pyramid_shapes(tuple(shape), meta["chunk"])):
        raise bad("levels", "at most the pyramid's levels")
    names, colours = meta.get("class_names"), meta.get("class_colours")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise bad("class_names", "a list of distinct names")
    if not (isinstance(colours, list) and len(colours) >= len(names) and all(
            isinstance(c, list) and len(c) == 3 and all(_whole(v, 0, 255) for v in c)
            for c in colours)):
        raise bad("class_colours", "an [r, g, b] (0..255) for every class")
    mpp = meta.get("mpp", "missing")
    if mpp is not None and not _positive(mpp):
        raise bad("mpp", "a positive number or null")
    if not _positive(meta.get("scale")):
        raise bad("scale", "a positive number")
    offset = meta.get("offset")
    if not (isinstance(offset, dict) and all(_number(offset.get(k)) for k in ("x", "y"))):
        raise bad("offset", '{"x": number, "y": number}')
    protos = meta.get("prototypes")
    if protos is not None and not (
            isinstance(protos, dict) and _whole(protos.get("count"), 1)
            and _positive(protos.get("stride")) and isinstance(protos.get("names"), list)
            and len(protos["names"]) == protos["count"]):
        raise bad("prototypes", 'null or {"count", "stride", "names"}')
    for key in ("fingerprint", "info"):
        if not isinstance(meta.get(key, {}), dict):
            raise bad(key, "an object")
    if not _whole(meta.get("passes", 0), 0):
        raise bad("passes", "a whole number >= 0")


def _whole(value: Any, low: int, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


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
