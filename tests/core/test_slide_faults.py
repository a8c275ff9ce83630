"""Slide faults found by replaying other whole-slide tools' bug reports (issue 14, items 1-4):
colour models the codec leaves alone, bit depth, implausible microns per pixel, and the
macro photo taken for the slide. Every input is generated here."""

from __future__ import annotations

import struct

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import rgb2lab, rgb2ypbpr

from lpd.errors import InputError
from lpd.infer.tiled import plan_tiled
from lpd.wsi.images import read_rgb
from lpd.wsi.slide import open_slide

pytestmark = pytest.mark.usefixtures("quiet_tifffile")


@pytest.fixture(scope="module")
def model(new_tiny_model):
    return new_tiny_model()


def _rgb(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    """H&E-like colours: smooth gradients plus noise, glass (white) in one corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([200 + 40 * np.sin(yy / 7), 120 + 60 * np.cos(xx / 5),
                     180 + 50 * np.sin((yy + xx) / 9)], axis=-1)
    rgb = np.clip(base + rng.normal(0, 12, base.shape), 0, 255)
    rgb[: h // 4, : w // 4] = 255
    return np.rint(rgb).astype(np.uint8)


def _level0(path) -> np.ndarray:
    with open_slide(path) as slide:
        return np.asarray(slide.levels[0].compute())


# ------------------------------------------------ 1. colour models the codec leaves alone
def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr (the TIFF default) by scikit-image, as 8-bit codes."""
    ypp = rgb2ypbpr(rgb / 255.0)
    codes = np.stack([ypp[..., 0] * 255.0, ypp[..., 1] * 255.0 + 128.0,
                      ypp[..., 2] * 255.0 + 128.0], axis=-1)
    return np.clip(np.rint(codes), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("compression", ["deflate", "lzw", None])
def test_ycbcr_tiles_read_as_rgb(tmp_path, compression):
    rgb = _rgb()
    path = tmp_path / f"ycbcr-{compression}.tif"
    tifffile.imwrite(path, _ycbcr(rgb), photometric="ycbcr", compression=compression,
                     subsampling=(1, 1), tile=(16, 16))
    with tifffile.TiffFile(path) as tif:  # the file is what the issue describes
        page = tif.pages.first
        assert page.photometric == 6 and page.is_tiled and page.subsampling == (1, 1)
    got = _level0(path).astype(int)
    err = np.abs(got - rgb.astype(int))
    assert err.max() <= 2 and err.mean() < 0.7  # rounding of the 8-bit YCbCr codes only
    np.testing.assert_array_equal(read_rgb(path), got)  # the tile reader: the same rule
    # read as if Y/Cb/Cr were R/G/B (the fault): far off
    assert np.abs(_ycbcr(rgb).astype(int) - rgb.astype(int)).mean() > 30


def test_jpeg_ycbcr_not_converted_twice(tmp_path):
    rgb = _rgb()
    path = tmp_path / "jpeg.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression="jpeg", tile=(16, 16),
                     compressionargs={"level": 95}, subsampling=(1, 1))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.photometric == 6  # stored YCbCr, converted by the codec
    got = _level0(path)
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 4


def test_subsampled_ycbcr_without_jpeg_refused_clearly(tmp_path):
    path = tmp_path / "sub.tif"
    tifffile.imwrite(path, _ycbcr(_rgb()), photometric="ycbcr", compression="deflate",
                     tile=(16, 16))
    raw = bytearray(path.read_bytes())
    entry = struct.pack("<HHIHH", 530, 3, 2, 1, 1)  # YCbCrSubSampling (1, 1) -> (2, 2)
    at = raw.index(entry)
    raw[at:at + 12] = struct.pack("<HHIHH", 530, 3, 2, 2, 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"YCbCr with 2x2 chroma subsampling .* convert") as err:
        open_slide(path)
    assert err.value.path == str(path) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="chroma subsampling"):
        read_rgb(path)


def test_cielab_read_as_rgb(tmp_path):
    rgb = _rgb(seed=2)
    lab = rgb2lab(rgb)
    codes = np.empty(rgb.shape, np.uint8)
    codes[..., 0] = np.clip(np.rint(lab[..., 0] * 255 / 100), 0, 255)
    codes[..., 1:] = np.clip(np.rint(lab[..., 1:]), -128, 127).astype(np.int8).view(np.uint8)
    path = tmp_path / "lab.tif"
    tifffile.imwrite(path, codes, photometric="cielab", compression="deflate", tile=(16, 16))
    got = _level0(path).astype(int)
    assert np.abs(got - rgb.astype(int)).max() <= 4


def test_palette_and_cmyk_refused_in_one_line(tmp_path):
    pal = tmp_path / "palette.tif"
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = 65535
    tifffile.imwrite(pal, np.ones((32, 32), np.uint8), photometric="palette", colormap=cmap)
    cmyk = tmp_path / "cmyk.tif"
    tifffile.imwrite(cmyk, np.zeros((32, 32, 4), np.uint8), photometric="separated")
    for path, name in ((pal, "PALETTE"), (cmyk, "SEPARATED")):
        for read in (open_slide, read_rgb):
            with pytest.raises(InputError, match=f"colour model {name} is not supported") as err:
                read(path)
            assert err.value.path == str(path)


# --------------------------------------------------------------------------- 2. bit depth
def _twelve_bit() -> tuple[np.ndarray, np.ndarray]:
    """12-bit samples (0..4095) in uint16, and the uint8 they stand for."""
    rgb = _rgb(seed=3)
    data = np.rint(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    return data, np.rint(data * (255 / 4095)).astype(np.uint8)


def test_12bit_tiff_honours_max_sample_value(tmp_path):
    data, want = _twelve_bit()
    path = tmp_path / "max.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(16, 16),
                     extratags=[(281, 3, 1, 4095, True)])  # MaxSampleValue
    np.testing.assert_array_equal(_level0(path), want)
    np.testing.assert_array_equal(read_rgb(path), want)  # the tile reader agrees


def test_12bit_ome_honours_significant_bits(tmp_path):
    data, want = _twelve_bit()
    path = tmp_path / "sig.ome.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(16, 16),
                     metadata={"axes": "YXS", "SignificantBits": 12, "PhysicalSizeX": 0.5})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and 'SignificantBits="12"' in tif.ome_metadata
    with open_slide(path) as slide:
        assert slide.vendor == "ome" and slide.metadata["max_sample_value"] == 4095
        np.testing.assert_array_equal(slide.levels[0].compute(), want)
    np.testing.assert_array_equal(read_rgb(path), want)


def test_undeclared_16bit_uses_the_full_range_everywhere(tmp_path, model):
    data, _ = _twelve_bit()
    want = np.rint(data / 257.0).astype(np.uint8)  # dark: 0..16
    tif = tmp_path / "plain.tif"
    tifffile.imwrite(tif, data, photometric="rgb", tile=(16, 16))
    png = tmp_path / "plain.png"
    png.write_bytes(imagecodecs.png_encode(data))
    np.testing.assert_array_equal(_level0(tif), want)
    np.testing.assert_array_equal(read_rgb(tif), want)
    np.testing.assert_array_equal(read_rgb(png), want)
    np.testing.assert_array_equal(_level0(png), want)
    with Image.open(png) as img:  # PIL alone gives the high byte (4095 -> 15, not 16)
        assert not np.array_equal(np.asarray(img.convert("RGB")), want)
    # a full-range 16-bit PNG: every value, rounded (not cut to its high byte)
    full = (np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3) * 97 % 65536)
    full = full.astype(np.uint16)
    png.write_bytes(imagecodecs.png_encode(full))
    np.testing.assert_array_equal(read_rgb(png), np.rint(full / 257.0).astype(np.uint8))
    # the nearly black slide gets a note before anything is computed; a normal one none
    with open_slide(tif, mpp=0.5) as slide:
        notes = plan_tiled(model, slide, target_mpp=0.5).notes
    assert any("nearly black" in n and "MaxSampleValue" in n for n in notes)
    bright = tmp_path / "bright.tif"
    tifffile.imwrite(bright, _rgb(), photometric="rgb", tile=(16, 16))
    with open_slide(bright, mpp=0.5) as slide:
        assert not any("nearly black" in n for n in plan_tiled(model, slide, target_mpp=0.5).notes)


# ------------------------------------------------------------------ 3. microns per pixel
def _with_mpp(path, mpp: float, shape=(128, 96)) -> None:
    rgb = np.full((*shape, 3), (220, 150, 190), np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(32, 32),
                     resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")


def test_implausible_mpp_noted_with_the_fix(tmp_path):
    path = tmp_path / "fine.tif"
    _with_mpp(path, 0.05)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.05)  # kept (0.01..100), but noted
        (note,) = slide.metadata["notes"]
        assert "0.05 µm/px" in note and "0.1-20" in note and "--mpp" in note
    with open_slide(path, mpp=0.5) as slide:
        assert "notes" not in slide.metadata
    with open_slide(path, mpp=50) as slide:
        assert "50 µm/px" in slide.metadata["notes"][0]
    ok = tmp_path / "ok.tif"
    _with_mpp(ok, 0.25)
    with open_slide(ok) as slide:
        assert "notes" not in slide.metadata


def test_resampling_beyond_8x_needs_confirmation(tmp_path, model):
    path = tmp_path / "fine.tif"
    _with_mpp(path, 0.05)
    with open_slide(path) as slide:
        with pytest.raises(InputError, match="shrinking it 10x") as err:
            plan_tiled(model, slide, target_mpp=0.5)
        assert err.value.path == str(path)
        assert "--mpp" in err.value.problem and "--allow-resample" in err.value.problem
        plan = plan_tiled(model, slide, target_mpp=0.5, allow_resample=True)
        assert plan.resize == pytest.approx(0.1) and plan.shape == (13, 10)
        assert any("as asked" in n for n in plan.notes)
        assert any("0.05 µm/px" in n for n in plan.notes)  # the slide's note travels along
        plan = plan_tiled(model, slide, target_mpp=0.4)  # 8x: still allowed
        assert plan.resize == pytest.approx(0.125)
    coarse = tmp_path / "coarse.tif"
    _with_mpp(coarse, 10.0)
    with open_slide(coarse) as slide:
        with pytest.raises(InputError, match="enlarging it 20x"):
            plan_tiled(model, slide, target_mpp=0.5)
    with open_slide(path, mpp=0.5) as slide:  # the user's --mpp: no resampling at all
        assert plan_tiled(model, slide, target_mpp=0.5).resize == 1.0


def test_cli_and_batch_take_allow_resample():
    from lpd.batch import BatchOptions
    from lpd.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["predict", "s.tif", "--out", "o.zarr", "--allow-resample"])
    assert args.allow_resample is True
    assert parser.parse_args(["predict", "s.tif", "--out", "o.zarr"]).allow_resample is False
    assert parser.parse_args(["batch", "s.tif", "--out", "o", "--allow-resample"]
                             ).allow_resample is True
    assert BatchOptions().allow_resample is False


# ----------------------------------------------------------------- 4. the main image's role
APERIO = "Aperio Image Library v12.0.15 \r\n"


def _svs(path, macro_filetype: int | None = 9) -> np.ndarray:
    """An SVS-like file: tissue (tiled, with MPP), thumbnail, label, and a macro photo with
    more pixels than the tissue image."""
    tissue = _rgb(128, 96, seed=5)
    with tifffile.TiffWriter(path) as tif:
        tif.write(tissue, photometric="rgb", tile=(32, 32), metadata=None,
                  description=APERIO + "96x128 [0,0 96x128] (32x32) RAW|AppMag = 20|MPP = 0.5")
        tif.write(tissue[::4, ::4], photometric="rgb", metadata=None,
                  description=APERIO + "96x128 -> 24x32 - |AppMag = 20|MPP = 0.5")
        tif.write(np.full((40, 40, 3), 90, np.uint8), photometric="rgb", metadata=None,
                  subfiletype=1, description=APERIO + "label 40x40")
        kwargs = {} if macro_filetype is None else {"subfiletype": macro_filetype}
        tif.write(np.full((200, 600, 3), 30, np.uint8), photometric="rgb", metadata=None,
                  description=APERIO + "macro 600x200", **kwargs)
    return tissue


@pytest.mark.parametrize("macro_filetype", [9, None])
def test_svs_macro_larger_than_tissue_is_not_the_slide(tmp_path, macro_filetype):
    path = tmp_path / "region.svs"
    tissue = _svs(path, macro_filetype)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs and tif.series[-1].shape[0] * tif.series[-1].shape[1] > 128 * 96
    with open_slide(path) as slide:
        assert slide.vendor == "aperio" and slide.shape == (128, 96)
        assert slide.mpp == pytest.approx(0.5) and slide.metadata["series_index"] == 0
        assert set(slide.metadata["other_images"].values()) == {"thumbnail", "label", "macro"}
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)


def test_generic_tiff_roles_by_new_subfile_type(tmp_path):
    tissue = _rgb(64, 48, seed=6)
    path = tmp_path / "macro_first.tif"
    with tifffile.TiffWriter(path) as tif:  # the macro photo first, and larger
        tif.write(np.full((300, 400, 3), 20, np.uint8), photometric="rgb", subfiletype=9,
                  metadata=None)
        tif.write(tissue, photometric="rgb", tile=(16, 16), metadata=None)
    with open_slide(path) as slide:
        assert slide.shape == (64, 48) and slide.metadata["other_images"] == {0: "macro"}
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)


def test_ome_series_names_choose_the_tissue(tmp_path):
    tissue = _rgb(64, 48, seed=7)
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(np.full((300, 400, 3), 20, np.uint8), photometric="rgb",
                  metadata={"axes": "YXS", "Name": "macro image", "PhysicalSizeX": 20.0})
        tif.write(tissue, photometric="rgb", tile=(16, 16),
                  metadata={"axes": "YXS", "Name": "tissue", "PhysicalSizeX": 0.25})
    with open_slide(path) as slide:
        assert slide.shape == (64, 48) and slide.metadata["series"] == "tissue"
        assert slide.mpp == pytest.approx(0.25)  # the tissue image's own scale
        np.testing.assert_array_equal(slide.levels[0].compute(), tissue)
