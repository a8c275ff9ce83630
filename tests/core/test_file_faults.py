"""Files as they come from real labs (issue 14, items 5-8): a large label TIFF export that
reopens without a word from tifffile, BCSS masks that cannot be scored, GeoJSON clipped to
the slide, and user files re-saved by Windows editors (byte-order mark, CRLF, UTF-16)."""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from shapely.geometry import shape

from lpd.batch import read_task_file
from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.cli.main import main
from lpd.data.bcss import check_eval_masks, find_bcss, read_bcss_mask, write_bcss_sample
from lpd.data.tags import TagStore, sidecar_path
from lpd.errors import CheckpointError, InputError
from lpd.evaluation import score
from lpd.io.checkpoint import read_checkpoint_metadata
from lpd.io.export import export_geojson, export_tiff, store_extent
from lpd.io.store import OutputStore
from lpd.model import create_model

COLOURS = [CLASS_COLOURS[c] for c in CLASS_NAMES]
BIG = (4100, 4301)  # > 4096 px a side: the napari reader keeps it lazy (zarr per level)


def filled_store(path: Path, labels: np.ndarray, *, tile: int = 256, chunk: int = 512,
                 scale: float = 1.0, offset=(0.0, 0.0), mpp: float | None = 0.5,
                 info: dict | None = None) -> OutputStore:
    """A complete store holding ``labels`` (all-background tiles handed over as None)."""
    store = OutputStore.create(path, shape=labels.shape, tile=tile, chunk=chunk,
                               class_names=CLASS_NAMES, class_colours=COLOURS, mpp=mpp,
                               scale=scale, offset=offset, info=info)
    for i in range(-(-labels.shape[0] // tile)):
        for j in range(-(-labels.shape[1] // tile)):
            part = labels[i * tile : (i + 1) * tile, j * tile : (j + 1) * tile]
            store.put_tile(i, j, part if part.any() else None)
    list(store.build_pyramid())
    store.mark_complete()
    return store


def big_labels() -> np.ndarray:
    labels = np.zeros(BIG, np.uint8)  # mostly background: compresses to almost nothing
    labels[100:400, 200:900] = 1
    labels[3900:4100, 4000:4301] = 3  # touches the bottom-right corner
    labels[2000:2100, 10:50] = 4
    return labels


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> tuple[OutputStore, Path]:
    folder = tmp_path_factory.mktemp("big")
    store = filled_store(folder / "big.zarr", big_labels(), tile=512, chunk=1024)
    return store, export_tiff(store, folder / "big.tif")


# -- 5: label TIFF ---------------------------------------------------------------------
def test_large_label_tiff_reopens_in_tifffile_without_a_log_record(big_export, caplog) -> None:
    import tifffile
    import zarr

    store, path = big_export
    caplog.set_level(logging.DEBUG, logger="tifffile")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert series.shape == BIG and series.dtype == np.uint8
        assert len(series.levels) == store.n_levels == 4
        page = tif.pages[0]
        assert json.loads(page.description)["lpd"] == "labels"
        for lv in range(store.n_levels):
            level = zarr.open_array(series.aszarr(level=lv), mode="r")
            assert level.shape == store.level(lv).shape
            np.testing.assert_array_equal(level[-300:, -400:], store.level(lv)[-300:, -400:])
        np.testing.assert_array_equal(series.levels[0].asarray(), big_labels())
        # the colour table: label value -> class colour (TIFF's 16-bit scale), rest black
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.colormap.shape == (3, 256) and page.colormap.dtype == np.uint16
        assert page.colormap[:, 0].tolist() == [0, 0, 0]
        for value, colour in enumerate(COLOURS, start=1):
            assert (page.colormap[:, value] // 257).tolist() == list(colour)
        assert not page.colormap[:, 5:].any()
        for sub in page.pages:  # every pyramid level carries the same table
            assert np.array_equal(sub.colormap, page.colormap)
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []


def test_small_label_tiff_is_clean_too(tmp_path, caplog) -> None:
    import tifffile

    labels = np.zeros((300, 260), np.uint8)
    labels[10:50, 20:90] = 2
    store = filled_store(tmp_path / "s.zarr", labels, tile=50, chunk=100)
    caplog.set_level(logging.DEBUG, logger="tifffile")
    path = export_tiff(store, tmp_path / "s.tif")
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [(300, 260), (150, 130), (75, 65)]
        np.testing.assert_array_equal(tif.series[0].asarray(), labels)
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []


# -- 6: BCSS masks that cannot be scored -----------------------------------------------
@pytest.fixture
def bcss(tmp_path) -> Path:
    root = tmp_path / "bcss"
    write_bcss_sample(root, n_train=0, n_val=0, n_test=3, size=64, seed=4)
    return root


def _greyscale(root: Path) -> list[Path]:
    """Masks re-saved as a user's picture editor does: the palette's colours, as grey."""
    masks = sorted((root / "test" / "mask").iterdir())
    for mask in masks:
        with Image.open(mask) as img:
            grey = img.convert("RGB").convert("L")
        grey.save(mask)
    return masks


def test_greyscale_mask_is_an_error_naming_it(bcss) -> None:
    masks = _greyscale(bcss)
    with Image.open(masks[0]) as img:
        found = sorted(np.unique(np.asarray(img)).tolist())
    assert set(found) <= {29, 76, 150, 255, 75} and max(found) > 4
    with pytest.raises(InputError, match="values .*0..4") as exc:
        read_bcss_mask(masks[0])
    assert exc.value.path == str(masks[0])
    assert all(str(v) in exc.value.problem for v in found[:3])
    layout = find_bcss(bcss, require=("test",))
    with pytest.raises(InputError) as exc:
        check_eval_masks(layout.test)
    assert exc.value.path == str(masks[0])


def test_mask_values_0_to_4_are_read_and_5_is_not(tmp_path) -> None:
    values = np.array([[0, 1, 2, 3, 4]], np.uint8).repeat(3, axis=0)
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(values, "L").save(good)
    np.testing.assert_array_equal(read_bcss_mask(good)[0], [1, 2, 3, 4, 0])
    Image.fromarray(values + 1, "L").save(bad)
    with pytest.raises(InputError, match="values 1, 2, 3, 4, 5") as exc:
        read_bcss_mask(bad)
    assert exc.value.path == str(bad)


def _all_background(root: Path) -> Path:
    folder = root / "test" / "mask"
    for mask in folder.iterdir():
        with Image.open(mask) as img:
            blank = Image.new("P", img.size, 4)
            blank.putpalette(img.getpalette())
        blank.save(mask)
    return folder


def test_split_without_a_labelled_pixel_is_an_error(bcss) -> None:
    folder = _all_background(bcss)
    layout = find_bcss(bcss, require=("test",))
    with pytest.raises(InputError, match="no labelled pixel in 3 mask") as exc:
        check_eval_masks(layout.test)
    assert exc.value.path == str(folder)
    assert check_eval_masks(find_bcss(bcss, require=("test",)).test[:0]) == 0


def test_evaluate_refuses_ground_truth_without_labels() -> None:
    model = create_model("resnet18", pretrained=False, prototypes_per_class=1,
                         prototype_dim=8, input_size=64)
    batch = (torch.rand(2, 3, 64, 64), torch.ones(2, 4), torch.zeros(2, 64, 64, dtype=torch.long))
    with pytest.raises(InputError, match="no labelled pixel") as exc:
        score(model, [batch], require_labels=True, source="masks/")
    assert exc.value.path == "masks/"
    loose = score(model, [batch])  # training's validation: NaN, skipped there
    assert np.isnan(loose.scores["predicted"].miou)


@pytest.mark.parametrize("fault", ["greyscale", "background"])
def test_cli_evaluate_exits_non_zero_with_one_line(bcss, tiny_checkpoint, capsys, fault) -> None:
    named = _greyscale(bcss)[0] if fault == "greyscale" else _all_background(bcss)
    code = main(["evaluate", str(bcss), "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lpd evaluate: error: ")
    assert str(named) in lines[0]
    assert "nan" not in captured.out.lower() and "mIoU" not in captured.out


# -- 7: GeoJSON clipped to the slide -----------------------------------------------------
def _max_xy(path: Path) -> tuple[float, float, float, float]:
    coords = np.concatenate([
        np.asarray(ring) for f in json.loads(path.read_text())["features"]
        for poly in [shape(f["geometry"])] for ring in
        [poly.exterior.coords, *(i.coords for i in poly.interiors)]])
    return coords[:, 0].min(), coords[:, 1].min(), coords[:, 0].max(), coords[:, 1].max()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_geojson_of_a_coarse_level_stays_within_the_store(tmp_path, level) -> None:
    labels = np.zeros((301, 299), np.uint8)  # odd sizes: coarser levels overhang
    labels[:, 250:] = 1  # class 1 touches the right and both horizontal edges
    labels[280:, :] = 2  # class 2 the bottom edge, the full width
    store = filled_store(tmp_path / "s.zarr", labels, tile=16, chunk=32, scale=2.0,
                         offset=(1000.0, 2000.0))
    assert store.n_levels == 5
    out = export_geojson(store, tmp_path / "c.geojson", level=level, simplify=0)
    x0, y0, x1, y1 = _max_xy(out)
    assert (x0, y0) >= (1000.0, 2000.0)
    assert x1 <= 1000.0 + 299 * 2.0 and y1 <= 2000.0 + 301 * 2.0
    assert (x1, y1) == pytest.approx((1598.0, 2602.0), abs=2**level * 2.0)


def test_geojson_of_a_resampled_grid_stays_on_the_slide(tmp_path) -> None:
    # a resampled grid (1.9 slide px per output px): its last pixel reaches 0.9 px past
    # the slide's 569 x 379 px (the grid rounds the resized level to whole pixels)
    labels = np.ones((200, 300), np.uint8)
    store = filled_store(tmp_path / "r.zarr", labels, tile=50, chunk=100, scale=1.9,
                         info={"image_size": [379, 569]})
    assert store_extent(store) == (0.0, 0.0, 569.0, 379.0)
    for level in (0, 1, 2):
        out = export_geojson(store, tmp_path / f"r{level}.geojson", level=level)
        x0, y0, x1, y1 = _max_xy(out)
        assert x0 >= 0 and y0 >= 0 and x1 <= 569.0 and y1 <= 379.0
        assert (x1, y1) == pytest.approx((569.0, 379.0))


def test_tiled_inference_records_the_slide_size_for_the_clip() -> None:
    from lpd.infer._plan import TilePlan

    plan = TilePlan(level=0, downsample=1.0, resize=1.0, origin=(0, 0), extent=(10, 12),
                    shape=(10, 12), input_size=64, halo=0, mpp=None, scale=1.0,
                    offset=(0.0, 0.0), target_mpp=None, slide_mpp=None, region=(0, 0, 12, 10),
                    levels=[np.zeros((10, 12, 3), np.uint8)])
    assert plan.info()["image_size"] == [10, 12]


# -- 8: files re-saved by a Windows editor -------------------------------------------------
def _windows(raw: bytes, encoding: str) -> bytes:
    text = raw.decode("utf-8").replace("\n", "\r\n")
    if encoding == "utf-8-sig":
        return codecs.BOM_UTF8 + text.encode("utf-8")
    return text.encode(encoding)  # "utf-16": Python writes the BOM


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_tag_sidecar_with_bom_and_crlf_keeps_its_tags(tmp_path, encoding) -> None:
    image = tmp_path / "slide.png"
    Image.new("RGB", (300, 200), "white").save(image)
    store = TagStore.load(image, image_size=(200, 300))
    store.add((10, 20, 100, 50), ["LYM", "TUM"])
    store.add((0, 0, 64, 64), ["NEC"], source="grid")
    sidecar = store.save()
    sidecar.write_bytes(_windows(sidecar.read_bytes(), encoding))
    back = TagStore.load(image)
    assert [(r.id, r.bbox, r.classes, r.source) for r in back.regions] == [
        (1, (10, 20, 100, 50), ("TUM", "LYM"), "rectangle"), (2, (0, 0, 64, 64), ("NEC",), "grid")]
    assert back.image_size == (200, 300) and back.warnings == []
    back.add((100, 100, 10, 10), ["STR"])
    back.save()
    assert back.last_backup is None  # the user's file was read, so not moved aside
    assert [p.name for p in tmp_path.iterdir() if ".bak" in p.name] == []
    assert len(TagStore.load(image).regions) == 3
    assert sidecar_path(image).read_bytes().startswith(b"{")  # written back as UTF-8


def test_sidecar_not_utf8_is_refused_naming_it_and_kept(tmp_path) -> None:
    image = tmp_path / "slide.png"
    Image.new("RGB", (30, 20), "white").save(image)
    sidecar = sidecar_path(image)
    raw = '{"format": "lpd-tags", "version": 1, "class_names": ["TUM"], "regions": [], ' \
          '"note": "é"}'.encode("latin-1")
    sidecar.write_bytes(raw)
    with pytest.raises(InputError, match="not UTF-8 text") as exc:
        TagStore.load(image)
    assert exc.value.path == str(sidecar)
    store = TagStore(image)
    store.save()
    assert store.last_backup is not None and store.last_backup.read_bytes() == raw


def test_checkpoint_metadata_with_a_bom_is_read(tmp_path, tiny_checkpoint) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["config"] = "\ufeff" + meta["config"].replace(", ", ",\r\n")
    meta["extra"] = "\ufeff{}"
    path = tmp_path / "bom.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(path), metadata=meta)
    config, extra = read_checkpoint_metadata(path)
    assert config == read_checkpoint_metadata(tiny_checkpoint)[0] and extra == {}


def test_checkpoint_config_of_the_wrong_type_is_refused(tmp_path, tiny_checkpoint) -> None:
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), framework="pt") as fh:
        meta = dict(fh.metadata())
    for key, value in (("input_size", "224"), ("class_names", ["TUM", "TUM"]),
                       ("mean", [0.5, 0.5]), ("freeze_prototypes", 0), ("input_size", -3)):
        config = json.loads(meta["config"])
        config[key] = value
        path = tmp_path / f"{key}.safetensors"
        save_file(load_file(str(tiny_checkpoint)), str(path),
                  metadata={**meta, "config": json.dumps(config)})
        with pytest.raises(CheckpointError, match=key) as exc:
            read_checkpoint_metadata(path)
        assert exc.value.path == str(path)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_store_metadata_with_bom_and_crlf_opens(tmp_path, encoding) -> None:
    labels = np.zeros((60, 50), np.uint8)
    labels[5:20, 5:20] = 2
    store = filled_store(tmp_path / "s.zarr", labels, tile=10, chunk=20)
    meta = tmp_path / "s.zarr" / "zarr.json"
    meta.write_bytes(_windows(meta.read_bytes(), encoding))
    again = OutputStore.open(tmp_path / "s.zarr")
    assert again.meta == store.meta
    np.testing.assert_array_equal(again.labels[...], labels)


def test_store_metadata_of_the_wrong_type_is_refused(tmp_path) -> None:
    store = filled_store(tmp_path / "s.zarr", np.zeros((60, 50), np.uint8), tile=10, chunk=20)
    meta_file = tmp_path / "s.zarr" / "zarr.json"
    original = json.loads(meta_file.read_text())
    for key, value in (("shape", "60x50"), ("scale", 0), ("class_colours", [[1, 2]]),
                       ("levels", 9), ("complete", "yes"), ("offset", {"x": 1})):
        doc = json.loads(json.dumps(original))
        doc["attributes"]["lpd"][key] = value
        meta_file.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=key) as exc:
            OutputStore.open(store.path)
        assert exc.value.path == str(store.path)


def test_batch_task_list_with_bom_and_crlf(tmp_path) -> None:
    listing = tmp_path / "tasks.txt"
    listing.write_bytes(codecs.BOM_UTF8 + b"a.svs\r\n# note\r\nb.svs@1,2,3,4\r\n")
    tasks = read_task_file(listing)
    assert [(t.slide, t.region) for t in tasks] == [
        (tmp_path / "a.svs", None), (tmp_path / "b.svs", (1, 2, 3, 4))]


@pytest.mark.parametrize("header", [640, 896, 1152, 1408])
def test_checkpoint_whose_header_length_looks_like_a_pickle(tmp_path, header) -> None:
    """Found by the fuzz target: a safetensors header of 640 bytes starts b"\\x80\\x02",
    the magic of a pickle, and such a checkpoint was refused as one."""
    from lpd.config import ModelConfig

    meta = {"format": "lpd-checkpoint", "format_version": "1", "config": "{}"}
    tensors = {"w": torch.zeros(2)}
    path = tmp_path / "m.safetensors"
    for pad in range(header):
        save_file(tensors, str(path), metadata={**meta, "pad": "x" * pad})
        if int.from_bytes(path.read_bytes()[:8], "little") == header:
            break
    assert int.from_bytes(path.read_bytes()[:8], "little") == header
    assert path.read_bytes()[:2] == bytes([0x80, header >> 8])
    config, _ = read_checkpoint_metadata(path)
    assert config == ModelConfig()


def test_one_row_masks_keep_their_shape(tmp_path) -> None:
    """A mask one pixel high (RGB or gray+alpha) is (1, W), not squeezed to (W, samples)."""
    from PIL import Image

    from lpd.wsi.images import read_mask

    values = np.array([[0, 1, 2, 3, 4]], np.uint8)
    for mode, data in (("L", values), ("RGB", np.repeat(values[..., None], 3, axis=2)),
                       ("LA", np.stack([values, np.full_like(values, 255)], axis=2))):
        path = tmp_path / f"one-row-{mode}.png"
        Image.fromarray(data, mode).save(path)
        mask = read_mask(path)
        assert mask.shape == (1, 5) and np.array_equal(mask, values), mode
