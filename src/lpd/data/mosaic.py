"""Tile mosaics: real tissue texture with exact pixel masks and exact image-level tags.

A tile folder holds one sub-folder per class, ``TUM/ STR/ LYM/ NEC/`` (required) and
``OTHER/`` (optional: adipose, empty glass, mucosa, complex stroma...). A mosaic is a patch
cut into a few irregular regions (Voronoi cells of random points on smoothly warped
coordinates); each region is filled with a random crop of a random tile of its class
(random flip / 90° rotation; mirrored repeats where the tile is smaller than the region).
Some regions are background: synthetic white glass or an OTHER tile; they get label 0
(ignored by the metrics) and no tag. Glass inside a tissue tile (a tile's own empty areas:
the nct TUM tile is 56 % glass) gets label 0 too, since its class says nothing about those
pixels; the region keeps its tag. ``generator[i]`` is a pure function of (seed, i).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from lpd.classes import CLASS_NAMES
from lpd.data.synthetic import value_noise
from lpd.errors import InputError
from lpd.wsi.images import read_rgb

OTHER = "OTHER"
TILE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


class TileFolder:
    """The tile files of a folder with one sub-folder per class (and optionally OTHER/)."""

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str] = CLASS_NAMES,
        paths: dict[str, tuple[Path, ...]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.class_names = tuple(class_names)
        self.paths: dict[str, tuple[Path, ...]] = (
            _list_tiles(self.root, self.class_names) if paths is None else dict(paths)
        )

    @property
    def other(self) -> tuple[Path, ...]:
        """Background tissue tiles (the OTHER/ folder); empty when there is none."""
        return self.paths.get(OTHER, ())

    def class_paths(self, name: str) -> tuple[Path, ...]:
        return self.paths[name]

    def __len__(self) -> int:
        return sum(len(p) for p in self.paths.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in self.paths.items())
        return f"TileFolder({str(self.root)!r}: {counts})"


def _list_tiles(root: Path, class_names: tuple[str, ...]) -> dict[str, tuple[Path, ...]]:
    if not root.exists():
        raise InputError(root, "tile folder not found")
    if not root.is_dir():
        raise InputError(root, "is a file; expected a folder with TUM/ STR/ LYM/ NEC/ inside")
    layout = f"a tile folder needs {' '.join(c + '/' for c in class_names)} (and optionally " \
             f"{OTHER}/) sub-folders of image tiles"
    paths: dict[str, tuple[Path, ...]] = {}
    for name in (*class_names, OTHER):
        folder = root / name
        if not folder.is_dir():
            if name == OTHER:
                continue
            raise InputError(folder, f"missing class folder; {layout}")
        files = tuple(sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".")
            and p.suffix.lower() in TILE_EXTENSIONS
        ))
        if not files and name != OTHER:
            raise InputError(folder, "no image tiles (" + ", ".join(TILE_EXTENSIONS)
                             + ") in this class folder")
        paths[name] = files
    return paths


def split_tiles(
    folder: TileFolder, fraction: float = 0.5, seed: int = 0
) -> tuple[TileFolder, TileFolder]:
    """Split the source tiles into two disjoint sets, per class (each class keeps at least
    one tile on each side), so that mosaics built from the two never share a tile.
    ``fraction``: share of each class's tiles in the first set."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    first: dict[str, tuple[Path, ...]] = {}
    second: dict[str, tuple[Path, ...]] = {}
    for i, (name, paths) in enumerate(folder.paths.items()):
        n = len(paths)
        if name != OTHER and n < 2:
            raise InputError(folder.root / name, f"needs at least 2 tiles to split into two "
                             f"disjoint sets, found {n}")
        order = np.random.default_rng([seed, i]).permutation(n)
        k = int(round(n * fraction))
        if n >= 2:
            k = min(max(k, 1), n - 1)
        first[name] = tuple(sorted(paths[j] for j in order[:k]))
        second[name] = tuple(sorted(paths[j] for j in order[k:]))
    return (TileFolder(folder.root, folder.class_names, first),
            TileFolder(folder.root, folder.class_names, second))


class Mosaic(NamedTuple):
    rgb: np.ndarray  # uint8 HxWx3
    labels: np.ndarray  # uint8 HxW: 0 background / OTHER / glass, 1..C tissue classes
    tags: np.ndarray  # float32 [C]: 1 where the class has at least min_pixels pixels


class MosaicGenerator:
    """Reproducible mosaics from a TileFolder: ``generator[i]`` -> Mosaic(rgb, labels, tags).

    - ``size``: patch side in pixels;
    - ``min_regions``/``max_regions``: number of Voronoi cells before slivers smaller than
      ``min_pixels`` (default 1 % of the patch) are merged into their neighbours;
    - ``background_fraction``: chance that a region is background (at least one region is
      always tissue); ``other_fraction``: chance that a background region shows an OTHER
      tile rather than white glass (when OTHER tiles exist);
    - ``tile_mpp``/``target_mpp``: microns per pixel of the tiles and of the patches;
      tiles are resampled once when both are given (default: used as they are);
      ``tile_mpps`` gives single tiles their own (tiles pooled from several releases);
    - ``patchwork``: fill regions larger than a tile with several crops of the tile, each
      flipped / rotated at random (else one crop repeated mirrored);
    - ``ignore_glass``: label 0 for glass inside tissue regions (see ``glass_mask``);
    - held-apart mosaics: the same tiles with another ``seed`` (or other tiles, see
      ``split_tiles``);
    - ``other_label``: the label of OTHER-tissue regions (default 0, ignored like glass;
      ``num_classes + 1`` lets a benchmark count OTHER pixels painted as a tissue class).
      Classes without tiles are never drawn.
    """

    def __init__(
        self,
        tiles: TileFolder,
        size: int = 224,
        seed: int = 0,
        min_regions: int = 2,
        max_regions: int = 5,
        background_fraction: float = 0.2,
        other_fraction: float = 0.5,
        min_pixels: int | None = None,
        tile_mpp: float | None = None,
        target_mpp: float | None = None,
        patchwork: bool = True,
        ignore_glass: bool = True,
        tile_mpps: Mapping[Path, float] | None = None,
        other_label: int = 0,
    ) -> None:
        if size < 16:
            raise ValueError(f"size must be at least 16 px, got {size}")
        if not 1 <= min_regions <= max_regions:
            raise ValueError(f"need 1 <= min_regions <= max_regions, got {min_regions}, "
                             f"{max_regions}")
        if not 0.0 <= background_fraction < 1.0 or not 0.0 <= other_fraction <= 1.0:
            raise ValueError("background_fraction must be in [0, 1), other_fraction in [0, 1]")
        if (tile_mpp is None) != (target_mpp is None):
            raise ValueError("give both tile_mpp and target_mpp, or neither")
        if tile_mpp is not None and (tile_mpp <= 0 or target_mpp is None or target_mpp <= 0):
            raise ValueError("microns per pixel must be positive")
        self.folder = tiles
        self.class_names = tiles.class_names
        self.size = int(size)
        self.seed = int(seed)
        self.min_regions, self.max_regions = int(min_regions), int(max_regions)
        self.background_fraction = float(background_fraction)
        self.other_fraction = float(other_fraction)
        self.patchwork = bool(patchwork)
        self.ignore_glass = bool(ignore_glass)
        self.min_pixels = int(0.01 * size * size) if min_pixels is None else int(min_pixels)
        self.microns_per_pixel = target_mpp if target_mpp is not None else tile_mpp
        per_tile = dict(tile_mpps or {})

        def scale(path: Path) -> float:
            mpp = per_tile.get(path, tile_mpp)
            return 1.0 if mpp is None or target_mpp is None else mpp / target_mpp

        self.class_tiles = [
            [_load_tile(p, scale(p)) for p in tiles.class_paths(c)] for c in self.class_names
        ]
        self.other_tiles = [_load_tile(p, scale(p)) for p in tiles.other]
        # classes with tiles (a release may have only some: tcga-tumour is tumour only)
        self.available = [c for c, pool in enumerate(self.class_tiles) if pool]
        if not self.available:
            raise InputError(tiles.root, "no tiles of any class")
        self.other_label = int(other_label)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __getitem__(self, index: int) -> Mosaic:
        index = int(index)
        if index < 0:
            raise IndexError(f"mosaic index must be >= 0, got {index}")
        return self.generate(index)

    def __iter__(self) -> Iterator[Mosaic]:
        """Endless: mosaics 0, 1, 2, ..."""
        index = 0
        while True:
            yield self.generate(index)
            index += 1

    def generate(self, index: int) -> Mosaic:
        rng = np.random.default_rng([self.seed, int(index)])
        size = self.size
        regions, n, warped = _partition(
            rng, size, self.min_regions, self.max_regions, self.min_pixels)
        is_background = rng.random(n) < self.background_fraction
        counts = np.bincount(regions.ravel(), minlength=n)
        if not np.any(~is_background & (counts > 0)):
            is_background[int(np.argmax(counts))] = False  # at least one tissue region
        rgb = np.empty((size, size, 3), np.uint8)
        region_label = np.zeros(n, np.uint8)
        for r in range(n):
            ys, xs = _bbox(regions, r)
            if ys.stop <= ys.start:
                continue  # merged away
            inside = regions[ys, xs] == r
            if is_background[r]:
                if self.other_tiles and rng.random() < self.other_fraction:
                    patch = self._fill_region(self.other_tiles, ys, xs, inside, warped, rng)
                    region_label[r] = self.other_label
                else:
                    patch = _glass(ys.stop - ys.start, xs.stop - xs.start, rng)
            else:
                c = self.available[int(rng.integers(len(self.available)))]
                region_label[r] = c + 1
                patch = self._fill_region(self.class_tiles[c], ys, xs, inside, warped, rng)
            np.copyto(rgb[ys, xs], patch, where=inside[..., None])
        labels = region_label[regions]
        counts = np.bincount(labels.ravel(), minlength=self.num_classes + 1)[
            1 : self.num_classes + 1]
        tags = (counts >= self.min_pixels).astype(np.float32)
        small = (counts > 0) & (counts < self.min_pixels)
        if small.any():  # cannot happen after merging; kept so tags and labels always agree
            labels[np.isin(labels, np.flatnonzero(small) + 1)] = 0
        if self.ignore_glass:  # after the tags: a region's tag stands for its tile
            labels[glass_mask(rgb)] = 0
        return Mosaic(rgb, labels, tags)

    def _fill_region(
        self, pool: list[np.ndarray], ys: slice, xs: slice, inside: np.ndarray,
        warped: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
    ) -> np.ndarray:
        """Texture for a region's bounding box. A region larger than a tile is a patchwork
        of several crops of one tile (sub-cells with wavy seams) when ``patchwork`` is on,
        rather than one crop repeated mirrored, whose symmetry looks unnatural."""
        h, w = ys.stop - ys.start, xs.stop - xs.start
        tile = pool[int(rng.integers(len(pool)))]
        side = min(tile.shape[:2])
        if not self.patchwork or (h <= side and w <= side):
            return _fill(tile, h, w, rng)
        ny, nx = -(-h // side), -(-w // side)
        grid = np.stack(np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij"), -1)
        points = (grid.reshape(-1, 2) + rng.uniform(0.15, 0.85, (ny * nx, 2))) * \
            np.array([h / ny, w / nx])
        yy, xx = warped
        sub = _nearest(yy[ys, xs] - ys.start, xx[ys, xs] - xs.start, points, set())
        out = np.empty((h, w, 3), np.uint8)
        for j in range(len(points)):
            part = (sub == j) & inside
            sy, sx = _bbox(part, True)
            if sy.stop <= sy.start:
                continue
            # same tile, another crop and orientation: the region keeps one appearance
            crop = _fill(tile, sy.stop - sy.start, sx.stop - sx.start, rng)
            np.copyto(out[sy, sx], crop, where=part[sy, sx, None])
        return out


def _load_tile(path: Path, scale: float) -> np.ndarray:
    tile = read_rgb(path, min_size=8)
    if abs(scale - 1.0) > 0.01:
        h, w = tile.shape[:2]
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        tile = np.asarray(Image.fromarray(tile).resize(new, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(tile)


def _partition(
    rng: np.random.Generator, size: int, lo: int, hi: int, min_pixels: int
) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray]]:
    """Region index map (uint8) of warped Voronoi cells, slivers merged into neighbours;
    also the number of cells and the warped coordinates."""
    n = int(rng.integers(lo, hi + 1))
    points = _spread_points(rng, n, size)
    key = int(rng.integers(0, 2**62))
    amp = size * float(rng.uniform(0.06, 0.14))
    # Two octaves of smooth displacement: wavy, irregular boundaries, not straight lines.
    dy = amp * (2 * value_noise(0, 0, size, size, size / 2.5, key) - 1) + \
        0.35 * amp * (2 * value_noise(0, 0, size, size, size / 8, key + 1) - 1)
    dx = amp * (2 * value_noise(0, 0, size, size, size / 2.5, key + 2) - 1) + \
        0.35 * amp * (2 * value_noise(0, 0, size, size, size / 8, key + 3) - 1)
    yy = np.arange(size, dtype=np.float32)[:, None] + dy
    xx = np.arange(size, dtype=np.float32)[None, :] + dx
    dropped: set[int] = set()
    regions = _nearest(yy, xx, points, dropped)
    for _ in range(n):
        counts = np.bincount(regions.ravel(), minlength=n)
        small = [r for r in np.argsort(counts) if 0 < counts[r] < min_pixels]
        if not small or np.count_nonzero(counts) == 1:
            break
        dropped.add(int(small[0]))  # its pixels go to the next nearest points
        regions = _nearest(yy, xx, points, dropped)
    return regions, n, (yy, xx)


def _nearest(yy: np.ndarray, xx: np.ndarray, points: np.ndarray, dropped: set[int]
             ) -> np.ndarray:
    """Index of the nearest kept point per pixel (a running minimum: no big stack)."""
    best = np.full(np.broadcast_shapes(yy.shape, xx.shape), np.inf, np.float32)
    index = np.zeros(best.shape, np.uint8)
    for i, (py, px) in enumerate(points):
        if i in dropped:
            continue
        d = (yy - py) ** 2 + (xx - px) ** 2
        closer = d < best
        index[closer] = i
        np.minimum(best, d, out=best)
    return index


def _spread_points(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """n random points, each kept away from the others when possible (fewer slivers)."""
    min_gap = size / (1.6 * np.sqrt(n))
    points: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(20):
            p = rng.uniform(0, size, 2)
            if all(np.hypot(*(p - q)) >= min_gap for q in points):
                break
        points.append(p)
    return np.asarray(points, np.float32)


def _bbox(regions: np.ndarray, r: int | bool) -> tuple[slice, slice]:
    mask = regions == r
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _fill(tile: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An h x w random crop of a randomly flipped / rotated tile; where the tile is smaller,
    it is repeated mirrored (no seams, unlike plain tiling)."""
    t = np.rot90(tile, int(rng.integers(4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    rows = _mirror_index(t.shape[0], h, rng)
    cols = _mirror_index(t.shape[1], w, rng)
    return t[np.ix_(rows, cols)]


def _mirror_index(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` consecutive indices into an axis of size n, from a random start; past the
    end they reflect (n-1, n-2, ...), as in mirrored repeats of the tile."""
    if length <= n:
        return np.arange(length) + int(rng.integers(n - length + 1))
    idx = (np.arange(length) + int(rng.integers(2 * n))) % (2 * n)
    return np.where(idx < n, idx, 2 * n - 1 - idx)


GLASS_WINDOW = 9  # px: glass is judged over a neighbourhood, not pixel by pixel


def glass_mask(rgb: np.ndarray, window: int = GLASS_WINDOW) -> np.ndarray:
    """Pixels in areas of glass: at least half of the ``window`` x ``window`` neighbours
    are unstained and not dark (below ``lpd.wsi.tissue``'s saturation threshold), so
    specks and thin gaps inside tissue, and dark nuclei, stay tissue. On the bundled
    tiles: 0-3 % of a tile, 22 % of one kather2016 DEBRIS tile, 56 % of the nct TUM tile."""
    from scipy.ndimage import uniform_filter

    from lpd.wsi.tissue import DARK_MAX, tissue_mask

    unstained = ~tissue_mask(rgb) & (np.asarray(rgb).max(axis=-1) >= DARK_MAX)
    return uniform_filter(unstained.astype(np.float32), window, mode="nearest") >= 0.5


def _glass(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Empty slide background: near-white, slightly tinted, with sensor-like noise."""
    base = (rng.uniform(234, 250) + rng.uniform(-4, 3, size=3)).astype(np.float32)
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(2.5)
    out = base + noise + rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
