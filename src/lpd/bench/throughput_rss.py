"""Slide open time and peak memory of prediction, for ``lpd bench throughput`` ((c) and (d)
of ``lpd.bench.throughput``): the open time of a 100,000 x 100,000 pyramidal TIFF, and
the peak RSS of ``predict_tiled`` measured in a child process per run (so peaks don't mix).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HALO = 32  # px of context around each output tile (lpd.bench.throughput uses it too)


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
    code = "import sys; from lpd.bench.throughput_rss import rss_child; rss_child(sys.argv[1])"
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




def measure_open(s, big: Path, say: Callable[[str], None]) -> dict:
    """(c) write an ``s.open_size`` px square pyramid at ``big`` and time opening it."""
    from lpd.data.pyramid import write_synthetic_pyramid

    say(f"writing a {s.open_size} x {s.open_size} pyramid (uniform content)")
    t0 = time.perf_counter()
    write_synthetic_pyramid(big, (s.open_size, s.open_size), content="constant", mpp=0.5)
    out = {"write_seconds": time.perf_counter() - t0, **open_time(big, s.open_repeats)}
    say(f"open: {out['seconds_median'] * 1000:.1f} ms (median)")
    return out


def measure_rss(s, model, big: Path, work: Path,
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
