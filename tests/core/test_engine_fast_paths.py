"""The engine's cheaper paths give what the plain ones give, bit for bit: tiles decoded
directly (``lpd.wsi._tiles``) against tifffile's zarr store, chunk files written directly
(``lpd.io._writes.ChunkFiles``) against zarr's own writes, the CPU's label step (numpy,
background only near its threshold) against the tensor one and the plain formulation,
and the reused model-input buffer."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from lpd.infer._forward import ModelInput
from lpd.infer._labels import _labels_torch, background_band, labels_of_fused
from lpd.io._writes import ChunkFiles
from lpd.wsi.slide import open_slide

SLIDES = Path(__file__).parents[2] / "src" / "lpd" / "sample_data" / "slides"


def _region_pairs(slide, level: int, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """Regions of a level read directly and through the zarr store."""
    handle, source = slide._handle, slide._handle.sources[level]
    h, w = source.shape[:2]
    direct = handle.tiles(level)
    assert direct is not None
    boxes = [(0, h, 0, w), (h - 1, h + 5, w - 3, w), (5, 6, 0, w)]
    for _ in range(6):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        boxes.append((y0, y0 + int(rng.integers(1, 600)), x0, x0 + int(rng.integers(1, 600))))
    pairs = []
    for y0, y1, x0, x1 in boxes:
        fast = source[y0:y1, x0:x1, :]
        handle._direct[level] = None  # the zarr store's path
        plain = source[y0:y1, x0:x1, :]
        handle._direct[level] = direct
        pairs.append((fast, plain))
    return pairs


@pytest.mark.parametrize("compression", ["jpeg", "zlib"])
def test_direct_tiles_equal_the_zarr_store(tmp_path, compression) -> None:
    """Edge tiles cut, regions inside, across and past the level, a reduced level."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (530, 610, 3), dtype=np.uint8)
    image[100:300] //= 3  # some structure for the JPEG coder
    path = tmp_path / f"tiled-{compression}.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(240, 240), compression=compression, photometric="rgb",
                  subifds=1)
        tif.write(image[::2, ::2].copy(), tile=(240, 240), compression=compression,
                  photometric="rgb", subfiletype=1)
    with open_slide(path) as slide:
        for level in range(len(slide.levels)):
            for fast, plain in _region_pairs(slide, level, rng):
                assert fast.shape == plain.shape and np.array_equal(fast, plain)


def test_direct_tiles_on_the_sample_svs() -> None:
    rng = np.random.default_rng(1)
    with open_slide(SLIDES / "cmu-1-small-region.svs") as slide:
        for fast, plain in _region_pairs(slide, 0, rng):
            assert np.array_equal(fast, plain)


def test_uncompressed_levels_are_read_through_zarr(tmp_path) -> None:
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, np.zeros((300, 300, 3), np.uint8), tile=(128, 128),
                     photometric="rgb")
    with open_slide(path) as slide:
        assert slide._handle.tiles(0) is None
        assert slide.read_region(0, 0, 0, 10, 10).shape == (10, 10, 3)


@pytest.mark.parametrize("shape", [(1000, 700), (96, 480)])
def test_chunk_files_are_zarrs_own_bytes(tmp_path, shape) -> None:
    """The same files (and none for a chunk of zeros), the same array read back."""
    roots = []
    for mode in ("zarr", "direct"):
        rng = np.random.default_rng(2)
        group = zarr.open_group(str(tmp_path / mode), mode="w", zarr_format=3)
        array = group.create_array("l/0", shape=shape, chunks=(480, 480), dtype="uint8",
                                   fill_value=0)
        files = ChunkFiles.for_array(array)
        assert files is not None
        for ci in range(-(-shape[0] // 480)):
            for cj in range(-(-shape[1] // 480)):
                y0, x0 = ci * 480, cj * 480
                size = (min(480, shape[0] - y0), min(480, shape[1] - x0))
                block = rng.integers(0, 5, size).astype(np.uint8) * bool((ci + cj) % 2)
                if mode == "zarr":
                    array[y0 : y0 + size[0], x0 : x0 + size[1]] = block
                else:
                    files.write((ci, cj), block)
        roots.append(tmp_path / mode)
    listing = [sorted(str(p.relative_to(r)) for p in r.rglob("*") if p.is_file()) for r in roots]
    assert listing[0] == listing[1]
    assert all(filecmp.cmp(roots[0] / f, roots[1] / f, shallow=False) for f in listing[0])
    read = [zarr.open_array(str(r / "l" / "0"))[...] for r in roots]
    assert np.array_equal(read[0], read[1])


def test_other_arrays_are_written_by_zarr(tmp_path) -> None:
    group = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    floats = group.create_array("f", shape=(10, 10), chunks=(5, 5), dtype="float16")
    v2 = zarr.open_group(str(tmp_path / "v2"), mode="w", zarr_format=2)
    old = v2.create_array("a", shape=(10, 10), chunks=(5, 5), dtype="uint8")
    assert ChunkFiles.for_array(floats) is None and ChunkFiles.for_array(old) is None


def _plain_labels(fused: torch.Tensor, power: float) -> torch.Tensor:
    """The per-tile step's end as first written (``max(dim=1)``, background always)."""
    best, index = fused.max(dim=1)
    background = (1 - best.clamp_min(0)) ** power
    return torch.where(best > background, index + 1, 0).to(torch.uint8)


@pytest.mark.parametrize("power", [10.0, 2.0, 0.5, 0.0])
def test_label_step_near_the_background_threshold(power) -> None:
    """Best values packed around the threshold (the band, its edges, float32 neighbours),
    ties between classes, NaN and values above 1: numpy (CPU), tensor (GPU) and plain
    formulations agree bit for bit, with and without the band's shortcut."""
    gen = torch.Generator().manual_seed(4)
    band = background_band(power)
    centre = band[0] if band else 0.3
    fused = torch.rand(3, 4, 40, 48, generator=gen) * 0.9
    near = centre + (torch.randint(-300, 300, (3, 40, 48), generator=gen).float() * 1e-8)
    fused[:, 2] = near
    fused[:, 1, :20] = near[:, :20]  # ties: the first class wins
    offset = torch.zeros(3, 4)
    plain = _plain_labels(fused.clone(), power)
    assert torch.equal(labels_of_fused(fused.clone(), offset, power), plain)
    clear = fused.clone()
    clear[:, 2] = torch.where((near - centre).abs() < 1e-5, centre + 0.01, near)
    clear[:, 1, :20] = clear[:, 2, :20]
    assert torch.equal(labels_of_fused(clear.clone(), offset, power),
                       _plain_labels(clear.clone(), power))  # the shortcut's path
    odd = fused.clone()
    odd[0, :, 0, 0], odd[1, 3, 5, 5], odd[2, 0, 7, 7] = float("nan"), 1.5, -3.0
    best = odd.amax(dim=1)
    background = best.clamp_min(0).neg_().add_(1).pow_(power)
    assert torch.equal(_labels_torch(odd.clone(), best, background), _plain_labels(odd, power))
    assert torch.equal(labels_of_fused(odd.clone(), offset, power), _plain_labels(odd, power))


def test_background_band_holds_in_float32() -> None:
    """Outside the band the outcome is the one the shortcut assumes (dense float32 grid)."""
    for power in (10.0, 3.0, 1.0, 25.0):
        centre, low, high = background_band(power)
        b = torch.linspace(0.0, 1.0, 2_000_001)
        b = torch.cat([b, centre + torch.arange(-4000, 4000) * 1e-9])
        outside = (b < low) | (b > high)
        assert low < centre < high and high - low < 1e-4
        exact = b > (1 - b.clamp_min(0)) ** power
        assert torch.equal(exact[outside], (b > centre)[outside])
    assert background_band(0.0) is None and background_band(float("inf")) is None


def test_model_input_buffer_gives_fresh_results(tiny_model) -> None:
    make = ModelInput(tiny_model, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (n, 64, 64, 3), generator=gen, dtype=torch.uint8)
               for n in (2, 2, 3)]
    for pixels in batches:
        got = make(pixels)
        plain = (pixels.permute(0, 3, 1, 2).float() - make.shift) / make.div
        assert torch.equal(got, plain) and got.dtype == torch.float32
