"""The tifffile backend of ``lpd.wsi.open_slide``: TIFF-family slides as lazy dask levels.

Each level is read from its own TIFF page through ``_LevelSource`` (tifffile -> zarr store),
converted per chunk by the rules of ``lpd.wsi.pixels``; the main image is chosen by its role
(``image_role``), never by its size. See ``lpd.wsi.slide`` for the rules a reader follows.
"""

from __future__ import annotations

import math
import os
import re
import threading
from pathlib import Path

import dask.array as da
import numpy as np

from lpd.errors import InputError
from lpd.wsi._tiles import TileReader
from lpd.wsi.pixels import (
    PixelFormat,
    ome_pixels,
    ome_significant_bits,
    tiff_pixel_format,
    to_rgb8,
)
from lpd.wsi.slide import Slide, dask_token
from lpd.wsi.tiff_checks import check_tiff_level, check_tiff_structure

CHUNK_BYTES = 2**20  # target size of one dask chunk (decoded RGB)
_AXES = ("YX", "YXS", "SYX", "CYX")
_UNITS_UM = {"µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6,
             "Å": 1e-4, "pm": 1e-6}
_MPP_RANGE = (0.01, 100.0)  # outside: a placeholder (72 dpi), not a scale; ignored
# images that are not the slide: by series name, by Aperio description, by NewSubfileType
_AUX_NAME = re.compile(r"\b(macro|label|thumbnail|overview|preview|map)\b", re.IGNORECASE)
_AUX_APERIO = re.compile(r"^\s*(macro|label|thumbnail)\b|->", re.IGNORECASE | re.MULTILINE)


def open_tiff(path: Path) -> Slide:
    """Open a TIFF-family slide (SVS, TIFF, OME-TIFF, NDPI, Philips, Leica SCN, Ventana
    BIF as tifffile reads them) after checking its structure; see ``lpd.wsi.slide``."""
    import tifffile

    check_tiff_structure(path)
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(path, f"cannot read the TIFF structure; corrupt file "
                         f"({type(exc).__name__}: {exc})") from None
    try:
        return _build_tiff(path, tif)
    except BaseException:
        tif.close()
        raise


def _build_tiff(path: Path, tif) -> Slide:
    try:
        all_series = list(tif.series) if len(tif.pages) else []
        candidates = [(i, s) for i, s in enumerate(all_series)
                      if s.levels[0].get_axes(True) in _AXES]
    except Exception as exc:
        raise InputError(path, f"cannot read the TIFF structure; corrupt file "
                         f"({type(exc).__name__}: {exc})") from None
    if not candidates:
        desc = ", ".join(f"{s.get_axes(True)} {s.get_shape(True)}" for s in all_series[:3])
        raise InputError(path, f"no 2-D RGB or grayscale image in this TIFF (series: "
                         f"{desc or 'none'}); z-stacks, time series and multi-channel images "
                         "are not supported")
    main = [c for c in candidates if image_role(c[1]) is None]
    index, series = (main or candidates)[0]  # by role and file order, never by size
    filesize = path.stat().st_size
    axes = series.levels[0].get_axes(True)
    h0, w0 = _yx(series.levels[0])
    handle = _TiffHandle(path, index, tif)
    downsamples, levels, key = [], [], dask_token(path)
    significant = ome_significant_bits(tif, index)
    for lv, level in enumerate(series.levels):
        page = level.keyframe
        check_tiff_level(path, page, lv, filesize)
        fmt = tiff_pixel_format(path, page, significant, f"level {lv}")
        h, w = _yx(level)
        if level.get_axes(True) != axes or h > h0 or w > w0:
            break  # not a reduced copy of level 0: the pyramid ends here
        src = _LevelSource(handle, lv, page, axes, level.get_shape(True), fmt)
        handle.sources.append(src)
        downsamples.append(_downsample(h0, w0, h, w))
        chunks = _chunk_shape(*src.tile, h, w, src.tiled)
        levels.append(da.from_array(src, chunks=(*chunks, 3), name=f"lpd-slide-{key}-{lv}",
                                    asarray=False, fancy=False, lock=False,
                                    meta=np.empty((0, 0, 0), np.uint8)))
    vendor = next((v for k, v in (("is_svs", "aperio"), ("is_ome", "ome"), ("is_ndpi", "ndpi"),
                                  ("is_philips", "philips"), ("is_scn", "leica"),
                                  ("is_bif", "ventana")) if getattr(tif, k, False)), "tiff")
    page0 = series.levels[0].keyframe
    meta: dict = {"series": series.name, "series_index": index,
                  "colour": handle.sources[0].fmt.colour,
                  "max_sample_value": handle.sources[0].fmt.maxval,
                  "other_images": {i: image_role(s) or s.name for i, s in enumerate(all_series)
                                   if i != index},
                  "tile": handle.sources[0].tile,
                  "compression": getattr(page0.compression, "name", str(page0.compression)),
                  "level_shapes": [s.shape[:2] for s in handle.sources]}
    mpp = _tiff_mpp(tif, page0, index, meta)
    return Slide(path, levels, downsamples, mpp, "unknown" if mpp is None else "metadata",
                 vendor, meta, handle)


def image_role(series) -> str | None:
    """What a TIFF image (tifffile series) is when it is not a slide: ``"macro"``,
    ``"label"``, ``"thumbnail"``, ... or ``"reduced"`` / ``"mask"``; None for a main image.

    Parameters
    ----------
    series : tifffile.TiffPageSeries
        One image of the file.

    Returns
    -------
    str or None
        From the series name (tifffile names SVS, NDPI, Philips images by role; OME image
        names), the Aperio ImageDescription (``label 387x463``, ``macro 1280x431``, a
        thumbnail's ``-> 574x768``) or NewSubfileType (reduced, mask, macro bits).
    """
    import tifffile

    page = series.keyframe
    desc = str(getattr(page, "description", "") or "")
    if desc.startswith("Aperio"):  # the most specific: tifffile names by NewSubfileType
        match = _AUX_APERIO.search(desc.split("\n", 1)[1] if "\n" in desc else "")
        if match and (match.group(1) or series.name != "Baseline"):  # "->": a reduction
            return (match.group(1) or "thumbnail").lower()
    match = _AUX_NAME.search(str(series.name or ""))
    if match:
        return match.group(1).lower()
    kind = tifffile.FILETYPE(int(getattr(page, "subfiletype", 0) or 0))
    if kind & tifffile.FILETYPE.MACRO:
        return "macro"
    if kind & tifffile.FILETYPE.MASK:
        return "mask"
    if kind & tifffile.FILETYPE.REDUCEDIMAGE:
        return "reduced"
    return None


def _yx(level) -> tuple[int, int]:
    shape, axes = level.get_shape(True), level.get_axes(True)
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _downsample(h0: int, w0: int, h: int, w: int) -> float:
    """Level-0 px per level px: the integer k when the level is level 0 divided by k and
    rounded either way (a partial last pixel), else the mean of the two axis ratios."""
    k = round(((h0 / h) + (w0 / w)) / 2)
    if k >= 1 and h in (h0 // k, -(-h0 // k)) and w in (w0 // k, -(-w0 // k)):
        return float(k)
    return ((h0 / h) + (w0 / w)) / 2


def _chunk_shape(th: int, tw: int, h: int, w: int, tiled: bool) -> tuple[int, int]:
    """About CHUNK_BYTES of RGB per chunk, in whole tiles (strips: whole strips, full width)."""
    if not tiled:
        return min(max(1, round(CHUNK_BYTES / (th * w * 3))) * th, h), w
    k = min(range(1, 65), key=lambda k: abs(math.log(k * k * th * tw * 3 / CHUNK_BYTES)))
    return min(k * th, h), min(k * tw, w)


def _tiff_mpp(tif, page, series_index: int, meta: dict) -> float | None:
    mpp = None
    if getattr(tif, "is_svs", False):
        fields = dict(item.partition("=")[::2] for item in
                      (tif.pages.first.description or "").split("|")[1:])
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        mpp = _float(fields.get("MPP"))
        if _float(fields.get("AppMag")):
            meta["objective_power"] = _float(fields.get("AppMag"))
    elif getattr(tif, "is_ome", False):
        px = ome_pixels(tif, series_index)
        if px is not None:
            mpp, unit = _float(px.get("PhysicalSizeX")), _UNITS_UM.get(
                px.get("PhysicalSizeXUnit", "µm"))
            mpp = None if (mpp is None or unit is None) else mpp * unit
    xres = page.tags.get("XResolution")
    if mpp is None and xres is not None and int(page.resolutionunit) in (2, 3):
        num, den = xres.value if isinstance(xres.value, tuple) else (xres.value, 1)
        if num and den:  # pixels per inch (2) or per centimetre (3)
            mpp = (25400.0 if int(page.resolutionunit) == 2 else 1e4) * den / num
    if mpp is not None and not (_MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]):
        meta["mpp_ignored"] = mpp  # a placeholder such as 72 dpi, not a microscope scale
        mpp = None
    return mpp


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class _TiffHandle:
    """The open TiffFile and the per-level zarr arrays of one slide, shared by its levels'
    readers. Pickles as (path, series): a dask worker reopens the file on its first read."""

    def __init__(self, path: Path, series_index: int, tif=None) -> None:
        self.path, self.series_index, self._tif = path, series_index, tif
        self.sources: list[_LevelSource] = []
        self._arrays: dict[int, object] = {}
        self._direct: dict[int, TileReader | None] = {}
        self._fd: int | None = None
        self._lock = threading.Lock()
        self.closed = False

    def tiles(self, level: int) -> TileReader | None:
        """The direct tile reader of a level (``lpd.wsi._tiles``), None where the level is
        read through the zarr store."""
        reader = self._direct.get(level, False)  # (a dict read: no lock on the hot path)
        if reader is not False:
            return reader
        with self._lock:
            tif = self._file()
            if level not in self._direct:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
                series = tif.series[self.series_index]
                self._direct[level] = TileReader.for_level(tif, series.levels[level], self._fd)
            return self._direct[level]

    def array(self, level: int):
        with self._lock:
            tif = self._file()
            if level not in self._arrays:
                import zarr

                store = tif.series[self.series_index].aszarr(level=level, squeeze=True)
                self._arrays[level] = zarr.open_array(store, mode="r")
            return self._arrays[level]

    def _file(self):
        """The open ``tifffile.TiffFile`` (opened on first use; call under the lock)."""
        if self.closed:
            raise ValueError(f"{self.path}: the slide was closed")
        if self._tif is None:
            import tifffile

            self._tif = tifffile.TiffFile(self.path)
        return self._tif

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._arrays.clear()
            self._direct.clear()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._tif is not None:
                self._tif.close()
                self._tif = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "series_index": self.series_index, "sources": self.sources}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["series_index"])
        self.sources = state["sources"]


class _LevelSource:
    """Array-like (H, W, 3) uint8 view of one level for ``dask.array.from_array``: reads a
    region through the zarr store, converts it to RGB, and turns a decode failure into an
    InputError naming the file, the level and the failing tile."""

    def __init__(self, handle: _TiffHandle, level: int, page, axes: str, shape,
                 fmt: PixelFormat) -> None:
        self.handle, self.level, self.axes, self.tiled = handle, level, axes, bool(page.is_tiled)
        self.tile = ((int(page.tilelength), int(page.tilewidth)) if self.tiled else
                     (int(min(page.rowsperstrip, page.imagelength)), int(page.imagewidth)))
        self.shape = (int(shape[axes.index("Y")]), int(shape[axes.index("X")]), 3)
        self.fmt = fmt
        self.dtype, self.ndim = np.dtype(np.uint8), 3

    def _raw(self, ys: slice, xs: slice) -> np.ndarray:
        direct = self.handle.tiles(self.level) if self.axes in ("YX", "YXS") else None
        if direct is not None:  # tiles decoded here: the zarr store's pixels, a third the CPU
            raw = direct.read(ys, xs)
            return raw if self.axes == "YXS" else raw[..., :1]
        array = self.handle.array(self.level)
        if self.axes == "YX":
            return np.asarray(array[ys, xs])[..., None]
        if self.axes == "YXS":
            return np.asarray(array[ys, xs, :])
        return np.moveaxis(np.asarray(array[:, ys, xs]), 0, -1)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        self.handle.array(self.level)  # "the slide was closed" is not a file problem
        try:
            raw = self._raw(ys, xs)
        except Exception as exc:
            raise self._error(ys, xs, exc) from None
        rgb = to_rgb8(raw, self.fmt)
        return rgb[..., key[2]] if len(key) > 2 else rgb

    def _error(self, ys: slice, xs: slice, exc: Exception) -> InputError:
        """Find the first tile of the region that fails to decode, for the message."""
        (th, tw), (h, w) = self.tile, self.shape[:2]
        y0, y1 = ys.indices(h)[:2]
        x0, x1 = xs.indices(w)[:2]
        for ty in range(y0 // th, max(y0 // th + 1, -(-y1 // th))):
            for tx in range(x0 // tw, max(x0 // tw + 1, -(-x1 // tw))):
                try:
                    self._raw(slice(ty * th, (ty + 1) * th), slice(tx * tw, (tx + 1) * tw))
                except Exception as tile_exc:
                    exc = tile_exc
                    return InputError(self.handle.path, f"cannot decode level {self.level} "
                                      f"tile (row {ty}, column {tx}) at y={ty * th}, "
                                      f"x={tx * tw}: the file is corrupt "
                                      f"({type(exc).__name__}: {exc})")
        return InputError(self.handle.path, f"cannot read level {self.level} region y={y0}.."
                          f"{y1}, x={x0}..{x1}: corrupt file ({type(exc).__name__}: {exc})")
