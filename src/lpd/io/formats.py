"""The one registry of export formats and their file names.

Every export of a prediction store — ``lpd export``, ``lpd batch``, the Export widget,
``lpd.export`` — goes through ``FORMATS``, so an export called NAME is always
``NAME-labels.tiff`` (pyramidal label TIFF), ``NAME.geojson`` (QuPath GeoJSON),
``NAME-areas.csv`` (area per class) and, where asked for, ``NAME.ome.zarr`` (a copy of the
OME-Zarr store). ``DEFAULT_FORMATS`` are the first three."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpd.errors import InputError
from lpd.io.export import export_csv, export_geojson, export_tiff
from lpd.io.store import OutputStore
from lpd.io.store_tools import copy_store


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes
    ----------
    key : str
        Its name in options (``"tiff"``, ``"geojson"``, ``"csv"``).
    title : str
        What it is, for menus and help.
    suffix : str
        Appended to the store's name to make the file's.
    write : callable
        ``write(store, path, *, allow_incomplete=False) -> Path``.
    """

    key: str
    title: str
    suffix: str
    write: Callable[..., Path]


def _copy(store: OutputStore, path: str | Path, *, allow_incomplete: bool = False) -> Path:
    if not store.complete and not allow_incomplete:
        raise InputError(store.path, "the prediction is incomplete (interrupted?); rerun the "
                         "prediction to finish it, or export it as it is on purpose")
    return copy_store(store, path)


FORMATS: dict[str, ExportFormat] = {f.key: f for f in (
    ExportFormat("tiff", "Label TIFF (pyramidal, class colour table)", "-labels.tiff",
                 export_tiff),
    ExportFormat("geojson", "QuPath GeoJSON (class polygons)", ".geojson", export_geojson),
    ExportFormat("csv", "Area per class (CSV)", "-areas.csv", export_csv),
    ExportFormat("zarr", "OME-Zarr (copy of the store)", ".ome.zarr", _copy),
)}
DEFAULT_FORMATS = ("tiff", "geojson", "csv")


def store_name(store: OutputStore | str | Path) -> str:
    """The name exports of a store take: the store folder's name without ``.zarr``."""
    path = store.path if isinstance(store, OutputStore) else Path(store)
    name = Path(path).name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def export_paths(name: str, folder: str | Path, formats: Iterable[str]) -> dict[str, Path]:
    """Where each format of an export named ``name`` goes in ``folder``.

    Parameters
    ----------
    name : str
        The export's name (usually ``store_name(store)``).
    folder : str or Path
        The output folder.
    formats : iterable of str
        Keys of ``FORMATS``.

    Returns
    -------
    dict
        Format key -> file path.

    Raises
    ------
    InputError
        An unknown format (the message lists the known ones).
    """
    out = {}
    for key in formats:
        if key not in FORMATS:
            raise InputError(None, f"unknown export format {key!r}; known: "
                             f"{', '.join(FORMATS)}")
        out[key] = Path(folder) / f"{name}{FORMATS[key].suffix}"
    return out


def export(store: Any, folder: str | Path | None = None,
           formats: Iterable[str] = DEFAULT_FORMATS, *, name: str | None = None,
           paths: dict[str, Path] | None = None, allow_incomplete: bool = False,
           on_file: Callable[[str, Path], None] | None = None) -> dict[str, Path]:
    """Write a prediction store in several formats (each file atomically).

    Parameters
    ----------
    store : Segmentation or OutputStore or str or Path
        A ``lpd.segment`` result, a store, or a store's folder.
    folder : str or Path, optional
        Where the files go (created); default: beside the store (a temporary store's
        segmentation: the current folder).
    formats : iterable of str
        Keys of ``FORMATS`` (default ``DEFAULT_FORMATS``: TIFF, GeoJSON, CSV).
    name : str, optional
        File name stem; default the segmentation's name (its slide's), else
        ``store_name(store)``.
    paths : dict, optional
        Explicit paths for some formats (format key -> path), overriding the scheme.
    allow_incomplete : bool
        Export an interrupted prediction as it is.
    on_file : callable, optional
        Called ``on_file(key, path)`` after each file is written.

    Returns
    -------
    dict
        Format key -> the path written.

    Raises
    ------
    InputError
        Unknown format, unreadable or incomplete store.
    """
    segmentation = store if isinstance(getattr(store, "store", None), OutputStore) else None
    if segmentation is not None:
        store = segmentation.store
        name = name or segmentation.name
        if folder is None and segmentation.owns_store:
            folder = Path.cwd()
    opened = store if isinstance(store, OutputStore) else OutputStore.open(store)
    folder = Path(folder) if folder is not None else Path(opened.path).parent
    targets = export_paths(name or store_name(opened), folder, formats)
    targets.update(paths or {})
    written = {}
    for key, path in targets.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        written[key] = FORMATS[key].write(opened, path, allow_incomplete=allow_incomplete)
        if on_file is not None:
            on_file(key, written[key])
    return written
