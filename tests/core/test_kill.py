"""Nothing lost: SIGKILL a child at random points while it writes a checkpoint, a tag
sidecar or a prediction store; the previous version stays readable and predict resumes.
Cancelling predict at random points never leaves a store marked complete."""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_models import PassCounter

from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore
from lpd.infer.tiled import predict_tiled, run_tiled
from lpd.io.checkpoint import read_checkpoint_metadata
from lpd.io.store import OutputStore

KILLS = 2  # each child pays the torch import: a few kills keep this quick
SRC = str(Path(__file__).resolve().parents[2] / "src")
CHILD = textwrap.dedent("""
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "ckpt":
        from lpd.io.checkpoint import save_checkpoint
        from lpd.model import create_model
        model = create_model("resnet18", prototypes_per_class=1, prototype_dim=8, input_size=96)
        i = 0
        while True:
            save_checkpoint(path, model, {"v": i})
            print("saved", i, flush=True)
            i += 1
    elif mode == "tags":
        from lpd.data.tags import TagStore
        store = TagStore.load(path, image_size=(1000, 1000))
        i = len(store.regions)
        while True:
            store.add((i % 900, 0, 50, 50), ["TUM"])
            store.save()
            print("saved", i, flush=True)
            i += 1
    elif mode == "predict":
        from lpd.data.synthetic import synthetic_tissue
        from lpd.infer.tiled import predict_tiled
        from lpd.model import create_model
        torch.manual_seed(1)
        model = create_model("resnet18", prototypes_per_class=2, input_size=96).eval()
        image, _ = synthetic_tissue(256, 5, background=False)
        for p in predict_tiled(model, image, store=path, device="cpu", halo=16, chunk=64,
                               batch_size=1, tissue_threshold=None):
            print("progress", p.done, flush=True)
""")


def _child(mode: str, path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)


def _kill_after(proc: subprocess.Popen, lines: int, extra: float, done_at: int = 0
                ) -> list[str]:
    """SIGKILL ``proc`` ``extra`` seconds after it printed ``lines`` lines (and a last
    number of at least ``done_at``)."""
    seen = ["- 0"]
    try:
        while len(seen) <= lines or int(seen[-1].split()[1]) < done_at:
            line = proc.stdout.readline()
            assert line, f"child ended early (rc {proc.poll()}) after {seen}"
            seen.append(line.strip())
        time.sleep(extra)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    return seen


def _user_files(folder: Path) -> list[str]:
    # a SIGKILL can leave hidden temp files (lpd._atomic's ".<name>.*.tmp", safetensors'
    # own ".tmpXXXXXX"): never taken for data, as no reader looks at hidden names
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_sigkill_while_saving_a_checkpoint(tmp_path) -> None:
    rng = random.Random(6)
    path = tmp_path / "m.safetensors"
    last = -1
    for _ in range(KILLS):
        seen = _kill_after(_child("ckpt", path), 1, rng.uniform(0.0, 1.5))
        _, extra = read_checkpoint_metadata(path)  # the old or the new version, whole
        assert extra["v"] >= int(seen[-1].split()[1])
        last = max(last, extra["v"])
        from lpd.io.checkpoint import load_checkpoint
        load_checkpoint(path)  # weights readable too
        assert _user_files(tmp_path) == ["m.safetensors"]
        assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != path)
    # the next save removes what killed writers left behind
    from lpd.io.checkpoint import load_checkpoint, save_checkpoint
    save_checkpoint(path, load_checkpoint(path), {"v": last + 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_sigkill_while_saving_tags(tmp_path) -> None:
    rng = random.Random(7)
    image = tmp_path / "slide.svs"
    image.write_bytes(b"not read")
    saved = 0
    for _ in range(KILLS):
        seen = _kill_after(_child("tags", image), 1, rng.uniform(0.0, 0.5))
        store = TagStore.load(image)  # loads: never half written
        n = len(store.regions)
        assert n >= saved + 1 and n >= int(seen[-1].split()[1]) + 1
        saved = n
        assert _user_files(tmp_path) == ["slide.svs", "slide.svs.lpd-tags.json"]
    TagStore.load(image).save()  # the next save removes what killed writers left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.svs", "slide.svs.lpd-tags.json"]


@pytest.fixture(scope="module")
def predict_setup(new_tiny_model):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = new_tiny_model()  # the model the "predict" child builds (conftest.TINY_MODEL)
    image, _ = synthetic_tissue(256, 5, background=False)
    run = functools.partial(predict_tiled, model, image, device="cpu", halo=16, chunk=64,
                            batch_size=1, tissue_threshold=None)
    with PassCounter(model) as full:
        reference = run_tiled(run())
    yield model, run, full.n, reference.labels
    torch.set_num_threads(threads)


def test_sigkill_during_predict_then_resume(tmp_path, predict_setup) -> None:
    model, run, full_passes, reference = predict_setup
    rng = random.Random(8)
    path = tmp_path / "out.zarr"
    for k, done_at in enumerate((rng.randint(4, 8), 12)):  # of 4 x 4 tiles
        # a tile row is final once the next window row is computed; kill at once after
        _kill_after(_child("predict", path), 1, 0.0, done_at)
        store = OutputStore.open(path)
        assert not store.complete, f"kill {k}: marked complete after SIGKILL"
    finished = OutputStore.open(path).finished()
    assert finished.any() and not finished.all()
    with PassCounter(model) as count:
        result = run_tiled(run(store=path))
    assert 0 < count.n < full_passes
    assert result.store.complete and result.store.finished().all()
    assert (result.store.labels[...] == reference).mean() >= 0.999


def test_cancel_predict_at_random_points(tmp_path, predict_setup) -> None:
    model, run, full_passes, reference = predict_setup
    rng = random.Random(9)
    path = tmp_path / "c.zarr"
    for k in range(3):
        gen = run(store=path)
        for _ in range(rng.randint(1, 6)):
            try:
                next(gen)
            except StopIteration:
                break
        gen.close()
        store = OutputStore.open(path)
        if store.complete:  # never claimed complete with tiles left to compute
            assert store.finished().all(), f"cancel {k}"
        if not store.complete:
            assert "(incomplete)" in store.label_group.attrs["ome"]["multiscales"][0]["name"]
    result = run_tiled(run(store=path))
    assert result.store.complete
    assert (result.store.labels[...] == reference).mean() >= 0.999
    assert np.array_equal(result.store.finished(), np.ones_like(result.store.finished()))
