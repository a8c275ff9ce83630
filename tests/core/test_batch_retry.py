"""``lpd batch`` outlives a worker killed mid-slide: on a LocalCluster of 2 worker processes
running 4 generated slides, the worker process running a slide is SIGKILLed at the first
"tiles" progress event after which the slide's store holds a finished chunk (the event
triggers it; no sleeps). The slide is retried once, resuming its store from the chunks
written before the kill; all 4 stores complete with the labels of a single-process run, the
report shows exactly 1 retry, and no process of the cluster is left afterwards.

The model is timm's ``test_efficientnet`` (random weights, a few thousand parameters): the
test is about the batch, and it runs about 5x faster than the tiny checkpoint's resnet18
(64 windows of 128 px in 2.7 s against 12 s on the 2 loaded cores here)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers_processes import alive

from lpd._processes import ChildWatch
from lpd.batch import BatchOptions, run_batch
from lpd.data.pyramid import write_synthetic_pyramid
from lpd.io.store import OutputStore

SLIDE = (1664, 128)  # 26 x 2 output tiles of 64 px, one window a row; 4 chunk rows of 512 px
SEEDS = (1, 2, 3, 5)  # generated tissue in most windows


@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory) -> Path:
    import torch

    from lpd.io.checkpoint import save_checkpoint
    from lpd.model import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("test_efficientnet", prototypes_per_class=2, input_size=128,
                             microns_per_pixel=0.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "fast.safetensors", model)


def _single_process(checkpoint: Path, slides: list[Path], batch_size: int) -> dict:
    """Labels (level 0) and windows of each slide predicted here, with one torch thread."""
    import torch

    from lpd.segmentation import read_labels, segment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for slide in slides:
            with segment(checkpoint, slide, batch_size=batch_size, device="cpu") as seg:
                out[slide.stem] = (read_labels(seg), seg.result.forward_passes)
        return out
    finally:
        torch.set_num_threads(threads)


def test_slide_of_a_killed_worker_is_retried_and_resumes(tmp_path, fast_checkpoint) -> None:
    slides = [write_synthetic_pyramid(tmp_path / f"s{i}.tiff", SLIDE, tile=128, seed=seed,
                                      mpp=0.5) for i, seed in enumerate(SEEDS)]
    out = tmp_path / "out"
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    watch = ChildWatch()  # as lpd's commands see their processes (not the resource tracker)
    killed: dict = {}
    events: list[dict] = []

    def on_event(ev: dict) -> None:
        events.append(ev)
        if killed or ev["stage"] != "tiles" or ev["done"] == ev["total"]:
            return
        # chunks are written by a background thread: kill once one is on disk
        if OutputStore.open(out / f"{ev['name']}.zarr").finished().any():
            worker = psutil.Process(ev["pid"])  # a worker process this test started
            assert worker.pid in {p.pid for p in me.children(recursive=True)} - before
            os.kill(worker.pid, signal.SIGKILL)
            killed.update(ev)

    options = BatchOptions(batch_size=4, progress_interval=0.0, exports=("csv",))
    report = run_batch(slides, out, fast_checkpoint, workers=2, options=options,
                       on_event=on_event)

    # nothing left: the cluster's processes (the killed worker's restart included) are gone
    _gone, left = psutil.wait_procs(alive(watch.new()), timeout=10)
    assert not alive(left), [(p.pid, p.cmdline()[:3]) for p in left]

    assert killed, "no tiles event came with a finished chunk in the store"
    assert report.counts == {"done": 4, "skipped": 0, "failed": 0, "pending": 0}
    assert report.retries == 1 and report.retries_allowed == 2
    entries = {t["name"]: t for t in report.tasks}
    hit = entries[killed["name"]]
    assert hit["attempts"] == 2 and hit["retries"] == 1
    first, second = hit["history"]
    assert first["outcome"] == "worker died" and first["pid"] == killed["pid"]
    assert first["windows"] >= killed["windows"] > 0  # what it computed before the kill
    assert second["outcome"] == "done" and second["pid"] != killed["pid"]
    assert all(entries[n]["attempts"] == 1 for n in entries if n != killed["name"])
    stages = [e["stage"] for e in events if e["name"] == killed["name"]]
    assert "lost" in stages and "retry" in stages
    on_disk = json.loads((out / "batch-report.json").read_text())
    assert on_disk["retries"] == 1 and on_disk["finished"]

    # per-worker throughput: every attempt's windows are counted, on the worker that ran it
    assert sum(w["windows"] for w in report.workers.values()) == sum(
        t["windows"] for t in report.tasks)
    assert all(w["windows_per_s"] > 0 for w in report.workers.values() if w["windows"])

    reference = _single_process(fast_checkpoint, slides, options.batch_size)
    for slide in slides:
        store = OutputStore.open(out / f"{slide.stem}.zarr")
        assert store.complete
        labels, _windows = reference[slide.stem]
        np.testing.assert_array_equal(np.asarray(store.level(0)[...]), labels)
        assert (out / f"{slide.stem}-areas.csv").is_file()
    # the retry resumed: it computed only what the finished chunks did not hold
    assert second["windows"] < reference[killed["name"]][1]
