"""The recipe levers' code: RandStainNA, quality and scale jitter, Reinhard normalisation,
test-time flips, a frozen backbone, k-means-initialised prototypes, the NEC relabelling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from lpd.bench.levers import LEVERS, apply, relabelling
from lpd.bench.loro import release_tiles
from lpd.config import ModelConfig, TrainConfig
from lpd.data.augment import augment
from lpd.data.augment_policy import (
    AugmentSpec,
    ReinhardNormalizer,
    fit_lab_template,
    lab_jitter,
    lab_statistics,
    quality_jitter,
    scale_jitter,
)
from lpd.data.mosaic import TileFolder
from lpd.data.sample import KATHER2016_TILES, NCT_TILES
from lpd.data.sources import augment_policy, normalizer_for
from lpd.data.synthetic import synthetic_tissue
from lpd.default_model import load_recipe
from lpd.infer.tiled import predict_tiled, run_tiled
from lpd.model import create_model
from lpd.model.prototype_bank import build_bank, init_prototypes_kmeans
from lpd.wsi.images import read_rgb


@pytest.fixture(scope="module")
def tissue() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tissue(96, seed=4, classes=[0, 1, 2, 3], background=True)


def _tiles(root, n=3):
    return [read_rgb(p) for c in ("TUM", "STR", "LYM") for p in sorted((root / c).iterdir())[:n]]


def test_default_policy_is_the_old_augmentation(tissue):
    """The recipe's policy (flips + HED) draws the same numbers as before: training of the
    shipped recipe is unchanged bit for bit."""
    rgb, mask = tissue
    spec = AugmentSpec.from_train(TrainConfig(hed_sigma=0.05, hed_bias=0.01))
    a = spec.apply(rgb, mask, np.random.default_rng(3))
    b = augment(rgb, mask, np.random.default_rng(3), True, 0.05, 0.01)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert AugmentSpec.from_train(TrainConfig(), augment=False) is None
    off = AugmentSpec.from_train(TrainConfig(stain_augment=False, lab_jitter=1.0))
    assert off.hed_sigma == 0 and off.lab is None


def test_randstainna_draws_from_the_fitted_template():
    tiles = _tiles(KATHER2016_TILES)
    template = fit_lab_template(tiles)
    stats = np.stack([lab_statistics(t)[0] for t in tiles])
    assert np.allclose(template.mean_mu, stats.mean(0), atol=1e-6)
    assert np.allclose(template.mean_sd, stats.std(0), atol=1e-6)
    # strength 0: every image lands on the template's mean statistics
    foreign = _tiles(NCT_TILES, 1)[0]
    out = lab_jitter(foreign, template, np.random.default_rng(0), strength=0.0)
    mean, std = lab_statistics(out)
    assert np.allclose(mean, template.mean_mu, atol=1.5)  # uint8 rounding, gamut clipping
    assert np.allclose(std, template.std_mu, atol=1.5)
    # strength 1: different draws, different colours; same structure (shape, dtype)
    a = lab_jitter(foreign, template, np.random.default_rng(1))
    b = lab_jitter(foreign, template, np.random.default_rng(2))
    assert a.shape == foreign.shape and a.dtype == np.uint8 and not np.array_equal(a, b)
    with pytest.raises(ValueError):
        fit_lab_template([])


def test_policy_fits_the_template_from_training_tiles():
    paths = sorted(p for c in ("TUM", "STR") for p in (KATHER2016_TILES / c).iterdir())
    spec = augment_policy(TrainConfig(lab_jitter=0.5), True, paths)
    assert spec.lab is not None and spec.lab_strength == 0.5
    assert augment_policy(TrainConfig(), True, paths).lab is None  # off by default
    assert augment_policy(TrainConfig(lab_jitter=1.0), False, paths) is None


def test_quality_jitter(tissue):
    rgb = tissue[0]
    rng = np.random.default_rng(0)
    assert np.array_equal(quality_jitter(rgb, rng), rgb)  # all probabilities 0
    gray = quality_jitter(rgb, rng, grayscale_p=1.0)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1],
                                                                          gray[..., 2])
    blurred = quality_jitter(rgb, rng, blur_p=1.0)
    assert np.abs(np.diff(blurred.astype(float), axis=1)).mean() < \
        np.abs(np.diff(rgb.astype(float), axis=1)).mean()
    jpeg = quality_jitter(rgb, rng, jpeg_p=1.0)
    assert jpeg.shape == rgb.shape and 0 < np.abs(jpeg.astype(int) - rgb).mean() < 20


def test_scale_jitter_keeps_size_and_labels(tissue):
    rgb, mask = tissue
    for seed in range(6):
        out, m = scale_jitter(rgb, mask, np.random.default_rng(seed), 0.5)
        assert out.shape == rgb.shape and m.shape == mask.shape
        assert set(np.unique(m)) <= set(np.unique(mask))  # nearest: no new label values
    same, same_m = scale_jitter(rgb, mask, np.random.default_rng(0), 0.0)
    assert same is rgb and same_m is mask


def test_reinhard_normaliser_matches_the_reference():
    tile = _tiles(NCT_TILES, 1)[1]
    ref = (70.0, 20.0, -10.0, 12.0, 8.0, 6.0)
    out = ReinhardNormalizer(ref).transform(tile)
    lab = rgb2lab(out).reshape(-1, 3)
    assert np.allclose(lab.mean(0), ref[:3], atol=1.5)
    assert np.allclose(lab.std(0), ref[3:], atol=1.5)
    with pytest.raises(ValueError):
        ReinhardNormalizer((1, 2, 3, 0, 1, 1))
    cfg = ModelConfig(stain_normalisation="reinhard", stain_reference=ref)
    assert isinstance(normalizer_for(cfg), ReinhardNormalizer)


def test_tiled_inference_applies_the_models_stain_normalisation(tiny_model):
    """A model trained on normalised patches sees normalised windows on a slide too."""
    ref = (65.0, 25.0, -15.0, 14.0, 9.0, 7.0)
    plain = tiny_model
    normed = create_model("resnet18", prototypes_per_class=2, input_size=96,
                          stain_normalisation="reinhard", stain_reference=ref).eval()
    normed.load_state_dict(plain.state_dict())
    image = synthetic_tissue(96, seed=2, classes=[0, 1, 2], background=False)[0]
    kw = {"halo": 0, "tissue_threshold": None, "protocol": "oracle",
          "presence": [True] * 4, "keep_scores": True}
    a = run_tiled(predict_tiled(normed, image, **kw))
    b = run_tiled(predict_tiled(plain, ReinhardNormalizer(ref).transform(image), **kw))
    c = run_tiled(predict_tiled(plain, image, **kw))
    assert np.allclose(np.asarray(a.scores), np.asarray(b.scores), atol=1e-4)
    assert not np.allclose(np.asarray(a.scores), np.asarray(c.scores), atol=1e-2)


def test_test_time_flips_make_the_model_flip_equivariant():
    torch.manual_seed(0)
    model = create_model("resnet18", prototypes_per_class=2, input_size=64,
                         test_time_flips=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, flipped = model(x), model(x.flip(3))
    for a, b in zip(out.cams, flipped.cams, strict=True):
        assert torch.allclose(a, b.flip(3), atol=1e-4)
    assert torch.allclose(out.class_logits[-1], flipped.class_logits[-1], atol=1e-4)
    model.config.test_time_flips = False
    with torch.no_grad():
        single = model(x)
    assert not torch.allclose(single.cams[-1], out.cams[-1], atol=1e-4)
    model.train()
    assert model(x).cams[-1].shape[0] == 2  # training never averages


def test_frozen_backbone_trains_the_head_only():
    from lpd.data.sources import mosaic_dataset
    from lpd.trainer import Trainer

    model = create_model("resnet18", prototypes_per_class=2, input_size=64)
    before_b = [p.detach().clone() for p in model.backbone.parameters()]
    before_h = model.head.prototypes.detach().clone()
    config = TrainConfig(steps=2, batch_size=2, warmup_iters=1, freeze_backbone=True)
    data = mosaic_dataset(KATHER2016_TILES, model.config, 4, 0, True, config)
    trainer = Trainer(model, config, data, None, None, "cpu")
    for _ in trainer.steps():
        pass
    assert all(torch.equal(a, b) for a, b in zip(before_b, model.backbone.parameters(),
                                                 strict=True))
    assert not torch.equal(before_h, model.head.prototypes)


def test_kmeans_initialised_prototypes_point_at_the_centroids():
    torch.manual_seed(0)
    model = create_model("resnet18", prototypes_per_class=2, input_size=64)
    folder = TileFolder(KATHER2016_TILES, model.config.class_names)
    fit = init_prototypes_kmeans(model, folder, crops_per_class=4, steps=200)
    assert fit > 0.95
    banks = build_bank(model, folder, crops_per_class=4)
    for p, b in zip(model.head.projected(), banks, strict=True):
        cos = torch.nn.functional.cosine_similarity(p, b, dim=1)
        assert cos.min() > 0.8  # each prototype row at its own class's centroid
    cam = create_model("resnet18", head="cam", input_size=64)
    with pytest.raises(ValueError, match="head='prototype'"):
        init_prototypes_kmeans(cam, folder, crops_per_class=4)


def test_levers_apply_and_nec_relabelling():
    recipe = load_recipe()
    run = recipe.run()
    for lever in LEVERS:
        model, train = apply(lever, run.model.to_dict(), run.train.to_dict())
        ModelConfig.from_dict(model), TrainConfig.from_dict(train)  # valid settings
    assert relabelling("nec_as_other") == {"NEC": "OTHER"} and relabelling("recipe") == {}
    plain, _ = release_tiles(recipe, {"nct"})
    moved, _ = release_tiles(recipe, {"nct"}, relabel={"NEC": "OTHER"})
    assert len(moved.paths["NEC"]) == 0
    assert len(moved.paths["OTHER"]) == len(plain.paths["OTHER"]) + len(plain.paths["NEC"])
    with pytest.raises(KeyError, match="unknown lever"):
        apply("nope", {}, {})
    model, train = apply("kmeans_init+no_div+tta_flips", run.model.to_dict(),
                         run.train.to_dict())
    assert train["prototype_init"] == "kmeans" and train["div_weight"] == 0.0
    assert model["test_time_flips"] is True
    assert relabelling("tta_flips+nec_as_other") == {"NEC": "OTHER"}
    with pytest.raises(KeyError):
        apply("kmeans_init+nope", {}, {})
    assert dataclasses.replace(run.train, freeze_backbone=True).freeze_backbone
