"""Tile mosaics: labels and tags agree, determinism, background, disjoint splits, errors."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import torch

from lpd.data.datasets import MosaicDataset, collate
from lpd.data.mosaic import OTHER, MosaicGenerator, TileFolder, split_tiles
from lpd.data.sample import KATHER2016_TILES, NCT_TILES
from lpd.errors import InputError


@pytest.fixture(scope="module")
def kather() -> TileFolder:
    return TileFolder(KATHER2016_TILES)


@pytest.fixture(scope="module")
def generator(kather) -> MosaicGenerator:
    return MosaicGenerator(kather, size=224, seed=0)


def test_tile_folder_lists_classes(kather):
    assert set(kather.paths) == {"TUM", "STR", "LYM", "NEC", OTHER}
    assert all(len(kather.class_paths(c)) == 3 for c in ("TUM", "STR", "LYM", "NEC"))
    assert len(kather.other) == 12
    nct = TileFolder(NCT_TILES)  # 21 tiles: TUM 5, STR 2, LYM 2, NEC 2, OTHER 10
    assert [len(nct.class_paths(c)) for c in ("TUM", "STR", "LYM", "NEC")] == [5, 2, 2, 2]
    assert len(nct.other) == 10


def test_tile_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        TileFolder(tmp_path / "nowhere")
    root = tmp_path / "tiles"
    shutil.copytree(KATHER2016_TILES, root)
    shutil.rmtree(root / "LYM")
    with pytest.raises(InputError, match="missing class folder") as err:
        TileFolder(root)
    assert str(root / "LYM") in str(err.value)
    (root / "LYM").mkdir()
    (root / "LYM" / "readme.txt").write_text("no tiles here")
    with pytest.raises(InputError, match="no image tiles") as err:
        TileFolder(root)
    assert str(root / "LYM") in str(err.value)
    # OTHER is optional
    shutil.copytree(KATHER2016_TILES / "LYM", root / "LYM", dirs_exist_ok=True)
    shutil.rmtree(root / OTHER)
    folder = TileFolder(root)
    assert folder.other == ()
    mosaic = MosaicGenerator(folder, size=64, seed=0, background_fraction=0.5)[0]
    assert mosaic.rgb.shape == (64, 64, 3)


def test_labels_and_tags_agree(kather):
    generator = MosaicGenerator(kather, size=224, seed=0, ignore_glass=False)
    min_pixels = generator.min_pixels
    for i in range(60):
        rgb, labels, tags = generator[i]
        assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
        assert labels.shape == (224, 224) and labels.dtype == np.uint8
        assert tags.shape == (4,) and tags.dtype == np.float32
        counts = np.bincount(labels.ravel(), minlength=5)
        assert counts.size == 5  # no label above 4
        for c in range(4):
            if counts[c + 1] > 0:  # every tissue label has its tag
                assert tags[c] == 1 and counts[c + 1] >= min_pixels
            else:  # no tag without pixels
                assert tags[c] == 0
        assert tags.sum() >= 1  # always some tissue


def test_background_present_in_some_mosaics(kather):
    generator = MosaicGenerator(kather, size=224, seed=0, ignore_glass=False)
    with_bg = sum(bool((generator[i].labels == 0).any()) for i in range(40))
    assert 5 <= with_bg <= 38
    # background regions are white glass or OTHER tissue: paler than tissue on average
    m = next(generator[i] for i in range(40) if (generator[i].labels == 0).mean() > 0.2)
    assert m.rgb[m.labels == 0].mean() > 100


def test_no_background_when_disabled(kather):
    gen = MosaicGenerator(kather, size=96, seed=1, background_fraction=0.0, ignore_glass=False)
    assert all((gen[i].labels > 0).all() for i in range(20))


def test_glass_inside_a_tissue_tile_is_not_scored_as_its_class():
    # the nct TUM tile AACHEHDV is half glass: those pixels get label 0, the region keeps
    # its tag (the other nct tiles: one of each class, all tissue)
    full = TileFolder(NCT_TILES)
    nct = TileFolder(NCT_TILES, paths={
        name: tuple(p for p in paths if p.suffix == ".tif") for name, paths in full.paths.items()})
    assert [p.name for p in nct.class_paths("TUM")] == ["nct-TUM-AACHEHDV.tif"]
    plain = MosaicGenerator(nct, size=224, seed=3, background_fraction=0.0, ignore_glass=False)
    aware = MosaicGenerator(nct, size=224, seed=3, background_fraction=0.0)
    tum = 1 + list(nct.class_names).index("TUM")
    tum_pixels, tum_dropped, other_dropped = 0, 0, 0
    for i in range(30):
        a, b = plain[i], aware[i]
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.tags, b.tags)  # a region's tag stands for its tile
        dropped = (a.labels > 0) & (b.labels == 0)
        assert ((b.labels == a.labels) | dropped).all()  # only ever set to 0
        if dropped.any():
            assert a.rgb[dropped].min(axis=-1).mean() > 170  # pale: glass
        tum_pixels += int((a.labels == tum).sum())
        tum_dropped += int((dropped & (a.labels == tum)).sum())
        other_dropped += int((dropped & (a.labels != tum)).sum())
    assert tum_pixels > 0 and 0.25 < tum_dropped / tum_pixels < 0.75  # crops of a half-glass tile
    assert other_dropped < 0.01 * 30 * 224 * 224  # the other nct tiles are all tissue


def test_all_classes_and_several_regions_over_indices(generator):
    tags = np.stack([generator[i].tags for i in range(40)])
    assert (tags.sum(0) > 0).all()
    assert (tags.sum(1) >= 2).mean() > 0.4  # many mosaics hold several classes


def test_deterministic_by_seed_and_index(kather, generator):
    again = MosaicGenerator(kather, size=224, seed=0)
    for i in (0, 5, 17):
        a, b = generator[i], again[i]
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.tags, b.tags)
    # order of access does not matter
    np.testing.assert_array_equal(again[3].rgb, generator[3].rgb)
    held_apart = MosaicGenerator(kather, size=224, seed=1)
    assert not np.array_equal(held_apart[0].rgb, generator[0].rgb)
    assert not np.array_equal(generator[0].rgb, generator[1].rgb)
    with pytest.raises(IndexError):
        generator[-1]


def test_pixels_come_from_the_tiles(kather):
    """A mosaic of one class without background shows only that class's tile pixels."""
    from lpd.wsi.images import read_rgb

    gen = MosaicGenerator(kather, size=64, seed=2, background_fraction=0.0, min_regions=1,
                          max_regions=1)
    for i in range(3):
        m = gen[i]
        assert m.tags.sum() == 1 and (m.labels > 0).all()
        c = int(np.argmax(m.tags))
        colours = {tuple(p) for path in kather.class_paths(kather.class_names[c])
                   for p in read_rgb(path).reshape(-1, 3)}
        sample = m.rgb.reshape(-1, 3)[::37]
        assert all(tuple(p) in colours for p in sample)


def test_split_is_disjoint_and_covers(kather):
    a, b = split_tiles(kather, fraction=0.5, seed=0)
    for name in kather.paths:
        sa, sb = set(a.paths[name]), set(b.paths[name])
        assert not sa & sb
        assert sa | sb == set(kather.paths[name])
        if name != OTHER:
            assert sa and sb
    again = split_tiles(kather, fraction=0.5, seed=0)
    assert again[0].paths == a.paths
    # mosaics built from the two halves never share a tile: generate and check sources
    gen_a = MosaicGenerator(a, size=64, seed=0)
    assert len(gen_a.class_tiles[0]) in (1, 2)
    one_tum = TileFolder(NCT_TILES, paths={**TileFolder(NCT_TILES).paths,
                                           "TUM": TileFolder(NCT_TILES).paths["TUM"][:1]})
    with pytest.raises(InputError, match="at least 2 tiles"):
        split_tiles(one_tum, 0.5, 0)


def test_resampling_to_target_mpp(kather):
    gen = MosaicGenerator(kather, size=224, seed=0, tile_mpp=0.495, target_mpp=0.25)
    assert gen.class_tiles[0][0].shape == (297, 297, 3)
    assert gen.microns_per_pixel == 0.25
    assert gen[0].rgb.shape == (224, 224, 3)
    with pytest.raises(ValueError):
        MosaicGenerator(kather, tile_mpp=0.5)


def test_mirror_fill_option(kather):
    gen = MosaicGenerator(kather, size=224, seed=0, patchwork=False, min_regions=1,
                          max_regions=1, background_fraction=0.0)
    m = gen[0]
    assert (m.labels > 0).all() and m.tags.sum() == 1


@pytest.mark.slow
def test_speed(generator):
    """A measurement, not a gate (wall times are never asserted: the machine is shared):
    prints the cost of one mosaic (~10 ms measured on an idle core)."""
    generator[0]
    start = time.perf_counter()
    mosaics = [generator[i] for i in range(50)]
    per_mosaic = (time.perf_counter() - start) / 50
    print(f"\n{per_mosaic * 1000:.1f} ms per mosaic")
    assert len({m.rgb.tobytes() for m in mosaics}) == 50  # 50 different mosaics made


def test_mosaic_dataset_items_and_collate(generator):
    ds = MosaicDataset(generator, length=6, augment=True, hed_sigma=0.03, hed_bias=0.01)
    image, tags, mask = ds[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert mask is not None and mask.dtype == torch.int64 and mask.shape == (224, 224)
    # augmentation keeps the classes present (flips/rotations move, never relabel)
    labels = generator[2].labels
    assert sorted(torch.unique(mask).tolist()) == sorted(np.unique(labels).tolist())
    np.testing.assert_array_equal(tags.numpy(), generator[2].tags)
    again = ds[2]
    assert torch.equal(again[0], image)  # same (seed, epoch, index): same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], image)
    images, tag_batch, masks = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 224, 224) and tag_batch.shape == (2, 4)
    assert masks is not None and masks.shape == (2, 224, 224)
    plain = MosaicDataset(generator, length=2, augment=False)
    raw = generator[0].rgb.astype(np.float32) / 255.0
    mean, std = np.array(plain.mean), np.array(plain.std)
    np.testing.assert_allclose(plain[0][0].permute(1, 2, 0).numpy(), (raw - mean) / std,
                               atol=1e-5)
    with pytest.raises(IndexError):
        plain[2]
