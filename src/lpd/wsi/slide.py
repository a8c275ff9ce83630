"""Whole-slide images as pyramids of lazy dask arrays, never read whole.

Two backends, chosen per file (``open_slide(backend="auto")``, see ``lpd.wsi._routing``):

- **tifffile** (``lpd.wsi._tiff``): Aperio SVS, generic tiled / pyramidal TIFF, OME-TIFF and
  NDPI, through ``tifffile -> zarr store -> dask``: one array per pyramid level, each from
  its own TIFF page (never ``base[::2]``), in chunks of about 1 MiB made of whole file tiles.
- **openslide** (``lpd.wsi._openslide``, OpenSlide 4 from PyPI, imported only then): files
  ``OpenSlide.detect_format`` names ``mirax`` (3DHISTECH MRXS), ``leica`` (SCN),
  ``ventana`` (BIF), ``philips`` (TIFF) or ``dicom`` (DICOM-WSI: a ``.dcm`` file or its
  folder), Hamamatsu VMS / VMU, any other format OpenSlide knows and tifffile does not
  read, and a vendor TIFF (not SVS or generic TIFF) tifffile refuses for its layout (never
  for damage). Levels are
  ``read_region`` in fixed blocks of about 1 MiB; level 0 is cropped to OpenSlide's bounds
  as QuPath does (the offset in ``metadata["bounds"]``).

Plain PNG / JPEG (anything PIL reads) is small: read once into a single level, up to
``lpd.wsi.images.MAX_PIXELS``. ``metadata["backend"]`` says which read the file
(``"tifffile"``, ``"openslide"`` or ``"pillow"``).

Every level is ``(H, W, 3) uint8``, converted per chunk as it is read by the rules of
``lpd.wsi.pixels`` (the same for every reader): white is the TIFF's MaxSampleValue, else
OME SignificantBits, else ``2**bits - 1`` (never the image's own maximum); YCbCr the codec
leaves alone and CIELab are converted to RGB; grayscale is repeated to RGB; gray+alpha and
RGBA are composited on white (transparent = background); MinIsWhite is inverted. Float,
signed, palette, CMYK, > 4 samples and extra non-singleton axes (focal planes, time,
channels) are refused.

The slide is the file's main image, chosen by its role, never by its size: tifffile's
series names (SVS, NDPI, Philips, OME image names), the Aperio ImageDescription and the
NewSubfileType tag mark thumbnails, labels, macro (overview) photos and reduced copies;
the first image not so marked, in file order, is the slide.

Before any pixel is read the header is checked: every image directory and tag value lies
inside the file, the tile count matches the declared size, tiles lie inside the file and one
tile is < 256 MiB decoded. So truncated files and headers declaring absurd sizes are an
``InputError`` at open time, without allocating. Corrupt tile data is only found when read:
that read (also from inside a dask task) raises an ``InputError`` naming the file, the level
and the tile.

Microns per pixel: the Aperio description (``MPP = 0.499``), OME PhysicalSizeX, else the TIFF
resolution tags (centimetre / inch; values outside 0.01..100 µm/px, such as a 72 dpi
placeholder, are ignored). ``mpp=`` overrides them. Otherwise ``mpp`` is None and
``mpp_source`` is ``"unknown"``: callers refuse or flag areas in µm². A value outside
``PLAUSIBLE_MPP`` (0.1..20 µm/px: finer than a light microscope resolves, or coarser than a
slide scan) is kept but noted in ``metadata["notes"]`` (shown by ``lpd predict`` and napari).
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from lpd.errors import InputError
from lpd.wsi.tiff_checks import CONVERT_HINT

BACKENDS = ("auto", "tifffile", "openslide")
PLAUSIBLE_MPP = (0.1, 20.0)  # outside: kept, with a note


@dataclass(eq=False)
class Slide:
    """An opened slide. ``levels[i]`` is a lazy ``(H, W, 3) uint8`` dask array of level i
    (level 0 is full resolution); ``downsamples[i]`` is level-0 pixels per level-i pixel."""

    path: Path
    levels: list[da.Array]
    downsamples: list[float]
    mpp: float | None
    mpp_source: str  # "metadata", "override" or "unknown"
    vendor: str  # "aperio", "ome", "ndpi", "tiff", "png", "jpeg", "image"; OpenSlide's:
    # "mirax", "leica", "ventana", "philips", "hamamatsu", "dicom", ...
    metadata: dict = field(default_factory=dict)
    _handle: Any = field(default=None, repr=False)  # the backend's: .sources[level][ys, xs, :]

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 (H, W)."""
        return int(self.levels[0].shape[0]), int(self.levels[0].shape[1])

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of a level (None when unknown)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> tuple[int, float]:
        """The level to read for ``target_mpp`` and the factor that resizes it there.

        Parameters
        ----------
        target_mpp : float
            Wanted microns per pixel.

        Returns
        -------
        (int, float)
            The level ``lpd.wsi.levels.choose_level`` picks (the coarsest at least as fine
            as the target, within ``MPP_TOLERANCE``) and its resize factor (new size =
            size * factor; < 1 shrinks; exactly 1.0 within the tolerance; > 1 only when
            level 0 is coarser than the target).

        Raises
        ------
        ValueError
            ``target_mpp`` is not a positive number.
        InputError
            The slide's microns per pixel is unknown.
        """
        from lpd.wsi.levels import choose_level, resize_factor

        if not (math.isfinite(target_mpp) and target_mpp > 0):
            raise ValueError(f"target_mpp must be a positive number, got {target_mpp}")
        if self.mpp is None:
            raise InputError(self.path, "microns per pixel unknown (not in the file's "
                             "metadata); give it explicitly (mpp= / --mpp)")
        level = choose_level(self.downsamples, self.mpp, target_mpp)
        return level, resize_factor(self.level_mpp(level), target_mpp)

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels [y, y+h) x [x, x+w) of a level, uint8 (h', w', 3). Clipped to the level,
        never padded: past an edge the result is smaller, and it starts at max(y, 0),
        max(x, 0)."""
        if not 0 <= level < len(self.levels):
            raise IndexError(f"level {level} out of range 0..{len(self.levels) - 1}")
        if h < 0 or w < 0:
            raise ValueError(f"region size must be >= 0, got {h}x{w}")
        arr = self.levels[level]
        y0, x0 = min(max(0, y), arr.shape[0]), min(max(0, x), arr.shape[1])
        y1, x1 = max(y0, min(arr.shape[0], y + h)), max(x0, min(arr.shape[1], x + w))
        if self._handle is not None:  # straight to the reader: no dask graph for one read
            return self._handle.sources[level][y0:y1, x0:x1, :]
        return np.asarray(arr[y0:y1, x0:x1].compute(scheduler="sync"))

    def close(self) -> None:
        """Release the file; lazy arrays of a closed slide can no longer be computed."""
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_slide(path: str | os.PathLike[str], mpp: float | None = None,
               backend: str = "auto") -> Slide:
    """Open a slide or plain image as a lazy pyramid (see the module docstring).

    Parameters
    ----------
    path : str or PathLike
        Aperio SVS, TIFF, OME-TIFF, NDPI, MRXS, SCN, BIF, Philips TIFF, VMS / VMU, DICOM-WSI
        (a ``.dcm`` file or the folder of one slide's files), PNG, JPEG (read by content;
        the extension only names the OpenSlide-only formats).
    mpp : float, optional
        Level-0 microns per pixel, overriding the file's.
    backend : {"auto", "tifffile", "openslide"}
        The reader: by file (``"auto"``), or forced.

    Returns
    -------
    Slide
        Notes for the user (an implausible microns per pixel) in ``metadata["notes"]``;
        the reader in ``metadata["backend"]``.

    Raises
    ------
    InputError
        The file is missing, unreadable, corrupt or of an unsupported kind, or OpenSlide is
        needed and not installed (naming the file).
    ValueError
        An unknown ``backend``.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mpp is not None and (isinstance(mpp, bool) or not isinstance(mpp, (int, float))
                            or not math.isfinite(mpp) or mpp <= 0):
        raise InputError(path, f"the mpp override must be a positive number, got {mpp!r}")
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        from lpd.wsi._routing import open_folder

        slide = open_folder(path, backend)
    else:
        try:
            with open(path, "rb") as fh:
                head = fh.read(132)
        except OSError as exc:
            raise InputError(path, f"cannot open file ({exc.strerror})") from None
        if not head:
            raise InputError(path, "file is empty (0 bytes)")
        from lpd.wsi._routing import open_file

        slide = open_file(path, head, backend)
    if mpp is not None:
        slide.metadata["mpp_metadata"] = slide.mpp
        slide.mpp, slide.mpp_source = float(mpp), "override"
    note = mpp_note(slide.mpp, slide.mpp_source)
    if note:
        slide.metadata.setdefault("notes", []).append(note)
    return slide


def mpp_note(mpp: float | None, source: str) -> str | None:
    """A note when a microns per pixel is outside ``PLAUSIBLE_MPP``.

    Parameters
    ----------
    mpp : float or None
        Level-0 microns per pixel.
    source : str
        ``"metadata"`` (the file's) or ``"override"`` (given by the user).

    Returns
    -------
    str or None
        None when ``mpp`` is None or plausible.
    """
    lo, hi = PLAUSIBLE_MPP
    if mpp is None or lo <= mpp <= hi:
        return None
    origin = "the file declares" if source == "metadata" else "given as"
    why = "finer than a light microscope resolves" if mpp < lo else "coarser than a slide scan"
    return (f"{origin} {mpp:.3g} µm/px, outside the usual {lo:g}-{hi:g} µm/px ({why}): "
            "areas and magnification may be wrong; check it, and give the right value with "
            "--mpp (mpp= in Python)")


def reader_summary(slide: Slide) -> str:
    """One line saying how a slide was read, for ``lpd predict``, napari and stores.

    Parameters
    ----------
    slide : Slide
        An opened slide.

    Returns
    -------
    str
        E.g. ``"mirax, read with openslide; level 0 is OpenSlide's bounds x=2048 y=14592
        (100352 x 168448 px)"`` or ``"aperio, read with tifffile"``.
    """
    text = f"{slide.vendor}, read with {slide.metadata.get('backend', 'unknown reader')}"
    bounds = slide.metadata.get("bounds")
    if bounds:
        text += (f"; level 0 is OpenSlide's bounds x={bounds['x']} y={bounds['y']} "
                 f"({bounds['width']} x {bounds['height']} px)")
    return text


def reader_info(slide: Slide) -> dict:
    """How a slide was read, JSON-able (for a store's metadata): ``backend``, ``vendor``,
    ``bounds`` (the crop offset of level 0 in OpenSlide's frame, or None).

    Parameters
    ----------
    slide : Slide
        An opened slide.

    Returns
    -------
    dict
        ``{"backend": str, "vendor": str, "bounds": dict or None}``.
    """
    return {"backend": slide.metadata.get("backend"), "vendor": slide.vendor,
            "bounds": slide.metadata.get("bounds")}


def is_dicom_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a DICOM file (a DICOM-WSI slide's folder).

    Parameters
    ----------
    path : str or PathLike
        Any path (reads at most the names of the folder and one file's preamble each).

    Returns
    -------
    bool
        False for files, missing paths and folders without a ``DICM`` preamble file.
    """
    from lpd.wsi._routing import is_dicom_file

    path = Path(path)
    try:
        return path.is_dir() and any(is_dicom_file(p) for p in sorted(path.iterdir())[:2000]
                                     if p.is_file())
    except OSError:
        return False


def _open_plain(path: Path, magic: bytes) -> Slide:
    from lpd.wsi.images import MAX_PIXELS, image_shape, read_rgb

    try:
        h, w = image_shape(path)  # header only
    except InputError as exc:
        if exc.problem.startswith("not an image file"):
            raise InputError(path, "not a slide or image file (supported: Aperio SVS, TIFF, "
                             "OME-TIFF, NDPI, MRXS, SCN, BIF, VMS, DICOM, PNG, "
                             "JPEG)") from None
        raise
    if h * w > MAX_PIXELS:
        raise InputError(path, f"image of {w}x{h} px is not tiled and too large to read "
                         f"whole; {CONVERT_HINT}")
    rgb = read_rgb(path, min_size=1)
    kind = "png" if magic == b"\x89PNG" else "jpeg" if magic[:3] == b"\xff\xd8\xff" else "image"
    level = da.from_array(rgb, chunks=(512, 512, 3), name=f"lpd-slide-{dask_token(path)}-0")
    return Slide(path, [level], [1.0], None, "unknown", kind,
                 {"format": kind, "backend": "pillow"})


def dask_token(path: Path) -> str:
    # Unique per open: two opens of one file must not share dask keys (one may be closed).
    return f"{path.stem[:40]}-{uuid.uuid4().hex[:12]}"

