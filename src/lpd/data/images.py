"""Reading image tiles and label masks from files, with clear errors for bad input.

``read_rgb`` always returns a uint8 RGB array HxWx3; ``read_mask`` returns the stored class
indices of a mask (palette indices for P-mode PNG, never the palette's colours).

Conversion rules (``as_rgb_uint8``), chosen so that H&E colours are not distorted:
- grayscale (HxW or HxWx1) is repeated to RGB; gray+alpha and RGBA are composited on white;
- integer images wider than 8 bits are scaled by their bit depth: the smallest ``2**k - 1``
  (k >= 8) holding the maximum, so full-range 16-bit data is ``>> 8`` and 12-bit data in a
  16-bit container is not left dark; signed images with negative values are min-max scaled;
- float images in [0, 1] are multiplied by 255, those already in [0, 255] are taken as they
  are, any other range is min-max scaled; NaN or Inf is refused;
- images with more than 4 channels, or smaller than ``min_size`` on a side, are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lpd.errors import InputError

PathLike = str | os.PathLike[str]

# Tiles are small; anything bigger belongs to the (lazy) slide reader, not here.
MAX_PIXELS = 200_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_rgb(path: PathLike, min_size: int = 8) -> np.ndarray:
    """Read a PNG / JPEG / TIFF (or any PIL-readable) image as uint8 RGB HxWx3."""
    path = Path(path)
    array = _read_array(path)
    return as_rgb_uint8(array, path=path, min_size=min_size)


def read_mask(path: PathLike) -> np.ndarray:
    """Read a label mask as uint8 HxW of the stored values (palette indices for P-mode)."""
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        array = _read_tiff(path)
    else:
        with _open_pil(path) as img:
            if img.mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "PA", "LA",
                                "RGB", "RGBA"):
                raise InputError(path, f"unsupported mask image mode {img.mode!r}")
            # np.array of a P image gives the palette indices, which is what we want.
            array = np.array(img)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]  # drop alpha
        if array.shape[-1] > 1 and np.any(array != array[..., :1]):
            raise InputError(path, "is a colour (RGB) image; a mask must be a palette "
                             "(P-mode) or grayscale image of class indices")
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(path, f"a mask must be a 2-D image, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(path, "mask contains NaN or infinite values")
        if not np.all(array == np.round(array)):
            raise InputError(path, "mask holds fractional values; expected class indices")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(path, f"mask values {array.min()}..{array.max()} are outside 0..255")
    return np.ascontiguousarray(array.astype(np.uint8))


def image_shape(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, reading only its header."""
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                axes = tif.series[0].axes
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise InputError(path, f"cannot read TIFF header ({exc})") from None
        if "Y" in axes and "X" in axes:
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        return int(shape[0]), int(shape[1])
    with _open_pil(path) as img:
        return img.height, img.width


def as_rgb_uint8(
    array: np.ndarray, path: PathLike | None = None, min_size: int = 8
) -> np.ndarray:
    """Convert an image array (any dtype, gray/RGB/RGBA) to uint8 RGB HxWx3 (rules above)."""
    arr = np.asarray(array)
    arr = _channels_last(arr, path)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise InputError(path, "image is empty (0 pixels)")
    if h < min_size or w < min_size:
        raise InputError(path, f"image is {h}x{w} px; at least {min_size} px per side is needed")
    if c > 4:
        raise InputError(path, f"image has {c} channels; expected grayscale, RGB or RGBA")
    if arr.dtype.kind == "c" or arr.dtype.kind not in "biuf":
        raise InputError(path, f"unsupported pixel type {arr.dtype}")
    has_alpha = c in (2, 4)
    colour = arr[..., : c - 1] if has_alpha else arr
    rgb = _scale_to_uint8(colour, path)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if has_alpha:
        alpha = _scale_to_uint8(arr[..., c - 1 :], path).astype(np.float32) / 255.0
        if np.any(alpha < 1.0):
            # Composite on white: transparent areas of a tile are background, not black.
            rgb = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _scale_to_uint8(arr: np.ndarray, path: PathLike | None) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        data = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(data)):
            raise InputError(path, "image contains NaN or infinite values")
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.rint(data * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.rint(data).astype(np.uint8)
        return _min_max(data)
    # integers
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        return _min_max(arr.astype(np.float64))
    if hi <= 255:
        return arr.astype(np.uint8)
    bits = max(8, int(hi).bit_length())
    scale = 255.0 / float((1 << bits) - 1)
    return np.rint(arr.astype(np.float64) * scale).astype(np.uint8)


def _min_max(data: np.ndarray) -> np.ndarray:
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        return np.full(data.shape, np.uint8(np.clip(lo, 0, 255)), dtype=np.uint8)
    return np.rint((data - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _channels_last(arr: np.ndarray, path: PathLike | None) -> np.ndarray:
    # Drop leading singleton axes (e.g. a 1-page TIFF stack, 1xHxWx3).
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] > 4 and arr.shape[0] <= 4:
        arr = np.moveaxis(arr, 0, -1)  # planar (CxHxW) storage
    if arr.ndim not in (2, 3):
        raise InputError(path, f"expected a 2-D image (HxW or HxWxC), got shape {arr.shape}")
    return arr


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, not an image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(path, f"cannot access file ({exc.strerror})") from None
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError as exc:
        raise InputError(path, f"cannot open file ({exc.strerror})") from None


def _read_array(path: Path) -> np.ndarray:
    _check_file(path)
    if _is_tiff(path):
        return _read_tiff(path)
    with _open_pil(path) as img:
        mode = img.mode
        if mode in ("P", "PA"):
            img = img.convert("RGBA")  # keeps palette transparency
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        try:
            return np.array(img)  # a writable copy (np.asarray of a PIL image is read-only)
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(path, f"cannot decode image ({exc})") from None


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if int(np.prod(series.shape)) > MAX_PIXELS * 4:
                raise InputError(path, f"image of shape {series.shape} is too large to read "
                                 "whole; open it as a slide")
            return series.asarray()
    except InputError:
        raise
    except Exception as exc:  # corrupt / truncated TIFFs raise many exception types
        raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from None


class _open_pil:
    """Context manager: open with PIL, fully decode, and turn PIL's errors into InputError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.img: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        path = self.path
        try:
            img = Image.open(path)
        except UnidentifiedImageError:
            raise InputError(path, "not an image file (or an unsupported format)") from None
        except Image.DecompressionBombError as exc:
            raise InputError(path, f"image too large to read whole ({exc})") from None
        except OSError as exc:
            raise InputError(path, f"cannot open image ({exc})") from None
        self.img = img
        if img.width * img.height > MAX_PIXELS:
            img.close()
            raise InputError(path, f"image of {img.width}x{img.height} px is too large to read "
                             "whole; open it as a slide")
        try:
            img.load()  # decode now, so truncation is reported here and not later
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            img.close()
            raise InputError(path, f"cannot decode image; truncated or corrupt file ({exc})") \
                from None
        return img

    def __exit__(self, *exc: object) -> None:
        if self.img is not None:
            self.img.close()
