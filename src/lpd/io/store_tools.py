"""Whole prediction stores as units: copy one atomically (``atomic_folder``: any folder),
make one from a label array, and sample one's labels on a coarser grid (the prototype
cells).

These work on ``lpd.io.store.OutputStore`` from outside; the store's own format and
geometry stay in ``lpd.io.store``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.errors import InputError
from lpd.io.store import OutputStore

#: Tile and chunk side (px) of a store made from a label array.
STORE_CHUNK = 512
_UNKNOWN_CLASS_COLOUR = (128, 128, 128)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``target``, then move it into place.

    An older ``target`` is replaced only once the new folder is whole, so an interrupted
    build never leaves a half-written folder under the final name.

    Parameters
    ----------
    target : str or Path
        The folder to make (replaced if it exists).

    Yields
    ------
    Path
        The temporary folder's path (not yet existing): build the folder there.

    Raises
    ------
    OSError
        A rename failed (the temporary folder is removed; ``target`` is as it was).
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_store(store: OutputStore, target: str | Path) -> Path:
    """Copy a store's folder to ``target`` atomically (``atomic_folder``).

    The copy is made beside ``target`` under a temporary name and renamed into place when
    whole; an older ``target`` is replaced only then, so an interrupted copy never leaves a
    half-written store under the final name. The copy has the store's layout as it is on
    disk; ``lpd.io.ngff_export.write_ome_zarr`` writes one in the current layout.

    Parameters
    ----------
    store : OutputStore
        The store to copy (its folder ``store.path`` is copied as it is on disk).
    target : str or Path
        The new store's folder, e.g. ``result.ome.zarr``; replaced if it exists.

    Returns
    -------
    Path
        ``target``.

    Raises
    ------
    OSError
        The copy or a rename failed (the temporary copy is removed; ``target`` is as it
        was).
    """
    with atomic_folder(target) as tmp:
        shutil.copytree(store.path, tmp)
    return Path(target)


def mpp_from_scale(scale: Sequence[float] | None, units: Sequence[Any] | None) -> float | None:
    """Microns per pixel from a pixel size and its unit (e.g. a napari layer's).

    Parameters
    ----------
    scale : sequence of float or None
        Pixel size per axis, (..., y, x); the last (x) is used.
    units : sequence of str or pint units, or None
        The unit of each axis, e.g. ``("µm", "µm")``.

    Returns
    -------
    float or None
        µm per pixel; None when either is missing or the unit is not a length (``pixel``).
    """
    if scale is None or units is None:
        return None
    try:
        import pint

        unit = pint.get_application_registry()(str(units[-1]))
        return float(scale[-1]) * float(unit.to("micrometer").magnitude)
    except Exception:  # "pixel" or not a length
        return None


def store_from_labels(
    labels: Any, path: str | Path, *, scale: Sequence[float] | None = None,
    units: Sequence[Any] | None = None, translate: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> OutputStore:
    """A finished prediction store holding a 2-D label map (read and written in chunks).

    Parameters
    ----------
    labels : array-like, shape (H, W)
        Integer labels 0..255 (0 background, 1..C classes); any sliceable array (numpy,
        zarr, dask).
    path : str or Path
        The new store's folder; must not exist.
    scale : sequence of float, optional
        Pixel size (..., y, x) in ``units``; with a length unit it gives the store's µm/px
        (``mpp_from_scale``), and it converts ``translate`` to pixels.
    units : sequence of str, optional
        The unit of ``scale`` per axis, e.g. ``("µm", "µm")``; ``pixel`` or None: µm/px
        unknown.
    translate : sequence of float, optional
        Position (..., y, x) of the map's first pixel, in ``units``; becomes the store's
        offset in pixels.
    class_names : sequence of str, optional
        The names of labels 1..C (default ``lpd.classes.CLASS_NAMES``); classes past the
        default colours are grey.

    Returns
    -------
    OutputStore
        The store, complete, with its label pyramid built.

    Raises
    ------
    InputError
        ``labels`` is not 2-D, holds values outside 0..255, or ``path`` exists.
    """
    if getattr(labels, "ndim", 0) != 2:
        raise InputError(None, f"only 2-D label layers can be exported, got shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    names = list(class_names or CLASS_NAMES)
    colours = [CLASS_COLOURS[c] for c in CLASS_NAMES][: len(names)]
    colours += [_UNKNOWN_CLASS_COLOUR] * (len(names) - len(colours))
    mpp = mpp_from_scale(scale, units)
    sy, sx = (float(scale[-2]), float(scale[-1])) if scale is not None else (1.0, 1.0)
    ty, tx = (float(translate[-2]), float(translate[-1])) if translate is not None else (0, 0)
    h, w = int(labels.shape[0]), int(labels.shape[1])
    store = OutputStore.create(
        path, shape=(h, w), tile=STORE_CHUNK, chunk=STORE_CHUNK, class_names=names,
        class_colours=colours, mpp=mpp, scale=1.0, offset=(tx / sx, ty / sy),
    )
    for i, y in enumerate(range(0, h, STORE_CHUNK)):
        for j, x in enumerate(range(0, w, STORE_CHUNK)):
            block = np.asarray(labels[y : y + STORE_CHUNK, x : x + STORE_CHUNK])
            if block.size and (block.max() > 255 or block.min() < 0):
                raise InputError(None, "label values must lie in 0..255 for export")
            store.put_tile(i, j, block.astype(np.uint8))
    for _ in store.build_pyramid():
        pass
    store.mark_complete()
    return store


def labels_at_cells(store: OutputStore, stride: float, cells: tuple[int, int]) -> np.ndarray:
    """The store's labels sampled at the centres of a coarser grid of cells.

    Read from the finest pyramid level no coarser than one cell, so a whole slide's level 0
    is never read for a coarse grid.

    Parameters
    ----------
    store : OutputStore
        A prediction store (its pyramid is used when built).
    stride : float
        Output pixels per cell, e.g. the prototype maps' ``meta["prototypes"]["stride"]``.
    cells : tuple of int
        The grid's (rows, cols), e.g. ``store.prototypes.shape[-2:]``.

    Returns
    -------
    numpy.ndarray, shape (rows, cols)
        The label at each cell's centre (uint8, 0 background); cells past the map's edge
        repeat its last row or column.
    """
    level = 0
    while level + 1 < store.n_levels and 2 ** (level + 1) <= stride:
        level += 1
    arr = store.level(level)
    f = 2**level
    rows = np.minimum(((np.arange(cells[0]) + 0.5) * stride / f).astype(int), arr.shape[0] - 1)
    cols = np.minimum(((np.arange(cells[1]) + 0.5) * stride / f).astype(int), arr.shape[1] - 1)
    return np.asarray(arr.get_orthogonal_selection((rows, cols)))
