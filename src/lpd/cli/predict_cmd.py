"""``lpd predict SLIDE --out OUT.zarr``: whole-slide (or region) segmentation into a store."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path

from lpd.batch import default_threads
from lpd.cli._progress import progress_bar
from lpd.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment a whole slide (or a region) into a chunked zarr store",
        description="Tiled inference over a slide (SVS, TIFF, OME-TIFF, NDPI; MRXS, SCN, BIF, "
        "Philips TIFF, VMS, DICOM-WSI through OpenSlide; PNG, JPEG) at "
        "the checkpoint's magnification, written to OUT.zarr (OME-Zarr labels, resumable). "
        "Interrupted runs leave an incomplete store that the same command resumes. "
        "Export it with `lpd export OUT.zarr`.",
    )
    p.add_argument("slide", type=Path, help="slide or image file (or a DICOM-WSI folder)")
    p.add_argument("--checkpoint", default="default",
                   help="model checkpoint (.safetensors); 'default' (the default) uses the "
                   "shipped default model (lpd info default)")
    p.add_argument("--out", type=Path, required=True, help="output store (OUT.zarr)")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"),
                   help="region in level-0 pixels (default: the whole slide)")
    p.add_argument("--roi", type=Path, metavar="FILE.geojson",
                   help="segment only inside the polygons of a QuPath GeoJSON file "
                   "(.geojson or .geojson.gz, level-0 pixels; holes stay out; pixels are "
                   "in when their centres are); --region then limits it further")
    p.add_argument("--roi-class", metavar="NAME",
                   help="with --roi: only the objects of this class (QuPath's name, e.g. "
                   "Tumor, or ours, e.g. TUM; case-insensitive)")
    p.add_argument("--level", type=int, help="pyramid level to read (default: the level "
                   "matching the checkpoint's microns per pixel)")
    p.add_argument("--mpp", type=float, help="the slide's level-0 microns per pixel, when its "
                   "metadata has none (or is wrong)")
    p.add_argument("--target-mpp", type=float,
                   help="process at this magnification instead of the checkpoint's")
    p.add_argument("--allow-resample", action="store_true",
                   help="resample the slide even by more than 8x either way (refused by "
                   "default: it usually means a wrong microns per pixel; see --mpp)")
    p.add_argument("--prototypes", action="store_true",
                   help="also store per-prototype activation maps (float16)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int,
                   help="torch threads on CPU (default: CPU cores - 1, at least 1; one "
                   "reader thread runs besides)")
    p.add_argument("--tissue-threshold", type=float, default=0.05,
                   help="skip tiles with less tissue than this fraction (default 0.05; "
                   "0 computes every tile)")
    p.add_argument("--no-resume", action="store_true",
                   help="replace an existing store instead of resuming it")
    p.set_defaults(func=run)


def checkpoint_for_cli(checkpoint: str | Path | None, device: str = "cpu") -> Path:
    """The checkpoint's path; "default" (or None) is the default model, trained with a
    progress bar the first time."""
    from lpd.batch import resolve_checkpoint

    with contextlib.ExitStack() as stack:
        bars = []

        def on_train(p) -> None:
            if not bars:
                print("training the default model (its shipped weights are missing; "
                      "cached afterwards)",
                      file=sys.stderr)
                bars.append(stack.enter_context(progress_bar(p.total, "default model", "step")))
            bars[0].update(p.step - bars[0].n)

        return resolve_checkpoint(checkpoint, on_train, device)


def roi_and_region(args: argparse.Namespace, shape: tuple[int, int]
                   ) -> tuple[object, tuple[int, int, int, int] | None]:
    """The region of interest of ``--roi`` (``--roi-class``) and the region to plan: the
    ROI's bounding box cut to the slide, unless ``--region`` is given.

    Parameters
    ----------
    args : argparse.Namespace
        ``roi``, ``roi_class``, ``region``.
    shape : tuple of int
        The slide's level-0 (height, width).

    Returns
    -------
    tuple
        (``lpd.io.roi.Roi`` or None, (x, y, w, h) or None).

    Raises
    ------
    InputError
        A bad GeoJSON file (naming it and the feature), no polygon (of that class), or
        polygons wholly outside the slide or the region.
    """
    region = None if args.region is None else tuple(args.region)
    if args.roi is None:
        if args.roi_class is not None:
            raise InputError(None, "--roi-class needs --roi FILE.geojson")
        return None, region
    from shapely.geometry import box

    from lpd.io.annotations import read_annotations
    from lpd.io.roi import Roi

    notes: list[str] = []
    annotations = read_annotations(args.roi, notes=notes)
    for note in notes:
        print(f"note: {args.roi.name}: {note}", file=sys.stderr)
    roi = Roi.from_annotations(annotations, args.roi_class, args.roi)
    if region is None:
        x, y, w, h = roi.bounds
        h0, w0 = shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, w0), min(y + h, h0)
        if x1 <= x0 or y1 <= y0:
            raise InputError(args.roi, f"its polygons lie outside the slide ({w0} x {h0} px)")
        region = (x0, y0, x1 - x0, y1 - y0)
    x, y, w, h = region
    inside = roi.geometry.intersection(box(x, y, x + w, y + h)).area
    if inside <= 0:
        raise InputError(args.roi, f"its polygons do not overlap the region x={x} y={y} "
                         f"w={w} h={h}: nothing to segment")
    which = "" if args.roi_class is None else f" (class {args.roi_class})"
    print(f"roi: the polygons of {args.roi.name}{which}, {inside:.0f} px² in the region, "
          f"region x={region[0]} y={region[1]} w={region[2]} h={region[3]}", file=sys.stderr)
    return roi, region


def run(args: argparse.Namespace) -> int:
    from lpd.wsi.slide import open_slide, reader_summary

    threads = default_threads() if args.threads is None else args.threads
    if threads < 1:
        raise InputError(None, f"--threads must be >= 1, got {threads}")
    # the slide first, before torch loads: a bad file is reported at once
    with open_slide(args.slide, mpp=args.mpp) as slide:
        print(f"slide: {slide.path.name}: {reader_summary(slide)}", file=sys.stderr)
        return _run(args, slide, threads)


def _run(args: argparse.Namespace, slide, threads: int) -> int:
    import torch

    from lpd.errors import StoreMismatch
    from lpd.infer.device import resolve_device
    from lpd.io.store import OutputStore
    from lpd.progress import drive
    from lpd.segmentation import halo_for, load_model, plan_tiled, segment_iter

    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    resume = not args.no_resume
    out: Path = args.out
    roi, region = roi_and_region(args, slide.shape)
    model = load_model(checkpoint_for_cli(args.checkpoint, str(device)), str(device))
    kwargs = dict(region=region, level=args.level, target_mpp=args.target_mpp,
                  allow_resample=args.allow_resample, halo=halo_for(model))
    plan = plan_tiled(model, slide, **kwargs)
    grid = plan.grid
    total = grid[0] * grid[1]
    before = 0
    if resume and out.exists() and OutputStore.is_store(out):
        old = OutputStore.open(out)
        if old.is_whole() and tuple(old.shape) == tuple(plan.shape) and old.tile == plan.tile:
            before = int((~old.needed_tiles(grid)).sum())
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    gen = segment_iter(
        model, slide, **kwargs, batch_size=args.batch_size, device=str(device),
        tissue_threshold=args.tissue_threshold or None, out=out,
        prototypes=args.prototypes, resume=resume, roi=roi, plan=plan)
    t0 = time.perf_counter()
    try:
        with progress_bar(total, "tiles", "tile") as bar:
            bar.update(before)

            def show(progress) -> None:
                if progress.stage == "tiles":
                    bar.update(progress.done - bar.n)
                else:
                    bar.set_description("pyramid", refresh=False)

            result = drive(gen, show).result
    except KeyboardInterrupt:
        gen.close()  # stops the reader thread; finished chunks stay on disk
        _report_interrupted(out)
        return 130
    except StoreMismatch as exc:
        raise InputError(exc.path, exc.problem.replace("pass resume=False",
                                                       "pass --no-resume")) from None
    _report_done(result, total, before, time.perf_counter() - t0, out)
    return 0


def _report_interrupted(out: Path) -> None:
    from lpd.io.store import OutputStore

    done = ""
    if OutputStore.is_store(out):
        fin = OutputStore.open(out).finished()
        done = f" ({int(fin.sum())} of {fin.size} chunks saved)"
    print(f"\ninterrupted: {out} is INCOMPLETE{done} and must not be used as a result.\n"
          "Run the same command again to resume from the saved chunks, or export it as it "
          "is with `lpd export --allow-incomplete`.", file=sys.stderr)


def _report_done(result, total: int, before: int, seconds: float, out: Path) -> None:
    store, plan = result.store, result.plan
    computed = max(0, total - before - result.tiles_skipped)
    if before == total:
        computed = 0
    h, w = plan.shape
    mpp = f"{plan.mpp:.3g} µm/px" if plan.mpp else "µm/px unknown"
    state = "complete" if store is not None and store.complete else "INCOMPLETE"
    print(f"store: {out} ({state}; {w} x {h} px at {mpp}, slide level {plan.level}, "
          f"region x={plan.region[0]} y={plan.region[1]} w={plan.region[2]} h={plan.region[3]})")
    print(f"tiles: {total} in all: {computed} computed, {result.tiles_skipped} skipped as "
          f"background, {before} already done (resumed)")
    rate = result.forward_passes / seconds if seconds > 0 else 0.0
    passes = "pass" if result.forward_passes == 1 else "passes"
    print(f"throughput: {result.forward_passes} forward {passes} in {seconds:.1f} s "
          f"({rate:.2f} passes/s)")
    if result.reused_passes:
        print(f"reused {result.reused_passes} of {result.full_passes} model passes "
              "(the store's earlier runs)")
    print(f"export with: lpd export {shlex.quote(str(out))}")
