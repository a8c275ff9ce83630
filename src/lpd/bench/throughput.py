"""``lpd bench throughput``: whole-slide inference speed and memory, measured side by side.

In one run, on one machine and one model (default: the default model's architecture with
ImageNet weights and random prototypes; speed does not depend on training):

(a) raw model forward throughput on an in-memory batch of input size made of the slide's
    own windows, in predict_tiled's memory layout (channels-last; inference mode, same
    batch size and torch threads, warm-up excluded), in forward passes per second;
(b) end-to-end ``predict_tiled`` over a generated pyramidal slide of synthetic tissue,
    written into a zarr store (planning, tissue detection, reading, blending, per-tile
    labels, chunk writes, pyramid), in forward passes of input size per second (halo
    included), so b/a compares like with like. (a) and (b) alternate, in alternating order
    (b a, a b, b a, ...), so that load from other processes hits both alike; the ratio is
    the median of the rounds'. Each round also gives the ratio per CPU second of this
    process, nearly blind to other processes (and to idle cores);
(c) time to open a 100,000 x 100,000 pyramidal TIFF (uniform content, written in seconds);
(d) peak RSS of predict (one child process per run, so peaks don't mix) over a 20k x 20k
    region and over the whole 100k x 100k slide, each at the level giving a bounded number
    of tiles; tissue detection on, output store on disk.

Thread layout: ``--threads`` torch threads (default: cores - 1, as ``lpd predict``) plus
the one reader thread of ``predict_tiled``, which measured mostly idle (98 % of its time
waiting for the model). Measured on 2 shared cores: OpenMP's default busy-waiting makes 2
torch threads collapse under load (1.2 vs 3.8 passes/s for 1 thread);
``OMP_WAIT_POLICY=PASSIVE`` (set by ``benchmarks/throughput.py``, recorded in the report)
removes the collapse. The machine's load average is recorded before, per round and after:
on a shared machine absolute figures are inflated, the interleaved ratio much less."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HALO = 32
SYNTHETIC_SEED = 10  # a seed whose first 2000 px hold tissue (68 % at 1920 px) and glass
TISSUE_SHARE = 0.7  # about the tissue share of that region (sizes the slide for --tiles)
TARGETS = {"ratio": 0.85, "open_s": 0.2, "peak_rss_gib": 2.0}


@dataclass
class ThroughputSettings:
    """What one benchmark run measures. ``backbone``/``input_size``/``k``/``pretrained``
    default to the default model's architecture (``lpd.default_model.DEFAULT_RUN``)."""

    threads: int | None = None  # torch threads; None: lpd.batch.default_threads() (cores - 1)
    batch_size: int = 8
    tiles: int = 96  # forward passes per end-to-end run, about (sizes the slide)
    rounds: int = 5
    device: str = "cpu"  # "cuda": autocast as predict_tiled does; timings synchronised
    backbone: str | None = None
    input_size: int | None = None
    k: int | None = None
    pretrained: bool | None = None  # None: ImageNet where weights are offline, else random
    open_size: int = 100_000
    open_repeats: int = 5
    rss: bool = True
    rss_region: int = 20_000
    rss_max_tiles: int = 400  # per RSS run: the level is chosen to stay at or below this
    workdir: Path | None = None
    extra: dict = field(default_factory=dict)


def _model(s: ThroughputSettings):
    import torch

    from lpd.config import ModelConfig
    from lpd.default_model import DEFAULT_RUN
    from lpd.model import create_model
    from lpd.model.backbone import OFFLINE_PACKAGE_WEIGHTS

    cfg = DEFAULT_RUN.model.to_dict()
    for key, value in (("backbone", s.backbone), ("input_size", s.input_size),
                       ("prototypes_per_class", s.k)):
        if value is not None:
            cfg[key] = value
    torch.manual_seed(0)
    pretrained = s.pretrained
    if pretrained is None:  # timing does not depend on the weights; never reach for a hub
        pretrained = cfg["backbone"] in OFFLINE_PACKAGE_WEIGHTS
    return create_model(config=ModelConfig.from_dict(cfg), pretrained=pretrained).eval()


def _has_pretrained(s: ThroughputSettings, backbone: str) -> bool:
    from lpd.model.backbone import OFFLINE_PACKAGE_WEIGHTS

    return bool(s.pretrained) if s.pretrained is not None else (
        backbone in OFFLINE_PACKAGE_WEIGHTS)


def slide_batch(model, slide, batch_size: int) -> object:
    """A normalised (B, 3, S, S) batch of the slide's own pixels (windows along its top),
    so the raw runs see what the end-to-end runs see, in the same memory layout."""
    import numpy as np
    import torch

    size = model.config.input_size
    h, w = slide.shape
    windows = []
    for i in range(batch_size):
        x = (i * size) % max(1, w - size + 1)
        y = ((i * size) // max(1, w - size + 1) * size) % max(1, h - size + 1)
        windows.append(slide.read_region(0, y, x, size, size))
    # exactly as predict_tiled builds its input: an NHWC -> NCHW view, i.e. channels-last
    # memory (measured here: 20 % more passes per CPU second than NCHW-contiguous for
    # tf_efficientnet_lite0, so a contiguous baseline would flatter the ratio)
    pixels = torch.from_numpy(np.stack(windows)).permute(0, 3, 1, 2).float()
    mean, std = model.normalisation()
    return ((pixels - torch.tensor(mean).view(1, 3, 1, 1) * 255)
            / (torch.tensor(std).view(1, 3, 1, 1) * 255))


def raw_forward(model, batch: object, passes: int) -> dict:
    """Forward passes per second over an in-memory batch on the model's device, repeated
    (``passes`` rounded up to whole batches; one warm-up batch excluded). On a GPU, with
    the autocast ``predict_tiled`` uses, timed to the end of the last kernel."""
    import contextlib

    import torch

    dev = next(model.parameters()).device
    batch = batch.to(dev)  # type: ignore[attr-defined]
    amp = contextlib.nullcontext()
    if dev.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        amp = torch.autocast("cuda", dtype=dtype)
    size = len(batch)
    batches = max(1, math.ceil(passes / size))
    with torch.inference_mode(), amp:
        model(batch)
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(batches):
            model(batch)
        _sync(dev)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = batches * size
    return {"passes": n, "seconds": seconds, "passes_per_s": n / seconds, "cpu_seconds": cpu,
            "passes_per_cpu_s": n / cpu}


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def end_to_end(model, slide, store: Path, batch_size: int, **kwargs) -> dict:
    """``predict_tiled`` into a new store at ``store``, timed from the call to completion."""
    from lpd.infer.tiled import predict_tiled, run_tiled

    shutil.rmtree(store, ignore_errors=True)
    dev = next(model.parameters()).device
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_tiled(predict_tiled(model, slide, store=store, batch_size=batch_size,
                                  halo=HALO, device=dev, resume=False, **kwargs))
    _sync(dev)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    gy, gx = res.plan.grid
    out = {"passes": res.forward_passes, "seconds": seconds,
           "passes_per_s": res.forward_passes / seconds, "cpu_seconds": cpu,
           "passes_per_cpu_s": res.forward_passes / max(cpu, 1e-9), "tiles": gy * gx,
           "tiles_skipped": res.tiles_skipped, "shape": list(res.plan.shape),
           "level": res.plan.level, "complete": bool(res.store and res.store.complete)}
    shutil.rmtree(store, ignore_errors=True)
    return out


def open_time(path: Path, repeats: int) -> dict:
    """Seconds to open a slide (first and median of ``repeats`` fresh opens)."""
    from lpd.wsi.slide import open_slide

    times, shape, levels = [], None, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        slide = open_slide(path)
        times.append(time.perf_counter() - t0)
        shape, levels = list(slide.shape), len(slide.levels)
        slide.close()
    return {"shape": shape, "levels": levels, "seconds_first": times[0],
            "seconds_median": statistics.median(times), "seconds_all": times}


def level_for(side: int, downsamples: list[float], tile: int, max_tiles: int) -> int:
    """The finest level at which a ``side``-px square region holds at most ``max_tiles``."""
    for lv, d in enumerate(downsamples):
        if math.ceil(side / d / tile) ** 2 <= max_tiles:
            return lv
    return len(downsamples) - 1


def peak_rss(checkpoint: Path, slide: Path, region: list[int] | None, level: int,
             store: Path, threads: int, batch_size: int, device: str = "cpu") -> dict:
    """Run one prediction in a child process and return its figures (peak RSS included)."""
    spec = {"checkpoint": str(checkpoint), "slide": str(slide), "region": region,
            "level": level, "store": str(store), "threads": threads, "batch_size": batch_size,
            "device": device}
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    code = "import sys; from lpd.bench.throughput import rss_child; rss_child(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=False)
    shutil.rmtree(store, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_child(spec_json: str) -> None:
    """Child of ``peak_rss``: load, predict, print JSON (RSS in bytes)."""
    import resource

    import torch

    from lpd.infer.tiled import predict_tiled, run_tiled
    from lpd.io.checkpoint import load_checkpoint
    from lpd.wsi.slide import open_slide

    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    device = spec.get("device", "cpu")
    model = load_checkpoint(spec["checkpoint"], device)
    # /proc's VmHWM where there is one: ru_maxrss is updated lazily and can lag VmRSS
    before = _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    current = _proc_status("VmRSS") or before
    # Linux: "5" resets the peak (VmHWM), so the predict's own peak can be read apart from
    # the transient peak of loading the checkpoint
    reset = False
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    t0 = time.perf_counter()
    with open_slide(spec["slide"]) as slide:
        res = run_tiled(predict_tiled(model, slide, region=spec["region"], level=spec["level"],
                                      store=spec["store"], batch_size=spec["batch_size"],
                                      halo=HALO, device=device, resume=False))
    predict_peak = _proc_status("VmHWM") if reset else None
    peak = max(before, predict_peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    gy, gx = res.plan.grid
    store_bytes = sum(f.stat().st_size for f in Path(spec["store"]).rglob("*") if f.is_file())
    print(json.dumps({
        "region": spec["region"], "level": spec["level"], "shape": list(res.plan.shape),
        "tiles": gy * gx, "passes": res.forward_passes, "tiles_skipped": res.tiles_skipped,
        "seconds": time.perf_counter() - t0, "rss_after_model_bytes": current,
        "peak_rss_loading_bytes": before, "peak_rss_predict_bytes": predict_peak,
        "peak_rss_bytes": peak, "peak_rss_gib": peak / 2**30, "store_bytes": store_bytes,
    }))


def _proc_status(field: str) -> int | None:
    """A memory figure of /proc/self/status in bytes (None where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def machine_info(threads: int, device: str = "cpu") -> dict:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "device": device, "gpu": gpu, "torch_threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "reader_threads": 1, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def run_throughput(s: ThroughputSettings, log: Callable[[str], None] | None = None) -> dict:
    """Measure (a)-(d) (see the module docstring) and return the report (JSON-able)."""
    import torch

    from lpd.batch import default_threads

    say = log or (lambda msg: None)
    if s.threads is None:
        s.threads = default_threads()
    torch.set_num_threads(s.threads)
    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in asdict(s).items()},
                    "load_before": list(os.getloadavg()), "targets": TARGETS}
    report["machine"] = machine_info(s.threads, s.device)
    model = _model(s).to(s.device)
    cfg = model.config
    report["model"] = {"backbone": cfg.backbone, "input_size": cfg.input_size,
                       "k": cfg.prototypes_per_class, "output_stride": cfg.output_stride,
                       "imagenet_weights": _has_pretrained(s, cfg.backbone)}
    own_dir = s.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lpd-bench-")) if own_dir else Path(s.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        report.update(_measure_pipeline(s, model, work, say))  # (a) + (b), interleaved
        big = work / f"constant-{s.open_size}.tiff"
        report["open"] = _measure_open(s, big, say)  # (c)
        if s.rss:  # (d) peak RSS, one child per run
            report["rss"] = _measure_rss(s, model, big, work, say)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = list(os.getloadavg())
    report["met"] = {
        "ratio": report["ratio"] >= TARGETS["ratio"],
        "open_s": report["open"]["seconds_median"] < TARGETS["open_s"],
        **({"peak_rss_gib": max(v["peak_rss_gib"] for v in report["rss"].values())
            <= TARGETS["peak_rss_gib"]} if "rss" in report else {}),
    }
    return report


def _measure_pipeline(s: ThroughputSettings, model, work: Path,
                      say: Callable[[str], None]) -> dict:
    """(a) the raw forward passes and (b) end-to-end tiled prediction of a synthetic
    slide, in ``s.rounds`` interleaved rounds; the report's entries for them."""
    from lpd.data.pyramid import write_synthetic_pyramid
    from lpd.wsi.slide import open_slide

    cfg = model.config
    tile = cfg.input_size - 2 * HALO
    side = max(cfg.input_size, math.ceil(math.sqrt(s.tiles / TISSUE_SHARE)) * tile)
    slide_path = work / f"synthetic-{side}.tiff"
    say(f"writing a {side} x {side} synthetic pyramid")
    write_synthetic_pyramid(slide_path, (side, side), seed=SYNTHETIC_SEED, mpp=0.5)
    rounds: list[dict] = []
    with open_slide(slide_path) as slide:
        say("warming up")
        batch = slide_batch(model, slide, s.batch_size)
        raw_forward(model, batch, s.batch_size)
        end_to_end(model, slide, work / "warm.zarr", s.batch_size,
                   region=(0, 0, cfg.input_size, cfg.input_size))
        for r in range(s.rounds):
            passes = rounds[-1]["end_to_end"]["passes"] if rounds else 0
            rounds.append(_round(model, slide, batch, work / "e2e.zarr", s.batch_size, r,
                                 passes))
            a, b = rounds[-1]["raw"], rounds[-1]["end_to_end"]
            say(f"round {r + 1}/{s.rounds}: raw {a['passes_per_s']:.2f}/s, end-to-end "
                f"{b['passes_per_s']:.2f}/s ({b['passes']} passes), ratio "
                f"{rounds[-1]['ratio']:.3f}, load {rounds[-1]['load']:.2f}")
    raw_med = statistics.median(x["raw"]["passes_per_s"] for x in rounds)
    e2e_med = statistics.median(x["end_to_end"]["passes_per_s"] for x in rounds)
    return {
        "rounds": rounds, "raw_passes_per_s": raw_med, "end_to_end_passes_per_s": e2e_med,
        "ratio": statistics.median(x["ratio"] for x in rounds),
        "ratio_of_medians": e2e_med / raw_med,
        # per CPU second of this process: what the pipeline costs beyond the model, nearly
        # blind to other processes' load (but also to stalls where a core sits idle)
        "cpu_ratio": statistics.median(x["cpu_ratio"] for x in rounds),
        "end_to_end_slide": {"side": side, "seed": SYNTHETIC_SEED, "mpp": 0.5,
                             "passes": rounds[-1]["end_to_end"]["passes"],
                             "tiles": rounds[-1]["end_to_end"]["tiles"]},
    }


def _round(model, slide, batch, store: Path, batch_size: int, r: int, passes: int) -> dict:
    """One round of (a) and (b): the order alternates (b, a), (a, b), ... so neither
    always runs second; (a) makes as many passes as (b) made (``passes``; 0: not known
    yet, (b) first)."""
    if r % 2 == 0 or not passes:
        b = end_to_end(model, slide, store, batch_size)
        passes = b["passes"]
        a = raw_forward(model, batch, passes)
    else:
        a = raw_forward(model, batch, passes)
        b = end_to_end(model, slide, store, batch_size)
    return {"raw": a, "end_to_end": b, "order": "b,a" if r % 2 == 0 else "a,b",
            "ratio": b["passes_per_s"] / a["passes_per_s"],
            "cpu_ratio": b["passes_per_cpu_s"] / a["passes_per_cpu_s"],
            "load": os.getloadavg()[0]}


def _measure_open(s: ThroughputSettings, big: Path, say: Callable[[str], None]) -> dict:
    """(c) write an ``s.open_size`` px square pyramid at ``big`` and time opening it."""
    from lpd.data.pyramid import write_synthetic_pyramid

    say(f"writing a {s.open_size} x {s.open_size} pyramid (uniform content)")
    t0 = time.perf_counter()
    write_synthetic_pyramid(big, (s.open_size, s.open_size), content="constant", mpp=0.5)
    out = {"write_seconds": time.perf_counter() - t0, **open_time(big, s.open_repeats)}
    say(f"open: {out['seconds_median'] * 1000:.1f} ms (median)")
    return out


def _measure_rss(s: ThroughputSettings, model, big: Path, work: Path,
                 say: Callable[[str], None]) -> dict:
    """(d) peak RSS of predicting a region and the whole of ``big``, one child each."""
    from lpd.io.checkpoint import save_checkpoint
    from lpd.wsi.slide import open_slide

    tile = model.config.input_size - 2 * HALO
    ckpt = save_checkpoint(work / "bench-model.safetensors", model)
    with open_slide(big) as slide:
        downs = list(slide.downsamples)
    side_r = min(s.rss_region, s.open_size)
    runs = {"region": ([0, 0, side_r, side_r], side_r), "slide": (None, s.open_size)}
    out = {}
    for name, (region, length) in runs.items():
        lv = level_for(length, downs, tile, s.rss_max_tiles)
        say(f"peak RSS: {name} ({length} px side) at level {lv}")
        out[name] = peak_rss(ckpt, big, region, lv, work / f"rss-{name}.zarr", s.threads,
                             s.batch_size, s.device)
    return out
