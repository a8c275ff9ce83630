"""The OpenSlide backend of ``lpd.wsi.open_slide``: MIRAX, Leica SCN, Ventana BIF, Philips
TIFF, Hamamatsu VMS / VMU and DICOM-WSI (and anything else OpenSlide reads) as lazy dask
levels. OpenSlide 4 comes from PyPI (``openslide-bin`` + ``openslide-python``), imported
only when such a file is opened.

Geometry, from OpenSlide's properties alone (``slide_geometry``, testable without a file):

- **Bounds.** Where OpenSlide gives ``openslide.bounds-x/y/width/height`` (MIRAX, Leica,
  sparse TIFFs...: the scanned area inside a larger, mostly empty frame), level 0 is
  cropped to that rectangle, as QuPath does by default: level-0 pixel (x, y) of the slide
  is OpenSlide's pixel (bounds-x + x, bounds-y + y), so coordinates of exports (GeoJSON,
  label TIFFs, regions) are the ones QuPath shows. The offset is kept in
  ``Slide.metadata["bounds"]`` (``{"x", "y", "width", "height"}`` in OpenSlide's full-frame
  level-0 pixels): add it to go back to OpenSlide's (or QuPath's "no crop") frame. Bounds
  of zero size (an empty slide) are ignored.
- **Levels.** A level's downsample is OpenSlide's when it is a whole number (MIRAX:
  powers of two); otherwise the rule of the tifffile backend, from the level sizes (an
  integer k when the level is level 0 divided by k, rounded either way; QuPath does the
  same). A cropped level is ``floor(bounds size / downsample)`` pixels (as QuPath).
- **Reads.** Level-k pixel (i, j) is read with ``read_region`` at level-0 location
  ``(bounds-x + round(j * d), bounds-y + round(i * d))``, d being OpenSlide's own
  downsample of the level. OpenSlide places a level at ``location / d``; where that is not
  a whole number (a non-integer downsample such as 2.0005 from rounded level sizes, or
  bounds not a multiple of d) it shifts the level by the fraction, resampling it
  bilinearly (QuPath's reads, at bounds + level-0 coordinate too, resample the same way).
  Such levels are listed in ``metadata["subpixel_levels"]``: for the bundled TCGA slide's
  level 1 that is a mean |Δ| of about 2 per channel against the level as stored (level 0,
  and integer downsamples with aligned bounds, are read exactly). So that a pixel never
  depends on how a region is asked for, every read goes through fixed blocks of the level
  (the dask chunks, about 1 MiB of whole OpenSlide tiles): a pixel is always read as part of
  the same block.
- **Pixels.** OpenSlide's RGBA (transparent where nothing was scanned) is composited on
  white by ``lpd.wsi.pixels.to_rgb8``, the rule of every reader.
- **Microns per pixel.** ``openslide.mpp-x`` (``mpp-y`` kept in the metadata when it
  differs), ignored outside 0.01..100 µm/px like the tifffile backend's.

One OpenSlide handle per process: the handle of an opened slide serves every thread
(OpenSlide's reads are thread-safe); a copy pickled into a dask worker opens the file once
for that process.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from lpd.errors import InputError
from lpd.wsi._routing import import_openslide
from lpd.wsi._tiff import _MPP_RANGE, _chunk_shape, _downsample
from lpd.wsi.pixels import PixelFormat, to_rgb8
from lpd.wsi.slide import Slide, dask_token

_RGBA = PixelFormat(samples=4, maxval=255)
_DEFAULT_TILE = 256
_SHARED: dict[str, Any] = {}  # unpickled handles: one OpenSlide per file and process
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True)
class LevelGeometry:
    """One level as ``Slide`` shows it.

    Attributes
    ----------
    shape : (int, int)
        (H, W) in level pixels, cropped to the bounds.
    downsample : float
        Level-0 pixels per level pixel (``Slide.downsamples``).
    read_downsample : float
        OpenSlide's own downsample: level pixel j is at level-0 location ``j * d``.
    tile : (int, int)
        OpenSlide's tile (height, width) of the level (256 when it does not say).
    """

    shape: tuple[int, int]
    downsample: float
    read_downsample: float
    tile: tuple[int, int]


def slide_geometry(props: Mapping[str, str], crop: bool = True
                   ) -> tuple[list[LevelGeometry], dict | None]:
    """Levels and bounds of a slide from its OpenSlide properties (see the module docstring).

    Parameters
    ----------
    props : mapping of str to str
        ``OpenSlide.properties``: ``openslide.level-count``, ``openslide.level[k].width /
        height / downsample / tile-width / tile-height``, optional ``openslide.bounds-*``.
    crop : bool
        Crop level 0 to the bounds (QuPath's default).

    Returns
    -------
    (list of LevelGeometry, dict or None)
        The levels, finest first, and the bounds applied (``{"x", "y", "width",
        "height"}``, level-0 px of OpenSlide's full frame), None when not cropped.

    Raises
    ------
    ValueError
        A missing or malformed level property.
    """
    count = int(props["openslide.level-count"])
    if count < 1:
        raise ValueError("no levels")
    full = [(int(props[f"openslide.level[{k}].height"]), int(props[f"openslide.level[{k}].width"]))
            for k in range(count)]
    if min(min(s) for s in full) < 1:
        raise ValueError(f"a level of size 0 ({full})")
    bounds = _bounds(props, full[0]) if crop else None
    h0, w0 = (bounds["height"], bounds["width"]) if bounds else full[0]
    levels = []
    for k, (h, w) in enumerate(full):
        d_read = float(props.get(f"openslide.level[{k}].downsample", 0) or 0) or (
            (full[0][0] / h + full[0][1] / w) / 2)
        d = float(round(d_read)) if abs(d_read - round(d_read)) < 1e-9 else \
            _downsample(full[0][0], full[0][1], h, w)
        shape = (max(1, math.floor(h0 / d)), max(1, math.floor(w0 / d))) if bounds else (h, w)
        tile = (int(props.get(f"openslide.level[{k}].tile-height", 0) or _DEFAULT_TILE),
                int(props.get(f"openslide.level[{k}].tile-width", 0) or _DEFAULT_TILE))
        levels.append(LevelGeometry(shape, 1.0 if k == 0 else d, 1.0 if k == 0 else d_read,
                                    tile))
    return levels, bounds


def _bounds(props: Mapping[str, str], full0: tuple[int, int]) -> dict | None:
    keys = ("x", "y", "width", "height")
    try:
        x, y, w, h = (int(props[f"openslide.bounds-{k}"]) for k in keys)
    except (KeyError, ValueError):
        return None
    if w < 1 or h < 1 or x < 0 or y < 0 or (x, y, w, h) == (0, 0, full0[1], full0[0]):
        return None  # absent, empty (a slide with nothing scanned) or the whole frame
    w, h = min(w, full0[1] - x), min(h, full0[0] - y)
    return dict(zip(keys, (x, y, w, h), strict=True)) if w >= 1 and h >= 1 else None


def level_location(geometry: LevelGeometry, bounds: dict | None, y: int, x: int
                   ) -> tuple[int, int]:
    """OpenSlide's level-0 ``(x, y)`` location of pixel (y, x) of a level.

    Parameters
    ----------
    geometry : LevelGeometry
        The level.
    bounds : dict or None
        The bounds level 0 is cropped to (``slide_geometry``).
    y, x : int
        The pixel, in the (cropped) level's pixels.

    Returns
    -------
    (int, int)
        ``(bounds-x + round(x * d), bounds-y + round(y * d))``, d = OpenSlide's downsample.
    """
    bx, by = (bounds["x"], bounds["y"]) if bounds else (0, 0)
    d = geometry.read_downsample
    return bx + int(round(x * d)), by + int(round(y * d))


def open_openslide(path: Path, name: Path | None = None) -> Slide:
    """Open a slide with OpenSlide (see the module docstring).

    Parameters
    ----------
    path : Path
        The file OpenSlide opens (for a DICOM-WSI folder: one of its files).
    name : Path, optional
        What the slide is called (``Slide.path``, error messages); default ``path``.

    Returns
    -------
    Slide
        ``metadata["backend"] == "openslide"``; ``metadata["bounds"]`` the crop offset.

    Raises
    ------
    InputError
        OpenSlide is missing, does not know the file, or cannot open it.
    """
    name = name or path
    openslide = import_openslide(name)
    try:
        osr = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise InputError(name, "not a slide format OpenSlide reads") from None
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise InputError(name, f"OpenSlide cannot open it; corrupt or incomplete file "
                         f"({type(exc).__name__}: {exc})") from None
    try:
        return slide_from_openslide(osr, path, name)
    except BaseException:
        osr.close()
        raise


def slide_from_openslide(osr: Any, path: Path, name: Path | None = None) -> Slide:
    """The ``Slide`` of an open OpenSlide object (which it then owns and closes).

    Parameters
    ----------
    osr : openslide.OpenSlide or alike
        Anything with ``properties`` and ``read_region(location, level, size)`` returning
        an RGBA image (tests give a stand-in built from recorded properties).
    path : Path
        The file it was opened from (a pickled copy reopens it).
    name : Path, optional
        What the slide is called; default ``path``.

    Returns
    -------
    Slide
        As ``open_openslide``.

    Raises
    ------
    InputError
        The properties describe no usable level.
    """
    name = name or path
    props = dict(osr.properties)
    try:
        geometry, bounds = slide_geometry(props)
    except (KeyError, ValueError) as exc:
        raise InputError(name, f"OpenSlide gives no usable levels ({exc!r})") from None
    handle = _OpenSlideHandle(path, name, geometry, bounds, osr)
    key = dask_token(Path(name))
    levels = []
    for k in range(len(geometry)):
        src = _LevelSource(handle, k)
        handle.sources.append(src)
        levels.append(da.from_array(src, chunks=(*src.block, 3), name=f"lpd-slide-{key}-{k}",
                                    asarray=False, fancy=False, lock=False,
                                    meta=np.empty((0, 0, 0), np.uint8)))
    vendor = props.get("openslide.vendor") or "unknown"
    meta = _metadata(props, geometry, bounds, path, name)
    mpp = _mpp(props, meta)
    return Slide(Path(name), levels, [g.downsample for g in geometry], mpp,
                 "unknown" if mpp is None else "metadata",
                 "tiff" if vendor == "generic-tiff" else vendor, meta, handle)


def _metadata(props: Mapping[str, str], geometry: list[LevelGeometry], bounds: dict | None,
              path: Path, name: Path) -> dict:
    full = (int(props["openslide.level[0].height"]), int(props["openslide.level[0].width"]))
    meta: dict = {
        "backend": "openslide",
        "format": props.get("openslide.vendor"),
        "bounds": bounds,
        "full_size": list(full),
        "level_shapes": [g.shape for g in geometry],
        "tile": geometry[0].tile,
        "openslide_downsamples": [g.read_downsample for g in geometry],
        # levels OpenSlide places at a fraction of a pixel (and so resamples bilinearly)
        "subpixel_levels": [k for k, g in enumerate(geometry) if _subpixel(g, bounds)],
    }
    if path != name:
        meta["opened_file"] = str(path)
    for key, prop in (("objective_power", "openslide.objective-power"),
                      ("background", "openslide.background-color"),
                      ("quickhash", "openslide.quickhash-1")):
        if props.get(prop):
            meta[key] = _number(props[prop]) if key == "objective_power" else props[prop]
    return meta


def _subpixel(g: LevelGeometry, bounds: dict | None) -> bool:
    d = g.read_downsample
    off = (bounds["x"], bounds["y"]) if bounds else (0, 0)
    return d != round(d) or any(o % round(d) for o in off)


def _mpp(props: Mapping[str, str], meta: dict) -> float | None:
    mx, my = _number(props.get("openslide.mpp-x")), _number(props.get("openslide.mpp-y"))
    mpp = mx if mx is not None else my
    if mx is not None and my is not None and abs(mx - my) > 0.01 * mx:
        meta["mpp_y"] = my
    if mpp is not None and not (_MPP_RANGE[0] <= mpp <= _MPP_RANGE[1]):
        meta["mpp_ignored"] = mpp
        return None
    return mpp


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


class _OpenSlideHandle:
    """The OpenSlide object of one slide, shared by its levels' readers and threads.
    Pickles as the path and the geometry: a copy in another process opens the file once
    for that process (``_SHARED``)."""

    def __init__(self, path: Path, name: Path, geometry: list[LevelGeometry],
                 bounds: dict | None, osr: Any = None) -> None:
        self.path, self.name, self.geometry, self.bounds = path, name, geometry, bounds
        self.sources: list[_LevelSource] = []
        self._osr, self._owned, self._pid = osr, osr is not None, os.getpid()
        self._cond = threading.Condition()
        self._reading = 0
        self.closed = False

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Level pixels [y, y+h) x [x, x+w) as (h, w, 3) uint8 (one ``read_region``)."""
        with self._cond:
            if self.closed:
                raise ValueError(f"{self.name}: the slide was closed")
            if self._osr is None or self._pid != os.getpid():
                self._osr, self._owned, self._pid = _shared_slide(self.path), False, os.getpid()
            osr = self._osr
            self._reading += 1
        try:
            location = level_location(self.geometry[level], self.bounds, y, x)
            rgba = np.asarray(osr.read_region(location, level, (w, h)))
        except Exception as exc:
            raise InputError(self.name, f"cannot read level {level} region y={y}..{y + h}, "
                             f"x={x}..{x + w}: corrupt or missing slide data "
                             f"(OpenSlide: {type(exc).__name__}: {exc})") from None
        finally:
            with self._cond:
                self._reading -= 1
                self._cond.notify_all()
        return to_rgb8(rgba, _RGBA)

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.wait_for(lambda: self._reading == 0)  # never close under a read
            if self._osr is not None and self._owned:
                self._osr.close()
            self._osr = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "name": self.name, "geometry": self.geometry,
                "bounds": self.bounds, "sources": self.sources}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["name"], state["geometry"], state["bounds"])
        self.sources = state["sources"]


def _shared_slide(path: Path) -> Any:
    with _SHARED_LOCK:
        key = f"{os.getpid()}:{path}"
        if key not in _SHARED:
            _SHARED[key] = import_openslide(path).OpenSlide(str(path))
        return _SHARED[key]


class _LevelSource:
    """Array-like (H, W, 3) uint8 view of one level for ``dask.array.from_array``. Reads go
    through fixed blocks (the dask chunks), so a pixel is the same however it is asked for
    (OpenSlide's sub-pixel placement depends on where a read starts)."""

    def __init__(self, handle: _OpenSlideHandle, level: int) -> None:
        g = handle.geometry[level]
        self.handle, self.level = handle, level
        self.shape = (*g.shape, 3)
        self.block = _chunk_shape(*g.tile, *g.shape, True)
        self.dtype, self.ndim = np.dtype(np.uint8), 3

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        (y0, y1, _), (x0, x1, _) = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        y1, x1 = max(y0, y1), max(x0, x1)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        (bh, bw), (h, w) = self.block, self.shape[:2]
        for by in range(y0 // bh * bh, y1, bh):
            for bx in range(x0 // bw * bw, x1, bw):
                block = self.handle.read(self.level, by, bx, min(bh, h - by), min(bw, w - bx))
                ys, xs = slice(max(y0, by), min(y1, by + bh)), slice(max(x0, bx), min(x1, bx + bw))
                out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = \
                    block[ys.start - by:ys.stop - by, xs.start - bx:xs.stop - bx]
        return out[..., key[2]] if len(key) > 2 else out
