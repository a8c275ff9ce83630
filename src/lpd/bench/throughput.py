"""``lpd bench throughput``: whole-slide inference speed and memory, measured side by side.

Four figures in windows (forward passes of input size) per second, on one machine and one
model (default: the default model's architecture with ImageNet weights and random
prototypes; speed does not depend on training):

- ``decode_limit``: a plain thread pool of ``imagecodecs`` JPEG decodes of a generated
  SVS-like slide's level (240 px JPEG tiles), as many threads as the pipeline decodes with
  (``decode_threads``), in output tiles of new pixels per second
  (``lpd.bench.throughput_decode``);
- ``null_pipeline``: ``predict_tiled`` over that slide (thousands of windows) with a
  forward pass that cycles a real model's outputs of real windows (cost about 0): what
  reading, tissue test, blending, per-tile labels and writing allow; planning, store
  creation and the pyramid reported apart; with its CPU milliseconds per window (process
  CPU seconds over the loop / windows, and by thread; also into memory, without a store)
  (``lpd.bench.throughput_null``);
- ``raw_forward``: the model's forward throughput on an in-memory batch of input size made
  of the slide's own windows, in predict_tiled's memory layout (channels-last; inference
  mode, same batch size and torch threads, warm-up excluded);
- ``end_to_end``: ``predict_tiled`` over a generated pyramidal slide of synthetic tissue
  (about ``--tiles`` windows), written into a zarr store (planning, tissue detection,
  reading, blending, per-tile labels, chunk writes, pyramid), so end_to_end / raw_forward
  compares like with like. Raw and end-to-end alternate, in alternating order (b a, a b,
  b a, ...), so that load from other processes hits both alike; the ratio is the median of
  the rounds'. Each round also gives the ratio per CPU second of this process, nearly
  blind to other processes (and to idle cores).

Printed ratios: ``null_pipeline / decode_limit`` (goal >= 0.5) and ``end_to_end /
raw_forward`` (target >= 0.85). Besides: (c) the time to open a 100,000 x 100,000
pyramidal TIFF and (d) the peak RSS of predict over a 20k x 20k region and the whole
slide (``lpd.bench.throughput_rss``). ``quick`` makes everything tiny (a test runs it).

Thread layout: ``--threads`` torch threads (default: cores - 1, as ``lpd predict``) plus
predict_tiled's reader thread and its ``decode_threads`` decoding threads (default: the
usable cores), which wait while the model computes. Measured on 2 shared cores: OpenMP's
default busy-waiting makes 2 torch threads collapse under load (1.2 vs 3.8 passes/s for 1
thread); ``OMP_WAIT_POLICY=PASSIVE`` (set by ``benchmarks/throughput.py``, recorded in
the report) removes the collapse. The machine's load average is recorded before, per
round and after: on a shared machine absolute figures are inflated, the interleaved ratios
much less."""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpd.bench.throughput_rss import HALO, level_for, open_time, peak_rss, rss_child

SYNTHETIC_SEED = 10  # a seed whose first 2000 px hold tissue (68 % at 1920 px) and glass
TISSUE_SHARE = 0.7  # about the tissue share of that region (sizes the slide for --tiles)
TARGETS = {"ratio": 0.85, "open_s": 0.2, "peak_rss_gib": 2.0, "null_cpu_ms": 2.0,
           "null_over_decode": 0.5}
FIGURES = ("decode_limit", "null_pipeline", "raw_forward", "end_to_end")  # windows/s


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
    decode_threads: int | None = None  # None: the usable cores (predict_tiled's default)
    null: bool = True  # measure decode_limit and null_pipeline
    null_windows: int = 3000  # about the windows of the null pipeline's slide
    null_rounds: int = 3
    null_cache: int = 16  # real windows whose outputs the null forward cycles
    decode_repeats: int = 2
    measure_open: bool = True  # measure (c) (and (d), which uses its slide)
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw) -> ThroughputSettings:
        """Everything tiny: a test's run of the whole machinery (figures meaningless)."""
        base = {"batch_size": 2, "tiles": 4, "rounds": 1, "open_size": 3000,
                "open_repeats": 1, "rss": False, "null_windows": 24, "null_rounds": 1,
                "null_cache": 2, "decode_repeats": 1}
        return cls(**{**base, **kw})


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
    """``predict_tiled`` into a new store at ``store``, timed from the call to completion
    (with a digest of its labels, taken after the timing)."""
    from lpd.bench.throughput_null import labels_digest
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
           "level": res.plan.level, "complete": bool(res.store and res.store.complete),
           "labels_sha256": labels_digest(res.store.labels)}
    shutil.rmtree(store, ignore_errors=True)
    return out


def machine_info(threads: int, device: str = "cpu", decode_threads: int | None = None) -> dict:
    import torch

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {
        "cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "device": device, "gpu": gpu, "torch_threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "reader_threads": 1, "decode_threads": decode_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def loadavg() -> str:
    """``/proc/loadavg`` (load averages, running/total tasks), or os.getloadavg()."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_throughput(s: ThroughputSettings, log: Callable[[str], None] | None = None) -> dict:
    """Measure the four figures, (c) and (d) (see the module docstring).

    Parameters
    ----------
    s : ThroughputSettings
        What to measure (``ThroughputSettings.quick()``: everything tiny).
    log : callable, optional
        Called with a line of progress text.

    Returns
    -------
    dict
        The JSON-able report: ``figures`` (windows/s of ``FIGURES``), ``ratios``,
        ``null_cpu_ms_per_window``, the rounds behind them, ``open``, ``rss``, the machine,
        load averages and ``met`` (``TARGETS``).
    """
    import torch

    from lpd.batch import default_threads

    say = log or (lambda msg: None)
    if s.threads is None:
        s.threads = default_threads()
    if s.decode_threads is None:
        s.decode_threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(s.threads)
    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in asdict(s).items()},
                    "load_before": list(os.getloadavg()), "loadavg_before": loadavg(),
                    "targets": TARGETS}
    report["machine"] = machine_info(s.threads, s.device, s.decode_threads)
    model = _model(s).to(s.device)
    cfg = model.config
    report["model"] = {"backbone": cfg.backbone, "input_size": cfg.input_size,
                       "k": cfg.prototypes_per_class, "output_stride": cfg.output_stride,
                       "imagenet_weights": _has_pretrained(s, cfg.backbone)}
    own_dir = s.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lpd-bench-")) if own_dir else Path(s.workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        _measure_all(s, model, work, say, report)
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["load_after"] = list(os.getloadavg())
    report["loadavg_after"] = loadavg()
    report.update(_summary(report))
    return report


def _measure_all(s: ThroughputSettings, model, work: Path, say: Callable[[str], None],
                 report: dict) -> None:
    """The measurements, in order: decode limit and null pipeline, raw forward and
    end-to-end (interleaved), open time, peak RSS."""
    from lpd.bench.throughput_null import measure_null
    from lpd.bench.throughput_rss import measure_open, measure_rss

    if s.null:
        report.update(measure_null(s, model, work, say))
    report.update(_measure_pipeline(s, model, work, say))  # raw + end-to-end, interleaved
    big = work / f"constant-{s.open_size}.tiff"
    if s.measure_open:
        report["open"] = measure_open(s, big, say)  # (c)
        if s.rss:  # (d) peak RSS, one child per run
            report["rss"] = measure_rss(s, model, big, work, say)


def _summary(r: dict) -> dict:
    """The four figures, the ratios and the targets met, from a report's measurements."""
    figures = {"raw_forward": r["raw_passes_per_s"], "end_to_end": r["end_to_end_passes_per_s"]}
    ratios = {"end_to_end/raw_forward": r["ratio"]}
    met = {"ratio": r["ratio"] >= TARGETS["ratio"]}
    if "null_rounds" in r:
        figures = {"decode_limit": r["decode_limit_windows_per_s"],
                   "null_pipeline": r["null_pipeline_windows_per_s"], **figures}
        ratios = {"null_pipeline/decode_limit": r["null_over_decode"], **ratios}
        met["null_cpu_ms"] = r["null_cpu_ms_per_window"] <= TARGETS["null_cpu_ms"]
        met["null_over_decode"] = r["null_over_decode"] >= TARGETS["null_over_decode"]
    if "open" in r:
        met["open_s"] = r["open"]["seconds_median"] < TARGETS["open_s"]
    if "rss" in r:
        peak = max(v["peak_rss_gib"] for v in r["rss"].values())
        met["peak_rss_gib"] = peak <= TARGETS["peak_rss_gib"]
    return {"figures": figures, "ratios": ratios, "met": met}


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
                             "tiles": rounds[-1]["end_to_end"]["tiles"],
                             "labels_sha256": rounds[-1]["end_to_end"]["labels_sha256"]},
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




__all__ = ["FIGURES", "HALO", "TARGETS", "ThroughputSettings", "end_to_end", "level_for",
           "open_time", "peak_rss", "raw_forward", "rss_child", "run_throughput", "slide_batch"]
