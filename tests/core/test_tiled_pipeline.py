"""The parallel, vectorised parts of tiled inference: windows cut from decoded blocks equal
plain reads bit for bit, batched blending equals window-by-window blending, the store
writer's thread, and labels that do not depend on the number of decoding threads."""

from __future__ import annotations

import functools
import threading

import dask.array as da
import numpy as np
import pytest
import torch

from lpd.data.synthetic import synthetic_tissue
from lpd.infer._band import disjoint_groups
from lpd.infer._blend import ScoreBlender, extreme_samples
from lpd.infer._blocks import BlockCache, axis_cuts, level_cuts
from lpd.infer._reader import WindowReader
from lpd.infer._sink import StoreWriter
from lpd.infer.tiled import plan_tiled, predict_tiled, run_tiled
from lpd.io.store import OutputStore
from lpd.tiling import AxisGrid
from lpd.wsi.region import RegionSource

predict = functools.partial(predict_tiled, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _level(h: int = 150, w: int = 170) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["dask", "numpy"])
def test_windows_from_blocks_equal_plain_reads(kind) -> None:
    """Windows inside, across and past the data (reflect-padded) of a level read as it is,
    with uneven dask chunks and an origin inside the level."""
    level = _level()
    array = da.from_array(level, chunks=((40, 70, 40), (33, 100, 37), 3)) if kind == "dask" \
        else level
    src = RegionSource(array, (20, 10), (100, 120), 1.0, (100, 120), bounds=(0, 150, 0, 170))
    cache = BlockCache(src, threads=3)
    if kind == "dask":
        assert cache.ys == [-20, 20, 90, 130] and cache.xs == [-10, 23, 123, 160]
    out = np.empty((48, 48, 3), np.uint8)
    try:
        for y0 in (-30, -20, 0, 17, 60, 100, 120):
            for x0 in (-25, -10, 5, 22, 77, 130):
                box = (y0, y0 + 48, x0, x0 + 48)
                cache.prefetch([box])
                assert np.array_equal(cache.window(box, out), src.read(*box)), box
    finally:
        cache.close()


def test_block_cuts_follow_the_level_not_the_region() -> None:
    level = _level()
    assert level_cuts(da.from_array(level, chunks=(64, 64, 3)), 0) == [0, 64, 128, 150]
    assert level_cuts(level, 1) == [0, 170]  # fewer than BLOCK px: one block
    # a resampled level: cuts every BLOCK px of the level's output grid, whatever the phase
    for phase, origin in ((0, 0.0), (640, 1280.0)):
        src = RegionSource(np.zeros((3000, 3000, 3), np.uint8), (origin, 0.0), (1000, 1000),
                           0.5, (500, 500), bounds=(0, 3000, 0, 3000))
        cuts = axis_cuts(src, 0, phase)
        assert all((c + phase) % 512 == 0 for c in cuts[1:-1])


def test_resampled_windows_do_not_depend_on_the_region(monkeypatch) -> None:
    """The same window of the level's output grid, read through two regions (phases)."""
    monkeypatch.setattr("lpd.infer._blocks.BLOCK", 48)
    level = _level(300, 300)
    resize = 0.5
    got = []
    for phase in ((0, 0), (56, 28)):
        origin = (phase[0] / resize, phase[1] / resize)
        src = RegionSource(level, origin, (100, 100), resize, (70, 70), bounds=(0, 300, 0, 300))
        cache = BlockCache(src, threads=2, phase=phase)
        y0, x0 = 70 - phase[0], 90 - phase[1]  # global output px (70, 90)
        out = np.empty((64, 64, 3), np.uint8)
        assert len(cache.ys) > 3
        got.append(cache.window((y0, y0 + 40, x0, x0 + 40), out[:40, :40]).copy())
        cache.close()
    assert np.array_equal(got[0], got[1])


def test_reader_batches_do_not_depend_on_the_threads() -> None:
    level = _level(400, 400)
    src = RegionSource(da.from_array(level, chunks=(90, 90, 3)), (0, 0), (400, 400), 1.0,
                       (400, 400), bounds=(0, 400, 0, 400))
    gy = AxisGrid(400, 96, 16, 16)
    boxes = [(gy.starts[r], gy.starts[r] + 96, gy.starts[c], gy.starts[c] + 96)
             for r in range(len(gy.starts)) for c in range(len(gy.starts))]
    runs = []
    for threads in (1, 4):
        reader = WindowReader(src, range(len(boxes)), boxes.__getitem__, lambda i: [],
                              lambda i: False, 3, 0.0, threads=threads).start()
        try:
            runs.append([(tuple(it.index for it in b.items), b.pixels.numpy().copy())
                         for b in reader.batches()])
        finally:
            reader.close()
    assert [r[0] for r in runs[0]] == [r[0] for r in runs[1]]
    for (_, a), (_, b) in zip(*runs, strict=True):
        assert np.array_equal(a, b)
    assert sum(len(r[0]) for r in runs[0]) == len(boxes)
    assert np.array_equal(runs[0][0][1][1], level[0:96, boxes[1][2]:boxes[1][3]])
    assert not any(t.name.startswith("lpd-decode") for t in threading.enumerate())


def test_disjoint_groups_never_overlap() -> None:
    starts = [0, 160, 320, 336]  # the last window shifted inwards at the border
    windows = [(r, c) for r in range(2) for c in range(4)]
    groups = disjoint_groups(windows, lambda r, c: (starts[r], starts[r] + 224,
                                                    starts[c], starts[c] + 224))
    assert sorted(b for g in groups for b in g) == list(range(8))
    for g in groups:
        for a in g:
            for b in g:
                (ra, ca), (rb, cb) = windows[a], windows[b]
                assert a == b or abs(starts[ra] - starts[rb]) >= 224 or \
                    abs(starts[ca] - starts[cb]) >= 224


def test_grouped_blending_equals_ordered_blending() -> None:
    """The GPU's way (windows added in disjoint groups with index_add_) against the CPU's
    (one by one, in order), on the CPU: equal to float rounding, labels equal."""
    gy = gx = AxisGrid(600, 224, 32, 16)
    args = (gy, gx, (8, 16, 16), (28, 14, 14), 4, torch.device("cpu"), (0.3, 0.3, 0.4),
            10.0, 0.3)
    blenders = [ScoreBlender(*args, ordered=True), ScoreBlender(*args, ordered=False)]
    gen = torch.Generator().manual_seed(0)
    windows = [(r, c) for r in range(len(gy.starts)) for c in range(len(gx.starts))]
    for first in range(0, len(windows), 5):
        batch = windows[first : first + 5]
        cams = [torch.randn(len(batch), 4, n, n, generator=gen) for n in (28, 14, 14)]
        for b in blenders:
            b.add_batch(batch, cams)
    for a, b in zip(blenders[0].acc, blenders[1].acc, strict=True):
        torch.testing.assert_close(a.buf, b.buf, rtol=1e-5, atol=1e-5)
    la, lb = (b.finalise(windows) for b in blenders)
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(la, lb, strict=True))


def test_store_writer_writes_in_its_thread_and_raises_its_errors(tmp_path) -> None:
    store = OutputStore.create(tmp_path / "s.zarr", shape=(128, 128), tile=64, chunk=64,
                               class_names=["A"], class_colours=[(1, 2, 3)], mpp=None,
                               scale=1.0, offset=(0.0, 0.0))
    writer = StoreWriter(store)
    for i in range(2):
        for j in range(2):
            writer.put_tile(i, j, np.full((64, 64), 1 + i + j, np.uint8), None)
    writer.flush()
    assert writer.finished().all()
    assert store.labels[70, 70] == 3
    writer.put_tile(5, 5, np.ones((64, 64), np.uint8), None)  # outside the store
    with pytest.raises(Exception):  # noqa: B017  # the store's own error, whatever it is
        writer.close()


def test_labels_do_not_depend_on_the_decoding_threads(small_model) -> None:
    """A lazy array (tissue judged on the windows' pixels) read by 1 and 4 threads, and
    without tissue detection against the array in memory."""
    image, _ = synthetic_tissue(300, 3)
    lazy = da.from_array(image, chunks=(70, 90, 3))
    kw = {"halo": 16, "batch_size": 3}
    one = run_tiled(predict(small_model, lazy, read_threads=1, **kw))
    many = run_tiled(predict(small_model, lazy, read_threads=4, **kw))
    assert one.forward_passes == many.forward_passes > 0 and one.tiles_skipped > 0
    assert np.array_equal(one.labels, many.labels)
    lazy_all = run_tiled(predict(small_model, lazy, read_threads=2, tissue_threshold=None, **kw))
    whole = run_tiled(predict(small_model, image, tissue_threshold=None, **kw))
    assert np.array_equal(lazy_all.labels, whole.labels)


@pytest.fixture(scope="module")
def small_model(new_tiny_model):
    return new_tiny_model()


def test_plan_source_blocks_cover_the_level(small_model) -> None:
    image, _ = synthetic_tissue(200, 1)
    plan = plan_tiled(small_model, image, region=(70, 70, 100, 100), halo=16)
    cache = BlockCache(plan.source(), 1, plan.phase)
    try:
        assert cache.limits == (-plan.phase[0], 200 - plan.phase[0],
                                -plan.phase[1], 200 - plan.phase[1])
    finally:
        cache.close()


def _reference_labels(blender: ScoreBlender, members: list[tuple[int, int]]) -> np.ndarray:
    """The per-tile step as it was first written (windows' crops one by one, stacked maps,
    ``max`` over classes): what the buffered, batched ``finalise`` must equal bit for bit."""
    from lpd.infer.patch import predicted_presence

    vh, vw, py0, py1, px0, px1 = blender._geometry(*members[0])
    parts, los, his = [], [], []
    for k, acc in enumerate(blender.acc):
        s, n = blender.strides[k], blender.cells[k]
        g = torch.stack([acc.raw(blender._cy(r, s), blender._cy(r, s) + n, blender._cx(c, s),
                                 blender._cx(c, s) + n, *blender.grid[k]) for r, c in members])
        num, den = g[:, :-1], g[:, -1:]
        inner = num[:, :, 1:-1, 1:-1] / den[:, :, 1:-1, 1:-1]
        g = torch.where(den > 0, num / den.clamp_min(1e-12),
                        torch.nn.functional.pad(inner, (1, 1, 1, 1), mode="replicate"))
        ay, ax = blender._matrix(k, 0, vh), blender._matrix(k, 0, vw)
        parts.append(ay[py0:py1] @ g @ ax[px0:px1].T)
        ey, ex = (torch.as_tensor(extreme_samples(n, s, length)) for length in (vh, vw))
        samples = (ay[ey] @ g @ ax[ex].T).flatten(2)
        los.append(samples.min(dim=2).values)
        his.append(samples.max(dim=2).values)
        means = (ay.mean(dim=0) @ g @ ax.mean(dim=0)[:, None])[..., 0]
    part = torch.stack(parts, dim=1)
    presence = predicted_presence(means[:, None, :, None, None], blender.presence_threshold)
    lo, hi = torch.stack(los, 1), torch.stack(his, 1)
    weights = torch.tensor(blender.fusion_weights)
    scale = weights[None, :, None] / weights.sum() / (hi.relu() - lo.relu()).clamp_min(1e-6)
    scale = scale * presence[:, None, :]
    offset = (-(scale * lo.relu()).sum(dim=1)).masked_fill(~presence, -1.0)
    fused = (part.relu_() * scale[..., None, None]).sum(dim=1) + offset[..., None, None]
    best, index = fused.max(dim=1)
    background = (1 - best.clamp_min(0)) ** blender.background_power
    return torch.where(best > background, index + 1, 0).to(torch.uint8).numpy()


def test_finalise_equals_the_plain_formulation_bit_for_bit() -> None:
    """Interior and border windows (other geometries), ties in the class maps included."""
    gy, gx = AxisGrid(600, 224, 32, 16), AxisGrid(500, 224, 32, 16)
    blender = ScoreBlender(gy, gx, (8, 16, 16), (28, 14, 14), 4, torch.device("cpu"),
                           (0.3, 0.3, 0.4), 10.0, 0.3)
    gen = torch.Generator().manual_seed(5)
    windows = [(r, c) for r in range(len(gy.starts)) for c in range(len(gx.starts))]
    for first in range(0, len(windows), 3):
        batch = windows[first : first + 3]
        cams = [torch.randn(len(batch), 4, n, n, generator=gen) for n in (28, 14, 14)]
        cams[0][:, 1] = cams[0][:, 2]  # equal classes: ties for the first maximum
        blender.add_batch(batch, cams)
    got = {(w.r, w.c): w.labels for w in blender.finalise(windows)}
    groups: dict[tuple, list] = {}
    for w in windows:
        groups.setdefault(blender._geometry(*w), []).append(w)
    assert len(groups) >= 4
    for members in groups.values():
        ref = _reference_labels(blender, members)
        for b, w in enumerate(members):
            assert np.array_equal(got[w], ref[b]), w
