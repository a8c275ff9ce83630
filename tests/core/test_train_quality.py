"""A short real training: kather2016 mosaics -> held-apart kather2016 mosaics.

Measured when written (2-core CPU, tf_efficientnet_lite0 ImageNet, k=5, 120 steps of 8
mosaics at 160 px, about 2 minutes): on 48 held-apart mosaics, predicted-protocol mIoU 0.852,
oracle 0.891, one-class-per-patch guess 0.458. The bounds below leave room for platform
noise. Comparisons between methods belong to the accuracy benchmark (``lpd bench accuracy``)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lpd.config import TrainConfig
from lpd.data.sample import KATHER2016_TILES
from lpd.data.sources import evaluation_dataset, training_sources
from lpd.evaluation import score
from lpd.model import create_model
from lpd.trainer import fit

STEPS = 120
MIN_PREDICTED_MIOU = 0.60  # one-class-per-patch guess on these mosaics: ~0.42


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = create_model(pretrained=True, prototypes_per_class=5, input_size=160,
                         microns_per_pixel=0.5, output_stride=None)
    config = TrainConfig(steps=STEPS, batch_size=8, warmup_iters=40, lr=1e-4, seed=0,
                         threads=2)
    sources = training_sources(KATHER2016_TILES, model.config, config,
                               mosaics=STEPS * config.batch_size, tile_mpp=0.495)
    fit(model, config, sources.train)
    return model


def test_short_training_beats_one_class_guess(trained) -> None:
    held_apart = evaluation_dataset(KATHER2016_TILES, trained.config, mosaics=48,
                                    tile_mpp=0.495)
    result = score(trained, DataLoader(held_apart, batch_size=16))
    predicted = result.scores["predicted"].miou
    oracle = result.scores["oracle"].miou
    guess = result.scores["one_class_guess"].miou
    print(f"held-apart kather2016: predicted {predicted:.3f}, oracle {oracle:.3f}, "
          f"one-class guess {guess:.3f}")
    assert guess < 0.5
    assert predicted >= MIN_PREDICTED_MIOU
    assert predicted >= guess + 0.15
    assert oracle >= predicted - 0.02
