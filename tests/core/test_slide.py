"""Slide reader (lpd.wsi.slide) and generated pyramids (lpd.data.pyramid): the two bundled
real slides, a generated 100,000 x 100,000 pyramid, other TIFF layouts, and bad files."""

from __future__ import annotations

import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lpd.data import pyramid as pyramid_mod
from lpd.data.pyramid import CONSTANT_RGB, pyramid_shapes, write_synthetic_pyramid
from lpd.data.sample import CMU_SLIDE, TCGA_SLIDE
from lpd.errors import InputError
from lpd.wsi import _tiff as slide_mod
from lpd.wsi.slide import Slide, open_slide

BIG = (100_000, 100_000)


pytestmark = pytest.mark.usefixtures("quiet_tifffile")


@pytest.fixture(scope="session")
def big_pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.tif"
    start = time.perf_counter()
    write_synthetic_pyramid(path, size=BIG, content="constant")
    print(f"\n100k x 100k JPEG pyramid written in {time.perf_counter() - start:.2f} s "
          f"({path.stat().st_size / 2**20:.0f} MiB)")
    return path


@pytest.fixture(scope="session")
def small_pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.tif"
    write_synthetic_pyramid(path, size=(1500, 2048), tile=256, mpp=0.25, seed=3)
    return path


class ReadCounter:
    """Counts the chunk reads that reach the file (every read goes through _raw)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[slice, slice]] = []
        original = slide_mod._LevelSource._raw

        def counting(source, ys, xs):
            self.calls.append((ys, xs))
            return original(source, ys, xs)

        monkeypatch.setattr(slide_mod._LevelSource, "_raw", counting)


# ------------------------------------------------------------------ the real slides
def test_cmu_slide_one_level_with_mpp():
    with open_slide(CMU_SLIDE) as slide:
        assert slide.vendor == "aperio"
        # the thumbnail, label and macro images are not pyramid levels
        assert len(slide.levels) == 1 and slide.downsamples == [1.0]
        assert slide.shape == (2967, 2220)
        assert slide.levels[0].dtype == np.uint8 and slide.levels[0].shape == (2967, 2220, 3)
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_source == "metadata"
        assert slide.metadata["objective_power"] == 20
        assert slide.metadata["tile"] == (240, 240)
        assert slide.levels[0].chunksize == (720, 720, 3)  # 3x3 file tiles, 1.5 MiB
        with tifffile.TiffFile(CMU_SLIDE) as tif:
            ref = tif.pages[0].asarray()
        for y, x, h, w in [(0, 0, 240, 240), (700, 1000, 333, 517), (2900, 2100, 67, 120)]:
            np.testing.assert_array_equal(slide.read_region(0, y, x, h, w), ref[y:y + h, x:x + w])
        np.testing.assert_array_equal(slide.levels[0][1000:1500, 300:900].compute(),
                                      ref[1000:1500, 300:900])


def test_tcga_slide_two_levels_unknown_mpp():
    with open_slide(TCGA_SLIDE) as slide:
        assert slide.vendor == "aperio"
        assert [lv.shape[:2] for lv in slide.levels] == [(3567, 4443), (1783, 2221)]
        assert slide.downsamples == [1.0, 2.0]
        assert slide.mpp is None and slide.mpp_source == "unknown"
        assert slide.level_mpp(1) is None
        assert slide.metadata["compression"].startswith("APERIO_JP2000")
        with pytest.raises(InputError, match="microns per pixel unknown"):
            slide.best_level_for_mpp(1.0)
        with tifffile.TiffFile(TCGA_SLIDE) as tif:
            ref1 = tif.series[0].levels[1].asarray()
            corner = _decode_tiles(tif.pages[0], 3000, 4000, 567, 443)
        np.testing.assert_array_equal(slide.read_region(1, 500, 700, 300, 400),
                                      ref1[500:800, 700:1100])
        np.testing.assert_array_equal(slide.levels[1].compute(), ref1)
        np.testing.assert_array_equal(slide.read_region(0, 3000, 4000, 1000, 1000),
                                      corner)  # clipped at the corner


def _decode_tiles(page, y: int, x: int, h: int, w: int) -> np.ndarray:
    """Reference pixels decoded tile by tile with tifffile itself (no zarr, no dask)."""
    th, tw = page.tilelength, page.tilewidth
    per_row = -(-page.imagewidth // tw)
    out = np.zeros((-(-page.imagelength // th) * th, per_row * tw, 3), np.uint8)
    fh = page.parent.filehandle
    for ty in range(y // th, -(-(y + h) // th)):
        for tx in range(x // tw, -(-(x + w) // tw)):
            i = ty * per_row + tx
            (data, _), = fh.read_segments([page.dataoffsets[i]], [page.databytecounts[i]])
            tile = page.decode(data, i, jpegtables=page.jpegtables)[0]
            out[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw] = tile[0, ..., :3]
    return out[y:y + h, x:x + w]


def test_mpp_override_and_level_choice():
    with open_slide(TCGA_SLIDE, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "override"
        assert slide.metadata["mpp_metadata"] is None
        assert slide.level_mpp(1) == pytest.approx(0.5)
        assert slide.best_level_for_mpp(0.5) == (1, 1.0)
        assert slide.best_level_for_mpp(0.503) == (1, 1.0)  # within 1 %
        level, factor = slide.best_level_for_mpp(1.0)
        assert level == 1 and factor == pytest.approx(0.5)
        level, factor = slide.best_level_for_mpp(0.4)  # never upsample level 1
        assert level == 0 and factor == pytest.approx(0.625)
        level, factor = slide.best_level_for_mpp(0.2)  # finer than level 0: upsample
        assert level == 0 and factor == pytest.approx(1.25)
    with open_slide(CMU_SLIDE, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.metadata["mpp_metadata"] == pytest.approx(0.499)
    for bad in (0, -1.0, float("nan"), "0.5"):
        with pytest.raises(InputError, match="mpp override"):
            open_slide(CMU_SLIDE, mpp=bad)


# ------------------------------------------------------------------ generated pyramids
def test_big_pyramid_opens_fast_and_reads_little(big_pyramid, monkeypatch):
    counter = ReadCounter(monkeypatch)
    start = time.perf_counter()
    slide = open_slide(big_pyramid)
    elapsed = time.perf_counter() - start
    print(f"\nopened the 100k x 100k pyramid in {elapsed * 1000:.1f} ms")
    assert counter.calls == []  # opening reads no pixel data (the cost that would grow)
    assert slide.shape == BIG and slide.vendor == "tiff"
    assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
    assert [lv.shape[:2] for lv in slide.levels] == pyramid_shapes(BIG, 512)
    assert slide.downsamples == [float(2**i) for i in range(9)]
    assert all(lv.chunksize == (512, 512, 3) for lv in slide.levels[:-1])  # 768 KiB chunks
    assert slide.levels[0].numblocks == (196, 196, 1)

    # a small region of level 0 reads one or four tiles, not the slide
    region = slide.levels[0][50_000:50_100, 60_000:60_100]
    np.testing.assert_allclose(region.compute(), np.broadcast_to(CONSTANT_RGB, (100, 100, 3)),
                               atol=3)
    assert len(counter.calls) == 1
    slide.levels[0][51_000:51_300, 51_000:51_300].compute()  # crosses a chunk corner
    assert len(counter.calls) == 1 + 4
    slide.read_region(0, 51_000, 51_000, 300, 300)  # one direct read of the region
    assert len(counter.calls) == 1 + 4 + 1
    # each level is read from its own page: a coarse level never touches level 0
    coarse = slide.levels[5][:100, :100]
    graph = dict(coarse.__dask_optimize__(coarse.__dask_graph__(), coarse.__dask_keys__()))
    assert not any(slide.levels[0].name in str(key) for key in graph)
    assert slide.levels[-1].compute().shape == (391, 391, 3)
    assert slide.best_level_for_mpp(8.0) == (4, 1.0)
    slide.close()


def test_synthetic_pyramid_levels_agree(small_pyramid):
    from lpd.data.synthetic import synthetic_slide_tile

    with open_slide(small_pyramid) as slide:
        assert [lv.shape[:2] for lv in slide.levels] == [
            (1500, 2048), (750, 1024), (375, 512), (188, 256)]  # until it fits in a tile
        assert slide.downsamples == [1.0, 2.0, 4.0, 8.0] and slide.mpp == pytest.approx(0.25)
        assert slide.levels[0].chunksize == (512, 512, 3)  # 2x2 file tiles of 256
        level0 = slide.levels[0].compute()
        expected = synthetic_slide_tile(0, 0, 1500, 2048, seed=3)
        assert np.abs(level0.astype(int) - expected).mean() < 4  # JPEG q90
        level1 = slide.levels[1].compute().astype(int)
        halved = level0.reshape(750, 2, 1024, 2, 3).mean(axis=(1, 3))
        assert np.abs(level1 - halved).mean() < 4
        np.testing.assert_array_equal(slide.read_region(1, 700, 1000, 100, 100),
                                      level1[700:, 1000:])


def test_level_pickles_and_reopens(small_pyramid):
    with open_slide(small_pyramid) as slide:
        level = pickle.loads(pickle.dumps(slide.levels[1]))
        expected = slide.read_region(1, 100, 200, 300, 300)
    # the slide is closed: the unpickled copy reopens the file by itself (as a dask worker)
    np.testing.assert_array_equal(level[100:400, 200:500].compute(), expected)
    with pytest.raises(ValueError, match="closed"):
        slide.levels[1][:10, :10].compute()


def test_pyramid_writer_arguments(tmp_path, monkeypatch):
    assert pyramid_shapes((1000, 3000), tile=512) == [
        (1000, 3000), (500, 1500), (250, 750), (125, 375)]
    assert pyramid_shapes((100, 100), tile=512, levels=2) == [(100, 100), (50, 50)]
    with pytest.raises(ValueError):
        write_synthetic_pyramid(tmp_path / "x.tif", size=(64, 64), tile=100)
    with pytest.raises(ValueError):
        write_synthetic_pyramid(tmp_path / "x.tif", size=(64, 64), content="noise")
    path = write_synthetic_pyramid(tmp_path / "raw.tif", size=(300, 200), tile=64, mpp=None,
                                   compression=None, content="constant", levels=2)
    with open_slide(path) as slide:
        assert slide.mpp is None and len(slide.levels) == 2
        assert (slide.levels[1].compute() == CONSTANT_RGB).all()
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writer left no temp file

    # reduced levels of big synthetic slides go through a memory-mapped scratch file
    monkeypatch.setattr(pyramid_mod, "_MEMMAP_ABOVE", 0)
    calls = []
    path = write_synthetic_pyramid(tmp_path / "mm.tif", size=(200, 300), tile=64, mpp=1.0,
                                   compression=None, progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (len(calls), len(calls)) == (4 * 5 + 2 * 3 + 1 * 2 + 1, 29)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.tif", "raw.tif"]
    with open_slide(path) as slide:
        level0 = slide.levels[0].compute().astype(int)
        halved = level0.reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
        assert np.abs(slide.levels[1].compute() - halved).max() <= 1  # uncompressed: exact


# ------------------------------------------------------------------ other layouts
def test_ome_tiff_pyramid(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (600, 500, 3), dtype=np.uint8)
    path = tmp_path / "x.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=1, tile=(256, 256), photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                            "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"})
        tif.write(data[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.vendor == "ome" and slide.mpp == pytest.approx(0.25)
        assert slide.downsamples == [1.0, 2.0]
        np.testing.assert_array_equal(slide.levels[0].compute(), data)
        np.testing.assert_array_equal(slide.levels[1].compute(), data[::2, ::2])


def test_resolution_tags_in_inches_and_placeholders(tmp_path):
    data = np.zeros((64, 64, 3), np.uint8)
    tifffile.imwrite(tmp_path / "inch.tif", data, resolution=(50_800, 50_800),
                     resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "dpi.tif", data, resolution=(72, 72), resolutionunit="INCH")
    with open_slide(tmp_path / "inch.tif") as slide:
        assert slide.mpp == pytest.approx(0.5)
    with open_slide(tmp_path / "dpi.tif") as slide:
        assert slide.mpp is None and slide.metadata["mpp_ignored"] == pytest.approx(352.78, 1e-3)


def test_sample_layouts_become_rgb8(tmp_path):
    gray16 = (np.arange(128 * 96, dtype=np.uint32).reshape(128, 96) * 5).astype(np.uint16)
    tifffile.imwrite(tmp_path / "gray16.tif", gray16, tile=(32, 32))
    with open_slide(tmp_path / "gray16.tif") as slide:
        rgb = slide.levels[0].compute()
        assert rgb.dtype == np.uint8 and rgb.shape == (128, 96, 3)
        np.testing.assert_array_equal(rgb[..., 1], np.rint(gray16 / 257.0).astype(np.uint8))

    planar = np.random.default_rng(1).integers(0, 255, (3, 80, 70), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate",
                     rowsperstrip=16)
    with open_slide(tmp_path / "planar.tif") as slide:
        assert slide.levels[0].chunksize[1] == 70  # strips span the full width
        np.testing.assert_array_equal(slide.levels[0].compute(), np.moveaxis(planar, 0, -1))

    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0], rgba[:20, :, 3] = 200, 255  # bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with open_slide(tmp_path / "rgba.png") as slide:
        rgb = slide.levels[0].compute()
        assert slide.vendor == "png" and slide.mpp_source == "unknown"
        assert tuple(rgb[0, 0]) == (200, 0, 0) and tuple(rgb[-1, -1]) == (255, 255, 255)

    Image.fromarray(np.full((30, 20), 77, np.uint8)).save(tmp_path / "gray.jpg", quality=95)
    with open_slide(tmp_path / "gray.jpg") as slide:
        assert slide.vendor == "jpeg" and slide.read_region(0, 0, 0, 5, 5).shape == (5, 5, 3)


def test_png_named_svs_opens(tmp_path):
    path = tmp_path / "actually_png.svs"
    Image.fromarray(np.full((20, 30, 3), 9, np.uint8)).save(path, format="PNG")
    with open_slide(path) as slide:
        assert slide.vendor == "png" and slide.shape == (20, 30)


@pytest.mark.parametrize("shape, kwargs, match", [
    ((5, 64, 64), {"photometric": "minisblack", "planarconfig": "separate"}, "5 samples"),
    ((64, 64, 3), {"photometric": "rgb", "dtype": np.float32}, "not supported"),
    ((64, 64), {"dtype": np.int16}, "not supported"),
])
def test_unsupported_layouts_refused(tmp_path, shape, kwargs, match):
    kwargs = dict(kwargs)
    data = np.ones(shape, kwargs.pop("dtype", np.uint8))
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, data, **kwargs)
    with pytest.raises(InputError, match=match) as info:
        open_slide(path)
    assert "odd.tif" in str(info.value)


# ------------------------------------------------------------------ bad files
def _expect_input_error(path: Path, match: str | None = None) -> InputError:
    with pytest.raises(InputError, match=match) as info:
        slide = open_slide(path)
        for level in slide.levels:  # if it opens, every pixel must be readable
            level.compute()
    assert path.name in str(info.value)
    return info.value


def test_missing_empty_folder_and_text(tmp_path):
    _expect_input_error(tmp_path / "nope.svs", "not found")
    (tmp_path / "empty.svs").write_bytes(b"")
    _expect_input_error(tmp_path / "empty.svs", "empty")
    (tmp_path / "dir.svs").mkdir()
    _expect_input_error(tmp_path / "dir.svs", "folder")
    (tmp_path / "notes.svs").write_text("this is not a slide\n" * 50)
    _expect_input_error(tmp_path / "notes.svs", "not a slide")


@pytest.mark.parametrize("source", [CMU_SLIDE, TCGA_SLIDE], ids=["cmu", "tcga"])
def test_truncated_real_slides(tmp_path, source):
    data = source.read_bytes()
    cuts = [2, 7, 100, 50_000] + [int(len(data) * f) for f in (0.3, 0.6, 0.7, 0.8, 0.9, 0.95)]
    for cut in cuts + [len(data) - 500, len(data) - 1]:
        path = tmp_path / f"cut_{cut}.svs"
        path.write_bytes(data[:cut])
        _expect_input_error(path)


def test_truncated_generated_pyramid(tmp_path, small_pyramid):
    data = small_pyramid.read_bytes()
    for cut in (5000, len(data) // 2, len(data) - 3000, len(data) - 10):
        path = tmp_path / f"cut_{cut}.tif"
        path.write_bytes(data[:cut])
        _expect_input_error(path, "truncated")


def _patch_ifd0(path: Path, values: dict[int, int]) -> None:
    """Set LONG values of tags in the first directory of a classic little-endian TIFF."""
    raw = bytearray(path.read_bytes())
    ifd = struct.unpack_from("<I", raw, 4)[0]
    for i in range(struct.unpack_from("<H", raw, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", raw, at)[0]
        if tag in values:
            struct.pack_into("<HHII", raw, at, tag, 4, 1, values[tag])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("tile", [(256, 256), None], ids=["tiled", "stripped"])
def test_absurd_dimensions_refused_without_allocating(tmp_path, tile):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=tile, photometric="rgb",
                     rowsperstrip=None if tile else 512, compression="zlib")
    _patch_ifd0(path, {256: 10**7, 257: 10**7})  # ImageWidth, ImageLength
    error = _expect_input_error(path)
    assert "10000000x10000000" in error.problem or "MiB each" in error.problem


def test_corrupt_tile_is_named_when_read(tmp_path, small_pyramid):
    path = tmp_path / "corrupt.tif"
    path.write_bytes(small_pyramid.read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[9], page.databytecounts[9]  # tile row 1, column 1
    raw = bytearray(path.read_bytes())
    raw[offset + 2:offset + count] = np.random.default_rng(0).integers(
        0, 255, count - 2, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    with open_slide(path) as slide:  # the header is fine: opening succeeds
        slide.read_region(0, 0, 0, 100, 100)
        for read in (lambda: slide.read_region(0, 300, 300, 10, 10),
                     lambda: slide.levels[0][:600, :600].compute()):
            with pytest.raises(InputError, match=r"level 0 tile \(row 1, column 1\)") as info:
                read()
            assert "corrupt.tif" in str(info.value)


def test_slide_dataclass_api():
    with open_slide(CMU_SLIDE) as slide:
        assert isinstance(slide, Slide) and slide.path == CMU_SLIDE
        assert slide.read_region(0, -10, -10, 20, 30).shape == (10, 20, 3)
        assert slide.read_region(0, 5000, 0, 10, 10).shape == (0, 10, 3)
        with pytest.raises(IndexError):
            slide.read_region(1, 0, 0, 1, 1)
