"""``lpd export OUT.zarr``: label TIFF, QuPath GeoJSON and per-class area CSV of a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpd.errors import InputError

# lpd.io.geojson's CLASS_NAME_STYLES, OBJECT_TYPES, MIN_AREA_UM2 and MIN_AREA_PX, spelt out
# so that `lpd --help` does not import zarr and shapely (tests/core/test_geojson_export.py
# checks that they agree)
CLASS_NAME_STYLES = ("qupath", "lpd")
OBJECT_TYPES = ("annotation", "detection")
MIN_AREA_UM2 = 100.0
MIN_AREA_PX = 400.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a prediction store to label TIFF, QuPath GeoJSON and area CSV",
        description="Writes a pyramidal label TIFF (uint8, 0 background, 1..4 classes), a "
        "QuPath-compatible GeoJSON FeatureCollection of class polygons (coordinates in "
        "level-0 slide pixels) and a CSV of per-class area (µm² when the microns per pixel "
        "are known) and percentages. Without --tiff/--geojson/--csv all three are written "
        "next to the store (or into --out-dir) as NAME-labels.tiff, NAME.geojson (or "
        "NAME.geojson.gz with --gzip) and NAME-areas.csv. The GeoJSON opens in QuPath "
        "(File > Import objects from file, or drag it onto the slide): QuPath's built-in classes "
        "(Tumor, Stroma, Immune cells, Necrosis) with area and perimeter measurements.",
    )
    p.add_argument("store", type=Path, help="prediction store written by lpd predict")
    p.add_argument("--tiff", type=Path, help="write the label TIFF here")
    p.add_argument("--geojson", type=Path, help="write the GeoJSON here")
    p.add_argument("--csv", type=Path, help="write the area CSV here")
    p.add_argument("--out-dir", type=Path, help="folder for the default file names")
    p.add_argument("--ome-zarr", nargs="?", const="0.5", choices=("0.5", "0.4"),
                   metavar="VERSION",
                   help="also write an OME-Zarr copy, NAME.ome.zarr: NGFF 0.5 (zarr v3; "
                   "ome-zarr-py, napari-ome-zarr; the default) or 0.4 (zarr v2, for "
                   "Bio-Formats and QuPath), labels with class names and colours (give the "
                   "store before it, or the version: lpd export OUT.zarr --ome-zarr)")
    g = p.add_argument_group("GeoJSON")
    g.add_argument("--class-names", choices=CLASS_NAME_STYLES, default="qupath",
                   help="qupath: QuPath's built-in classes and colours (TUM -> Tumor, STR -> "
                   "Stroma, LYM -> Immune cells, NEC -> Necrosis; default); lpd: ours")
    g.add_argument("--object-type", choices=OBJECT_TYPES, default="annotation",
                   help="QuPath object type: annotation (default), or detection (lighter "
                   "for many small regions)")
    g.add_argument("--min-area", type=float, default=MIN_AREA_UM2, metavar="UM2",
                   help="leave out regions smaller than this, and fill holes smaller than "
                   f"it, in µm² (default {MIN_AREA_UM2:g}; 0 keeps every region)")
    g.add_argument("--min-area-px", type=float, default=MIN_AREA_PX, metavar="PX2",
                   help="the same in level-0 px², used instead where the microns per pixel "
                   f"are unknown (default {MIN_AREA_PX:g})")
    g.add_argument("--gzip", action="store_true",
                   help="gzip the GeoJSON (NAME.geojson.gz; QuPath 0.4+ imports it)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export an interrupted (incomplete) prediction as it is")
    p.set_defaults(func=run)


def export_targets(store: Path, tiff: Path | None, geojson: Path | None, csv: Path | None,
                   out_dir: Path | None, options: dict | None = None,
                   ome_zarr: bool = False) -> dict[str, Path]:
    """The files to write: the ones named, else all three with default names (``options``:
    the export options, ``compress`` names the GeoJSON ``.geojson.gz``), and the OME-Zarr
    copy (default name) when ``ome_zarr``."""
    from lpd.io.formats import DEFAULT_FORMATS, export_paths, store_name

    folder = out_dir if out_dir is not None else store.parent
    named = {k: v for k, v in (("tiff", tiff), ("geojson", geojson), ("csv", csv)) if v}
    targets = named or export_paths(store_name(store), folder, DEFAULT_FORMATS, options)
    if ome_zarr:
        targets.update(export_paths(store_name(store), folder, ("zarr",)))
    return targets


def run(args: argparse.Namespace) -> int:
    from lpd.io.export import class_areas
    from lpd.io.formats import export
    from lpd.io.store import OutputStore

    store = OutputStore.open(args.store)
    if not store.complete and not args.allow_incomplete:
        raise InputError(store.path, "the prediction is incomplete (interrupted?): rerun the "
                         "same lpd predict command to finish it, or pass --allow-incomplete "
                         "to export it as it is")
    options = {"class_names": args.class_names, "object_type": args.object_type,
               "min_area_um2": args.min_area, "min_area_px": args.min_area_px,
               "compress": True if args.gzip else None}  # None: by the file name
    if not (args.min_area >= 0 and args.min_area_px >= 0):  # NaN too
        raise InputError(None, "--min-area and --min-area-px must be 0 or more")
    if args.gzip and args.geojson and not args.geojson.name.lower().endswith(".gz"):
        raise InputError(args.geojson, "--gzip writes a gzip file: name it .geojson.gz")
    targets = export_targets(args.store, args.tiff, args.geojson, args.csv, args.out_dir,
                             options, ome_zarr=args.ome_zarr is not None)
    if args.ome_zarr is not None:
        options["ngff_version"] = args.ome_zarr
    resolved = {p.resolve() for p in targets.values()}
    if len(resolved) < len(targets):
        raise InputError(None, "two exports would write the same file")
    if store.path.resolve() in resolved:
        raise InputError(store.path, "an export would overwrite the store itself: choose "
                         "another file name or --out-dir")
    if not store.complete:
        print(f"warning: {store.path} is INCOMPLETE; its exports show unfinished chunks as "
              "background")
    export(store, formats=(), paths=targets, allow_incomplete=args.allow_incomplete,
           on_file=lambda kind, path: print(f"wrote {kind:8s}{path}"), **options)
    rows = class_areas(store, allow_incomplete=args.allow_incomplete)
    if store.mpp is None:
        print("note: microns per pixel unknown (not in the slide's metadata; pass --mpp to "
              "lpd predict): areas in pixels only, no µm²")
    print(f"{'class':12s}{'pixels':>14s}{'area µm²':>16s}{'% tissue':>10s}")
    for r in rows[1:]:
        area = "n/a" if r["area_um2"] is None else f"{r['area_um2']:.0f}"
        print(f"{r['class']:12s}{r['pixels']:14d}{area:>16s}{r['percent_tissue']:10.2f}")
    return 0
