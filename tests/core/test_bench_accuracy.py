"""The accuracy benchmark's machinery (tiny settings: random-init resnet18, few steps, small
patches) and its parts: spherical k-means, the fixed prototype bank, the shared-tile check,
the outputs (JSON, markdown, PNG). The real ``--quick`` run is slow-marked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lpd.bench import variants
from lpd.bench.accuracy import AccuracyBenchmark, AccuracySettings
from lpd.cli.main import main
from lpd.data.mosaic import TileFolder
from lpd.data.sample import KATHER2016_TILES, NCT_TILES
from lpd.errors import InputError
from lpd.io.checkpoint import load_checkpoint, save_checkpoint
from lpd.model import create_model
from lpd.model.head import BankHead
from lpd.model.prototype_bank import build_bank, install_bank, spherical_kmeans

TINY = ["--backbone", "resnet18", "--no-pretrained", "--steps", "2", "--batch-size", "2",
        "--input-size", "64", "--k", "2", "--eval-mosaics", "2", "--threads", "1"]


def test_cli_writes_json_markdown_and_png(tmp_path: Path) -> None:
    out = tmp_path / "acc.json"
    rc = main(["bench", "accuracy", "--json", str(out), "--configs", "a_cam,e_div",
               "--seeds", "2", *TINY])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["complete"] and not report["quick"]
    assert report["settings"]["steps"] == 2 and report["settings"]["threads"] == 1
    assert "2 steps of batch 2" in report["budget"] and report["wall_seconds"] > 0
    assert [(r["config"], r["seed"]) for r in report["runs"]] == [
        ("a_cam", 0), ("e_div", 0), ("a_cam", 1), ("e_div", 1)]  # seed-major
    for name in ("a_cam", "e_div"):
        for which in ("held_apart", "test"):
            for protocol in ("predicted", "oracle"):
                cell = report["summary"][name][which][protocol]
                assert cell["mIoU"]["n"] == 2 and len(cell["mIoU"]["values"]) == 2
                assert 0 <= cell["mIoU"]["mean"] <= 1 and cell["mIoU"]["std"] >= 0
                assert set(cell["IoU"]) == {"TUM", "STR", "LYM", "NEC"}
                assert {"mDice", "FwIoU"} <= set(cell)
    assert set(report["one_class_guess"]) == {"held_apart", "test"}
    assert "beats_baseline" in report["margins"]["e_div"]["test"]["oracle"]
    sweep = report["inference_sweep"]["e_div"]["test"]  # the default sweep of (e)
    assert "bg_power=10,presence=0.5" in sweep["predicted"] and "bg_power=10" in sweep["oracle"]
    assert len(sweep["confusion"]["predicted"]) == 5
    assert report["data"]["shared_tiles"] == []
    md = out.with_suffix(".md").read_text()
    assert "| (a) CAM baseline |" in md and "one-class-per-patch guess" in md
    assert "oracle presence" in md and "± " in md and "wall time" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parallel_runs_score_the_same_as_one_at_a_time(tmp_path: Path) -> None:
    scores = {}
    for jobs in ("1", "2"):  # 2: each run in a spawned process, as on a 2-core CPU
        out = tmp_path / f"jobs{jobs}.json"
        assert main(["bench", "accuracy", "--json", str(out), "--configs", "a_cam,e_div",
                     "--seeds", "1", "--inference-sweep", "none", "--jobs", jobs, *TINY]) == 0
        report = json.loads(out.read_text())
        assert report["complete"] and report["settings"]["jobs"] == int(jobs)
        assert f"{jobs} run(s) at a time" in report["budget"]
        scores[jobs] = [(r["config"], r["seed"], r["scores"]) for r in report["runs"]]
    assert [s[:2] for s in scores["2"]] == [("a_cam", 0), ("e_div", 0)]  # task order
    assert scores["1"] == scores["2"]


def test_shared_tiles_are_refused_or_flagged(tmp_path: Path) -> None:
    test = tmp_path / "test"
    shutil.copytree(NCT_TILES, test)
    leaked = next((KATHER2016_TILES / "TUM").iterdir())
    shutil.copy(leaked, test / "TUM" / "renamed-copy.tif")  # same bytes, other name
    settings = AccuracySettings(KATHER2016_TILES, test, configs=("a_cam",))
    with pytest.raises(InputError, match="shares 1 tile"):
        AccuracyBenchmark(settings)
    settings.allow_overlap = True
    bench = AccuracyBenchmark(settings)
    assert bench.overlap == [(str(leaked), str(test / "TUM" / "renamed-copy.tif"))]


def test_resolve_configuration_names() -> None:
    assert variants.resolve("default") == variants.DEFAULT_CONFIGS
    assert len(variants.DEFAULT_CONFIGS) == 10 and "e_k5" in variants.DEFAULT_CONFIGS
    assert variants.resolve("a_cam,ablation")[:2] == ("a_cam", "b_bank")
    with pytest.raises(ValueError, match="unknown benchmark configuration"):
        variants.resolve("nope")


def test_spherical_kmeans_recovers_separated_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(3, 8, generator=gen), dim=1)
    points = torch.cat([c + 0.05 * torch.randn(20, 8, generator=gen) for c in centres])
    found, assign = spherical_kmeans(points, 3, seed=1)
    assert torch.allclose(found.norm(dim=1), torch.ones(3), atol=1e-5)
    for j in range(3):  # every true group is one cluster
        assert assign[j * 20 : (j + 1) * 20].unique().numel() == 1
    assert assign.unique().numel() == 3
    assert (found @ centres.T).max(dim=0).values.min() > 0.99
    with pytest.raises(ValueError):
        spherical_kmeans(points[:2], 3)


def test_bank_is_installed_fixed_and_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", head="bank", prototypes_per_class=2, input_size=64)
    assert isinstance(model.head, BankHead)
    assert not any(p is model.head.bank0 for p in model.parameters())  # a buffer
    folder = TileFolder(KATHER2016_TILES)
    banks = install_bank(model, folder, crops_per_class=6, seed=0)
    assert [tuple(b.shape) for b in banks] == [(8, c) for c in model.channels]
    for s, bank in enumerate(banks):
        assert torch.allclose(getattr(model.head, f"bank{s}"), bank)
        assert torch.allclose(bank.norm(dim=1), torch.ones(8), atol=1e-5)
    again = build_bank(model, folder, crops_per_class=6, seed=0)  # deterministic
    assert all(torch.allclose(a, b) for a, b in zip(again, banks, strict=True))
    out = model(torch.randn(2, 3, 64, 64))
    assert out.cos_maps is not None and out.cos_maps[-1].shape[1] == 8
    assert out.cos_maps[-1].abs().max() <= 1 + 1e-5
    from lpd.config import TrainConfig
    from lpd.data.sources import mosaic_dataset
    from lpd.trainer import Trainer

    temperature = model.head.log_temperature.detach().clone()
    data = mosaic_dataset(folder, model.config, 4, seed=1, augment=True)
    list(Trainer(model, TrainConfig(steps=2, batch_size=2, lr=1e-2, div_weight=0.0),
                 data).steps())
    assert all(torch.equal(getattr(model.head, f"bank{s}"), b) for s, b in enumerate(banks))
    assert not torch.equal(model.head.log_temperature.detach(), temperature)  # it trains
    path = save_checkpoint(tmp_path / "bank.safetensors", model)
    loaded = load_checkpoint(path)
    assert loaded.config.head == "bank" and torch.equal(loaded.head.bank3, model.head.bank3)


@pytest.mark.slow
def test_quick_preset_runs_end_to_end(tmp_path: Path) -> None:
    """``lpd bench accuracy --quick`` with its real defaults (pretrained backbone, bundled
    tiles); meant to finish within ~3 minutes on two cores."""
    out = tmp_path / "quick.json"
    assert main(["bench", "accuracy", "--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] and report["complete"]
    assert set(report["summary"]) == set(variants.QUICK_CONFIGS)
    assert report["settings"]["pretrained"] and report["settings"]["input_size"] == 128
    assert "QUICK" not in report["budget"] and "(quick smoke run" in \
        out.with_suffix(".md").read_text()


def test_leave_one_release_out_reports_each_release_with_baselines(tmp_path: Path) -> None:
    """Tiny settings (2 steps): the machinery, not a measurement."""
    import json

    from lpd.bench.loro import LoroSettings, format_loro, run_loro

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = run_loro(LoroSettings(seeds=2, steps=2, eval_mosaics=3,
                                    releases=("nct", "tcga-tumour")))
        events = []
        while True:
            try:
                events.append(next(gen))
            except StopIteration as stop:
                report = stop.value
                break
    finally:
        torch.set_num_threads(threads)
    assert [e.phase for e in events].count("done") == 4  # 2 releases x 2 seeds
    nct, tcga = report["releases"]["nct"], report["releases"]["tcga-tumour"]
    assert nct["train_releases"] == ["kather2016", "tcga-tumour"]
    assert tcga["train_releases"] == ["kather2016", "nct"] and tcga["present"] == [1]
    for protocol in ("predicted", "oracle"):
        assert 0 <= nct["summary"][protocol]["mIoU"]["mean"] <= 1
        assert nct["summary"][protocol]["mIoU"]["std"] >= 0
        assert set(tcga["summary"][protocol]) == {"TUM_IoU", "TUM_recall"}
    assert 0 <= nct["summary"]["predicted"]["other_painted"]["mean"] <= 1
    assert nct["baselines"]["one_class_guess"]["mIoU"] >= nct["baselines"][
        "random_present_class"]["mIoU"]
    assert tcga["baselines"]["one_class_guess"]["TUM_IoU"] == 1.0  # tumour only
    table = format_loro(report)
    assert "| nct (mIoU) |" in table and "| tcga-tumour (TUM IoU) |" in table
    json.dumps(report)  # JSON-able


def test_mosaics_of_a_one_class_release_and_other_label() -> None:
    from lpd.data.mosaic import MosaicGenerator, TileFolder
    from lpd.data.sample import SAMPLE_ROOT

    root = SAMPLE_ROOT / "tiles"
    tumour = TileFolder(root, paths={"TUM": tuple(sorted((root / "tcga-tumour/TUM").iterdir())),
                                     "STR": (), "LYM": (), "NEC": ()})
    gen = MosaicGenerator(tumour, size=96, seed=3)
    labels = np.concatenate([gen[i].labels.ravel() for i in range(6)])
    assert set(np.unique(labels)) <= {0, 1} and (labels == 1).any()
    nct = TileFolder(root / "nct")
    marked = MosaicGenerator(nct, size=96, seed=3, other_label=5, background_fraction=0.6,
                             other_fraction=1.0)
    plain = MosaicGenerator(nct, size=96, seed=3, background_fraction=0.6, other_fraction=1.0)
    a = np.stack([marked[i].labels for i in range(6)])
    b = np.stack([plain[i].labels for i in range(6)])
    assert (a == 5).any() and np.array_equal(np.where(a == 5, 0, a), b)
