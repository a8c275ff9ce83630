"""The one registry of export formats, their file names and options.

Every export of a prediction store — ``lpd export``, ``lpd batch``, the Export widget,
``lpd.export`` — goes through ``FORMATS``, so an export called NAME is always
``NAME-labels.tiff`` (pyramidal label TIFF), ``NAME.geojson`` (QuPath GeoJSON;
``NAME.geojson.gz`` with ``compress=True``), ``NAME-areas.csv`` (area per class) and, where
asked for, ``NAME.ome.zarr`` (a copy of the OME-Zarr store). ``DEFAULT_FORMATS`` are the
first three. A format's ``options`` are the keyword options its writer takes (the GeoJSON's
``GEOJSON_OPTIONS``); ``export`` hands each format the ones meant for it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpd.errors import InputError
from lpd.io.export import export_csv, export_tiff, open_for_export
from lpd.io.geojson import check_options, export_geojson
from lpd.io.ngff_export import check_options as check_ngff_options
from lpd.io.ngff_export import write_ome_zarr
from lpd.io.store import OutputStore

#: Keyword options of ``lpd.io.geojson.export_geojson`` that exports pass through.
GEOJSON_OPTIONS = ("class_names", "object_type", "min_area_um2", "min_area_px", "compress")


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
        ``write(store, path, *, allow_incomplete=False, **options) -> Path``.
    options : tuple of str
        The keyword options ``write`` takes besides ``allow_incomplete``; ``"compress"``
        (gzip) adds ``.gz`` to the file name when true.
    check : callable, optional
        ``check(**options)`` raises ``ValueError`` for bad options, before any file of
        an export is written.
    """

    key: str
    title: str
    suffix: str
    write: Callable[..., Path]
    options: tuple[str, ...] = ()
    check: Callable[..., None] | None = None

    def file_name(self, name: str, options: Mapping[str, Any] | None = None) -> str:
        """``name`` + ``suffix`` (+ ``.gz`` when this format is asked to compress)."""
        gz = "compress" in self.options and bool((options or {}).get("compress"))
        return f"{name}{self.suffix}{'.gz' if gz else ''}"

    def own(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options meant for this format."""
        return {k: v for k, v in options.items() if k in self.options}


def _copy(store: OutputStore, path: str | Path, *, allow_incomplete: bool = False,
          ngff_version: str = "0.5") -> Path:
    """``lpd.io.ngff_export.write_ome_zarr``: ``ngff_version="0.4"`` for Bio-Formats/QuPath."""
    return write_ome_zarr(open_for_export(store, allow_incomplete), path,
                          ngff_version=ngff_version, allow_incomplete=allow_incomplete)


FORMATS: dict[str, ExportFormat] = {f.key: f for f in (
    ExportFormat("tiff", "Label TIFF (pyramidal, class colour table)", "-labels.tiff",
                 export_tiff),
    ExportFormat("geojson", "QuPath GeoJSON (class polygons)", ".geojson", export_geojson,
                 GEOJSON_OPTIONS, check_options),
    ExportFormat("csv", "Area per class (CSV)", "-areas.csv", export_csv),
    ExportFormat("zarr", "OME-Zarr (copy of the store)", ".ome.zarr", _copy,
                 ("ngff_version",), check_ngff_options),
)}
DEFAULT_FORMATS = ("tiff", "geojson", "csv")


def store_name(store: OutputStore | str | Path) -> str:
    """The name exports of a store take: the store folder's name without ``.zarr``."""
    path = store.path if isinstance(store, OutputStore) else Path(store)
    name = Path(path).name
    return name[: -len(".zarr")] if name.endswith(".zarr") else name


def export_paths(name: str, folder: str | Path, formats: Iterable[str],
                 options: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Where each format of an export named ``name`` goes in ``folder``.

    Parameters
    ----------
    name : str
        The export's name (usually ``store_name(store)``).
    folder : str or Path
        The output folder.
    formats : iterable of str
        Keys of ``FORMATS``.
    options : mapping, optional
        Export options (``compress=True`` names the GeoJSON ``NAME.geojson.gz``).

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
        out[key] = Path(folder) / FORMATS[key].file_name(name, options)
    return out


def export(store: Any, folder: str | Path | None = None,
           formats: Iterable[str] = DEFAULT_FORMATS, *, name: str | None = None,
           paths: dict[str, Path] | None = None, allow_incomplete: bool = False,
           on_file: Callable[[str, Path], None] | None = None,
           **options: Any) -> dict[str, Path]:
    """Write a prediction store in several formats (each file atomically).

    ``lpd.export(seg, "out/", class_names="lpd", compress=True)`` writes the GeoJSON with
    our class names, gzipped (``NAME.geojson.gz``).

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
    **options
        Options of the formats' writers, each handed to the formats that take it: the
        GeoJSON's ``class_names`` ("qupath" or "lpd"), ``object_type`` ("annotation" or
        "detection"), ``min_area_um2``, ``min_area_px`` and ``compress`` (see
        ``lpd.io.geojson.export_geojson``).

    Returns
    -------
    dict
        Format key -> the path written.

    Raises
    ------
    InputError
        Unknown format, unreadable or incomplete store.
    TypeError
        An option no format takes.
    ValueError
        A bad option value (e.g. an unknown ``class_names``).
    """
    known = {o for fmt in FORMATS.values() for o in fmt.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"export() got unknown option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(known))}")
    segmentation = store if isinstance(getattr(store, "store", None), OutputStore) else None
    if segmentation is not None:
        store = segmentation.store
        name = name or segmentation.name
        if folder is None and segmentation.owns_store:
            folder = Path.cwd()
    opened = store if isinstance(store, OutputStore) else OutputStore.open(store)
    folder = Path(folder) if folder is not None else Path(opened.path).parent
    targets = export_paths(name or store_name(opened), folder, formats, options)
    targets.update(paths or {})
    for key in targets:
        if FORMATS[key].check is not None:
            FORMATS[key].check(**FORMATS[key].own(options))
    written = {}
    for key, path in targets.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fmt = FORMATS[key]
        written[key] = fmt.write(opened, path, allow_incomplete=allow_incomplete,
                                 **fmt.own(options))
        if on_file is not None:
            on_file(key, written[key])
    return written
