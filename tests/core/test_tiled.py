"""Tiled whole-slide inference: equal to a single pass, resumable, skips background."""

from __future__ import annotations

import functools
import shutil
import threading
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pytest
import torch
from helpers_models import PassCounter

from lpd.data.sample import sample_path
from lpd.data.synthetic import synthetic_tissue
from lpd.errors import InputError
from lpd.infer._blend import extreme_samples, local_interpolation
from lpd.infer._labels import labels_on_part
from lpd.infer._plan import tissue_fractions
from lpd.infer._sink import RESUME_STATE
from lpd.infer.patch import labels_from_scores, predicted_presence, score_maps
from lpd.infer.tiled import plan_tiled, predict_tiled, run_tiled
from lpd.io.store import OutputStore
from lpd.model import create_model
from lpd.wsi.region import RegionSource
from lpd.wsi.tissue import SATURATION_CEIL, SATURATION_FLOOR

# CPU everywhere (the references are computed on the CPU), also on a machine with a GPU
predict = functools.partial(predict_tiled, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resnet18", prototypes_per_class=2).eval()


@pytest.fixture(scope="module")
def small_model(new_tiny_model):
    """Input 96 (halo 16: tiles of 64), so the mechanics tests need cheap forward passes."""
    return new_tiny_model()


def single_pass(model, image: np.ndarray) -> torch.Tensor:
    mean, std = model.normalisation()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = (x - torch.tensor(mean).view(1, 3, 1, 1) * 255) / (torch.tensor(std).view(1, 3, 1, 1) * 255)
    with torch.inference_mode():
        return score_maps(model(x), image.shape[:2])


def test_one_window_image_is_exactly_the_single_pass(model) -> None:
    image, _ = synthetic_tissue(224, 1)
    with PassCounter(model) as count:
        res = run_tiled(predict(model, image, keep_scores=True, tissue_threshold=None))
    ref = single_pass(model, image)
    assert count.n == 1 == res.forward_passes
    np.testing.assert_allclose(res.scores, ref[0].numpy(), atol=1e-5, rtol=0)
    presence = predicted_presence(ref, model.config.presence_threshold)
    labels, _ = labels_from_scores(ref, presence, model.config.fusion_weights,
                                   model.config.background_power)
    assert np.array_equal(res.labels, labels[0].numpy())


def test_blended_scores_equal_single_pass_within_tolerance(model) -> None:
    """Measured here (random-init resnet18, halo 32, 384 px and 544 px): max |tiled - single|
    is 0.98-0.99 % of the score range, mean 0.019-0.025 %. Halo 16: 3.1 %; halo 0 (no overlap): 35 %. With the
    pretrained tf_efficientnet_lite0 the difference is 17 % max / 1 % mean at any halo from
    16 to 64: its stride-16 receptive field is wider than the 224 input, so even a window's
    centre differs from a single pass over a larger image (test below, marked slow)."""
    image, _ = synthetic_tissue(384, 2)
    res = run_tiled(predict(model, image, keep_scores=True, tissue_threshold=None))
    ref = single_pass(model, image)[0].numpy()
    span = ref.max() - ref.min()
    diff = np.abs(res.scores - ref)
    assert res.forward_passes == 9
    assert diff.max() <= 0.02 * span
    assert diff.mean() <= 1e-3 * span


@pytest.mark.slow
def test_pretrained_lite0_tolerance() -> None:
    torch.manual_seed(0)
    lite = create_model("tf_efficientnet_lite0", pretrained=True, prototypes_per_class=2).eval()
    image, _ = synthetic_tissue(544, 2)
    res = run_tiled(predict(lite, image, keep_scores=True, tissue_threshold=None))
    ref = single_pass(lite, image)[0].numpy()
    diff = np.abs(res.scores - ref) / (ref.max() - ref.min())
    assert diff.max() <= 0.25 and diff.mean() <= 0.02  # measured 0.167 and 0.0103


def test_labels_on_part_equal_labels_from_scores_cropped() -> None:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 3, 4, 40, 36, generator=gen) * 3
    presence = torch.rand(6, 4, generator=gen) > 0.4
    presence[0] = False  # no class present: all background, as labels_from_scores does
    full, _ = labels_from_scores(scores, presence, (0.3, 0.3, 0.4), 10.0)
    flat = scores.flatten(3)
    part = scores[..., 5:30, 7:33].clone()
    got = labels_on_part(part, flat.min(3).values, flat.max(3).values, presence,
                         (0.3, 0.3, 0.4), 10.0)
    assert (got == full[:, 5:30, 7:33]).float().mean() >= 0.9999


@pytest.mark.parametrize(("cells", "stride", "length"), [(14, 16, 224), (28, 8, 224), (14, 16, 100)])
def test_extreme_samples_give_the_full_min_and_max(cells, stride, length) -> None:
    g = torch.randn(5, cells + 2, cells + 2, dtype=torch.float64)
    a = local_interpolation(cells, stride, 0, length)
    full = a @ g @ a.T
    idx = extreme_samples(cells, stride, length)
    sub = a[idx] @ g @ a[idx].T
    assert torch.allclose(sub.amin((1, 2)), full.amin((1, 2)))
    assert torch.allclose(sub.amax((1, 2)), full.amax((1, 2)))


def test_progress_reports_painted_tiles_and_finishes(small_model) -> None:
    image, _ = synthetic_tissue(200, 4, background=False)
    gen = predict(small_model, image, batch_size=3, halo=16, tissue_threshold=None)
    seen, progress = [], []
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        progress.append(p)
        seen += p.tiles
    assert progress[-1].done == progress[-1].total == 16  # 200 px / 64 px tiles: 4 x 4
    assert result.forward_passes == 9  # windows coincide at the far border: 3 x 3
    assert len(seen) == 16
    for y, x, labels in seen:
        assert np.array_equal(result.labels[y : y + labels.shape[0], x : x + labels.shape[1]],
                              labels)


def test_cancel_stops_reader_and_resume_computes_only_the_rest(small_model, tmp_path) -> None:
    image, _ = synthetic_tissue(300, 5, background=False)  # 5 x 5 tiles of 64, chunks of 2x2
    path = tmp_path / "out.zarr"
    kwargs = dict(tissue_threshold=None, batch_size=2, halo=16, chunk=128, prototypes=True)
    with PassCounter(small_model) as full_count:
        full = run_tiled(predict(small_model, image, **kwargs))
    gen = predict(small_model, image, store=path, **kwargs)
    for _ in gen:
        if OutputStore.open(path).finished().sum() >= 3:
            break
    gen.close()
    assert not any(t.name == "lpd-window-reader" for t in threading.enumerate())
    store = OutputStore.open(path)
    assert not store.complete
    assert "(incomplete)" in store.label_group.attrs["ome"]["multiscales"][0]["name"]
    finished = store.finished().copy()
    assert 3 <= finished.sum() < finished.size
    # the stopped run kept what it had computed: a resume computes only the rest, no
    # window twice (issue: a resume after 27 % reused 16 of 134 passes)
    killed = tmp_path / "killed.zarr"  # the same, as after SIGKILL: no resume state
    shutil.copytree(path, killed)
    (killed / RESUME_STATE).unlink()
    with PassCounter(small_model) as first:
        gen2 = predict(small_model, image, store=tmp_path / "again.zarr", **kwargs)
        for _ in gen2:
            if OutputStore.open(tmp_path / "again.zarr").finished().sum() >= 3:
                break
        gen2.close()
    first_passes = first.n
    with PassCounter(small_model) as count:
        resumed = run_tiled(predict(small_model, image, store=tmp_path / "again.zarr",
                                    **kwargs))
    assert first_passes + count.n == full_count.n and count.n < full_count.n
    assert resumed.reused_passes == first_passes
    assert not (tmp_path / "again.zarr" / RESUME_STATE).exists()  # gone once complete
    np.testing.assert_array_equal(resumed.store.labels[...],
                                  run_tiled(predict(small_model, image, **kwargs)).labels)
    # without the state (a killed run): windows of unfinished tiles and their neighbours
    plan = plan_tiled(small_model, image, halo=16)
    gy, gx = plan.axis_grids()
    todo = store.needed_tiles((gy.count, gx.count))
    wins = set()
    for i, j in zip(*np.nonzero(todo), strict=True):
        r, c = gy.tile_windows[i], gx.tile_windows[j]
        wins |= {(a, b) for a in gy.neighbours(r, 16) for b in gx.neighbours(c, 16)}
    with PassCounter(small_model) as count:
        run_tiled(predict(small_model, image, store=killed, **kwargs))
    assert count.n == len(wins) < full_count.n
    with PassCounter(small_model) as count:
        resumed = run_tiled(predict(small_model, image, store=path, **kwargs))
    assert resumed.store.complete and resumed.store.finished().all()
    labels = resumed.store.labels[...]
    assert (labels == full.labels).mean() >= 0.999
    np.testing.assert_allclose(resumed.store.prototypes[...].astype(np.float32),
                               full.prototypes.astype(np.float32), atol=0.05)
    with PassCounter(small_model) as again:  # complete: nothing to do
        run_tiled(predict(small_model, image, store=path, **kwargs))
    assert again.n == 0


def test_resume_refuses_a_store_of_other_settings(small_model, tmp_path) -> None:
    image, _ = synthetic_tissue(150, 6, background=False)
    path = tmp_path / "out.zarr"
    run_tiled(predict(small_model, image, store=path, halo=16, tissue_threshold=None))
    with pytest.raises(InputError, match="halo"):
        run_tiled(predict(small_model, image, store=path, halo=32, tissue_threshold=None))
    res = run_tiled(predict(small_model, image, store=path, halo=32,
                                  tissue_threshold=None, resume=False))
    assert res.store.complete and res.plan.halo == 32


def _half_blank(size: int = 256, seed: int = 7) -> np.ndarray:
    image, _ = synthetic_tissue(size, seed, background=False)
    rng = np.random.default_rng(0)
    image[:, : size // 2] = 255 - rng.integers(0, 12, (size, size // 2, 1), dtype=np.uint8)
    return image


@pytest.mark.parametrize("lazy", [False, True])
def test_tissue_detection_skips_blank_tiles(small_model, lazy) -> None:
    """Left half glass (tile columns 0-1 of 4: 2 x 64 = 128 px), right half tissue; without
    detection all 16 tiles (one window each) would be computed."""
    image = _half_blank()
    source = da.from_array(image, chunks=(100, 100, 3)) if lazy else image
    with PassCounter(small_model) as count:
        res = run_tiled(predict(small_model, source, halo=16, tissue_threshold=0.05))
    assert res.tiles_skipped == 8
    assert count.n == res.forward_passes == 8  # one window per tissue tile
    assert not res.labels[:, :128].any()


def test_prototypes_are_float16_at_the_deepest_stride(small_model, tmp_path) -> None:
    image, _ = synthetic_tissue(200, 8, background=False)
    res = run_tiled(predict(small_model, image, store=tmp_path / "p.zarr", halo=16,
                                  prototypes=True, tissue_threshold=None))
    protos = res.store.prototypes
    assert protos.dtype == np.float16
    assert protos.shape == (4 * 2, 12, 12)  # C*k, ceil(200 / 16 - 0.5)
    assert np.isfinite(protos[...]).all() and np.abs(protos[...]).max() > 0
    assert res.store.meta["prototypes"]["names"][:3] == ["TUM-1", "TUM-2", "STR-1"]


@dataclass
class FakeSlide:
    levels: list
    downsamples: list
    mpp: float | None


@pytest.mark.parametrize(("name", "expected"), [
    ("cmu-1-small-region.svs", 0.50), ("tcga-cr-7395-01a-01-ts1.svs", 0.70)])
def test_tissue_on_the_sample_slides(model, name, expected) -> None:
    """Glass is background and H&E is tissue on the real slides (fractions of 160 px tiles
    with >= 5 % tissue, as measured and checked by eye on an overlay)."""
    tifffile = pytest.importorskip("tifffile")
    with tifffile.TiffFile(sample_path("slides", name)) as tif:
        levels = tif.series[0].levels
        coarse = levels[-1].asarray()
        shape0 = levels[0].shape
    base = da.zeros(shape0, dtype=np.uint8, chunks=(1024, 1024, 3))  # never read
    slide = (FakeSlide([base, coarse], [1.0, shape0[0] / coarse.shape[0]], None)
             if len(levels) > 1 else FakeSlide([coarse], [1.0], None))
    plan = plan_tiled(model, slide)
    fractions, threshold = tissue_fractions(plan, plan.axis_grids())
    tissue = fractions >= 0.05
    assert SATURATION_FLOOR <= threshold <= SATURATION_CEIL
    assert tissue.mean() == pytest.approx(expected, abs=0.05)
    assert not tissue[0, -1] and not tissue[-1, -1]  # glass corners


def test_magnification_picks_level_and_resize(small_model) -> None:
    base = np.zeros((800, 1000, 3), np.uint8)
    slide = FakeSlide([base, base[::2, ::2], base[::4, ::4]], [1.0, 2.0, 4.0], 0.25)
    small_model.config.microns_per_pixel = 0.5
    try:
        plan = plan_tiled(small_model, slide, region=(100, 200, 400, 300))
        assert (plan.level, plan.resize, plan.scale, plan.mpp) == (1, 1.0, 2.0, 0.5)
        # level-1 region (50, 100) .. (250, 250): its corner moves back to the 64 px tile
        # grid, (32, 96), so tiles and windows sit where a whole-slide run puts them
        assert plan.offset == (64.0, 192.0) and plan.shape == (154, 218)
        assert plan.phase == (96, 32) and plan.full == (400, 500)
        plan = plan_tiled(small_model, slide, target_mpp=0.7)  # between levels 1 and 2
        assert plan.level == 1 and plan.resize == pytest.approx(0.5 / 0.7)
        assert plan.mpp == pytest.approx(0.7) and plan.shape == (286, 357)
        plan = plan_tiled(small_model, slide, level=2)  # override: that level as it is
        assert (plan.level, plan.resize, plan.mpp) == (2, 1.0, 1.0)
        plan = plan_tiled(small_model, FakeSlide(slide.levels, slide.downsamples, None))
        assert plan.level == 0 and plan.mpp is None and "no microns per pixel" in plan.notes[0]
    finally:
        small_model.config.microns_per_pixel = None


@pytest.mark.parametrize("resize", [0.6, 1.7])
def test_resampled_reads_do_not_depend_on_the_tiling(resize) -> None:
    rng = np.random.default_rng(0)
    level = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    extent = (100, 120)
    shape = (round(extent[0] * resize), round(extent[1] * resize))
    src = RegionSource(level, (10, 20), extent, resize, shape)
    whole = src.read(0, shape[0], 0, shape[1])
    assert np.array_equal(src.read(13, 50, 7, 41), whole[13:50, 7:41])


class FailingArray:
    """An array-like whose reads fail, as a corrupt slide tile does."""

    shape, dtype = (300, 300, 3), np.dtype(np.uint8)

    def __getitem__(self, key):
        raise InputError("broken.svs", "tile 3 of level 0 is corrupt")


def test_a_read_error_reaches_the_caller_and_stops_the_reader(small_model) -> None:
    with pytest.raises(InputError, match="corrupt"):
        run_tiled(predict(small_model, FailingArray(), halo=16, tissue_threshold=None))
    assert not any(t.name == "lpd-window-reader" for t in threading.enumerate())


def test_bad_inputs_are_clear_errors(small_model) -> None:
    with pytest.raises(InputError, match="uint8"):
        run_tiled(predict(small_model, np.zeros((50, 50), np.uint8)))
    with pytest.raises(InputError, match="halo"):
        run_tiled(predict(small_model, np.zeros((50, 50, 3), np.uint8), halo=20))
    with pytest.raises(InputError, match="outside"):
        run_tiled(predict(small_model, np.zeros((50, 50, 3), np.uint8),
                          region=(60, 0, 10, 10)))
    with pytest.raises(InputError, match="presence"):
        run_tiled(predict(small_model, np.zeros((50, 50, 3), np.uint8), protocol="oracle"))
    plan = plan_tiled(small_model, np.zeros((50, 50, 3), np.uint8), region=(40, 40, 20, 20))
    # clipped to (40, 40, 10, 10); its corner moves back to the 32 px tile grid
    assert plan.shape == (18, 18) and any("clipped" in n for n in plan.notes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(model) -> None:
    """Measured on an H100: amp off, max 0.04 % of the score range; bf16 autocast, 0.6 %
    and 99.98 % of labels equal."""
    image, _ = synthetic_tissue(384, 2)
    cpu = run_tiled(predict(model, image, keep_scores=True, tissue_threshold=None))
    span = cpu.scores.max() - cpu.scores.min()
    try:
        for amp, tol, agree in ((False, 0.005, 0.999), (True, 0.03, 0.99)):
            gpu = run_tiled(predict_tiled(model, image, device="cuda", amp=amp, keep_scores=True,
                                          tissue_threshold=None, prototypes=True))
            assert np.abs(gpu.scores - cpu.scores).max() <= tol * span
            assert (gpu.labels == cpu.labels).mean() >= agree
    finally:
        model.cpu()


def _inner_mask(plan, inner: tuple[int, int, int, int], whole) -> np.ndarray:
    """Output pixels of ``plan`` labelled by a window of the slide's grid (the pixels of its
    output tile) that lies wholly inside the level-0 box ``inner`` (x0, y0, x1, y1).
    ``whole``: the whole-image plan (its grid is the slide's, phase 0). A pixel in a
    window's halo is labelled by its own tile's window, which may reach outside."""
    gy, gx = whole.axis_grids()
    x0, y0, x1, y1 = (v * whole.resize for v in inner)
    mask = np.zeros(whole.full, bool)
    for i in range(gy.count):
        sy = gy.starts[gy.tile_windows[i]]
        if not (sy >= y0 and sy + gy.size <= y1):
            continue
        for j in range(gx.count):
            sx = gx.starts[gx.tile_windows[j]]
            if sx >= x0 and sx + gx.size <= x1:
                (ty0, ty1), (tx0, tx1) = gy.tile_span(i), gx.tile_span(j)
                mask[ty0:ty1, tx0:tx1] = True
    (py, px), (h, w) = plan.phase, plan.shape
    return mask[py : py + h, px : px + w]


@pytest.mark.parametrize("target_mpp", [None, 0.8], ids=["level-0", "resampled"])
def test_same_pixel_same_label_whatever_region_is_asked(small_model, target_mpp) -> None:
    """CMU-1: two regions with corners off the window grid, and a view against the whole
    image, agree on every pixel covered by a window inside both (issue: a view and the
    whole image agreed on 71 % of the view's pixels when windows started at the corner)."""
    from lpd.data.sample import CMU_SLIDE
    from lpd.wsi.slide import open_slide

    slide = open_slide(CMU_SLIDE)
    kw = {"halo": 16, "target_mpp": target_mpp, "batch_size": 16}
    a_box, b_box = (637, 1101, 700, 620), (905, 1413, 655, 590)
    a = run_tiled(predict(small_model, slide, region=a_box, **kw))
    b = run_tiled(predict(small_model, slide, region=b_box, **kw))
    assert a.plan.phase != (0, 0) and a.plan.phase != b.plan.phase
    whole = plan_tiled(small_model, slide, halo=16, target_mpp=target_mpp)

    def both(p, q):
        return (max(p[0], q[0]), max(p[1], q[1]),
                min(p[0] + p[2], q[0] + q[2]), min(p[1] + p[3], q[1] + q[3]))

    inner = both(a_box, b_box)
    ma, mb = _inner_mask(a.plan, inner, whole), _inner_mask(b.plan, inner, whole)
    assert ma.sum() == mb.sum() > 20_000 * (whole.resize ** 2)
    assert np.array_equal(a.labels[ma], b.labels[mb])
    assert (a.labels[ma] > 0).mean() > 0.5  # tissue, not background everywhere
    if target_mpp is not None:
        return  # the whole image resampled costs a minute here; level 0 checks it
    view_box = (1237, 401, 600, 500)
    view = run_tiled(predict(small_model, slide, region=view_box, **kw))
    full = run_tiled(predict(small_model, slide, **kw))
    mv = _inner_mask(view.plan, both(view_box, view_box), whole)
    (py, px), (h, w) = view.plan.phase, view.plan.shape
    assert mv.sum() > 20_000
    assert np.array_equal(view.labels[mv], full.labels[py : py + h, px : px + w][mv])


def test_a_polygon_roi_labels_nothing_outside_it(small_model) -> None:
    """A triangle inside a tissue image: outside it every label is 0, inside it the labels
    are those of the plain run; tiles that miss it are not computed."""
    image, _ = synthetic_tissue(384, 3)
    tri = [(20.0, 30.0), (300.0, 60.0), (90.0, 280.0)]  # (x, y)
    kw = {"halo": 16, "tissue_threshold": None}
    plain = run_tiled(predict(small_model, image, region=(20, 30, 280, 250), **kw))
    with PassCounter(small_model) as count:
        roi = run_tiled(predict(small_model, image, region=(20, 30, 280, 250), roi=tri, **kw))
    from skimage.draw import polygon2mask

    (py, px), (h, w) = roi.plan.phase, roi.plan.shape
    pts = np.array([(y - py, x - px) for x, y in tri]) - 0.5
    inside = polygon2mask((h, w), pts)
    assert (roi.labels[~inside] == 0).all() and inside.mean() > 0.2
    assert np.array_equal(roi.labels[inside], plain.labels[inside])
    assert count.n < plain.forward_passes  # the tiles beyond the triangle's edge
    # the same triangle as a shapely polygon (e.g. a QuPath annotation): the same labels
    from shapely.geometry import Polygon

    shaped = run_tiled(predict(small_model, image, region=(20, 30, 280, 250),
                               roi=Polygon(tri), **kw))
    assert np.array_equal(shaped.labels, roi.labels)
