"""BCSS-WSSS: tag parsing, layout discovery, mask conversion, datasets, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lpd.data.bcss import (
    LABEL_TO_BCSS,
    bcss_to_labels,
    find_bcss,
    parse_tags,
    read_bcss_mask,
    read_eval_pair,
    write_bcss_sample,
)
from lpd.data.datasets import BCSSEvalDataset, BCSSTrainDataset, collate
from lpd.errors import InputError


@pytest.mark.parametrize(
    ("name", "tags"),
    [
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", [1, 1, 0, 1]),
        ("TCGA-OL-A66I-DX1_xmin12_ymin7_MPP-0.2500+3[0010].png", [0, 0, 1, 0]),
        ("/data/BCSS-WSSS/train/x+0[1111].png", [1, 1, 1, 1]),
        ("x[0000].png", [0, 0, 0, 0]),
        ("odd[name]_x+0[0100].PNG", [0, 1, 0, 0]),  # the last bracket holds the tags
    ],
)
def test_parse_tags(name, tags):
    out = parse_tags(name)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, tags)


@pytest.mark.parametrize(
    "name",
    [
        "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0.png",  # no brackets
        "TCGA-A1_x+0[110].png",  # too short
        "TCGA-A1_x+0[11010].png",  # too long
        "TCGA-A1_x+0[1201].png",  # not 0/1
        "TCGA-A1_x+0[1a01].png",
        "TCGA-A1_x+0[].png",
        "TCGA-A1_x+0[1 01].png",
    ],
)
def test_malformed_names_raise_naming_the_file(name):
    with pytest.raises(InputError) as err:
        parse_tags(name)
    assert name in str(err.value)


def test_mask_conversion():
    mask = np.array([[0, 1, 2], [3, 4, 7]], np.uint8)
    np.testing.assert_array_equal(bcss_to_labels(mask), [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(LABEL_TO_BCSS[bcss_to_labels(mask[:, :2])], mask[:, :2])


@pytest.mark.parametrize("val_name", ["val", "valid"])
def test_generated_sample_round_trip(tmp_path, val_name):
    layout = write_bcss_sample(tmp_path, n_train=6, n_val=3, n_test=2, size=96, seed=3,
                               val_name=val_name)
    again = find_bcss(tmp_path)
    assert len(again.train) == 6 and len(again.val) == 3 and len(again.test) == 2
    assert [p for p, _ in again.train] == [p for p, _ in layout.train]
    assert again.val[0][0].parent == tmp_path / val_name / "img"
    for path, tags in again.train:
        assert np.asarray(Image.open(path)).shape == (96, 96, 3)
        assert tags.sum() >= 1
    for image, mask in again.val + again.test:
        raw = Image.open(mask)
        assert raw.mode == "P"  # a real palette mask, as BCSS ships them
        values = np.asarray(raw)
        assert set(np.unique(values)) <= {0, 1, 2, 3, 4}
        rgb, labels = read_eval_pair(image, mask)
        assert rgb.shape == (96, 96, 3)
        np.testing.assert_array_equal(labels, bcss_to_labels(values))
        np.testing.assert_array_equal(read_bcss_mask(mask), labels)
    again.check_sizes()


def test_training_tags_match_content(tmp_path):
    """The generated names' tags are exactly the classes painted in the image."""
    from lpd.data.synthetic import synthetic_tissue

    layout = write_bcss_sample(tmp_path, n_train=5, n_val=0, n_test=0, size=64, seed=0)
    rng = np.random.default_rng(0)  # write_bcss_sample's own draws, replayed
    for path, tags in layout.train:
        rgb, labels = synthetic_tissue(64, int(rng.integers(2**31)))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)  # lossless
        np.testing.assert_array_equal(tags, [float((labels == c + 1).any()) for c in range(4)])


def test_missing_folders_and_orphans(tmp_path):
    with pytest.raises(InputError, match="not found"):
        find_bcss(tmp_path / "nowhere")
    write_bcss_sample(tmp_path, n_train=2, n_val=2, n_test=2, size=32, seed=0)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(InputError, match="missing val folder") as err:
        find_bcss(tmp_path)
    assert "val" in str(err.value)
    assert len(find_bcss(tmp_path, require=("train", "test")).test) == 2
    assert len(find_bcss(tmp_path, require=("test",)).train) == 2
    # an image without its mask: the error names the image
    mask = sorted((tmp_path / "test" / "mask").iterdir())[0]
    mask.unlink()
    with pytest.raises(InputError, match="no mask") as err:
        find_bcss(tmp_path, require=("test",))
    assert mask.name in str(err.value)
    # a mask folder missing altogether
    shutil.rmtree(tmp_path / "test" / "mask")
    with pytest.raises(InputError, match="missing folder") as err:
        find_bcss(tmp_path, require=("test",))
    assert "mask" in str(err.value)


def test_malformed_training_name_found_by_find_bcss(tmp_path):
    write_bcss_sample(tmp_path, n_train=2, n_val=0, n_test=0, size=32, seed=0)
    bad = tmp_path / "train" / "TCGA-XX_x+0[12].png"
    shutil.copy(next((tmp_path / "train").iterdir()), bad)
    with pytest.raises(InputError) as err:
        find_bcss(tmp_path, require=("train",))
    assert bad.name in str(err.value)


def test_mask_size_mismatch_names_both_files(tmp_path):
    layout = write_bcss_sample(tmp_path, n_train=0, n_val=0, n_test=1, size=48, seed=0)
    image, mask = layout.test[0]
    small = Image.frombytes("P", (40, 40), bytes(40 * 40))
    small.save(mask)
    with pytest.raises(InputError) as err:
        read_eval_pair(image, mask)
    assert image.name in str(err.value) and mask.name in str(err.value)
    assert "48x48" in str(err.value) and "40x40" in str(err.value)
    with pytest.raises(InputError) as err:
        find_bcss(tmp_path, require=("test",)).check_sizes()
    assert str(image) in str(err.value) and str(mask) in str(err.value)


def test_bcss_datasets(tmp_path):
    layout = write_bcss_sample(tmp_path, n_train=3, n_val=2, n_test=0, size=64, seed=1)
    train = BCSSTrainDataset(layout.train, augment=True)
    image, tags, mask = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask is None
    np.testing.assert_array_equal(tags.numpy(), layout.train[0][1])
    images, tag_batch, masks = collate([train[0], train[1]])
    assert images.shape == (2, 3, 64, 64) and masks is None
    evaluation = BCSSEvalDataset(layout.val)
    image, tags, mask = evaluation[1]
    labels = read_eval_pair(*layout.val[1])[1]
    assert mask is not None and mask.dtype == torch.int64
    np.testing.assert_array_equal(mask.numpy(), labels)
    np.testing.assert_array_equal(tags.numpy(),
                                  [float((labels == c + 1).any()) for c in range(4)])
    with pytest.raises(InputError, match="expects 224x224"):
        BCSSTrainDataset(layout.train, size=224)[0]
