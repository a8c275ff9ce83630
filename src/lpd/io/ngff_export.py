"""Copies of a prediction store that OME-NGFF readers open as labels.

``write_ome_zarr`` writes OME-Zarr 0.5 (zarr v3) in the store's current layout (an image
group holding ``labels/classes``; docs/architecture.md, "The prediction store"): a store of
the current layout is copied as it is, an older one rewritten. ``write_ngff_v04`` writes
OME-Zarr 0.4 (zarr v2: ``.zgroup``/``.zattrs``/``.zarray``, nested chunk keys, Blosc) for
Bio-Formats and so QuPath, which read NGFF 0.4 only. Its root image holds the class map
itself (uint8, 0 background, 1..C), since Bio-Formats shows the image and skips labels;
``labels/classes`` holds the same levels as an NGFF label image (class names, colours).
Prototype maps stay out of the 0.4 copy. Both copies keep the ``lpd`` metadata, so lpd and
its napari reader open them (the 0.4 copy read-only).

Spec: OME-NGFF 0.5 and 0.4 (https://ngff.openmicroscopy.org/0.5/,
https://ngff.openmicroscopy.org/0.4/): "multiscales", "labels", "image-label"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from lpd.io._ngff import label_path, new_level, write_metadata
from lpd.io.export import open_for_export
from lpd.io.store import FORMAT_VERSION, OutputStore
from lpd.io.store_tools import atomic_folder, copy_store

#: NGFF versions these copies can be written in.
NGFF_VERSIONS = ("0.5", "0.4")


def check_options(ngff_version: str = "0.5") -> None:
    """Check the options of ``write_ome_zarr`` (the export registry runs this before any
    file of an export is written).

    Parameters
    ----------
    ngff_version : str
        The OME-NGFF version asked for.

    Raises
    ------
    ValueError
        A version not in ``NGFF_VERSIONS``.
    """
    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(f"OME-Zarr version {ngff_version!r} cannot be written; known: "
                         f"{', '.join(NGFF_VERSIONS)}")


def write_ome_zarr(store: OutputStore | str | Path, path: str | Path, *,
                   ngff_version: str = "0.5", allow_incomplete: bool = False) -> Path:
    """Write a store as an OME-Zarr others open, atomically (a temporary folder beside
    ``path``, renamed into place when whole; an older ``path`` is replaced then).

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder), any layout.
    path : str or Path
        The copy's folder, e.g. ``NAME.ome.zarr``.
    ngff_version : str
        "0.5" (zarr v3, the store's own format) or "0.4" (zarr v2, for Bio-Formats/QuPath).
    allow_incomplete : bool
        Copy an interrupted prediction as it is (unfinished chunks read as background).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        The store cannot be opened, or is incomplete without ``allow_incomplete``.
    ValueError
        An unknown ``ngff_version``.
    OSError
        Writing failed (``path`` is as it was).
    """
    check_options(ngff_version)
    store = open_for_export(store, allow_incomplete)
    current = store.format_version == FORMAT_VERSION and store.group.metadata.zarr_format == 3
    if ngff_version == "0.5" and current:
        return copy_store(store, path)
    with atomic_folder(path) as tmp:
        _write_layout(store, tmp, ngff_version)
    return Path(path)


def write_ngff_v04(store: OutputStore | str | Path, path: str | Path, *,
                   allow_incomplete: bool = False) -> Path:
    """Write an OME-Zarr 0.4 copy (zarr v2) of a store, for Bio-Formats and QuPath.

    The root image (``0``, ``1``, ...) is the class map, the label image
    ``labels/classes`` the same levels with ``image-label`` (class names in ``properties``,
    colours in ``colors``); multiscales carry axes (y, x; µm when known) and each level's
    scale and translation. See the module docstring.

    Parameters
    ----------
    store : OutputStore or str or Path
        The prediction store (or its folder), any layout.
    path : str or Path
        The copy's folder, e.g. ``NAME.ome.zarr``; replaced atomically if it exists.
    allow_incomplete : bool
        Copy an interrupted prediction as it is.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        The store cannot be opened, or is incomplete without ``allow_incomplete``.
    OSError
        Writing failed (``path`` is as it was).
    """
    return write_ome_zarr(store, path, ngff_version="0.4", allow_incomplete=allow_incomplete)


def _write_layout(store: OutputStore, folder: Path, version: str) -> None:
    """The store in the current layout, in NGFF ``version``, in a new folder."""
    root = zarr.open_group(str(folder), mode="w-", zarr_format=3 if version == "0.5" else 2)
    meta = json.loads(json.dumps(store.meta))
    meta["format_version"] = FORMAT_VERSION
    if version == "0.4":
        meta["prototypes"] = None  # float16 maps: lpd's own, not for Bio-Formats
    root.attrs["lpd"] = meta
    labels = root.create_group(label_path(FORMAT_VERSION))
    c = store.chunk
    for lv in range(store.n_levels):
        src = store.level(lv)
        copies = [new_level(labels, str(lv), src.shape, (c, c))]
        image = new_level(root, str(lv), src.shape, (c, c))
        if version == "0.4":
            copies.append(image)  # else the placeholder: never written
        _copy_bands(src, copies, c)
    finished = store.group["finished"]
    _copy_bands(finished, [new_level(root, "finished", finished.shape, finished.chunks,
                                     names=("chunk_y", "chunk_x"))], finished.shape[0])
    if meta.get("prototypes") and store.prototypes is not None:
        src = store.prototypes
        protos = root.create_group("prototypes")
        dst = new_level(protos, "0", src.shape, src.chunks, dtype="float16",
                        names=("c", "y", "x"))
        _copy_bands(src, [dst], src.chunks[1], axis=1)
    write_metadata(root, meta, version)


def _copy_bands(src: zarr.Array, targets: list[zarr.Array], band: int, axis: int = 0) -> None:
    """Copy ``src`` into each target in bands of ``band`` rows along ``axis`` (memory: one
    band); all-background chunks stay unwritten (zarr reads them as the fill value)."""
    for start in range(0, src.shape[axis], band):
        index = (slice(None),) * axis + (slice(start, start + band),)
        block = np.asarray(src[index])
        for target in targets:
            target[index] = block
