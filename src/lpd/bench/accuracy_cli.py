"""``lpd bench accuracy``: the ablation benchmark from the command line (prints progress,
writes JSON + markdown + PNG after every finished run, so a long run can be read early)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from lpd.bench import variants


def register(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "accuracy",
        help="train and score the ablation (CAM, k-means bank, learnable prototypes, "
        "diversity loss), k sweep and stain augmentation",
        description="Trains every configuration with the same backbone, steps, data and "
        "thread count for several seeds and scores it under the predicted and the oracle "
        "presence protocols on held-apart mosaics of --train-tiles and on mosaics of "
        "--test-tiles. Writes FILE.json, FILE.md and FILE.png. The two folders must not "
        "share a tile (compared by content). For several torch threads on a shared CPU, "
        "set OMP_WAIT_POLICY=PASSIVE in the environment (busy-waiting OpenMP threads can "
        "make steps 10x slower).",
    )
    p.add_argument("--train-tiles", type=Path,
                   help="tile folder TUM/ STR/ LYM/ NEC/ [OTHER/] (default: bundled kather2016)")
    p.add_argument("--test-tiles", type=Path,
                   help="tile folder of another centre/release (default: bundled nct)")
    p.add_argument("--train-tile-mpp", type=float,
                   help="microns per pixel of the training tiles (bundled kather2016: 0.495)")
    p.add_argument("--test-tile-mpp", type=float,
                   help="microns per pixel of the test tiles (bundled nct: 0.5)")
    p.add_argument("--json", type=Path, required=True, help="output JSON file")
    p.add_argument("--quick", action="store_true",
                   help="smoke preset: " + ", ".join(variants.QUICK_CONFIGS)
                   + "; 1 seed, 30 steps of batch 4, 128 px, 16 mosaics (~2 minutes on 2 cores)")
    p.add_argument("--configs", help="comma-separated names or groups (default, quick, ablation, "
                   "k, stain, all-stain, investigation, all); default: "
                   + ",".join(variants.DEFAULT_CONFIGS))
    p.add_argument("--seeds", type=int, help="seeds per configuration (default 3)")
    p.add_argument("--steps", type=int, help="training steps per run (default 600)")
    p.add_argument("--batch-size", type=int, help="default 8")
    p.add_argument("--input-size", type=int,
                   help="patch side in pixels (default 224 on a GPU, 128 on the CPU)")
    p.add_argument("--threads", type=int,
                   help="torch threads per run (default 1 on the CPU, 2 on a GPU)")
    p.add_argument("--jobs", type=int,
                   help="runs at a time, each in its own process (default: on the CPU one "
                   "per core / threads, on a GPU 1)")
    p.add_argument("--backbone", help="timm backbone (default tf_efficientnet_lite0)")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone init")
    p.add_argument("--k", type=int, help="prototypes per class (default 10)")
    p.add_argument("--lr", type=float, help="backbone learning rate (default 5e-5; head x10)")
    p.add_argument("--warmup", type=int, help="classification-only steps (default steps/6)")
    p.add_argument("--eval-mosaics", type=int, help="mosaics per evaluation set (default 64)")
    p.add_argument("--inference-sweep", default=None,
                   help="configs whose background power / presence threshold are swept "
                   "(comma-separated, 'none'; default e_div)")
    p.add_argument("--leave-one-release-out", action="store_true",
                   help="instead: the default model's recipe with each release of its tiles "
                   "held out in turn (train on the others, score on it), --seeds seeds "
                   "(default 2), next to the one-class guess and a random-present-class "
                   "baseline; writes FILE.json and FILE.md")
    p.add_argument("--short", action="store_true",
                   help="with --leave-one-release-out: the recipe's shortened training")
    p.add_argument("--levers", default="recipe",
                   help="with --leave-one-release-out: comma-separated changes to the recipe "
                   "to screen, one run set each (see lpd.bench.levers; default: recipe)")
    p.add_argument("--releases",
                   help="with --leave-one-release-out: the releases to hold out "
                   "(comma-separated; default: all)")
    p.add_argument("--eval-seed", type=int,
                   help="with --leave-one-release-out: seed of the held-out mosaics (default "
                   "the held-apart seed, A; a confirmation run reports on another, B)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument("--out-dir", type=Path, help="keep each run's checkpoint and history here")
    p.add_argument("--allow-overlap", action="store_true",
                   help="run even if the two folders share tiles (the report warns)")
    p.set_defaults(func=run)


NCT_MPP = 0.5  # NCT-CRC-HE-100K: 224 px tiles at 0.5 um/px


def settings_from_args(args: argparse.Namespace):  # -> AccuracySettings
    from lpd.bench.accuracy import AccuracySettings, quick_settings
    from lpd.data.sample import KATHER2016_TILES, NCT_TILES
    from lpd.default_model import KATHER2016_MPP
    from lpd.infer.device import resolve_device

    s = AccuracySettings(
        train_tiles=args.train_tiles or KATHER2016_TILES,
        test_tiles=args.test_tiles or NCT_TILES,
        # the bundled folders' magnifications, as the default model is trained
        train_tile_mpp=args.train_tile_mpp or (None if args.train_tiles else KATHER2016_MPP),
        test_tile_mpp=args.test_tile_mpp or (None if args.test_tiles else NCT_MPP),
        mpp=None if args.train_tiles else 0.5,
    )
    if args.quick:
        s = quick_settings(s)
    overrides = {
        "seeds": args.seeds, "steps": args.steps, "batch_size": args.batch_size,
        "input_size": args.input_size, "threads": args.threads, "jobs": args.jobs,
        "backbone": args.backbone,
        "k": args.k, "lr": args.lr, "warmup": args.warmup, "eval_mosaics": args.eval_mosaics,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    if args.configs:
        changes["configs"] = variants.resolve(args.configs)
    if args.inference_sweep is not None:
        sweep = args.inference_sweep.strip()
        changes["inference_sweep"] = () if sweep in ("", "none") else variants.resolve(sweep)
    if args.no_pretrained:
        changes["pretrained"] = False
    changes["device"] = str(resolve_device(args.device))
    changes["num_workers"] = args.num_workers
    changes["allow_overlap"] = args.allow_overlap
    return dataclasses.replace(s, **changes)


def run_loro_cli(args: argparse.Namespace) -> int:
    """``--leave-one-release-out``: see ``lpd.bench.loro``."""
    import json

    import torch

    from lpd._atomic import atomic_write_text
    from lpd.bench.levers import LEVERS, parts
    from lpd.bench.loro import LoroSettings, format_loro, format_sweep, run_loro
    from lpd.errors import InputError
    from lpd.infer.device import resolve_device
    from lpd.progress import drive

    levers = [v.strip() for v in args.levers.split(",") if v.strip()]
    unknown = []
    for v in levers:
        try:
            parts(v)
        except KeyError:
            unknown.append(v)
    if unknown:
        raise InputError(None, f"unknown lever(s) {', '.join(unknown)}; known: "
                         f"{', '.join(LEVERS)}")
    releases = tuple(v.strip() for v in args.releases.split(",")) if args.releases else None
    device = str(resolve_device(args.device))
    if device == "cpu":
        torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    reports = []
    for lever in levers:
        settings = LoroSettings(seeds=args.seeds or 2, steps=args.steps,
                                eval_mosaics=args.eval_mosaics or 64, short=args.short,
                                device=device, releases=releases, lever=lever,
                                input_size=args.input_size,
                                **({} if args.eval_seed is None
                                   else {"eval_seed": args.eval_seed}))
        print(f"lpd bench accuracy --leave-one-release-out, lever {lever}: {settings.seeds} "
              f"seed(s) per held-out release, {torch.get_num_threads()} torch thread(s)",
              flush=True)
        def show(e, lever=lever) -> None:
            if e.phase != "train" or e.step % 20 == 0:
                where = f"step {e.step}/{e.total}" if e.phase == "train" else e.phase
                print(f"[{lever}; held out {e.release}, seed {e.seed}] {where}", flush=True)

        reports.append(drive(run_loro(settings), show))
        # after every lever: partial results stay readable
        payload = reports[0] if len(reports) == 1 and levers == ["recipe"] else reports
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
        text = format_loro(reports[0]) if payload is reports[0] else format_sweep(reports)
        atomic_write_text(args.json.with_suffix(".md"), text)
    print(text)
    print(f"wrote {args.json}, {args.json.with_suffix('.md')} in "
          f"{sum(r['seconds'] for r in reports)} s")
    return 0


def run(args: argparse.Namespace) -> int:
    from lpd.bench.accuracy import AccuracyBenchmark

    if args.leave_one_release_out:
        return run_loro_cli(args)
    from lpd.bench.report import write_outputs

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        from lpd.errors import InputError

        raise InputError(None, str(exc)) from None
    bench = AccuracyBenchmark(settings, args.out_dir)
    if bench.overlap:
        print(f"WARNING: {len(bench.overlap)} tile(s) are in both folders "
              f"(e.g. {bench.overlap[0][1]}); the test score is not a generalisation measure",
              file=sys.stderr)
    runs = len(settings.configs) * settings.seeds
    print(f"lpd bench accuracy: {runs} runs ({len(settings.configs)} configurations x "
          f"{settings.seeds} seed(s)); {bench.report()['budget']}"
          + ("; QUICK preset (smoke run, not a measurement)" if settings.quick else ""),
          flush=True)
    t0 = time.perf_counter()
    done = 0
    for event in bench.events():
        tag = f"[{event.config} seed {event.seed}; {done}/{runs} runs done]"
        if event.phase == "train":
            print(f"{tag} step {event.step}/{event.total}: {event.message}", flush=True)
        elif event.phase == "done":
            print(f"{tag} {event.message}", flush=True)
            done += 1
            write_outputs(bench.report(), args.json)  # partial results stay readable
        else:
            print(f"{tag} {event.message}", flush=True)
    paths = write_outputs(bench.report(), args.json)
    summary = bench.report()["summary"]
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; mIoU predicted / oracle:")
    for name, cell in summary.items():
        parts = []
        for which in ("held_apart", "test"):
            p, o = cell[which]["predicted"]["mIoU"], cell[which]["oracle"]["mIoU"]
            parts.append(f"{which} {_fmt(p)} / {_fmt(o)}")
        print(f"  {name:24s} " + "   ".join(parts))
    print("wrote " + ", ".join(str(p) for p in paths if p.exists()))
    return 0


def _fmt(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    return f"{cell['mean']:.3f}±{cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"
