"""The trainer's mechanics on synthetic tissue: steps, warm-up, checkpoints, cancel, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from lpd.config import TrainConfig
from lpd.data.datasets import tags_from_labels, to_tensor
from lpd.data.synthetic import synthetic_tissue
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata
from lpd.model import create_model
from lpd.trainer import Trainer, fit


class SyntheticPatches(Dataset):
    def __init__(self, n: int, size: int = 64, seed: int = 0) -> None:
        self.items = [synthetic_tissue(size, seed=seed + i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        rgb, labels = self.items[i]
        tags = torch.from_numpy(tags_from_labels(labels))
        return to_tensor(rgb), tags, torch.from_numpy(labels.astype(np.int64))


def _model():
    return create_model("resnet18", prototypes_per_class=2, prototype_dim=16, input_size=64)


def _config(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, warmup_iters=2, lr=1e-3, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_steps_warmup_and_checkpoints(tmp_path: Path) -> None:
    data = SyntheticPatches(8)
    trainer = Trainer(_model(), _config(val_every=3), data, SyntheticPatches(4, seed=99),
                      tmp_path)
    progress = list(trainer.steps())
    assert [p.step for p in progress] == list(range(1, 7))
    assert "div" not in progress[1].losses and "div" in progress[2].losses  # warm-up = 2
    assert progress[2].val_miou is not None  # validation at step 3
    assert progress[-1].eta == pytest.approx(0.0, abs=1e-6)
    for name in ("last.safetensors", "best.safetensors", "train_state.safetensors",
                 "history.json"):
        assert (tmp_path / name).exists(), name
    assert read_checkpoint_metadata(tmp_path / "last.safetensors")[1]["step"] == 6


def test_training_changes_the_weights_and_lowers_the_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model()
    before = model.head.prototypes.detach().clone()
    result = fit(model, _config(steps=25, div_weight=0.0), SyntheticPatches(16), None,
                   tmp_path)
    assert result.completed and result.steps_done == 25
    assert not torch.equal(before, model.head.prototypes.detach())
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cancel_keeps_a_checkpoint_of_the_last_step(tmp_path: Path) -> None:
    calls = []
    result = fit(_model(), _config(steps=50), SyntheticPatches(8), None, tmp_path,
                   on_progress=calls.append, should_stop=lambda: len(calls) >= 3)
    assert not result.completed and result.steps_done == 3
    assert read_checkpoint_metadata(result.last_checkpoint)[1]["step"] == 3
    load_checkpoint(result.last_checkpoint)  # whole and loadable


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    calls = []
    fit(_model(), _config(steps=6), SyntheticPatches(8), None, tmp_path,
          on_progress=calls.append, should_stop=lambda: len(calls) >= 2)
    trainer = Trainer(_model(), _config(steps=6), SyntheticPatches(8), None, tmp_path,
                      resume=True)
    assert trainer.start_step == 2
    steps = [p.step for p in trainer.steps()]
    assert steps == [3, 4, 5, 6]
    assert trainer.optimizer.state  # optimizer moments restored, not reset


def test_seeded_training_is_reproducible(tmp_path: Path) -> None:
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    fit(a, _config(), SyntheticPatches(8), None, None)
    fit(b, _config(), SyntheticPatches(8), None, None)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), k
