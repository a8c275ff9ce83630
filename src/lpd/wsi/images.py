"""Reading image tiles and label masks from files, with clear errors for bad input.

``read_rgb`` always returns a uint8 RGB array HxWx3; ``read_mask`` returns the stored class
indices of a mask (palette indices for P-mode PNG, never the palette's colours).

Conversion rules (``as_rgb_uint8``), chosen so that H&E colours are not distorted:
- grayscale (HxW or HxWx1) is repeated to RGB; gray+alpha and RGBA are composited on white;
- unsigned integers: white is the file's declared maximum, else the full range of the
  stored samples, never the image's own maximum (``lpd.wsi.pixels``, the rule of the slide
  reader too): a TIFF tile's MaxSampleValue / OME SignificantBits / BitsPerSample, a 16-bit
  PNG's 65535 (read with all 16 bits, not cut to 8 by PIL), an array's dtype range (or
  ``maxval=``). TIFF tiles also get the slide reader's colour rules (YCbCr and CIELab
  converted, MinIsWhite inverted, palette and CMYK refused);
- signed integers have no declared range: negative values are min-max scaled, values up to
  255 kept, larger ones scaled by the smallest ``2**k - 1`` holding the maximum;
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
from lpd.wsi.pixels import ome_significant_bits, png_bit_depth, tiff_pixel_format, to_rgb8

PathLike = str | os.PathLike[str]

# Tiles are small; anything bigger belongs to the (lazy) slide reader, not here.
MAX_PIXELS = 200_000_000
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_rgb(path: PathLike, min_size: int = 8) -> np.ndarray:
    """Read a PNG / JPEG / TIFF (or any PIL-readable) image as uint8 RGB HxWx3.

    Parameters
    ----------
    path : str or PathLike
        The image file (read by content, not by extension).
    min_size : int
        Smallest height and width accepted.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3) uint8`` (conversion rules in the module docstring).

    Raises
    ------
    InputError
        The file is missing, unreadable, too small or of an unsupported kind.
    """
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
    # leading singleton axes (TIFF pages, planes), but a one-row (1, W, samples) image stays
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] == 1 and array.shape[-1] not in (1, 2, 3, 4):
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
    array: np.ndarray, path: PathLike | None = None, min_size: int = 8,
    maxval: int | None = None,
) -> np.ndarray:
    """Convert an image array (any dtype, gray/RGB/RGBA) to uint8 RGB HxWx3 (rules above).

    Parameters
    ----------
    array : numpy.ndarray
        HxW, HxWxC or CxHxW (C <= 4) pixels.
    path : str or PathLike, optional
        The file the pixels came from, for error messages.
    min_size : int
        Smallest height and width accepted.
    maxval : int, optional
        The value that is white for unsigned integers (default: the dtype's maximum).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3) uint8``.

    Raises
    ------
    InputError
        Empty, too small, more than 4 channels, NaN / Inf, or an unsupported dtype.
    """
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
    rgb = _scale_to_uint8(colour, path, maxval)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    if has_alpha:
        alpha = _scale_to_uint8(arr[..., c - 1 :], path, maxval).astype(np.float32) / 255.0
        if np.any(alpha < 1.0):
            # Composite on white: transparent areas of a tile are background, not black.
            rgb = np.rint(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _scale_to_uint8(arr: np.ndarray, path: PathLike | None, maxval: int | None = None
                    ) -> np.ndarray:
    if arr.dtype == np.uint8 and maxval in (None, 255):
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
    if arr.dtype.kind == "u":  # the declared maximum, else the dtype's full range
        top = int(maxval) if maxval else int(np.iinfo(arr.dtype).max)
        scaled = np.minimum(arr, top).astype(np.float64) * (255.0 / top)
        return np.rint(scaled).astype(np.uint8)
    # signed integers
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
        return _read_tiff_rgb(path)
    if png_bit_depth(path) == 16:  # PIL keeps only the high byte of 16-bit colour PNGs
        return _read_png16(path)
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


def _read_png16(path: Path) -> np.ndarray:
    import imagecodecs

    with _open_pil(path) as img:  # checks size and decodability, as for any image
        size = img.size
    try:
        array = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:
        raise InputError(path, f"cannot decode image; truncated or corrupt file ({exc})") \
            from None
    if array.shape[:2] != size[::-1]:
        raise InputError(path, f"cannot decode image: {array.shape} pixels for a "
                         f"{size[0]}x{size[1]} PNG")
    return array


def _read_tiff_rgb(path: Path) -> np.ndarray:
    """A one-page unsigned-integer TIFF converted by the slide reader's rules (bit depth and
    colour model from its tags); anything else (floats, signed, stacks) as stored, for
    ``as_rgb_uint8``."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.keyframe
            if (len(series.pages) != 1 or page.dtype is None or page.dtype.kind != "u"
                    or page.dtype.itemsize > 4):
                return _read_tiff(path)
            if int(np.prod(series.shape)) > MAX_PIXELS * 4:
                raise InputError(path, f"image of shape {series.shape} is too large to read "
                                 "whole; open it as a slide")
            fmt = tiff_pixel_format(path, page, ome_significant_bits(tif, 0))
            data = page.asarray().reshape(page.shaped)  # (planes, depth, H, W, samples)
    except InputError:
        raise
    except Exception as exc:  # corrupt / truncated TIFFs raise many exception types
        raise InputError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from None
    if data.shape[1] != 1:
        raise InputError(path, f"expected a 2-D image, got {data.shape[1]} planes of depth")
    data = np.moveaxis(data[:, 0, ..., 0], 0, -1) if data.shape[0] > 1 else data[0, 0]
    return to_rgb8(data, fmt)


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
