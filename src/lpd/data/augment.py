"""Training augmentation and stain normalisation on uint8 RGB (numpy only).

- ``flip_rotate``: one of the 8 flips / 90° rotations, the same for image and mask.
- ``hed_jitter``: stain augmentation in haematoxylin-eosin-DAB space (Tellez et al.):
  each stain's concentration s becomes ``alpha * s + beta`` with ``alpha ~ U(1-sigma,
  1+sigma)`` and ``beta ~ U(-bias, bias)``. Concentrations are in the units of
  ``skimage.color.rgb2hed`` (optical density / ln(1e6)), so sigma/bias mean what they mean
  in the literature; but the conversion is a precomputed 3x3 matrix in float32 here, with
  no clipping of negative concentrations, so sigma = bias = 0 returns the input exactly.
- ``MacenkoNormalizer``: Macenko et al. (2009) stain normalisation, fitted to a reference
  image (default: the usual H&E reference); images without enough tissue pass unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lpd.errors import InputError

# skimage.color's H&E-DAB stain matrix (rgb_from_hed) and its inverse.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = float(-np.log(1e-6))  # skimage's scaling of optical density
# -ln(max(v, 1) / 255) / ln(1e6) for every uint8 value v (0 treated as 1: finite density)
_OD_LUT = (-np.log(np.maximum(np.arange(256), 1) / 255.0) / _LOG_ADJUST).astype(np.float32)


def flip_rotate(
    rgb: np.ndarray, mask: np.ndarray | None = None, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A random element of the square's symmetry group, applied to the image and the mask."""
    rng = np.random.default_rng() if rng is None else rng
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    return _dihedral(rgb, k, flip), None if mask is None else _dihedral(mask, k, flip)


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(a, k, axes=(0, 1))
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Stain concentrations (float32 HxWx3: haematoxylin, eosin, DAB) of a uint8 RGB image,
    as ``skimage.color.rgb2hed`` gives them before it clips negatives to zero."""
    od = _OD_LUT[_as_uint8_rgb(rgb)]
    return od @ HED_FROM_RGB.astype(np.float32)


def hed_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_hed``: uint8 RGB from stain concentrations."""
    od = np.asarray(hed, np.float32) @ RGB_FROM_HED.astype(np.float32)
    return _od_to_uint8(od)


def _od_to_uint8(od_scaled: np.ndarray) -> np.ndarray:
    rgb = np.exp(od_scaled * np.float32(-_LOG_ADJUST)) * np.float32(255.0)
    rgb += np.float32(0.5)
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def hed_jitter(
    rgb: np.ndarray,
    rng: np.random.Generator | None = None,
    sigma: float = 0.05,
    bias: float = 0.05,
) -> np.ndarray:
    """Random HED-space stain jitter of a uint8 RGB image (see the module docstring).

    The whole perturbation is linear in optical density, so it is one 3x3 matrix and one
    offset applied to OD (no per-pixel HED image is materialised)."""
    rng = np.random.default_rng() if rng is None else rng
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, 3)
    beta = rng.uniform(-bias, bias, 3)
    if sigma == 0 and bias == 0:
        return np.array(_as_uint8_rgb(rgb), copy=True)
    # od' = ((od @ H) * alpha + beta) @ R  =  od @ (H diag(alpha) R) + beta @ R
    matrix = (HED_FROM_RGB * alpha[None, :]) @ RGB_FROM_HED
    offset = beta @ RGB_FROM_HED
    od = _OD_LUT[_as_uint8_rgb(rgb)]
    return _od_to_uint8(od @ matrix.astype(np.float32) + offset.astype(np.float32))


def augment(
    rgb: np.ndarray,
    mask: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    flips: bool = True,
    hed_sigma: float = 0.05,
    hed_bias: float = 0.05,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The training augmentation: flips / 90° rotations, then HED stain jitter."""
    rng = np.random.default_rng() if rng is None else rng
    if flips:
        rgb, mask = flip_rotate(rgb, mask, rng)
    if hed_sigma > 0 or hed_bias > 0:
        rgb = hed_jitter(rgb, rng, hed_sigma, hed_bias)
    return rgb, mask


def _as_uint8_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB image HxWx3, got {rgb.dtype} {rgb.shape}")
    return rgb


class MacenkoNormalizer:
    """Macenko stain normalisation: ``MacenkoNormalizer().fit(reference).transform(rgb)``.

    Unfitted, it maps to the standard H&E reference (stain matrix and 99th-percentile
    concentrations of Macenko's reference implementation)."""

    # Columns: haematoxylin, eosin optical-density vectors.
    REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
    REFERENCE_MAX = np.array([1.9705, 1.0308])

    def __init__(self, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15,
                 min_tissue_pixels: int = 100) -> None:
        self.io = float(io)  # transmitted light intensity (white)
        self.alpha = float(alpha)  # percentile of the extreme stain angles
        self.beta = float(beta)  # optical density below which a pixel is glass
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.stains = self.REFERENCE_STAINS.copy()
        self.max_concentrations = self.REFERENCE_MAX.copy()

    def fit(self, reference_rgb: np.ndarray) -> MacenkoNormalizer:
        """Take the target stains from a reference image; InputError if it has too little
        tissue to estimate them."""
        estimate = self._estimate(_as_uint8_rgb(reference_rgb))
        if estimate is None:
            raise InputError(None, "the stain reference image has too little tissue to "
                             "estimate its stains (it looks blank)")
        self.stains, self.max_concentrations = estimate
        return self

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """The image with its stains mapped to the reference's; unchanged when the image
        has too little tissue for a reliable estimate (blank, glass, one flat colour)."""
        rgb = _as_uint8_rgb(rgb)
        estimate = self._estimate(rgb)
        if estimate is None:
            return rgb.copy()
        stains, max_c = estimate
        od = self._od(rgb).reshape(-1, 3)
        conc = od @ np.linalg.pinv(stains).T  # least-squares concentrations (N, 2)
        conc *= (self.max_concentrations / max_c)[None, :]
        out = self.io * np.exp(-(conc @ self.stains.T))
        return np.clip(out + 0.5, 0, 255).astype(np.uint8).reshape(rgb.shape)

    def _od(self, rgb: np.ndarray) -> np.ndarray:
        return -np.log((rgb.astype(np.float64) + 1.0) / self.io)

    def _estimate(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        od = self._od(rgb).reshape(-1, 3)
        if od.shape[0] > 250_000:  # a regular subsample is plenty for a 3x3 covariance
            od = od[:: od.shape[0] // 250_000 + 1]
        tissue = od[np.all(od > self.beta, axis=1)]
        if tissue.shape[0] < self.min_tissue_pixels:
            return None
        with np.errstate(all="ignore"):
            _, vectors = np.linalg.eigh(np.cov(tissue.T))
        plane = vectors[:, 1:3]  # the two largest eigenvectors span the stain plane
        proj = tissue @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [self.alpha, 100.0 - self.alpha])
        v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
        v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
        # Haematoxylin absorbs red most: it is the vector with the larger first component.
        stains = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
        stains *= np.sign(stains.sum(axis=0, keepdims=True))  # eigenvector sign is arbitrary
        conc = tissue @ np.linalg.pinv(stains).T
        max_c = np.percentile(conc, 99, axis=0)
        if not (np.all(np.isfinite(stains)) and np.all(np.isfinite(max_c))
                and np.all(max_c > 1e-6) and abs(np.linalg.det(stains.T @ stains)) > 1e-8):
            return None  # degenerate (e.g. a single stain): leave images alone
        return stains, max_c

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (stored with a model that uses normalisation)."""
        return {"io": self.io, "alpha": self.alpha, "beta": self.beta,
                "stains": self.stains.tolist(),
                "max_concentrations": self.max_concentrations.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MacenkoNormalizer:
        norm = cls(io=data.get("io", 240.0), alpha=data.get("alpha", 1.0),
                   beta=data.get("beta", 0.15))
        stains = np.asarray(data["stains"], np.float64)
        max_c = np.asarray(data["max_concentrations"], np.float64)
        if stains.shape != (3, 2) or max_c.shape != (2,):
            raise InputError(None, "Macenko state must have a 3x2 stain matrix and 2 maxima")
        norm.stains, norm.max_concentrations = stains, max_c
        return norm
