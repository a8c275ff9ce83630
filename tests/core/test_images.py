"""read_rgb / read_mask: every odd input is converted sensibly or refused naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from lpd.data.sample import KATHER2016_TILES, NCT_TILES
from lpd.errors import InputError
from lpd.wsi.images import as_rgb_uint8, image_shape, read_mask, read_rgb


def _rgb(h: int = 32, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
def test_rgb_round_trip(tmp_path, ext):
    rgb = _rgb()
    if ext == "jpg":  # smooth content: JPEG is lossy on noise
        ramp = np.linspace(0, 250, 40).astype(np.uint8)
        rgb = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[::-1], (32, 1)),
                        np.full((32, 40), 128, np.uint8)], -1)
    path = tmp_path / f"tile.{ext}"
    if ext == "tif":
        tifffile.imwrite(path, rgb)
    else:
        Image.fromarray(rgb).save(path, quality=100)
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (32, 40, 3)
    if ext != "jpg":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 8  # lossy, but the same picture


def test_bundled_tiles_read():
    for root, side in ((KATHER2016_TILES, 150), (NCT_TILES, 224)):
        tile = read_rgb(next((root / "TUM").iterdir()))
        assert tile.shape == (side, side, 3) and tile.dtype == np.uint8


def test_grayscale_expanded(tmp_path):
    gray = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red
    rgba[:8, :, 3] = 255  # top opaque, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[:8].reshape(-1, 3)[0], [200, 0, 0])
    assert (out[8:] == 255).all()  # transparent -> white, not black


def test_palette_png_reads_as_colours(tmp_path):
    idx = np.zeros((16, 16), np.uint8)
    idx[:, 8:] = 1
    img = Image.frombytes("P", (16, 16), idx.tobytes())
    img.putpalette([10, 20, 30, 200, 100, 50])
    img.save(tmp_path / "p.png")
    out = read_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 15], [200, 100, 50])


def test_16bit_scaled(tmp_path):
    full = (np.arange(16 * 16 * 3, dtype=np.uint32) * 85).reshape(16, 16, 3) % 65536
    full = full.astype(np.uint16)
    full[0, 0] = 65535
    tifffile.imwrite(tmp_path / "a.tif", full)
    out = read_rgb(tmp_path / "a.tif")
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), (full.astype(int) >> 8), atol=1)
    # 12-bit data in a 16-bit container: scaled by what the file declares (MaxSampleValue),
    # else by the container's full range, never by the image's own maximum
    twelve = np.full((16, 16), 4095, np.uint16)
    twelve[0] = 2048
    tifffile.imwrite(tmp_path / "b.tif", twelve, extratags=[(281, 3, 1, 4095, True)])
    out = read_rgb(tmp_path / "b.tif")
    assert out[1, 0, 0] == 255 and abs(int(out[0, 0, 0]) - 128) <= 1
    Image.fromarray(twelve).save(tmp_path / "b.png")  # 16-bit grayscale PNG, no declaration
    out = read_rgb(tmp_path / "b.png")
    assert out[1, 0, 0] == 16 and out[0, 0, 0] == 8  # 4095 / 257, 2048 / 257: dark


def test_float_images(tmp_path):
    unit = np.linspace(0, 1, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    tifffile.imwrite(tmp_path / "f.tif", unit, photometric="rgb")
    out = read_rgb(tmp_path / "f.tif")
    assert out[0, 0, 0] == 0 and out[-1, -1, -1] == 255
    assert as_rgb_uint8(unit * 255.0)[-1, -1, -1] == 255  # [0, 255] floats kept as they are
    odd = unit * 1000.0 - 300.0  # other ranges: min-max
    out = as_rgb_uint8(odd)
    assert out.min() == 0 and out.max() == 255


def test_nan_and_inf_refused(tmp_path):
    bad = np.ones((16, 16, 3), np.float32)
    bad[3, 3, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad, photometric="rgb")
    with pytest.raises(InputError, match="NaN") as err:
        read_rgb(tmp_path / "nan.tif")
    assert "nan.tif" in str(err.value)
    bad[3, 3, 1] = np.inf
    with pytest.raises(InputError, match="infinite"):
        as_rgb_uint8(bad)


def test_missing_zero_byte_truncated_and_non_image(tmp_path):
    with pytest.raises(InputError, match="not found") as err:
        read_rgb(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)

    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty") as err:
        read_rgb(tmp_path / "empty.png")
    assert "empty.png" in str(err.value)

    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        read_rgb(tmp_path / "cut.png")
    assert "cut.png" in str(err.value)

    (tmp_path / "notes.png").write_text("this is not an image\n")
    with pytest.raises(InputError, match="not an image") as err:
        read_rgb(tmp_path / "notes.png")
    assert "notes.png" in str(err.value)

    tifffile.imwrite(tmp_path / "full.tif", _rgb(64, 64), compression="zlib")
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as err:
        read_rgb(tmp_path / "cut.tif")
    assert "cut.tif" in str(err.value)

    with pytest.raises(InputError, match="folder"):
        read_rgb(tmp_path)


def test_tiny_and_odd_shapes_refused(tmp_path):
    Image.fromarray(_rgb(4, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match="4x40") as err:
        read_rgb(tmp_path / "tiny.png")
    assert "tiny.png" in str(err.value)
    assert read_rgb(tmp_path / "tiny.png", min_size=2).shape == (4, 40, 3)
    with pytest.raises(InputError, match="channels"):
        as_rgb_uint8(np.zeros((16, 16, 7), np.uint8))
    # planar (CxHxW) storage is recognised
    planar = np.moveaxis(_rgb(), -1, 0)
    np.testing.assert_array_equal(as_rgb_uint8(planar), _rgb())


def test_read_mask_palette_indices(tmp_path):
    values = np.array([[0, 1, 2], [3, 4, 4]], np.uint8).repeat(8, 0).repeat(8, 1)
    img = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255])
    img.save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.uint8 and mask.ndim == 2
    np.testing.assert_array_equal(mask, values)  # indices, not the palette's colours
    assert image_shape(tmp_path / "m.png") == values.shape
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="colour") as err:
        read_mask(tmp_path / "c.png")
    assert "c.png" in str(err.value)


def test_read_mask_other_encodings(tmp_path):
    values = (np.arange(12 * 12) % 5).astype(np.uint8).reshape(12, 12)
    Image.fromarray(values).save(tmp_path / "gray.png")  # grayscale ("L") mask
    np.testing.assert_array_equal(read_mask(tmp_path / "gray.png"), values)
    tifffile.imwrite(tmp_path / "m.tif", values.astype(np.uint16))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), values)
    grey_rgb = np.repeat(values[..., None], 3, axis=-1)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")  # RGB but all channels equal
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png"), values)
    tifffile.imwrite(tmp_path / "frac.tif", values.astype(np.float32) + 0.5)
    with pytest.raises(InputError, match="fractional") as err:
        read_mask(tmp_path / "frac.tif")
    assert "frac.tif" in str(err.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_mask(tmp_path / "empty.png")
