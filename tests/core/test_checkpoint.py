"""Checkpoint round trip and refusal of unsafe or mismatched files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lpd.errors import CheckpointError
from lpd.io.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from lpd.model import create_model


@pytest.fixture(scope="module")
def model():
    return create_model("resnet18", prototypes_per_class=2, prototype_dim=16,
                        microns_per_pixel=0.5)


def test_round_trip(tmp_path: Path, model) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"step": 7})
    loaded = load_checkpoint(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    config, extra = read_checkpoint_metadata(path)
    assert config == model.config
    assert config.class_names == ("TUM", "STR", "LYM", "NEC")
    assert config.microns_per_pixel == 0.5 and config.mean is not None
    assert extra == {"step": 7}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_overwrite_is_atomic(tmp_path: Path, model, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"v": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lpd._atomic.os.replace", broken)  # the new file is written, then
    with pytest.raises(OSError):
        save_checkpoint(path, model, {"v": 2})
    assert read_checkpoint_metadata(path)[1] == {"v": 1}
    assert list(tmp_path.iterdir()) == [path]


class _Evil:
    def __reduce__(self):
        return (Path("/tmp/lpd-pwned").touch, ())


def test_pickle_with_code_is_refused_without_running(tmp_path: Path) -> None:
    marker = Path("/tmp/lpd-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*pickled"):
        load_checkpoint(path)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(_Evil(), protocol=4))
    with pytest.raises(CheckpointError, match="evil.pkl"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_empty_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not an LPD checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello world, not weights")
    with pytest.raises(CheckpointError, match="notes.safetensors"):
        load_checkpoint(text)


def test_truncated_checkpoint(tmp_path: Path, model) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in (10, 100, len(data) // 2, len(data) - 5):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="cut.safetensors"):
            load_checkpoint(cut)


def test_nan_weights_refused(tmp_path: Path, model) -> None:
    bad = create_model(config=model.config)
    with torch.no_grad():
        bad.head.prototypes[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", bad)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(path)


def test_expectations_on_classes_and_backbone(tmp_path: Path, model) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    with pytest.raises(CheckpointError, match="5 expected"):
        load_checkpoint(path, expect_num_classes=5)
    with pytest.raises(CheckpointError, match="backbone"):
        load_checkpoint(path, expect_backbone="tf_efficientnet_lite0")


def test_weights_of_another_model_refused(tmp_path: Path, model) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    # same metadata, weights from a model with another k: shapes must not fit
    other = create_model("resnet18", prototypes_per_class=3, prototype_dim=16)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tampered = tmp_path / "tampered.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tampered), meta)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tampered)


def test_written_files_get_the_usual_permissions(tmp_path: Path, model) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", model)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
