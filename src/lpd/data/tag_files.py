"""Where an image's tags are kept: ``<image>.lpd-tags.json`` beside it, or in the user data
folder for the bundled sample data and read-only folders (``sidecar_path``); and the cheap
fingerprint that tells a sidecar its image changed (``image_fingerprint``)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import platformdirs

from lpd.data.sample import SAMPLE_ROOT
from lpd.data.tag_patches import safe_stem
from lpd.errors import InputError

SIDECAR_SUFFIX = ".lpd-tags.json"
_FINGERPRINT_BYTES = 65536


def tags_dir() -> Path:
    """The user data folder for tags that cannot stay beside their image.

    Returns
    -------
    Path
        ``$LPD_DATA_DIR/tags`` if that variable is set, else
        ``platformdirs.user_data_dir("napari-lpd")/tags`` (not created here).
    """
    root = os.environ.get("LPD_DATA_DIR") or platformdirs.user_data_dir("napari-lpd")
    return Path(root) / "tags"


def folder_writable(folder: str | os.PathLike[str]) -> bool:
    """Whether new files can be created in a folder.

    ``os.access`` alone misses read-only mounts, ACLs and the like, so a temporary file
    is also created (and removed at once).

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to check; a missing folder is not writable.

    Returns
    -------
    bool
        True if a file could be created there.
    """
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".lpd-write-test-"):
            return True
    except OSError:
        return False


def sidecar_path(image_path: str | os.PathLike[str]) -> Path:
    """Where an image's tags are kept.

    ``<image>.lpd-tags.json`` beside the image; for the bundled sample data (under
    ``lpd.data.sample.SAMPLE_ROOT``, which may be an installed package) and for images in
    folders that cannot be written, ``<name>-<hash>.lpd-tags.json`` in ``tags_dir()``, the
    hash being of the image's absolute path (same-named images of different folders do
    not share tags).

    Parameters
    ----------
    image_path : str or os.PathLike
        The image file.

    Returns
    -------
    Path
        The sidecar file (it may not exist yet).

    Raises
    ------
    InputError
        If ``image_path`` has no file name (``""``, ``"."``, ``".."``, ``"/"``).
    """
    image = Path(image_path)
    if not image.name or image.name in (".", ".."):
        raise InputError(image, "not an image file name; tags are stored beside an image")
    absolute = image.resolve()
    if not absolute.is_relative_to(SAMPLE_ROOT.resolve()) and folder_writable(image.parent):
        return image.parent / (image.name + SIDECAR_SUFFIX)
    key = hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]
    return tags_dir() / f"{safe_stem(image.name)}-{key}{SIDECAR_SUFFIX}"


def image_fingerprint(path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """(file size, sha256 of the first and last 64 KiB) or None: cheap, changes with the file."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            digest = hashlib.sha256(fh.read(_FINGERPRINT_BYTES))
            fh.seek(max(size - _FINGERPRINT_BYTES, 0))
            digest.update(fh.read(_FINGERPRINT_BYTES))
    except OSError:
        return None
    return size, digest.hexdigest()
