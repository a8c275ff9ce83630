"""``lpd bench batch``: ``lpd batch`` on a LocalCluster against single-process predict of the
same slides, in model windows per second.

Generates ``slides`` synthetic pyramidal slides (default 4 of 1536 x 1536 px at 0.5 µm/px,
``lpd.data.pyramid.write_synthetic_pyramid``) and measures, in one run:

1. single-process predict: ``lpd.segmentation.segment_iter`` of each slide, one after the
   other, in one new process with 1 torch thread (plus predict's reader thread), each into
   a new store: windows per second predicting (windows = forward passes of input size,
   halo included; seconds in ``segment_iter``: open, plan, read, model, blend, write,
   pyramid; the model is loaded before);
2. ``lpd.batch.run_batch`` (what ``lpd batch`` runs) on a LocalCluster of ``workers`` worker
   processes x 1 dask thread, 1 torch thread per task: each worker's windows per busy
   second (the same seconds: in ``segment_iter``), from the batch report; and the cluster's
   windows per second from the first task's "predict" event (a worker has loaded the model)
   to the last task's end (worker start-up before it not counted; a second worker's later
   start, the gaps between tasks and the exports, CSV only here, inside it);
3. single-process predict again (unless ``repeat`` is off), so that a change of the
   machine's load during the run hits both sides.

The ratio per worker / single process is what running ``workers`` slides side by side costs
each of them (1.0: no contention; on 2 cores each task also has a reader thread); the
speed-up is cluster / single process. Windows per CPU second (of the whole process, all its
threads, while predicting) are also compared: little moved by other processes' load, they
show what running inside a dask worker costs per window. The load average (1, 5, 15 min) is recorded before
and after each phase: on a shared machine absolute figures move with it."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SEED0 = 10  # seeds SEED0, SEED0 + 1, ...: synthetic tissue over most of the slide


@dataclass
class BatchScaleSettings:
    """What one run measures."""

    slides: int = 4
    size: int = 1536  # px a side
    mpp: float = 0.5
    workers: int = 2
    batch_size: int = 8
    checkpoint: str = "default"
    repeat: bool = True  # single-process predict before and after the batch
    workdir: Path | None = None


def make_slides(s: BatchScaleSettings, folder: Path) -> list[Path]:
    """The generated slides (reused when already in ``folder``)."""
    from lpd.data.pyramid import write_synthetic_pyramid

    paths = []
    for i in range(s.slides):
        path = folder / f"slide{i}-{s.size}.tiff"
        if not path.is_file():
            write_synthetic_pyramid(path, (s.size, s.size), tile=256, seed=SEED0 + i, mpp=s.mpp)
        paths.append(path)
    return paths


def single_process(checkpoint: Path, slides: list[Path], out: Path, batch_size: int) -> dict:
    """Predict the slides one after the other in a new process with 1 torch thread, as a
    worker of ``lpd batch`` does (a fresh process: the first slide pays the same warm-up
    as a worker's first); windows, seconds and windows/s."""
    spec = json.dumps({"checkpoint": str(checkpoint), "slides": [str(p) for p in slides],
                       "out": str(out), "batch_size": batch_size})
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    load_before = list(os.getloadavg())
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from lpd.bench.batch_scale import single_child; "
         "single_child(sys.argv[1])", spec], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"single-process predict failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    windows = sum(r["windows"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    return {"slides": rows, "windows": windows, "seconds": seconds, "cpu_s": cpu,
            "windows_per_s": windows / seconds, "windows_per_cpu_s": windows / cpu,
            "load_before": load_before, "load_after": list(os.getloadavg())}


def single_child(spec_json: str) -> None:
    """The process ``single_process`` starts: predicts, prints one JSON line per run."""
    import torch

    from lpd.io.checkpoint import load_checkpoint
    from lpd.progress import drive
    from lpd.segmentation import segment_iter

    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    model = load_checkpoint(Path(spec["checkpoint"]), "cpu")
    rows = []
    for slide in map(Path, spec["slides"]):
        # as a worker's busy and CPU seconds: in segment_iter, the model loaded
        t0, cpu0 = time.perf_counter(), time.process_time()
        seg = drive(segment_iter(model, slide, out=Path(spec["out"]) / f"{slide.stem}.zarr",
                                 resume=False, batch_size=spec["batch_size"], device="cpu"))
        rows.append({"slide": slide.name, "windows": seg.result.forward_passes,
                     "seconds": time.perf_counter() - t0,
                     "cpu_s": time.process_time() - cpu0})
    print(json.dumps(rows))


def on_cluster(s: BatchScaleSettings, checkpoint: Path, slides: list[Path], out: Path) -> dict:
    """``run_batch`` on a LocalCluster of ``s.workers`` x 1 thread, 1 torch thread a task."""
    from lpd.batch import BatchOptions, run_batch

    span: dict[str, float] = {}

    def on_event(ev: dict) -> None:
        now = time.perf_counter()
        if ev["stage"] == "predict":
            span.setdefault("first_start", now)
        elif ev["stage"] == "end":
            span["last_end"] = now

    load_before = list(os.getloadavg())
    options = BatchOptions(batch_size=s.batch_size, torch_threads=1, exports=("csv",),
                           resume=False)
    report = run_batch(slides, out, checkpoint, workers=s.workers, threads_per_worker=1,
                       options=options, on_event=on_event)
    failed = [f"{t['name']}: {t['error']}" for t in report.failed]
    if failed:
        raise RuntimeError("lpd batch failed: " + "; ".join(failed))
    seconds = span["last_end"] - span["first_start"]
    windows = report.throughput["windows"]
    rates = sum(w["windows_per_s"] for w in report.workers.values())
    return {"scheduler": report.scheduler, "workers": report.workers,
            "throughput": report.throughput, "retries": report.retries,
            "tasks": [{k: t.get(k) for k in ("name", "attempts", "windows", "busy_s",
                                             "seconds")} | {"worker": t["history"][-1]["worker"]}
                      for t in report.tasks],
            "span_s": seconds, "cluster_windows_per_s": windows / seconds,
            "sum_of_worker_windows_per_s": rates,
            "load_before": load_before, "load_after": list(os.getloadavg())}


def run_batch_scale(s: BatchScaleSettings, log: Callable[[str], None] | None = None) -> dict:
    """Measure (see the module docstring) and return the report (JSON-able)."""
    from lpd.batch import resolve_checkpoint
    from lpd.bench.throughput import machine_info
    from lpd.io.checkpoint import read_checkpoint_metadata

    say = log or (lambda msg: None)
    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in asdict(s).items()},
                    "load_before": list(os.getloadavg()), "machine": machine_info(1)}
    checkpoint = resolve_checkpoint(s.checkpoint)
    config, _extra = read_checkpoint_metadata(checkpoint)
    report["model"] = {"checkpoint": str(checkpoint), "backbone": config.backbone,
                       "input_size": config.input_size}
    own = s.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lpd-bench-batch-")) if own else Path(s.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        say(f"generating {s.slides} slides of {s.size} x {s.size} px in {work}")
        slides = make_slides(s, work)
        rounds = []
        say("single-process predict (1 torch thread)")
        rounds.append(single_process(checkpoint, slides, _fresh(work / "single"),
                                     s.batch_size))
        say(f"lpd batch on a LocalCluster of {s.workers} workers x 1 torch thread")
        report["batch"] = on_cluster(s, checkpoint, slides, _fresh(work / "batch"))
        if s.repeat:
            say("single-process predict again")
            rounds.append(single_process(checkpoint, slides, _fresh(work / "single"),
                                         s.batch_size))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    report["single"] = rounds
    report["load_after"] = list(os.getloadavg())
    report["summary"] = summary(report)
    return report


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def summary(report: dict) -> dict:
    """Single-process windows/s (mean of its rounds), each worker's and its ratio to it,
    the cluster's and its speed-up."""
    single = statistics.mean(r["windows_per_s"] for r in report["single"])
    single_cpu = statistics.mean(r["windows_per_cpu_s"] for r in report["single"])
    batch = report["batch"]
    return {
        "single_windows_per_s": single,
        "single_windows_per_cpu_s": single_cpu,
        "per_worker": {name: {"windows_per_s": w["windows_per_s"],
                              "ratio": w["windows_per_s"] / single,
                              "windows_per_cpu_s": w["windows_per_cpu_s"],
                              "cpu_ratio": w["windows_per_cpu_s"] / single_cpu}
                       for name, w in batch["workers"].items()},
        "cluster_windows_per_s": batch["cluster_windows_per_s"],
        "speedup": batch["cluster_windows_per_s"] / single,
    }


def format_report(r: dict) -> str:
    """A short plain-text summary of a report."""
    s, m, sm = r["settings"], r["machine"], r["summary"]
    single = ", ".join(f"{x['windows_per_s']:.2f}" for x in r["single"])
    lines = [
        f"{s['slides']} slides of {s['size']} x {s['size']} px at {s['mpp']} µm/px; model "
        f"{r['model']['backbone']} input {r['model']['input_size']}, batch {s['batch_size']}; "
        f"{m['cpu_count']} CPUs, torch {m['torch']}, OMP_WAIT_POLICY {m['omp_wait_policy']}",
        f"load average (1 min) before {r['load_before'][0]:.2f}, after "
        f"{r['load_after'][0]:.2f}; during the batch {r['batch']['load_before'][0]:.2f} -> "
        f"{r['batch']['load_after'][0]:.2f}",
        f"single process, 1 torch thread     {sm['single_windows_per_s']:7.2f} windows/s "
        f"(rounds: {single})",
    ]
    lines[-1] += f"; {sm['single_windows_per_cpu_s']:.2f} per CPU second"
    for name, w in sm["per_worker"].items():
        lines.append(f"lpd batch worker {name:>3s}, 1 torch thread"
                     f"{w['windows_per_s']:8.2f} windows/s   ratio to single {w['ratio']:.2f}; "
                     f"{w['windows_per_cpu_s']:.2f} per CPU second, ratio {w['cpu_ratio']:.2f}")
    b = r["batch"]
    lines.append(f"lpd batch, {len(sm['per_worker'])} workers together      "
                 f"{sm['cluster_windows_per_s']:7.2f} windows/s   speed-up {sm['speedup']:.2f}x "
                 f"({b['throughput']['windows']} windows in the {b['span_s']:.0f} s from the "
                 f"first task's model loaded to the last end; sum of the workers' "
                 f"{b['sum_of_worker_windows_per_s']:.2f}; retries {b['retries']})")
    return "\n".join(lines)


def register(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "batch",
        help="lpd batch on a LocalCluster vs single-process predict, windows/s per worker",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    p.add_argument("--json", type=Path, help="write the full report here (atomically)")
    p.add_argument("--slides", type=int, default=4)
    p.add_argument("--size", type=int, default=1536, help="px a side (default 1536)")
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--no-repeat", action="store_true",
                   help="single-process predict only before the batch, not also after it")
    p.add_argument("--workdir", type=Path, help="keep the generated slides and stores here")
    p.set_defaults(func=main_args)


def main_args(args: argparse.Namespace) -> int:
    from lpd._atomic import atomic_write_text

    s = BatchScaleSettings(slides=args.slides, size=args.size, mpp=args.mpp,
                           workers=args.workers, batch_size=args.batch_size,
                           checkpoint=args.checkpoint, repeat=not args.no_repeat,
                           workdir=args.workdir)
    report = run_batch_scale(s, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0
