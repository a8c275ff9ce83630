"""The BCSS-WSSS paper recipe (configs/bcss-wsss-paper.json) runs end to end through the
CLI: a few iterations of ``lpd train`` on generated BCSS-format data (no pretrained
weights, small images), then ``lpd evaluate`` on its test split."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lpd.cli.main import main
from lpd.config import RunConfig
from lpd.data.bcss import write_bcss_sample

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "bcss-wsss-paper.json"
BCSS_TRAIN_IMAGES = 23_422


def test_recipe_matches_the_paper() -> None:
    run = RunConfig.load(RECIPE)
    m, t = run.model, run.train
    assert m.backbone == "pvt_v2_b1"  # MiT-B1 widths 64/128/320/512
    assert m.head == "prototype" and m.prototypes_per_class == 10 and m.input_size == 224
    assert t.div_weight == 0.5 and t.div_mode == "correct" and t.warmup_iters == 3000
    assert t.lr == 5e-5 and t.weight_decay == 1e-3 and t.batch_size == 10
    assert tuple(t.cls_weights) == (0.0, 0.1, 1.0, 1.0)
    assert t.steps == round(8 * BCSS_TRAIN_IMAGES / t.batch_size)  # 8 epochs


def test_recipe_trains_and_evaluates_on_bcss_format_data(tmp_path: Path, capsys) -> None:
    data = tmp_path / "bcss"
    write_bcss_sample(data, n_train=4, n_val=2, n_test=2, size=64, seed=3)
    out = tmp_path / "run"
    rc = main(["train", str(data), "--config", str(RECIPE), "--no-pretrained", "--out", str(out),
               "--steps", "3", "--warmup", "1", "--batch-size", "2", "--input-size", "64",
               "--num-workers", "0", "--threads", "1", "--device", "cpu"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["backbone"] == "pvt_v2_b1" and config["train"]["div_weight"] == 0.5
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3] and "div" in history[-1]
    checkpoint = out / "best.safetensors"  # validated on val/ at the end
    assert checkpoint.is_file() and (out / "last.safetensors").is_file()
    scores = tmp_path / "scores.json"
    rc = main(["evaluate", str(data), "--checkpoint", str(checkpoint), "--json", str(scores),
               "--device", "cpu", "--batch-size", "2"])
    assert rc == 0
    result = json.loads(scores.read_text())
    assert result["patches"] == 2
    for protocol in ("predicted", "oracle"):
        assert 0.0 <= result[protocol]["mIoU"] <= 1.0 and math.isfinite(result[protocol]["mIoU"])
    assert "mIoU" in capsys.readouterr().out
