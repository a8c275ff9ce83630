"""Stored samples to ``(H, W, 3) uint8`` RGB: one rule for every reader (slide levels, TIFF
and PNG tiles), decided by the file's declarations, never by the file type or by the
pixels themselves.

Bit depth: white is the file's declared maximum: the TIFF ``MaxSampleValue`` tag, else
OME-XML ``SignificantBits``, else the full range of the stored samples (``BitsPerSample``
for a TIFF, the bit depth of a PNG, the dtype of an array). So 12-bit data in 16-bit
samples reads as 12-bit only when the file says so; without a declaration it is dark, and
inference notes "nearly black" (``dark_note``). A PNG's ``sBIT`` chunk is not a maximum:
the PNG standard has samples scaled to the full bit depth, ``sBIT`` only records the
original precision. Values above the maximum are clipped; results are rounded.

Colour (TIFF ``PhotometricInterpretation``): RGB and grayscale as stored (MinIsWhite
inverted; one extra sample is alpha, composited on white). YCbCr is converted here unless
the codec already did (JPEG compressions, as tifffile decodes them), with the file's
``YCbCrCoefficients`` and ``ReferenceBlackWhite`` (TIFF 6.0 section 21; full-range BT.601
by default); chroma-subsampled YCbCr without JPEG compression is refused (tifffile cannot
decode it). CIELab and ICCLab go through ``skimage.color.lab2rgb`` (D65). Palette, CMYK,
ITULab and the other models are refused with one line naming the file.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from lpd.errors import InputError

#: Compressions whose decoder returns RGB for YCbCr data (tifffile: OJPEG, JPEG, the
#: Aperio / DNG JPEG variants); any other YCbCr is converted by ``to_rgb8``.
CODEC_CONVERTS_YCBCR = frozenset({6, 7, 33007, 34892})
_COLOURS = {0: "gray", 1: "gray", 2: "rgb", 6: "ycbcr", 8: "cielab", 9: "icclab"}
_NEARLY_BLACK = 48  # brightest-percentile value (of 255) below which an image is "black"


@dataclass(frozen=True)
class PixelFormat:
    """How one image's stored samples become RGB.

    Attributes
    ----------
    samples : int
        Samples per pixel as stored (colour samples, then at most one alpha).
    maxval : int
        The stored value that is full intensity (white).
    colour : str
        ``"gray"``, ``"rgb"``, ``"ycbcr"``, ``"cielab"`` or ``"icclab"``.
    invert : bool
        MinIsWhite grayscale (0 is white).
    bits : int
        Bits per stored sample.
    luma : tuple of float
        YCbCr coefficients (LumaRed, LumaGreen, LumaBlue).
    reference : tuple of float
        YCbCr ReferenceBlackWhite (Y black, Y white, Cb zero, Cb headroom, Cr zero, Cr
        headroom), in stored units.
    """

    samples: int
    maxval: int
    colour: str = "rgb"
    invert: bool = False
    bits: int = 8
    luma: tuple[float, float, float] = (0.299, 0.587, 0.114)
    reference: tuple[float, ...] = (0.0, 255.0, 128.0, 255.0, 128.0, 255.0)

    @property
    def colour_samples(self) -> int:
        """Samples that carry colour (1 for grayscale, else 3)."""
        return 1 if self.colour == "gray" else 3


def tiff_pixel_format(
    path: str | os.PathLike[str] | None,
    page,
    significant_bits: int | None = None,
    what: str = "the image",
) -> PixelFormat:
    """The pixel format of a TIFF page (see the module docstring), reading no pixel data.

    Parameters
    ----------
    path : str or PathLike or None
        The file, for error messages.
    page : tifffile.TiffPage
        The page (or a level's keyframe).
    significant_bits : int, optional
        OME ``SignificantBits`` of the image (``ome_significant_bits``); used when the page
        has no ``MaxSampleValue`` tag and it is below the stored bits.
    what : str
        How messages name the image, e.g. ``"level 2"``.

    Returns
    -------
    PixelFormat

    Raises
    ------
    InputError
        A colour model that is not converted (palette, CMYK, ITULab, ...), chroma-subsampled
        YCbCr without JPEG compression, or a sample layout that does not fit the model.
    """
    photometric, compression = int(page.photometric), int(page.compression)
    name = getattr(page.photometric, "name", str(photometric))
    colour = _COLOURS.get(photometric)
    if colour == "ycbcr" and compression in CODEC_CONVERTS_YCBCR:
        colour = "rgb"  # the JPEG decoder returns RGB
    if colour is None:
        raise InputError(path, f"{what}: colour model {name} is not supported (expected RGB, "
                         "grayscale, YCbCr or CIELab); convert the file to RGB")
    samples, bits = int(page.samplesperpixel), int(page.bitspersample)
    ncol = 1 if colour == "gray" else 3
    if not ncol <= samples <= ncol + 1:
        raise InputError(path, f"{what}: {samples} samples per pixel do not fit colour model "
                         f"{name} (expected {ncol}, or {ncol + 1} with alpha)")
    if colour == "ycbcr":
        sub = page.tags.valueof(530)  # YCbCrSubSampling; tifffile's default is (2, 2)
        sub = tuple(int(v) for v in sub) if sub is not None else (2, 2)
        if sub != (1, 1) or int(page.planarconfig) == 2:
            layout = "planar" if int(page.planarconfig) == 2 else f"{sub[0]}x{sub[1]}"
            raise InputError(path, f"{what}: YCbCr with {layout} chroma subsampling is only "
                             f"readable with JPEG compression (this one is {_cname(page)}); "
                             "convert the file to RGB")
        coef = page.tags.valueof(529)  # YCbCrCoefficients
        ref = page.tags.valueof(532)  # ReferenceBlackWhite
        full = float((1 << bits) - 1)
        half = float(1 << (bits - 1))
        luma = tuple(float(v) for v in coef) if coef is not None and len(coef) == 3 else None
        refs = tuple(float(v) for v in ref) if ref is not None and len(ref) == 6 else None
        if luma is None or not (all(v > 0 for v in luma) and abs(sum(luma) - 1) < 0.01):
            luma = (0.299, 0.587, 0.114)
        if refs is None or refs[1] == refs[0] or refs[3] == refs[2] or refs[5] == refs[4]:
            refs = (0.0, full, half, full, half, full)
        return PixelFormat(samples, int(full), colour, False, bits, luma, refs)
    maxval = 0
    tag = page.tags.get("MaxSampleValue")
    if tag is not None and colour in ("gray", "rgb"):
        maxval = int(np.max(tag.value))
        maxval = maxval if maxval < (1 << bits) else 0  # past the stored bits: invalid
    if maxval <= 0 and significant_bits and 0 < significant_bits < bits:
        maxval = (1 << significant_bits) - 1
    if maxval <= 0:
        maxval = (1 << bits) - 1
    return PixelFormat(samples, maxval, colour, photometric == 0, bits)


def ome_significant_bits(tif, series_index: int = 0) -> int | None:
    """``SignificantBits`` of an OME-TIFF image's ``Pixels`` (None when absent or not OME).

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    series_index : int
        The image (tifffile series) whose ``Pixels`` element is read.

    Returns
    -------
    int or None
    """
    pixels = ome_pixels(tif, series_index)
    try:
        bits = int(pixels.get("SignificantBits")) if pixels is not None else 0
    except (TypeError, ValueError):
        return None
    return bits if bits > 0 else None


def ome_pixels(tif, series_index: int = 0) -> ET.Element | None:
    """The OME-XML ``Pixels`` element of one image of an OME-TIFF, else None.

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file.
    series_index : int
        The image's index (the first image when there are fewer).

    Returns
    -------
    xml.etree.ElementTree.Element or None
    """
    if not getattr(tif, "is_ome", False):
        return None
    try:
        pixels = [e for e in ET.fromstring(tif.ome_metadata or "").iter()
                  if e.tag.endswith("}Pixels") or e.tag == "Pixels"]
    except ET.ParseError:
        return None
    if not pixels:
        return None
    return pixels[series_index if series_index < len(pixels) else 0]


def png_bit_depth(path: str | os.PathLike[str]) -> int | None:
    """Bit depth from a PNG's header (IHDR), or None when the file is not a PNG.

    Parameters
    ----------
    path : str or PathLike
        The file.

    Returns
    -------
    int or None
    """
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int(head[24])


def to_rgb8(raw: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """Convert stored samples to RGB (see the module docstring).

    Parameters
    ----------
    raw : numpy.ndarray
        ``(H, W, S)`` unsigned integers, ``S == fmt.samples``.
    fmt : PixelFormat
        The image's format (``tiff_pixel_format``, or built for an array).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3) uint8``, C-contiguous.
    """
    ncol = fmt.colour_samples
    colour, alpha = raw[..., :ncol], raw[..., ncol:ncol + 1]
    if raw.dtype == np.uint8 and fmt.maxval == 255 and fmt.colour in ("gray", "rgb"):
        rgb = 255 - colour if fmt.invert else colour  # the common case: no float copy
        if alpha.shape[-1]:
            a = alpha.astype(np.float32) / 255.0
            rgb = np.rint(rgb * a + 255.0 * (1.0 - a)).astype(np.uint8)
    else:
        if fmt.colour == "ycbcr":
            value = _ycbcr_to_rgb(colour.astype(np.float32), fmt)
        elif fmt.colour in ("cielab", "icclab"):
            value = _lab_to_rgb(colour, fmt)
        else:
            value = np.minimum(colour, fmt.maxval).astype(np.float32) * (1.0 / fmt.maxval)
            if fmt.invert:
                value = 1.0 - value
        if alpha.shape[-1]:
            a = np.minimum(alpha, fmt.maxval).astype(np.float32) * (1.0 / fmt.maxval)
            value = value * a + (1.0 - a)
        rgb = np.rint(np.clip(value, 0.0, 1.0) * 255.0).astype(np.uint8)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return np.ascontiguousarray(rgb)


def dark_note(rgb: np.ndarray) -> str | None:
    """A note when an image is nearly black (its brightest 1 % below 48 of 255): bright-field
    slides are mostly white glass, so this is a wrong bit depth or an empty scan.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3) uint8`` pixels, e.g. a slide's coarsest level.

    Returns
    -------
    str or None
        The note, or None when the image is not nearly black.
    """
    if rgb.size == 0:
        return None
    top = float(np.percentile(np.asarray(rgb).max(axis=-1), 99))
    if top >= _NEARLY_BLACK:
        return None
    return (f"the image is nearly black (99 % of its pixels are below {math.ceil(top) + 1} "
            "of 255): tissue detection will find little or no tissue. If its samples hold "
            "fewer bits than their type (e.g. 12-bit data in 16-bit samples), the file must "
            "say so (TIFF MaxSampleValue or OME SignificantBits); convert it to 8-bit RGB")


def _ycbcr_to_rgb(ycc: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """TIFF 6.0 section 21: codes to Y in 0..1 and Cb / Cr in -0.5..0.5 by
    ReferenceBlackWhite, then R = Y + (2 - 2 LumaRed) Cr, B = Y + (2 - 2 LumaBlue) Cb,
    G = (Y - LumaBlue B - LumaRed R) / LumaGreen."""
    ref, (kr, kg, kb) = fmt.reference, fmt.luma
    headroom = ((1 << (fmt.bits - 1)) - 1) / float((1 << fmt.bits) - 1)  # 127/255 at 8 bits
    y = (ycc[..., 0] - ref[0]) / (ref[1] - ref[0])
    cb = (ycc[..., 1] - ref[2]) * (headroom / (ref[3] - ref[2]))
    cr = (ycc[..., 2] - ref[4]) * (headroom / (ref[5] - ref[4]))
    r = y + (2.0 - 2.0 * kr) * cr
    b = y + (2.0 - 2.0 * kb) * cb
    g = (y - kb * b - kr * r) / kg
    return np.stack([r, g, b], axis=-1)


def _lab_to_rgb(lab: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """CIELab (a*, b* signed) or ICCLab (a*, b* offset by half the range) to RGB in 0..1."""
    from skimage.color import lab2rgb

    scale = float((1 << fmt.bits) - 1)
    light = lab[..., 0].astype(np.float32) * (100.0 / scale)
    step = float(1 << (fmt.bits - 8))  # a* and b* in units of 1/step
    if fmt.colour == "cielab":
        signed = lab[..., 1:].view(np.dtype(f"i{lab.dtype.itemsize}"))
        ab = signed.astype(np.float32) / step
    else:
        ab = lab[..., 1:].astype(np.float32) / step - 128.0
    return lab2rgb(np.concatenate([light[..., None], ab], axis=-1)).astype(np.float32)


def _cname(page) -> str:
    return str(getattr(page.compression, "name", page.compression))
