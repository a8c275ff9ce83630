"""``lpd export OUT.zarr``: label TIFF, QuPath GeoJSON and per-class area CSV of a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpd.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a prediction store to label TIFF, QuPath GeoJSON and area CSV",
        description="Writes a pyramidal label TIFF (uint8, 0 background, 1..4 classes), a "
        "QuPath-compatible GeoJSON FeatureCollection of class polygons (coordinates in "
        "level-0 slide pixels) and a CSV of per-class area (µm² when the microns per pixel "
        "are known) and percentages. Without --tiff/--geojson/--csv all three are written "
        "next to the store (or into --out-dir) as NAME-labels.tiff, NAME.geojson and "
        "NAME-areas.csv.",
    )
    p.add_argument("store", type=Path, help="prediction store written by lpd predict")
    p.add_argument("--tiff", type=Path, help="write the label TIFF here")
    p.add_argument("--geojson", type=Path, help="write the GeoJSON here")
    p.add_argument("--csv", type=Path, help="write the area CSV here")
    p.add_argument("--out-dir", type=Path, help="folder for the default file names")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export an interrupted (incomplete) prediction as it is")
    p.set_defaults(func=run)


def export_targets(store: Path, tiff: Path | None, geojson: Path | None, csv: Path | None,
                   out_dir: Path | None) -> dict[str, Path]:
    """The files to write: the ones named, else all three with default names."""
    from lpd.io.formats import DEFAULT_FORMATS, export_paths, store_name

    named = {k: v for k, v in (("tiff", tiff), ("geojson", geojson), ("csv", csv)) if v}
    if named:
        return named
    folder = out_dir if out_dir is not None else store.parent
    return export_paths(store_name(store), folder, DEFAULT_FORMATS)


def run(args: argparse.Namespace) -> int:
    from lpd.io.export import class_areas
    from lpd.io.formats import export
    from lpd.io.store import OutputStore

    store = OutputStore.open(args.store)
    if not store.complete and not args.allow_incomplete:
        raise InputError(store.path, "the prediction is incomplete (interrupted?): rerun the "
                         "same lpd predict command to finish it, or pass --allow-incomplete "
                         "to export it as it is")
    targets = export_targets(args.store, args.tiff, args.geojson, args.csv, args.out_dir)
    resolved = {p.resolve() for p in targets.values()}
    if len(resolved) < len(targets):
        raise InputError(None, "two exports would write the same file")
    if not store.complete:
        print(f"warning: {store.path} is INCOMPLETE; its exports show unfinished chunks as "
              "background")
    export(store, formats=(), paths=targets, allow_incomplete=args.allow_incomplete,
           on_file=lambda kind, path: print(f"wrote {kind:8s}{path}"))
    rows = class_areas(store, allow_incomplete=args.allow_incomplete)
    if store.mpp is None:
        print("note: microns per pixel unknown (not in the slide's metadata; pass --mpp to "
              "lpd predict): areas in pixels only, no µm²")
    print(f"{'class':12s}{'pixels':>14s}{'area µm²':>16s}{'% tissue':>10s}")
    for r in rows[1:]:
        area = "n/a" if r["area_um2"] is None else f"{r['area_um2']:.0f}"
        print(f"{r['class']:12s}{r['pixels']:14d}{area:>16s}{r['percent_tissue']:10.2f}")
    return 0
