"""The headless user path end to end on tiny settings: lpd train -> evaluate -> demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpd.cli.main import main
from lpd.data.sample import KATHER2016_TILES, NCT_TILES


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(["train", str(KATHER2016_TILES), "--out", str(out), "--backbone", "resnet18",
                 "--no-pretrained", "--k", "2", "--steps", "3", "--batch-size", "2",
                 "--mosaics", "6", "--val-mosaics", "4", "--val-every", "2", "--device", "cpu",
                 "--threads", "1"])
    assert code == 0
    return out


def test_train_writes_checkpoints_and_history(run_dir: Path) -> None:
    for name in ("last.safetensors", "best.safetensors", "train_state.safetensors",
                 "history.json", "config.json"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]


def test_evaluate_prints_table_and_writes_json(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.json"
    code = main(["evaluate", str(NCT_TILES), "--checkpoint", str(run_dir / "last.safetensors"),
                 "--mosaics", "4", "--json", str(out), "--device", "cpu"])
    assert code == 0
    table = capsys.readouterr().out
    assert "predicted" in table and "oracle" in table and "one_class_guess" in table
    scores = json.loads(out.read_text())
    for protocol in ("predicted", "oracle", "one_class_guess"):
        assert 0 <= scores[protocol]["mIoU"] <= 1
        assert set(scores[protocol]["IoU"]) == {"TUM", "STR", "LYM", "NEC"}


def test_demo_writes_pictures_and_summary(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--checkpoint", str(run_dir / "last.safetensors"),
                 "--mosaics", "2", "--region", "600", "900", "800", "1000", "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slide"] == "cmu-1-small-region.svs"
    assert abs(sum(summary["area_percent"].values()) - 100) < 0.1
    labels = np.asarray(Image.open(out / "slide_labels_full.png"))
    assert labels.shape == (1000, 800) and labels.max() <= 4
    overlay = np.asarray(Image.open(out / "slide_overlay.png"))
    assert overlay.ndim == 3 and overlay.std() > 5
    assert (out / "mosaics_image_truth_prediction.png").is_file()
    assert "mIoU" in capsys.readouterr().out


def test_cli_errors_name_the_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_text("not a checkpoint")
    code = main(["evaluate", str(NCT_TILES), "--checkpoint", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err
    code = main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "missing" in capsys.readouterr().err
