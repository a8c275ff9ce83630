"""Fine-tuning from tags: dataset, new checkpoint, never overwriting, cancel, stop."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from lpd.config import TrainConfig
from lpd.data.bcss import write_bcss_sample
from lpd.data.synthetic import synthetic_tissue
from lpd.data.tags import TagStore
from lpd.errors import InputError
from lpd.finetune import (
    MixedDataset,
    TagDataset,
    default_output_path,
    fine_tune,
    run_fine_tune,
    unique_checkpoint_path,
)
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from lpd.model import create_model

# One torch thread: on a shared 2-core machine more threads make these steps ~3x slower.
FAST = TrainConfig(threads=1, warmup_iters=0, seed=0)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = create_model("resnet18", prototypes_per_class=2, prototype_dim=16, input_size=64)
    return save_checkpoint(folder / "tiny.safetensors", model, {"note": "base"})


@pytest.fixture
def tagged(tmp_path: Path) -> tuple[TagStore, np.ndarray]:
    rgb, _ = synthetic_tissue(192, seed=3)
    store = TagStore(tmp_path / "image.png", image_size=(192, 192))
    store.add((0, 0, 128, 64), ["TUM"])
    store.add((64, 96, 64, 64), ["STR", "LYM"], source="grid")
    store.add((150, 150, 10, 10))  # untagged: ignored
    return store, rgb


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tag_dataset_gives_model_sized_patches_with_region_tags(tagged, tiny) -> None:
    store, rgb = tagged
    config = read_checkpoint_metadata(tiny)[0]
    data = TagDataset(store, rgb, config, augment=False)
    assert len(data) == 3  # 128x64 -> 2 crops, 64x64 -> 1
    image, tags, mask = data[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and mask is None
    assert tags.tolist() == [1, 0, 0, 0] and data[2][1].tolist() == [0, 1, 1, 0]
    augmented = TagDataset(store, rgb, config, augment=True, seed=1)
    assert not torch.equal(augmented[0][0], image)
    assert torch.equal(augmented[0][0], augmented[0][0])  # deterministic per (seed, epoch)
    with pytest.raises(InputError, match="no tagged regions"):
        TagDataset(TagStore(store.image_path), rgb, config)


def test_fine_tune_changes_weights_and_writes_a_new_checkpoint(tagged, tiny) -> None:
    store, rgb = tagged
    before = _digest(tiny)
    progress = []
    result = run_fine_tune(fine_tune(tiny, store, rgb, steps=3, batch_size=3, lr=1e-3,
                                     train=FAST), progress.append)
    assert [p.step for p in progress] == [1, 2, 3] and progress[-1].eta == pytest.approx(0)
    assert result.completed and result.steps_done == 3 and result.patches == 3
    assert result.checkpoint == tiny.parent / "tiny-finetuned.safetensors"
    assert _digest(tiny) == before  # the original is untouched
    _, extra = read_checkpoint_metadata(result.checkpoint)
    assert extra["completed"] is True and extra["steps_done"] == 3
    assert extra["finetuned_from"] == str(tiny) and extra["base_extra"] == {"note": "base"}
    old, new = load_checkpoint(tiny).state_dict(), load_checkpoint(result.checkpoint).state_dict()
    assert any(not torch.equal(old[k], new[k]) for k in old if old[k].is_floating_point())
    # Same request again: the first result is kept, the new one gets the next free name.
    first = _digest(result.checkpoint)
    again = run_fine_tune(fine_tune(tiny, store, rgb, steps=1, batch_size=3, train=FAST,
                                    out_path=result.checkpoint))
    assert again.checkpoint == tiny.parent / "tiny-finetuned-1.safetensors"
    assert _digest(result.checkpoint) == first
    result.checkpoint.unlink()
    again.checkpoint.unlink()


def test_unique_checkpoint_path(tmp_path: Path) -> None:
    free = tmp_path / "m.safetensors"
    assert unique_checkpoint_path(free) == free
    free.write_bytes(b"x")
    (tmp_path / "m-finetuned-1.safetensors").write_bytes(b"x")
    assert unique_checkpoint_path(free).name == "m-finetuned-2.safetensors"
    assert unique_checkpoint_path(tmp_path / "m-finetuned-1.safetensors").name == (
        "m-finetuned-2.safetensors")
    assert unique_checkpoint_path(tmp_path / "new").name == "new.safetensors"
    (tmp_path / "m-finetuned.safetensors").write_bytes(b"x")
    # fine-tuning a fine-tuned model continues the series instead of stacking suffixes
    assert default_output_path(tmp_path / "m-finetuned-1.safetensors").name == (
        "m-finetuned-2.safetensors")
    assert default_output_path(free).name == "m-finetuned-2.safetensors"


def test_cancel_writes_nothing_and_keeps_the_original(tagged, tiny, tmp_path: Path) -> None:
    store, rgb = tagged
    before, out = _digest(tiny), tmp_path / "tuned.safetensors"
    gen = fine_tune(tiny, store, rgb, steps=50, batch_size=3, train=FAST, out_path=out)
    assert [next(gen).step for _ in range(2)] == [1, 2]
    gen.close()  # what napari's Cancel does
    assert not out.exists() and _digest(tiny) == before
    assert sorted(p.name for p in tiny.parent.iterdir()) == ["tiny.safetensors"]


def test_cancel_or_stop_at_random_points_is_consistent(tagged, tiny, tmp_path: Path) -> None:
    """Cancel (close) after any number of steps, 0..all: nothing written, the original
    untouched. Stop at any point: a whole checkpoint, marked complete only when it is."""
    import random

    store, rgb = tagged
    before, steps, rng = _digest(tiny), 6, random.Random(11)
    points = sorted({0, steps, *(rng.randint(1, steps - 1) for _ in range(3))})
    for k in points:
        out = tmp_path / f"cancel-{k}.safetensors"
        gen = fine_tune(tiny, store, rgb, steps=steps, batch_size=2, train=FAST, out_path=out)
        seen = [next(gen).step for _ in range(k)]
        assert seen == list(range(1, k + 1))
        gen.close()  # napari's Cancel, even after the last step: no checkpoint
        assert not out.exists()
    for k in points[1:]:
        count: list = []  # progress reports so far
        result = run_fine_tune(
            fine_tune(tiny, store, rgb, steps=steps, batch_size=2, train=FAST,
                      out_path=tmp_path / f"stop-{k}.safetensors",
                      should_stop=lambda k=k, count=count: len(count) >= k),
            count.append)
        _, extra = read_checkpoint_metadata(result.checkpoint)
        assert result.steps_done == extra["steps_done"] == k
        assert extra["completed"] is result.completed is (k == steps)
        load_checkpoint(result.checkpoint)  # whole and loadable
    assert _digest(tiny) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_stop_saves_a_partial_checkpoint_marked_incomplete(tagged, tiny, tmp_path: Path) -> None:
    store, rgb = tagged
    steps: list[int] = []
    gen = fine_tune(tiny, store, rgb, steps=50, batch_size=3, train=FAST,
                    out_path=tmp_path / "partial.safetensors",
                    should_stop=lambda: len(steps) >= 2)
    result = run_fine_tune(gen, lambda p: steps.append(p.step))
    assert not result.completed and result.steps_done == 2
    _, extra = read_checkpoint_metadata(result.checkpoint)
    assert extra["completed"] is False and extra["steps_done"] == 2 and extra["steps"] == 50
    load_checkpoint(result.checkpoint)  # whole and loadable


def test_extra_bcss_folder_is_mixed_in(tagged, tiny, tmp_path: Path) -> None:
    store, rgb = tagged
    write_bcss_sample(tmp_path / "bcss", n_train=4, n_val=0, n_test=0, size=64)
    result = run_fine_tune(fine_tune(tiny, store, rgb, steps=1, batch_size=4, train=FAST,
                                     extra_data_folder=tmp_path / "bcss",
                                     out_path=tmp_path / "mixed.safetensors"))
    assert result.completed and read_checkpoint_metadata(result.checkpoint)[1]["extra_data"]
    mixed = MixedDataset(list(range(3)), list(range(100, 110)), 0.5, seed=0)
    assert len(mixed) == 6 and [mixed[i] for i in range(3)] == [0, 1, 2]
    assert all(100 <= mixed[i] < 110 for i in range(3, 6))
    write_bcss_sample(tmp_path / "big", n_train=1, n_val=0, n_test=0, size=96)
    with pytest.raises(InputError, match="96x96 px"):
        next(fine_tune(tiny, store, rgb, steps=1, train=FAST, extra_data_folder=tmp_path / "big"))


def test_fine_tune_head_only_keeps_the_backbone(tagged, tiny, tmp_path: Path) -> None:
    store, rgb = tagged
    out = tmp_path / "head.safetensors"
    result = run_fine_tune(fine_tune(tiny, store, rgb, steps=2, batch_size=3, lr=1e-3,
                                     train=FAST, out_path=out, trainable="head"))
    old, new = load_checkpoint(tiny).state_dict(), load_checkpoint(result.checkpoint).state_dict()
    weights = [k for k in old if old[k].is_floating_point() and "running" not in k]
    assert all(torch.equal(old[k], new[k]) for k in weights if k.startswith("backbone."))
    assert any(not torch.equal(old[k], new[k]) for k in weights if k.startswith("head."))
    assert read_checkpoint_metadata(result.checkpoint)[1]["trainable"] == "head"
    with pytest.raises(InputError, match="trainable"):
        next(fine_tune(tiny, store, rgb, steps=1, trainable="backbone"))
