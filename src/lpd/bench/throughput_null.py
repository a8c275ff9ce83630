"""The pipeline's own limits, for ``lpd bench throughput``: the decoding limit
(``lpd.bench.throughput_decode``) and the null pipeline (``predict_tiled`` with a forward
pass that costs nothing), measured interleaved by ``measure_null``.

- **Null pipeline** (``null_pipeline``): ``predict_tiled``'s steps (``TiledRun``) into a
  store, with the model's forward replaced by ``CachedForward``, which cycles a real
  model's outputs of real windows of the slide (so presence, min-max and argmax see real
  maps; a constant would make every window alike). Timed from the first read to the last
  tile handed to the store (reading, tissue test, input, blending, per-tile labels,
  writing); planning, store creation and the pyramid are timed apart. Its CPU cost per
  window is the process's CPU seconds over that span (all threads) per window run.

Both run on a generated JPEG "SVS-like" slide (``throughput_decode.bench_slide``: 240 px
JPEG tiles, as Aperio writes them) of thousands of windows. ``labels_digest`` (SHA-256 of the store's
level-0 labels) lets two runs of different code be compared bit for bit."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

NULL_SHARE = 0.5  # about the share of windows run on the generated slide (tissue + neighbours)


class CachedForward(torch.nn.Module):
    """A model whose forward pass returns, in turn, the outputs a real model gave for real
    windows (``outputs``: ``cams`` per scale, deepest ``proto_maps``), on the model's device;
    everything else (config, normalisation, strides, weights) is the real model's."""

    def __init__(self, model: torch.nn.Module, cams: list, protos: torch.Tensor) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.cams = cams  # per scale: (N, C, h, w) or None (scales predict does not fuse)
        self.protos = protos  # (N, C*k, h, w)
        self.position = 0
        self.calls = 0

    @property
    def backbone(self) -> torch.nn.Module:
        return self.inner.backbone

    @property
    def k(self) -> int:
        return self.inner.k

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.inner.normalisation()

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves the cached outputs too
        super()._apply(fn, *args, **kwargs)
        self.cams = [None if c is None else fn(c) for c in self.cams]
        self.protos = fn(self.protos)
        return self

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        n, total = images.shape[0], self.protos.shape[0]
        start, self.position = self.position, (self.position + n) % total
        self.calls += 1
        if start + n <= total:  # views of the cached outputs (predict copies what it keeps)
            def pick(t: torch.Tensor) -> torch.Tensor:
                return t.narrow(0, start, n)
        else:
            index = ((torch.arange(n) + start) % total).to(self.protos.device)

            def pick(t: torch.Tensor) -> torch.Tensor:
                return t.index_select(0, index)
        cams = [None if c is None else pick(c) for c in self.cams]
        return SimpleNamespace(cams=cams, proto_maps=[pick(self.protos)])


def cached_forward(model: torch.nn.Module, slide, count: int, device: str) -> CachedForward:
    """The null forward pass for a slide.

    Parameters
    ----------
    model : LPDModel
        The real model.
    slide : Slide
        Windows of input size with at least half tissue are taken in raster order.
    count : int
        How many windows' outputs to keep (and cycle through).
    device : str
        Where the model runs and the outputs stay.

    Returns
    -------
    CachedForward
        The model's outputs of those windows, computed as ``predict_tiled`` does
        (normalised input, inference mode, autocast on CUDA).

    Raises
    ------
    ValueError
        No window of the slide holds tissue.
    """
    from lpd.wsi.tissue import tissue_fraction

    size = model.config.input_size
    h, w = slide.shape
    windows = []
    for y in range(0, max(1, h - size + 1), size):
        for x in range(0, max(1, w - size + 1), size):
            pixels = slide.read_region(0, y, x, size, size)
            if pixels.shape[:2] == (size, size) and tissue_fraction(pixels) >= 0.5:
                windows.append(np.ascontiguousarray(pixels))
            if len(windows) == count:
                break
        if len(windows) == count:
            break
    if not windows:
        raise ValueError("no window of the slide holds tissue")
    dev = torch.device(device)
    model = model.to(dev).eval()
    mean, std = model.normalisation()
    x = torch.from_numpy(np.stack(windows)).to(dev).permute(0, 3, 1, 2).float()
    x = ((x - torch.tensor(mean, device=dev).view(1, 3, 1, 1) * 255)
         / (torch.tensor(std, device=dev).view(1, 3, 1, 1) * 255))
    amp = contextlib.nullcontext()
    if dev.type == "cuda":  # as predict_tiled
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        amp = torch.autocast("cuda", dtype=dtype)
    with torch.inference_mode(), amp:
        out = model(x)
        cams = [c.float().clone() for c in out.cams]
        protos = out.proto_maps[-1].float().clone()
    return CachedForward(model, cams, protos).to(dev)


def null_pipeline(model: CachedForward, slide, store: Path | None, batch_size: int,
                  read_threads: int | None = None) -> dict:
    """The null pipeline over the whole slide (see the module docstring).

    Parameters
    ----------
    model : CachedForward
        The null forward pass (its cycle restarts, so every run sees the same outputs).
    slide : Slide
        The slide, level 0 at the model's magnification.
    store : Path or None
        A new store there (replaced), or None: labels into memory.
    batch_size, read_threads : int
        As ``predict_tiled``'s (``read_threads`` only where the code has it).

    Returns
    -------
    dict
        ``windows``, ``windows_per_s`` and ``cpu_ms_per_window`` of the loop (first read
        to the last tile in the store), ``cpu_ms_per_window_by_thread``, ``setup_seconds``
        (plan, store, tissue), ``pyramid_seconds`` and ``labels_sha256``.
    """
    from lpd.bench.throughput import HALO
    from lpd.infer.tiled import RunSettings, TiledRun, plan_tiled
    from lpd.progress import drive

    if store is not None:
        shutil.rmtree(store, ignore_errors=True)
    model.position = model.calls = 0  # every run sees the same outputs in the same order
    dev = next(model.inner.parameters()).device
    marks: dict = {"start": (time.perf_counter(), time.process_time())}
    plan = plan_tiled(model, slide, halo=HALO)
    settings = RunSettings(batch_size=batch_size, **_threads_kw(RunSettings, read_threads))
    run = TiledRun(model, plan, settings, store=store, resume=False, device=dev)
    marks["setup"] = (time.perf_counter(), time.process_time())

    threads_at_start = thread_cpu()

    def note(event) -> None:
        now = (time.perf_counter(), time.process_time())
        if event.stage == "tiles":
            marks["tiles"] = now
            if event.done == event.total:  # (the last "tiles" event; /proc costs 0.2 ms)
                marks["threads"] = thread_cpu()
        marks.setdefault("first_" + event.stage, now)

    result = drive(run.steps(), note)
    marks["end"] = (time.perf_counter(), time.process_time())
    windows = result.forward_passes
    loop = marks["tiles"][0] - marks["setup"][0]
    loop_cpu = marks["tiles"][1] - marks["setup"][1]
    gy, gx = plan.grid
    out = {
        "windows": windows, "tiles": gy * gx, "tiles_skipped": result.tiles_skipped,
        "shape": list(plan.shape), "level": plan.level, "read_threads": read_threads,
        "seconds": loop, "cpu_seconds": loop_cpu, "windows_per_s": windows / loop,
        "cpu_ms_per_window": 1000 * loop_cpu / max(windows, 1),
        "setup_seconds": marks["setup"][0] - marks["start"][0],
        "pyramid_seconds": marks["end"][0] - marks["tiles"][0],
        "cpu_ms_per_window_by_thread": _by_thread(threads_at_start, marks.get("threads"),
                                                  loop_cpu, windows),
        "forward_calls": model.calls, "store": store is not None,
        "complete": bool(result.store.complete) if result.store is not None else True,
        "labels_sha256": labels_digest(result.labels if result.store is None
                                       else result.store.labels),
    }
    if store is not None:
        shutil.rmtree(store, ignore_errors=True)
    return out


_GROUPS = (("MainThread", "main"), ("lpd-window-reader", "reader"), ("lpd-decode", "decode"),
           ("lpd-store-writer", "store writer"), ("zarr", "zarr io"), ("asyncio", "zarr io"))


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of this process (Linux /proc; empty elsewhere), with the
    group its Python name puts it in (``_GROUPS``; else "other")."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        name = names.get(int(tid), "")
        group = next((g for prefix, g in _GROUPS if name.startswith(prefix)), "other")
        out[int(tid)] = (group, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _by_thread(before: dict, after: dict | None, cpu: float, windows: int) -> dict:
    """CPU milliseconds per window of each thread group between two ``thread_cpu``
    snapshots; "ended" is what threads gone by the second one took (reader, decoders)."""
    if not after or not windows:
        return {}
    groups: dict[str, float] = {}
    for tid, (group, seconds) in after.items():
        groups[group] = groups.get(group, 0.0) + seconds - before.get(tid, (group, 0.0))[1]
    groups["ended"] = max(0.0, cpu - sum(groups.values()))
    return {k: round(1000 * v / windows, 3) for k, v in sorted(groups.items())}


def _threads_kw(settings_type: type, threads: int | None) -> dict:
    """``read_threads=`` where the code has it (the benchmark also runs older code)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(settings_type)}
    return {"read_threads": threads} if "read_threads" in names and threads else {}


def labels_digest(labels) -> str:
    """SHA-256 of a labels array, read in bands of about 16 MiB.

    Parameters
    ----------
    labels : array-like
        (H, W) uint8 (numpy, zarr).

    Returns
    -------
    str
        The hex digest of its bytes in C order: equal digests, equal labels.
    """
    h = hashlib.sha256()
    rows = max(1, 2**24 // max(1, int(labels.shape[1])))
    for y in range(0, int(labels.shape[0]), rows):
        h.update(np.ascontiguousarray(np.asarray(labels[y : y + rows]), np.uint8).tobytes())
    return h.hexdigest()


def measure_null(s, model: torch.nn.Module, work: Path, say: Callable[[str], None]) -> dict:
    """Decoding limit and null pipeline, interleaved over ``s.null_rounds`` rounds, on a
    generated slide of about ``s.null_windows`` windows; the report's entries for them."""
    from lpd.bench.throughput import HALO, SYNTHETIC_SEED
    from lpd.bench.throughput_decode import bench_slide, decode_limit
    from lpd.wsi.slide import open_slide

    tile = model.config.input_size - 2 * HALO
    side = max(model.config.input_size, math.ceil(math.sqrt(s.null_windows / NULL_SHARE)) * tile)
    path = work / f"svs-like-{side}.tiff"
    say(f"writing a {side} x {side} JPEG pyramid (240 px tiles) for the null pipeline")
    slide_info = bench_slide(path, side, SYNTHETIC_SEED)
    threads = s.decode_threads
    rounds = []
    with open_slide(path) as slide:
        null_model = cached_forward(model, slide, s.null_cache, s.device)
        decode_limit(path, 0, threads, tile)  # warm the page cache
        for r in range(s.null_rounds):
            dec = decode_limit(path, 0, threads, tile, repeats=s.decode_repeats)
            null = null_pipeline(null_model, slide, work / "null.zarr", s.batch_size, threads)
            rounds.append({"decode_limit": dec, "null_pipeline": null,
                           "ratio": null["windows_per_s"] / dec["windows_per_s"],
                           "load": os.getloadavg()[0]})
            say(f"null round {r + 1}/{s.null_rounds}: decode limit {dec['windows_per_s']:.0f} "
                f"windows/s ({dec['megapixels_per_s']:.1f} MP/s), null pipeline "
                f"{null['windows_per_s']:.1f} windows/s ({null['windows']} windows, "
                f"{null['cpu_ms_per_window']:.2f} CPU ms/window), load {rounds[-1]['load']:.2f}")
        memory = null_pipeline(null_model, slide, None, s.batch_size, threads)
        say(f"null pipeline without a store: {memory['windows_per_s']:.1f} windows/s, "
            f"{memory['cpu_ms_per_window']:.2f} CPU ms/window")
    med = _median
    return {
        "null_rounds": rounds,
        "decode_limit_windows_per_s": med(x["decode_limit"]["windows_per_s"] for x in rounds),
        "null_pipeline_windows_per_s": med(x["null_pipeline"]["windows_per_s"] for x in rounds),
        "null_without_store": memory,  # the same into memory: what the store's writes cost
        "null_cpu_ms_per_window": med(x["null_pipeline"]["cpu_ms_per_window"] for x in rounds),
        "null_over_decode": med(x["ratio"] for x in rounds),
        "null_slide": {**slide_info, "windows": rounds[-1]["null_pipeline"]["windows"],
                       "tiles": rounds[-1]["null_pipeline"]["tiles"],
                       "labels_sha256": rounds[-1]["null_pipeline"]["labels_sha256"]},
        "null_fixed_seconds": {
            "setup": med(x["null_pipeline"]["setup_seconds"] for x in rounds),
            "pyramid": med(x["null_pipeline"]["pyramid_seconds"] for x in rounds),
            "slide_write": slide_info["write_seconds"]},
    }


def _median(values) -> float:
    import statistics

    return statistics.median(list(values))
