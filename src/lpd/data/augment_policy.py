"""What a training image goes through: the augmentation policy and its parts beyond
flips and HED jitter (``lpd.data.augment``).

- ``AugmentSpec``: every setting of the policy, built from a ``TrainConfig`` by
  ``AugmentSpec.from_train``; ``AugmentSpec.apply`` runs it on one uint8 RGB image and its
  mask. Order: flips / 90° rotations, scale jitter, HED jitter, LAB-statistics jitter,
  grayscale, blur, JPEG.
- ``LabTemplate`` and ``lab_jitter``: RandStainNA's stain augmentation (Shen et al., MICCAI
  2022, "RandStainNA: Learning Stain-Agnostic Features from Histology Slides by Bridging
  Stain Augmentation and Normalization"): per image, a random *virtual template* (channel
  means and standard deviations in CIE-LAB) is drawn from Gaussians fitted to the training
  images' own statistics, and the image is Reinhard-transferred to it.
- ``quality_jitter``: the acquisition faults other labs' slides carry: grayscale, Gaussian
  blur, JPEG re-compression (Pillow), each with its own probability.
- ``scale_jitter``: a random zoom around the training microns per pixel (image bilinear,
  mask nearest), cropped or reflect-padded back to the same size.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.color import lab2rgb, rgb2lab

from lpd.data import augment as _augment


@dataclass(frozen=True)
class LabTemplate:
    """Gaussians of the training images' CIE-LAB channel statistics (RandStainNA).

    Attributes
    ----------
    mean_mu, mean_sd : tuple of 3 float
        Mean and standard deviation over images of each channel's mean (L*, a*, b*).
    std_mu, std_sd : tuple of 3 float
        Mean and standard deviation over images of each channel's standard deviation.
    """

    mean_mu: tuple[float, float, float]
    mean_sd: tuple[float, float, float]
    std_mu: tuple[float, float, float]
    std_sd: tuple[float, float, float]


def lab_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (each shape (3,)) of a uint8 RGB image in
    CIE-LAB (``skimage.color.rgb2lab``, D65)."""
    lab = rgb2lab(_augment._as_uint8_rgb(rgb)).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def fit_lab_template(images: Iterable[np.ndarray]) -> LabTemplate:
    """The RandStainNA template distribution of a set of training images.

    Parameters
    ----------
    images : iterable of ndarray (H, W, 3) uint8
        Training images (tiles); at least one.

    Returns
    -------
    LabTemplate

    Raises
    ------
    ValueError
        No images.
    """
    stats = [lab_statistics(im) for im in images]
    if not stats:
        raise ValueError("no images to fit a LAB template to")
    means = np.stack([m for m, _ in stats])
    stds = np.stack([s for _, s in stats])

    def t(a: np.ndarray) -> tuple[float, float, float]:
        return (float(a[0]), float(a[1]), float(a[2]))

    return LabTemplate(t(means.mean(0)), t(means.std(0)), t(stds.mean(0)), t(stds.std(0)))


def lab_jitter(rgb: np.ndarray, template: LabTemplate, rng: np.random.Generator,
               strength: float = 1.0) -> np.ndarray:
    """Reinhard transfer of ``rgb`` to a virtual template drawn from ``template``.

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    template : LabTemplate
    rng : numpy Generator
    strength : float
        Multiplies the template's spreads (RandStainNA's ``std_hyper`` scaled: 1 draws from
        the fitted Gaussians as they are).

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    lab = rgb2lab(_augment._as_uint8_rgb(rgb))
    flat = lab.reshape(-1, 3)
    mu, sd = flat.mean(axis=0), flat.std(axis=0)
    new_mu = rng.normal(template.mean_mu, np.asarray(template.mean_sd) * strength)
    new_sd = np.maximum(rng.normal(template.std_mu, np.asarray(template.std_sd) * strength),
                        0.1)
    out = (lab - mu) / np.maximum(sd, 1e-6) * new_sd + new_mu
    out[..., 0] = np.clip(out[..., 0], 0.0, 100.0)
    rgb_f = lab2rgb(out)
    return np.clip(rgb_f * 255.0 + 0.5, 0, 255).astype(np.uint8)


class ReinhardNormalizer:
    """Reinhard et al. (2001) colour transfer in CIE-LAB to a fixed reference: each
    channel's mean and standard deviation become the reference's. The reference is the
    mean LAB statistics of the training images (``LabTemplate.mean_mu``/``std_mu``), so
    at test time every patch is brought to the training data's average colour.

    Parameters
    ----------
    reference : sequence of 6 float
        L*, a*, b* means, then L*, a*, b* standard deviations.
    """

    def __init__(self, reference) -> None:
        ref = np.asarray(reference, np.float64).reshape(-1)
        if ref.shape != (6,) or not np.all(np.isfinite(ref)) or np.any(ref[3:] <= 0):
            raise ValueError(f"a Reinhard reference is 3 means and 3 positive standard "
                             f"deviations, got {reference!r}")
        self.mean, self.std = ref[:3], ref[3:]

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """The image (H, W, 3) uint8 with the reference's LAB statistics; a flat image
        (no spread in a channel) keeps that channel's own spread."""
        lab = rgb2lab(_augment._as_uint8_rgb(rgb))
        flat = lab.reshape(-1, 3)
        mu, sd = flat.mean(axis=0), flat.std(axis=0)
        scale = np.where(sd > 1e-3, self.std / np.maximum(sd, 1e-3), 1.0)
        out = (lab - mu) * scale + self.mean
        out[..., 0] = np.clip(out[..., 0], 0.0, 100.0)
        return np.clip(lab2rgb(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def quality_jitter(rgb: np.ndarray, rng: np.random.Generator, grayscale_p: float = 0.0,
                   blur_p: float = 0.0, jpeg_p: float = 0.0,
                   blur_sigma: tuple[float, float] = (0.3, 1.5),
                   jpeg_quality: tuple[int, int] = (30, 90)) -> np.ndarray:
    """Grayscale, Gaussian blur and JPEG re-compression, each with its own probability.

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    rng : numpy Generator
    grayscale_p, blur_p, jpeg_p : float
        Probabilities in [0, 1].
    blur_sigma : (float, float)
        Range of the blur's standard deviation, pixels.
    jpeg_quality : (int, int)
        Range of the JPEG quality (Pillow's 1..95 scale).

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    out = _augment._as_uint8_rgb(rgb)
    if rng.random() < grayscale_p:
        gray = out.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        out = np.repeat(np.clip(gray + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if rng.random() < blur_p:
        sigma = float(rng.uniform(*blur_sigma))
        out = gaussian_filter(out.astype(np.float32), sigma=(sigma, sigma, 0))
        out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < jpeg_p:
        buffer = io.BytesIO()
        quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        Image.fromarray(out).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def scale_jitter(rgb: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                 amount: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Zoom by a factor drawn log-uniformly from [1/(1+amount), 1+amount], back to the
    same size (centre crop when zooming in, reflect padding when zooming out).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    mask : ndarray (H, W) or None
        Resampled nearest-neighbour.
    rng : numpy Generator
    amount : float
        0.2 means up to 20 % finer or coarser than the training microns per pixel.

    Returns
    -------
    (ndarray (H, W, 3) uint8, ndarray (H, W) or None)
    """
    if amount <= 0:
        return rgb, mask
    h, w = rgb.shape[:2]
    factor = float(np.exp(rng.uniform(-np.log1p(amount), np.log1p(amount))))
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    out = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
    out_mask = None if mask is None else np.asarray(
        Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    return _fit(out, h, w), None if out_mask is None else _fit(out_mask, h, w)


def _fit(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre-crop or reflect-pad the first two axes of ``a`` to (h, w)."""
    for axis, size in ((0, h), (1, w)):
        n = a.shape[axis]
        if n > size:
            start = (n - size) // 2
            a = np.take(a, range(start, start + size), axis=axis)
        elif n < size:
            before = (size - n) // 2
            pad = [(0, 0)] * a.ndim
            pad[axis] = (before, size - n - before)
            a = np.pad(a, pad, mode="symmetric")
    return np.ascontiguousarray(a)


@dataclass(frozen=True)
class AugmentSpec:
    """The whole training augmentation policy (see the module docstring for the order).

    Attributes
    ----------
    flips : bool
        Random flips / 90° rotations.
    hed_sigma, hed_bias : float
        HED stain jitter (``lpd.data.augment.hed_jitter``); 0 and 0: off.
    lab : LabTemplate or None
        RandStainNA template distribution; None: off.
    lab_strength : float
        Spread multiplier of the RandStainNA draw.
    grayscale_p, blur_p, jpeg_p : float
        Probabilities of the quality faults.
    scale : float
        Scale jitter amount (0: off).
    """

    flips: bool = True
    hed_sigma: float = 0.0
    hed_bias: float = 0.0
    lab: LabTemplate | None = None
    lab_strength: float = 1.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    jpeg_p: float = 0.0
    scale: float = 0.0

    @classmethod
    def from_train(cls, train, augment: bool = True,
                   lab: LabTemplate | None = None) -> AugmentSpec | None:
        """The policy a ``TrainConfig`` asks for; None when ``augment`` is False.

        Parameters
        ----------
        train : lpd.config.TrainConfig
            ``stain_augment``, ``hed_sigma``, ``hed_bias``, ``lab_jitter``,
            ``quality_jitter``, ``scale_jitter``.
        augment : bool
            False for evaluation data (no augmentation at all).
        lab : LabTemplate, optional
            The template fitted to the training images; needed when ``train.lab_jitter``
            is above 0 (else that part is off).
        """
        if not augment:
            return None
        stain = bool(train.stain_augment)
        q = float(getattr(train, "quality_jitter", 0.0))
        lab_strength = float(getattr(train, "lab_jitter", 0.0))
        return cls(
            flips=True,
            hed_sigma=train.hed_sigma if stain else 0.0,
            hed_bias=train.hed_bias if stain else 0.0,
            lab=lab if stain and lab_strength > 0 else None,
            lab_strength=lab_strength or 1.0,
            grayscale_p=0.5 * q, blur_p=q, jpeg_p=q,
            scale=float(getattr(train, "scale_jitter", 0.0)),
        )

    def apply(self, rgb: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the policy on one image (H, W, 3) uint8 and its mask (H, W) or None."""
        if self.flips:
            rgb, mask = _augment.flip_rotate(rgb, mask, rng)
        if self.scale > 0:
            rgb, mask = scale_jitter(rgb, mask, rng, self.scale)
        if self.hed_sigma > 0 or self.hed_bias > 0:
            rgb = _augment.hed_jitter(rgb, rng, self.hed_sigma, self.hed_bias)
        if self.lab is not None:
            rgb = lab_jitter(rgb, self.lab, rng, self.lab_strength)
        if self.grayscale_p > 0 or self.blur_p > 0 or self.jpeg_p > 0:
            rgb = quality_jitter(rgb, rng, self.grayscale_p, self.blur_p, self.jpeg_p)
        return rgb, mask
