"""Which backend reads a file (``lpd.wsi.slide.open_slide``; see its module docstring):
OpenSlide's format name, the file's kind (TIFF, DICOM) and the OpenSlide-only extensions
decide (``choose_backend``, ``route``); a DICOM-WSI folder is opened by one of its files;
OpenSlide is imported only when needed, with one clear error when it is missing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lpd.errors import InputError

if TYPE_CHECKING:
    from lpd.wsi.slide import Slide

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

INSTALL_HINT = "pip install openslide-bin openslide-python"
#: OpenSlide formats that always go to OpenSlide (``choose_backend``); ``hamamatsu`` only
#: when the file is not a TIFF (VMS / VMU; NDPI is a TIFF and goes to tifffile).
OPENSLIDE_FORMATS = frozenset({"mirax", "leica", "ventana", "philips", "dicom"})
#: TIFF formats whose layout tifffile reads in full: where tifffile refuses one of these
#: (e.g. a subsampling tag the data does not follow), OpenSlide would decode the same data
#: wrongly, so the refusal stands. Other vendor TIFFs (NDPI, Trestle...) fall back to
#: OpenSlide when tifffile refuses their layout.
NO_FALLBACK = frozenset({"generic-tiff", "aperio"})


def import_openslide(path: Path | None = None):
    """The ``openslide`` module, or one clear ``InputError`` naming the file.

    Parameters
    ----------
    path : Path, optional
        The slide that needs it (named in the error).

    Returns
    -------
    module
        ``openslide`` (openslide-python with its bundled library, openslide-bin).

    Raises
    ------
    InputError
        openslide-python or the OpenSlide library is missing or cannot load.
    """
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise InputError(path, f"this format is read with OpenSlide, which is not installed "
                         f"or cannot load ({type(exc).__name__}: {exc}); install it with "
                         f"`{INSTALL_HINT}`") from None
    return openslide


def detect_format(path: Path) -> str | None:
    """OpenSlide's name for the file's format (``"mirax"``, ``"dicom"``, ...), or None when
    OpenSlide does not know it or is not installed. Reads only headers."""
    try:
        openslide = import_openslide(path)
        return openslide.OpenSlide.detect_format(str(path))
    except (InputError, OSError, ValueError):
        return None


def choose_backend(detected: str | None, is_tiff: bool, is_dicom: bool = False,
                   suffix: str = "") -> str:
    """The backend for a file, by OpenSlide's format and the file's kind.

    Parameters
    ----------
    detected : str or None
        ``OpenSlide.detect_format`` (the ``openslide.vendor`` property); None when OpenSlide
        does not know the file or is missing.
    is_tiff : bool
        The file starts with a TIFF / BigTIFF header.
    is_dicom : bool
        The file has the DICOM preamble (``DICM`` at byte 128).
    suffix : str
        The file's extension, lower case (``".mrxs"``).

    Returns
    -------
    str
        ``"openslide"`` for MIRAX, Leica, Ventana, Philips, DICOM, Hamamatsu VMS / VMU and any
        other non-TIFF format OpenSlide knows, and for the OpenSlide-only extensions;
        ``"tifffile"`` for other TIFFs (SVS, generic TIFF, OME-TIFF, NDPI); ``"plain"``
        (PNG, JPEG... read whole) otherwise.
    """
    if detected in OPENSLIDE_FORMATS or is_dicom:
        return "openslide"
    if is_tiff:
        return "tifffile"
    if detected is not None or suffix in OPENSLIDE_ONLY_SUFFIXES:
        return "openslide"
    return "plain"


#: Extensions only OpenSlide reads (a missing OpenSlide is then the error, not "not an image").
OPENSLIDE_ONLY_SUFFIXES = (".mrxs", ".vms", ".vmu", ".dcm", ".svslide")


def dicom_file(folder: Path, limit: int = 2000) -> Path | None:
    """The file of a DICOM-WSI folder that OpenSlide opens (it finds the other instances of
    the series beside it): the first file, in name order, with the DICOM preamble whose
    format OpenSlide detects as ``"dicom"`` (the first DICOM file when OpenSlide is
    missing); None when the folder holds no DICOM file."""
    first = None
    try:
        names = sorted(os.listdir(folder))[:limit]
    except OSError as exc:
        raise InputError(folder, f"cannot list the folder ({exc.strerror})") from None
    for name in names:
        candidate = folder / name
        if not candidate.is_file() or not is_dicom_file(candidate):
            continue
        first = first or candidate
        if detect_format(candidate) == "dicom":
            return candidate
    return first


def is_dicom_file(path: Path) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def open_folder(path: Path, backend: str) -> Slide:
    """A DICOM-WSI folder, through OpenSlide (given one of its files)."""
    from lpd.wsi._openslide import open_openslide

    target = None if backend == "tifffile" else dicom_file(path)
    if target is None:
        raise InputError(path, "is a folder, not a slide file (a folder is read only as a "
                         "DICOM-WSI slide, with the OpenSlide backend)")
    return open_openslide(target, name=path)


def open_file(path: Path, head: bytes, backend: str) -> Slide:
    """The file through the backend ``backend`` names, or the one ``route`` picks."""
    from lpd.wsi._openslide import open_openslide
    from lpd.wsi.slide import _open_plain

    is_tiff = head[:4] in _TIFF_MAGIC
    if backend == "auto":
        backend, detected = route(path, head)
        if backend == "tifffile":  # a vendor TIFF OpenSlide knows: it reads what tifffile
            # refuses for its layout
            return open_tiff_or_openslide(path, fallback=detected not in NO_FALLBACK | {None})
    if backend == "openslide":
        if is_tiff:  # damage is found before OpenSlide trusts the file (as for tifffile)
            from lpd.wsi.tiff_checks import check_tiff_structure

            check_tiff_structure(path)
        return open_openslide(path)
    if backend == "tifffile":
        if not is_tiff:
            raise InputError(path, "not a TIFF file: the tifffile backend reads SVS, TIFF, "
                             "OME-TIFF and NDPI; use backend='openslide' (or 'auto')")
        return open_tiff_or_openslide(path)
    try:
        return _open_plain(path, head[:4])
    except InputError as exc:  # not an image PIL reads: OpenSlide's, if it knows it
        if not exc.problem.startswith("not a slide or image file") or \
                detect_format(path) is None:
            raise
        return open_openslide(path)


def route(path: Path, head: bytes) -> tuple[str, str | None]:
    """(``"tifffile"``, ``"openslide"`` or ``"plain"``, OpenSlide's format name or None), by
    ``choose_backend``. OpenSlide's format is asked only for TIFFs, DICOM files and
    OpenSlide-only extensions, so PNG / JPEG never load OpenSlide."""
    is_tiff, is_dicom = head[:4] in _TIFF_MAGIC, head[128:132] == b"DICM"
    suffix = path.suffix.lower()
    detected = (detect_format(path)
                if is_tiff or is_dicom or suffix in OPENSLIDE_ONLY_SUFFIXES else None)
    return choose_backend(detected, is_tiff, is_dicom, suffix), detected


def open_tiff_or_openslide(path: Path, fallback: bool = False) -> Slide:
    """tifffile; with ``fallback``, OpenSlide where tifffile refuses the file's layout
    (never where the file is damaged: truncated or corrupt is the user's answer)."""
    from lpd.wsi._tiff import open_tiff

    try:
        slide = open_tiff(path)
    except InputError as exc:
        if not fallback or any(w in exc.problem for w in ("truncated", "corrupt")):
            raise
        from lpd.wsi._openslide import open_openslide

        try:
            slide = open_openslide(path)
        except InputError:
            raise exc from None
        slide.metadata.setdefault("notes", []).append(
            f"read with OpenSlide: tifffile cannot ({exc.problem})")
        return slide
    slide.metadata["backend"] = "tifffile"
    return slide
