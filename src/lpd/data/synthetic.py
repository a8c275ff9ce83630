"""Procedural synthetic H&E-like tissue: fast, deterministic, any size. For unit tests and
for the very large lazy slides of the performance benchmarks.

Colours are made the way stains make them: each texture gives per-pixel haematoxylin and
eosin concentrations, which are turned into RGB by Beer-Lambert (``255·exp(-OD)``) with
typical H&E stain vectors, so stain augmentation and normalisation act on it as on real
tissue. Textures (label, then look):

- 0 background: near-white glass with faint noise;
- 1 TUM: dense large purple nuclei on purplish cytoplasm;
- 2 STR: pink fibrous streaks with sparse spindle nuclei along them;
- 3 LYM: small, dense, round dark nuclei;
- 4 NEC: pale mottled pink with small debris specks and nuclear fragments.

How it stays fast: each texture is rendered once per seed as a seamless periodic stamp
(TEXTURE_PERIOD px, about 0.5 s for the five textures, cached), and an image is then a
region map (smooth lattice noise, cheap) plus one table lookup per pixel.
``synthetic_tissue`` uses one shared stamp set, shifted, flipped and rotated per patch.

The virtual slide (``synthetic_slide_*``) is a function of absolute pixel coordinates only
(hash-seeded lattice noise, regions decided per 4x4 block, textures indexed by coordinate
modulo the period), so a tile depends only on ``(y, x, h, w, seed)``: overlapping tiles
agree, and a 10^5 x 10^5 slide can be written chunk by chunk (~20 ms per 1024^2 chunk).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

# Stain optical-density vectors (the usual Macenko reference), neutral grey for glass.
_HEMA = np.array([0.5626, 0.7201, 0.4062], np.float32)
_EOSIN = np.array([0.2159, 0.8012, 0.5581], np.float32)
_GREY = np.array([1.0, 1.0, 1.0], np.float32)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
TEXTURE_PERIOD = 512  # textures repeat every TEXTURE_PERIOD px (class regions do not)


# ---------------------------------------------------------------- hashing and noise
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised; uint64 arithmetic wraps by design)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _hash(key: int, *coords: np.ndarray | int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(np.uint64(key & 0xFFFFFFFFFFFFFFFF)) + _GOLD)
        for c in coords:
            h = _mix(h ^ (np.asarray(c).astype(np.int64).astype(np.uint64) * _GOLD + _GOLD))
    return h


def _unit(h: np.ndarray, salt: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1) from hashes (a different stream per salt)."""
    if salt:
        with np.errstate(over="ignore"):
            h = _mix(h + np.uint64(salt) * _GOLD)
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def _axis_interp(start: int, n: int, spacing: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Lattice index (relative to the first node), smoothstep weight, first node, node count
    for pixels start..start+n-1 along one axis."""
    pos = (np.arange(start, start + n, dtype=np.float64) + 0.5) / spacing
    base = np.floor(pos).astype(np.int64)
    t = pos - base
    s = (t * t * (3.0 - 2.0 * t)).astype(np.float32)
    first = int(base[0])
    return base - first, s, first, int(base[-1]) - first + 2


def value_noise(
    y: int, x: int, h: int, w: int, spacing: float, key: int, period: int | None = None
) -> np.ndarray:
    """Smooth noise in [0, 1) on the pixel grid [y, y+h) x [x, x+w); depends only on
    absolute coordinates. ``period`` (in lattice nodes) makes it periodic."""
    ry, sy, iy0, ny = _axis_interp(y, h, spacing)
    rx, sx, ix0, nx = _axis_interp(x, w, spacing)
    iy = np.arange(iy0, iy0 + ny)
    ix = np.arange(ix0, ix0 + nx)
    if period:
        iy, ix = iy % period, ix % period
    lattice = _unit(_hash(key, iy[:, None], ix[None, :]))
    # Separable interpolation by gathers (skinny BLAS matmuls are slow on small machines).
    rows = lattice[ry] * (1 - sy)[:, None] + lattice[ry + 1] * sy[:, None]  # (h, nx)
    return rows[:, rx] * (1 - sx) + rows[:, rx + 1] * sx


def _nuclei(
    yy: np.ndarray, xx: np.ndarray, key: int, cell: float, density: float,
    r_min: float, r_max: float, elong: float, period: int | None,
    angle: float | None = None, offset: int = 0,
) -> np.ndarray:
    """Soft elliptic blobs, at most one per ``cell``-sized square, fully inside it."""
    ncell = 0
    if period:  # a whole number of cells per period: seamless
        ncell = max(1, round(period / cell))
        cell = period / ncell
    cy = np.floor((yy + offset) / cell).astype(np.int64)  # coordinates may be warped floats
    cx = np.floor((xx + offset) / cell).astype(np.int64)
    y0, x0 = int(cy.min()), int(cx.min())
    gy = np.arange(y0, int(cy.max()) + 1)
    gx = np.arange(x0, int(cx.max()) + 1)
    if ncell:
        gy, gx = gy % ncell, gx % ncell
    h = _hash(key, gy[:, None], gx[None, :])  # per-cell parameters, then gathered
    present = (_unit(h, 1) < density).astype(np.float32)
    a = r_min + _unit(h, 2) * (r_max - r_min)
    b = a * (1.0 - elong * (0.5 + 0.5 * _unit(h, 3)))
    theta = _unit(h, 4) * np.pi if angle is None else angle + (_unit(h, 4) - 0.5) * 0.4
    margin = a + 0.5
    oy = margin + _unit(h, 5) * np.maximum(cell - 2 * margin, 0)
    ox = margin + _unit(h, 6) * np.maximum(cell - 2 * margin, 0)
    shade = 0.75 + 0.5 * _unit(h, 7)
    ry, rx = cy - y0, cx - x0
    dy = (yy + offset - cy * cell) - oy[ry, rx]
    dx = (xx + offset - cx * cell) - ox[ry, rx]
    c, s = np.cos(theta)[ry, rx], np.sin(theta)[ry, rx]
    u = (dy * c + dx * s) / a[ry, rx]
    v = (dx * c - dy * s) / b[ry, rx]
    inside = np.clip((1.0 - (u * u + v * v)) * 4.0, 0.0, 1.0)
    return (inside * (present * shade)[ry, rx]).astype(np.float32)


# ---------------------------------------------------------------- textures
def _texture(kind: int, yy: np.ndarray, xx: np.ndarray, key: int, period: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(haematoxylin, eosin) optical densities of texture ``kind`` on the period x period
    grid (yy, xx: its flat coordinates); every pattern wraps around seamlessly."""
    k = key * 8 + kind
    n = np.random.default_rng(k & 0xFFFFFFFF).random(yy.shape, np.float32)

    def vn(spacing: float, salt: int) -> np.ndarray:
        nodes = max(1, round(period / spacing))  # whole lattice cells per period: seamless
        return value_noise(0, 0, period, period, period / nodes, k * 31 + salt, nodes).ravel()

    def warp(spacing: float, amount: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        # Smoothly displaced coordinates break the regular grid of the nucleus cells.
        return (yy + amount * (2 * vn(spacing, salt) - 1),
                xx + amount * (2 * vn(spacing, salt + 1) - 1))

    if kind == 0:  # glass
        return 0.01 + 0.015 * n, 0.015 + 0.02 * n + 0.02 * vn(64, 1)
    if kind == 1:  # TUM
        wy, wx = warp(44, 12.0, 10)
        nuc = np.maximum(
            _nuclei(wy, wx, k, 22, 0.85, 6.0, 9.5, 0.4, period),
            _nuclei(wy, wx, k + 1, 22, 0.45, 5.0, 8.0, 0.4, period, offset=11),
        )
        chrom = 0.75 + 0.5 * n
        hema = 0.28 + 0.08 * vn(20, 2) + nuc * 0.95 * chrom
        eos = 0.38 + 0.12 * vn(28, 3) - 0.2 * nuc
        return hema, eos
    if kind == 2:  # STR
        theta = float(_unit(_hash(k, 7))) * np.pi
        lam = 11.0
        # a whole number of waves per period keeps the stripes seamless
        fy = round(np.sin(theta) / lam * period) / period
        fx = round(np.cos(theta) / lam * period) / period
        phase = 2 * np.pi * (yy * fy + xx * fx) + 8.0 * vn(72, 4) + 2.0 * vn(24, 5)
        s = (0.5 + 0.5 * np.sin(phase).astype(np.float32)) * (0.5 + 0.5 * vn(40, 6))
        along = float(np.arctan2(-fy, fx))  # spindle nuclei lie along the fibres
        nuc = _nuclei(yy, xx, k, 32, 0.3, 9.0, 14.0, 0.8, period, angle=along)
        eos = 0.25 + 0.5 * s * s + 0.08 * n
        hema = 0.04 + 0.03 * n + nuc * 0.95
        return hema, eos
    if kind == 3:  # LYM
        wy, wx = warp(18, 6.0, 10)
        nuc = np.maximum(
            _nuclei(wy, wx, k, 10, 0.85, 2.8, 3.8, 0.15, period),
            _nuclei(wy, wx, k + 1, 10, 0.45, 2.5, 3.5, 0.15, period, offset=5),
        )
        hema = 0.15 + 0.05 * vn(24, 5) + nuc * (1.25 + 0.3 * n)
        eos = 0.22 + 0.06 * n - 0.1 * nuc
        return hema, eos
    # NEC
    wy, wx = warp(16, 5.0, 10)
    specks = _nuclei(wy, wx, k, 7, 0.3, 1.0, 2.6, 0.5, period)
    frags = _nuclei(yy, xx, k + 1, 18, 0.18, 2.0, 4.5, 0.6, period)
    eos = 0.25 + 0.18 * vn(20, 6) + 0.1 * vn(6, 7) + 0.04 * n
    hema = 0.07 + 0.08 * vn(12, 8) + specks * (0.35 + 0.5 * n) + frags * 0.75
    return hema, eos


@functools.lru_cache(maxsize=4)
def _stamps(seed: int) -> np.ndarray:
    """Seamless periodic textures of the 5 labels as one (5 * P * P, 3) uint8 table, built
    once per seed (about half a second) and then only indexed."""
    p = TEXTURE_PERIOD
    yy, xx = np.divmod(np.arange(p * p, dtype=np.int64), p)
    key = int(_hash(seed, 12345)) >> 3
    out = np.empty((5, p * p, 3), np.uint8)
    for kind in range(5):
        hema, eos = _texture(kind, yy, xx, key, p)
        od = hema[:, None] * _HEMA + eos[:, None] * _EOSIN + 0.035 * _GREY
        out[kind] = np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)
    out = out.reshape(5 * p * p, 3)
    out.setflags(write=False)
    return out


def _argmax0(fields: np.ndarray) -> np.ndarray:
    """argmax over axis 0 (a loop over few contiguous planes beats a strided argmax)."""
    best = fields[0].copy()
    index = np.zeros(best.shape, np.uint8)
    for i in range(1, fields.shape[0]):
        better = fields[i] > best
        index[better] = i
        np.maximum(best, fields[i], out=best)
    return index


def _paint(labels: np.ndarray, rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """RGB of a label map from the texture table; pixel (i, j) shows texture position
    rows[i] + cols[j] (flat index into a period x period stamp)."""
    p = TEXTURE_PERIOD
    index = labels.astype(np.int32) * np.int32(p * p)
    index += rows.astype(np.int32)[:, None]
    index += cols.astype(np.int32)[None, :]
    h, w = labels.shape
    return np.take(_stamps(seed), index.ravel(), axis=0).reshape(h, w, 3)


# ---------------------------------------------------------------- patches
def synthetic_tissue(
    size: int | tuple[int, int],
    seed: int,
    classes: Sequence[int] | None = None,
    background: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic H&E-like patch and its exact labels (0 background, 1..4 TUM..NEC).

    ``classes``: tissue classes to include, as tag indices 0..3 (each gets at least 3 % of
    the patch); None picks 1-4 at random. ``background``: include a white glass region;
    None picks at random (about half of the patches). Deterministic in ``seed``. Textures
    come from one shared periodic set (built on first use), shifted, flipped and rotated
    per patch, with a per-patch stain strength."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    rng = np.random.default_rng(seed)
    if classes is None:
        chosen = sorted(rng.choice(4, size=int(rng.integers(1, 5)), replace=False).tolist())
    else:
        chosen = sorted({int(c) for c in classes})
        if not chosen or chosen[0] < 0 or chosen[-1] > 3:
            raise ValueError(f"classes must be tag indices 0..3, got {list(classes)}")
    if background is None:
        background = bool(rng.random() < 0.5)
    kinds = [c + 1 for c in chosen] + ([0] if background else [])
    key = int(rng.integers(0, 2**62))
    scale = max(h, w) / 2.0
    fields = np.stack([
        value_noise(0, 0, h, w, scale, key + 101 * i)
        + 0.4 * value_noise(0, 0, h, w, scale / 3.5, key + 101 * i + 1)
        for i in range(len(kinds))
    ])
    if len(kinds) > 1:
        _ensure_all_win(fields)
    labels = np.asarray(kinds, np.uint8)[_argmax0(fields)]
    # Texture placement: random shift and one of the 8 flips/rotations of the square.
    p = TEXTURE_PERIOD
    oy, ox = (int(v) for v in rng.integers(0, p, size=2))
    ys = (np.arange(h) + oy) % p
    xs = (np.arange(w) + ox) % p
    if rng.random() < 0.5:
        ys = p - 1 - ys
    if rng.random() < 0.5:
        xs = p - 1 - xs
    # transposed placement: image rows walk along stamp columns
    rows, cols = (ys, xs * p) if rng.random() < 0.5 else (ys * p, xs)
    rgb = _paint(labels, rows, cols, 0)
    # Per-patch stain strength: OD scaled by g (I' = 255 (I/255)^g), a per-channel LUT.
    gains = rng.uniform(0.88, 1.12) * rng.uniform(0.97, 1.03, size=3)
    levels = np.arange(256, dtype=np.float32) / 255.0
    for c in range(3):
        lut = np.clip(255.0 * levels ** gains[c] + 0.5, 0, 255).astype(np.uint8)
        rgb[..., c] = lut[rgb[..., c]]
    return rgb, labels


def _ensure_all_win(fields: np.ndarray, min_fraction: float = 0.03) -> None:
    """Raise the fields of classes that own (almost) no pixel, in place, until each owns at
    least ``min_fraction`` of the patch (so every requested class really appears)."""
    n = fields.shape[0]
    need = max(1, int(min_fraction * fields[0].size))
    for _ in range(4 * n):
        counts = np.bincount(_argmax0(fields).ravel(), minlength=n)
        short = [i for i in range(n) if counts[i] < need]
        if not short:
            return
        i = short[0]
        others = np.max(np.delete(fields, i, axis=0), axis=0)
        gap = (others - fields[i]).ravel()
        fields[i] += np.partition(gap, min(gap.size - 1, 2 * need))[min(gap.size - 1, 2 * need)]
        fields[i] += 1e-4


# ---------------------------------------------------------------- virtual slide
SLIDE_LABEL_STEP = 4  # slide labels are decided on a 4-px grid (16x less noise to compute)


def synthetic_slide_labels(y: int, x: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Labels (uint8, 0 background, 1..4) of the region [y, y+h) x [x, x+w) of an unbounded
    virtual slide: tissue islands of a few thousand px holding regions of the 4 classes.
    Regions are decided per 4x4 block of the absolute pixel grid (boundaries step by 4 px)."""
    if h <= 0 or w <= 0 or y < 0 or x < 0:
        raise ValueError(f"bad slide region y={y} x={x} h={h} w={w}")
    step = SLIDE_LABEL_STEP
    cy0, cx0 = y // step, x // step
    ch, cw = (y + h - 1) // step - cy0 + 1, (x + w - 1) // step - cx0 + 1
    key = int(_hash(seed, 777)) >> 3

    def field(spacing: float, k: int) -> np.ndarray:
        return value_noise(cy0, cx0, ch, cw, spacing / step, k)  # on the coarse grid

    tissue = field(3000, key) + 0.45 * field(700, key + 1) + 0.12 * field(120, key + 2)
    fields = np.stack([
        field(1500, key + 10 * c + 3) + 0.4 * field(380, key + 10 * c + 4)
        + 0.1 * field(90, key + 10 * c + 5)
        for c in range(4)
    ])
    coarse = _argmax0(fields) + np.uint8(1)
    coarse[tissue < 0.72] = 0  # roughly half of the slide is background glass
    rows = np.arange(y, y + h) // step - cy0
    cols = np.arange(x, x + w) // step - cx0
    return coarse[rows[:, None], cols[None, :]]


def synthetic_slide_tile(y: int, x: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 tile [y, y+h) x [x, x+w) of the virtual slide (see synthetic_slide_labels).
    Depends only on absolute coordinates: any tiling of the slide gives the same pixels."""
    return synthetic_slide_region(y, x, h, w, seed)[0]


def synthetic_slide_region(
    y: int, x: int, h: int, w: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, labels) of a region of the virtual slide, computing the labels once."""
    labels = synthetic_slide_labels(y, x, h, w, seed)
    p = TEXTURE_PERIOD
    rows = (np.arange(y, y + h) % p) * p
    cols = np.arange(x, x + w) % p
    return _paint(labels, rows, cols, seed), labels
