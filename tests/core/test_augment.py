"""Augmentation: flips/rotations keep image-mask correspondence, HED jitter, Macenko."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.color import rgb2hed

from lpd.data.augment import (
    MacenkoNormalizer,
    augment,
    flip_rotate,
    hed_jitter,
    hed_to_rgb,
    rgb_to_hed,
)
from lpd.data.sample import KATHER2016_TILES, NCT_TILES
from lpd.data.synthetic import synthetic_tissue
from lpd.errors import InputError
from lpd.wsi.images import read_rgb


@pytest.fixture(scope="module")
def tissue() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tissue(96, seed=4, classes=[0, 1, 2, 3], background=True)


def _tile(root, cls: str) -> np.ndarray:
    return read_rgb(sorted((root / cls).iterdir())[0])


def test_flip_rotate_keeps_correspondence(tissue):
    rgb, labels = tissue
    # an image whose pixels encode their own label: any mismatch would show
    coded = rgb.copy()
    coded[..., 0] = labels * 50
    seen = set()
    for seed in range(40):
        out, mask = flip_rotate(coded, labels, np.random.default_rng(seed))
        assert mask is not None and out.shape == coded.shape and mask.shape == labels.shape
        np.testing.assert_array_equal(out[..., 0], mask * 50)
        assert out.flags.c_contiguous and mask.flags.c_contiguous
        seen.add(out.tobytes())
    assert len(seen) == 8  # all 8 symmetries of the square occur


def test_flip_rotate_without_mask_and_non_square():
    img = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    shapes = {flip_rotate(img, None, np.random.default_rng(s))[0].shape for s in range(20)}
    assert shapes == {(6, 10, 3), (10, 6, 3)}
    assert flip_rotate(img, None, np.random.default_rng(0))[1] is None


def test_hed_matches_skimage_and_inverts(tissue):
    rgb = np.clip(tissue[0], 1, 255)  # skimage treats 0 as 1e-6, we as 1/255
    ours = rgb_to_hed(rgb)
    np.testing.assert_allclose(np.maximum(ours, 0), rgb2hed(rgb), atol=1e-5)
    np.testing.assert_array_equal(hed_to_rgb(ours), rgb)


def test_hed_jitter_identity_at_zero(tissue):
    rgb = tissue[0]
    np.testing.assert_array_equal(hed_jitter(rgb, np.random.default_rng(0), 0.0, 0.0), rgb)
    # tiny but non-zero parameters: within rounding of the input
    out = hed_jitter(rgb, np.random.default_rng(0), 1e-6, 1e-7)
    assert np.abs(out.astype(int) - rgb).max() <= 1


def test_hed_jitter_changes_stains_but_not_structure(tissue):
    rgb, labels = tissue
    outs = [hed_jitter(rgb, np.random.default_rng(s), 0.05, 0.01) for s in range(6)]
    diffs = [np.abs(o.astype(int) - rgb).mean() for o in outs]
    assert all(1.0 < d < 40 for d in diffs)
    assert len({o.tobytes() for o in outs}) == 6
    # nuclei stay darker than glass: the stain change keeps the structure
    for o in outs:
        grey = o.mean(-1)
        assert grey[labels == 0].mean() > grey[labels == 4].mean() + 30
    # haematoxylin scaled up -> more haematoxylin measured
    h_before = rgb_to_hed(rgb)[..., 0].mean()
    more = hed_jitter(rgb, _FixedRng([1.1, 1.0, 1.0], [0.0, 0.0, 0.0]), 0.1, 0.0)
    assert rgb_to_hed(more)[..., 0].mean() > h_before * 1.05


class _FixedRng:
    """Stands in for a Generator: returns the given alpha, then beta."""

    def __init__(self, alpha, beta):
        self.values = [np.asarray(alpha, float), np.asarray(beta, float)]

    def uniform(self, low, high, size):
        return self.values.pop(0)


@pytest.mark.slow
def test_hed_jitter_speed():
    """A measurement, not a gate (wall times are never asserted: the machine is shared):
    prints the cost of one 224 px jitter (~3 ms measured on an idle core)."""
    rgb = _tile(NCT_TILES, "TUM")  # 224 x 224
    rng = np.random.default_rng(0)
    hed_jitter(rgb, rng)
    start = time.perf_counter()
    outs = [hed_jitter(rgb, rng) for _ in range(20)]
    print(f"\n{(time.perf_counter() - start) / 20 * 1000:.1f} ms per 224 px tile")
    assert len({o.tobytes() for o in outs}) == 20  # every draw jitters differently


def test_augment_pipeline(tissue):
    rgb, labels = tissue
    out, mask = augment(rgb, labels, np.random.default_rng(1), hed_sigma=0.0, hed_bias=0.0)
    assert sorted(np.bincount(mask.ravel(), minlength=5)) == \
        sorted(np.bincount(labels.ravel(), minlength=5))
    out2, _ = augment(rgb, labels, np.random.default_rng(1), hed_sigma=0.0, hed_bias=0.0)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(ValueError):
        hed_jitter(rgb.astype(np.float32))


def test_macenko_blank_and_flat_images_unchanged():
    norm = MacenkoNormalizer()
    for blank in (np.full((64, 64, 3), 245, np.uint8), np.zeros((64, 64, 3), np.uint8),
                  np.full((64, 64, 3), (180, 60, 140), np.uint8)):
        out = norm.transform(blank)
        np.testing.assert_array_equal(out, blank)
    with pytest.raises(InputError, match="too little tissue"):
        MacenkoNormalizer().fit(np.full((64, 64, 3), 250, np.uint8))


def test_macenko_fit_and_transform():
    reference = _tile(KATHER2016_TILES, "TUM")
    norm = MacenkoNormalizer().fit(reference)
    assert norm.stains.shape == (3, 2)
    assert np.allclose(np.linalg.norm(norm.stains, axis=0), 1.0)
    assert norm.stains[0, 0] > norm.stains[0, 1]  # haematoxylin absorbs red most
    # normalising the reference to itself changes little (Macenko keeps only the part of
    # the optical density in the two-stain plane, so it is not exactly the identity)
    same = norm.transform(reference)
    assert np.abs(same.astype(int) - reference).mean() < 12
    assert np.corrcoef(same.mean(-1).ravel(), reference.mean(-1).ravel())[0, 1] > 0.98
    # another centre's tile moves towards the reference's colour statistics
    other = _tile(NCT_TILES, "TUM")
    out = norm.transform(other)
    assert out.shape == other.shape and out.dtype == np.uint8
    before = np.abs(other.reshape(-1, 3).mean(0) - reference.reshape(-1, 3).mean(0)).sum()
    after = np.abs(out.reshape(-1, 3).mean(0) - reference.reshape(-1, 3).mean(0)).sum()
    assert after < before
    restored = MacenkoNormalizer.from_dict(norm.to_dict())
    np.testing.assert_array_equal(restored.transform(other), out)
