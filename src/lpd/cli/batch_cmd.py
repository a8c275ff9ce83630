"""``lpd batch SLIDE... --out DIR``: many slides (or regions) on dask.distributed."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lpd.batch_report import DEFAULT_RETRIES
from lpd.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="predict + export many slides (or regions) on dask.distributed",
        description="Runs each slide, or region SLIDE@x,y,w,h (level-0 pixels), as one task: "
        "predict into DIR/NAME.zarr, then export NAME-labels.tiff, NAME.geojson and "
        "NAME-areas.csv. A LocalCluster of worker processes by default, or a running dask "
        "scheduler (--scheduler; slides, checkpoint and DIR must then be on a filesystem the "
        "workers see). Resumable: finished tasks are skipped, interrupted ones resume. A "
        "task that fails is reported with its error and the others go on; a slide whose "
        "worker died (killed, out of memory) is retried (--retries), resuming from the "
        "chunks already written. Writes DIR/batch-report.json (per slide its attempts, "
        "per worker windows per busy second). Exit status 1 when any task failed.",
    )
    p.add_argument("slides", nargs="*", help="slide files, or SLIDE@x,y,w,h for a region")
    p.add_argument("--regions", type=Path, metavar="FILE",
                   help="a text file of tasks, one SLIDE[@x,y,w,h] per line (# comments)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--checkpoint", default="default",
                   help="model checkpoint; 'default' (the default): the default model")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="address of a running dask scheduler, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--workers", type=int,
                   help="LocalCluster worker processes (default: CPUs / threads per worker)")
    p.add_argument("--threads-per-worker", type=int, default=1,
                   help="torch threads per task (default 1; each task adds a reader thread)")
    p.add_argument("--level", type=int)
    p.add_argument("--mpp", type=float, help="level-0 microns per pixel of every slide")
    p.add_argument("--target-mpp", type=float)
    p.add_argument("--allow-resample", action="store_true",
                   help="resample slides even by more than 8x (see lpd predict)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prototypes", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    p.add_argument("--no-resume", action="store_true", help="recompute every task")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N",
                   help="run a slide whose worker died again, at most N times, resuming its "
                   f"store (default {DEFAULT_RETRIES}; errors such as bad input are never "
                   "retried)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lpd.batch import BatchOptions, parse_task, read_task_file, run_batch
    from lpd.cli.predict_cmd import checkpoint_for_cli

    tasks = [parse_task(s) for s in args.slides]
    if args.regions:
        tasks += read_task_file(args.regions)
    if not tasks:
        raise InputError(None, "no slides given (pass SLIDE... or --regions FILE)")
    threads = args.threads_per_worker
    workers = args.workers or max(1, (os.cpu_count() or 1) // threads)
    options = BatchOptions(level=args.level, mpp=args.mpp, target_mpp=args.target_mpp,
                           allow_resample=args.allow_resample,
                           batch_size=args.batch_size, prototypes=args.prototypes,
                           torch_threads=threads, device=args.device,
                           resume=not args.no_resume)
    # the default model is trained here, once, with a progress bar, not in every worker
    checkpoint = checkpoint_for_cli(args.checkpoint)
    total = len(tasks)
    count = [0]

    def on_status(r: dict) -> None:
        count[0] += 1
        print(f"[{count[0]}/{total}] {r['name']}: {_status_text(r)}", flush=True)

    where = args.scheduler or f"a LocalCluster of {workers} workers"
    print(f"{total} tasks on {where}; results in {args.out}", file=sys.stderr)
    report = run_batch(tasks, args.out, checkpoint, scheduler=args.scheduler, workers=workers,
                       threads_per_worker=1, options=options, retries=args.retries,
                       on_status=on_status, on_event=_print_retry(args.retries))
    print()
    print(summary_table(report.tasks))
    print()
    print(worker_table(report.workers, report.throughput))
    c = report.counts
    print(f"\n{c['done']} done, {c['skipped']} skipped (already complete), {c['failed']} "
          f"failed, {report.retries} retried after a worker died, in {report.seconds:.0f} s; "
          f"report: {args.out / 'batch-report.json'}")
    return 1 if c["failed"] else 0


def _print_retry(retries: int):
    def on_event(ev: dict) -> None:
        if ev["stage"] == "lost":
            at = (f"at {ev['done']}/{ev['total']} tiles" if ev.get("total")
                  else "before its first tiles")
            print(f"{ev['name']}: worker {ev.get('worker')} (pid {ev.get('pid')}) died {at}",
                  flush=True)
        elif ev["stage"] == "retry":
            print(f"{ev['name']}: retrying (attempt {ev['attempt']} of {retries + 1}), "
                  "resuming from the chunks already written", flush=True)

    return on_event


def _status_text(r: dict) -> str:
    if r["status"] == "failed":
        err = r.get("error") or {}
        return f"FAILED {err.get('type', 'error')}: {err.get('message', '')}"
    if r["status"] == "skipped":
        return "skipped (already complete)"
    tries = f", attempt {r['attempts']}" if r.get("attempts", 1) > 1 else ""
    return (f"done ({r.get('passes', 0)} forward passes, {r.get('seconds', 0):.1f} s"
            f"{tries})")


def summary_table(tasks: list[dict]) -> str:
    """One line per task: name, status, attempts, tiles, windows (forward passes over all
    attempts), busy seconds (predicting), seconds (the last attempt), error."""
    width = max([len("task")] + [len(t["name"]) for t in tasks])
    lines = [f"{'task':{width}s}  {'status':8s}{'tries':>6s}{'tiles':>7s}{'windows':>8s}"
             f"{'busy s':>8s}{'seconds':>9s}  error"]
    for t in tasks:
        err = t.get("error") or {}
        msg = f"{err['type']}: {err['message']}" if err else ""
        lines.append(f"{t['name']:{width}s}  {t['status']:8s}{t.get('attempts', 0):6d}"
                     f"{t.get('tiles', 0):7d}{t.get('windows', t.get('passes', 0)):8d}"
                     f"{t.get('busy_s', 0.0):8.1f}{t.get('seconds', 0.0):9.1f}  {msg}")
    return "\n".join(lines)


def worker_table(workers: dict[str, dict], overall: dict) -> str:
    """One line per worker: attempts, slides done, windows, busy seconds, windows/s and per
    CPU second; then the run's windows per busy second and per second of wall time."""
    lines = [f"{'worker':12s}{'attempts':>9s}{'slides':>7s}{'windows':>9s}{'busy s':>9s}"
             f"{'windows/s':>11s}{'per CPU s':>11s}"]
    for name, w in workers.items():
        lines.append(f"{name:12s}{w['attempts']:9d}{w['slides']:7d}{w['windows']:9d}"
                     f"{w['busy_s']:9.1f}{w['windows_per_s']:11.2f}"
                     f"{w.get('windows_per_cpu_s', 0.0):11.2f}")
    if overall:
        lines.append(f"{'all':12s}{'':16s}{overall['windows']:9d}{overall['busy_s']:9.1f}"
                     f"{overall['windows_per_busy_s']:11.2f}  ({overall['windows_per_s']:.2f} "
                     f"per second of the run's {overall['wall_s']:.0f} s)")
    return "\n".join(lines)
