"""GUI responsiveness during a whole-image segmentation in a real napari viewer.

A 10 ms QTimer records the gaps between its ticks while the Segment widget runs over the
whole bundled CMU-1 slide region (live Labels updates on: tiles painted into the preview
layer, throttled to one repaint per second; the job at nice 10, as the widget runs it). Prints the median / p95 / max gap and the
tiles/s of that run, next to the tiles/s of the same ``predict_tiled`` call without GUI
(same image, model, store, torch thread count; the CLI's layout: the main thread drives the
generator), and the ratio.

Gaps are counted from the first tick after the Run click returns to the end of the run,
and separately over the tiles stage alone (first painted batch .. the result's arrival).
Each GUI run also lists its five longest gaps with the lpd callbacks inside them (none:
napari's or Qt's own work, e.g. a window repaint). The click handler itself (which turns
the previous result into the preview layer, or adds one: ~0.2-0.6 s here) is timed apart. Runs alternate CLI, GUI, CLI, GUI... so drifting machine load
hits both sides alike; the medians over the repeats are the figures.

    xvfb-run -a python benchmarks/gui_responsiveness.py [--repeats 2] [--threads 2]

Model: the default architecture (tf_efficientnet_lite0, k=10, 224 px input) with
ImageNet backbone weights and an untrained head, saved to a temporary checkpoint: the
timing is the same as a trained model's. Throughput counts model forward passes."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cli_run(checkpoint: Path, slide_path: Path, out: Path) -> dict:
    """The CLI-equivalent run: predict_tiled driven by the main thread, no GUI."""
    from lpd.infer.tiled import run_tiled
    from lpd.io.checkpoint import load_checkpoint
    from lpd.wsi.slide import open_slide
    from napari_lpd._segment_job import halo_for

    model = load_checkpoint(checkpoint)
    with open_slide(slide_path) as slide:
        t0 = time.perf_counter()
        result = run_tiled(_predict(model, slide, out, halo_for(model)))
        wall = time.perf_counter() - t0
    return {"passes": result.forward_passes, "elapsed": result.elapsed, "wall": wall,
            "tiles_per_s": result.forward_passes / result.elapsed}


def _predict(model, slide, out: Path, halo: int):
    from lpd.infer.tiled import predict_tiled

    return predict_tiled(model, slide, store=out, prototypes=False, device="cpu",
                         halo=halo, resume=False)


def gui_run(viewer, checkpoint: Path, slide_layer, live: bool = True) -> dict:
    """One whole-image run of the Segment widget with a 10 ms tick probe (``live=False``:
    tiles are not painted, to measure what live updates cost)."""
    from qtpy.QtCore import QEventLoop, Qt, QTimer

    from napari_lpd.widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.image_combo.setCurrentText(slide_layer.name)
    widget.set_checkpoint(checkpoint)
    widget.device_combo.setCurrentText("cpu")
    widget.scope_combo.setCurrentText("Whole image")
    widget.prototypes_check.setChecked(False)
    ticks: list[float] = []
    tiles: list[float] = []  # when tile batches were painted: the "during the run" window
    on_events, on_done = widget._on_events, widget._on_done
    if not live:
        on_events = lambda events: widget.status.setText(events[-1].text)  # noqa: E731
    spans: list[tuple[float, float, str]] = []  # GUI-thread callbacks: start, end, what

    def timed(fn, what):
        def call(arg):
            t = time.perf_counter()
            tiles.append(t)
            fn(arg)
            spans.append((t, time.perf_counter(), what(arg)))
        return call

    widget._on_events = timed(on_events, lambda events: f"update ({events[-1].stage})")
    widget._on_done = timed(on_done, lambda outcome: "result swap")
    probe = QTimer()
    probe.setTimerType(Qt.TimerType.PreciseTimer)
    probe.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()
    poll = QTimer()
    probe.start(10)
    t0 = time.perf_counter()
    handle = widget.run()
    click = time.perf_counter() - t0
    assert handle is not None
    poll.timeout.connect(lambda: None if handle.running else loop.quit())
    poll.start(50)
    loop.exec()
    wall = time.perf_counter() - t0
    probe.stop()
    poll.stop()
    if handle.failed is not None:
        raise RuntimeError(f"the GUI run failed: {handle.failed}")
    outcome = widget.outcome
    t = np.array(ticks)
    gaps = np.diff(t) * 1000.0
    # the tiles stage: from the first painted batch to the result's arrival (excluded)
    inside = np.diff(t[(t >= tiles[0]) & (t <= tiles[-1])]) * 1000.0
    viewer.window.remove_dock_widget(widget)
    longest = []
    for i in np.argsort(gaps)[::-1][:5]:
        a, b = t[i], t[i + 1]
        inside_spans = [f"{w} {1000 * (e - s):.0f} ms" for s, e, w in spans if s < b and e > a]
        longest.append(f"{gaps[i]:.0f} ms at {a - t0:.1f} s: "
                       + (", ".join(inside_spans) or "no lpd callback (napari/Qt work)"))
    return {"longest": longest, "t0": t0, "passes": outcome.forward_passes, "elapsed": outcome.elapsed, "wall": wall,
            "tiles_per_s": outcome.forward_passes / outcome.elapsed,
            "median_ms": float(np.median(gaps)), "p95_ms": float(np.percentile(gaps, 95)),
            "max_ms": float(gaps.max()), "ticks": len(ticks),
            "tiles_median_ms": float(np.median(inside)),
            "tiles_p95_ms": float(np.percentile(inside, 95)),
            "tiles_max_ms": float(inside.max()), "click_s": click}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    parser.add_argument("--no-live", action="store_true",
                        help="diagnostic: GUI runs without painting tiles")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lpd-gui-bench-"))
    os.environ["LPD_CACHE_DIR"] = str(tmp / "cache")  # GUI stores: fresh, never resumed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import napari
    import torch

    from lpd.data.sample import CMU_SLIDE
    from lpd.io.checkpoint import save_checkpoint
    from lpd.model import create_model
    from napari_lpd._reader import read_path

    torch.set_num_threads(args.threads)
    checkpoint = save_checkpoint(tmp / "bench.safetensors",
                                 create_model(pretrained=True, microns_per_pixel=0.5))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    [(data, meta, _)] = read_path(CMU_SLIDE)
    layer = viewer.add_image(data, **meta)
    # warm-up, not counted: the first run in a process is 2-4x slower (oneDNN kernels for
    # each batch shape, file cache)
    cli_run(checkpoint, CMU_SLIDE, tmp / "warm-up.zarr")
    cli, gui = [], []
    for i in range(args.repeats):
        cli.append(cli_run(checkpoint, CMU_SLIDE, tmp / f"cli-{i}.zarr"))
        print(f"CLI run {i + 1}: {cli[-1]['passes']} passes, {cli[-1]['tiles_per_s']:.2f} "
              f"tiles/s", flush=True)
        gui.append(gui_run(viewer, checkpoint, layer, live=not args.no_live))
        os.environ["LPD_CACHE_DIR"] = str(tmp / f"cache-{i + 1}")  # next run: no resume
        g = gui[-1]
        print(f"GUI run {i + 1}: {g['passes']} passes, {g['tiles_per_s']:.2f} tiles/s, "
              f"tick gaps median {g['median_ms']:.1f} / p95 {g['p95_ms']:.1f} / max "
              f"{g['max_ms']:.1f} ms over {g['ticks']} ticks", flush=True)
        for line in g["longest"]:
            print(f"    longest gap {line}", flush=True)
    viewer.close()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    cli_rate, gui_rate = med(cli, "tiles_per_s"), med(gui, "tiles_per_s")
    print()
    print(f"live tile painting: {'off (diagnostic)' if args.no_live else 'on'}")
    print(f"image: {CMU_SLIDE.name}, whole image; model forward passes per run: "
          f"{gui[0]['passes']}; torch threads: {args.threads}; cores: {os.cpu_count()}")
    print(f"tick gaps (10 ms timer) during the GUI run, median over {args.repeats} runs: "
          f"median {med(gui, 'median_ms'):.1f} ms, p95 {med(gui, 'p95_ms'):.1f} ms, "
          f"max {med(gui, 'max_ms'):.1f} ms (worst max {max(g['max_ms'] for g in gui):.1f})")
    print(f"  during the tiles stage only (first painted batch .. result): median "
          f"{med(gui, 'tiles_median_ms'):.1f} ms, p95 {med(gui, 'tiles_p95_ms'):.1f} ms, max "
          f"{med(gui, 'tiles_max_ms'):.1f} ms")
    print(f"tiles/s: GUI {gui_rate:.2f}, CLI-equivalent {cli_rate:.2f}, ratio "
          f"{gui_rate / cli_rate:.3f}")
    print(f"Run click handler (adds the preview layer): {med(gui, 'click_s') * 1000:.0f} ms")
    print(f"wall per run (s): GUI {med(gui, 'wall'):.1f} (incl. pyramid, areas, final layer), "
          f"CLI {med(cli, 'wall'):.1f}")
    load = os.getloadavg()
    print(f"load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
