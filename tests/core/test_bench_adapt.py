"""``lpd bench adapt`` and the lever sweep's plumbing, on tiny settings (the machinery,
not a measurement)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lpd.bench.adapt import AdaptSettings, format_adapt, plot_adapt, run_adapt, split_halves
from lpd.bench.levers import LEVERS, apply
from lpd.bench.loro import format_sweep
from lpd.data.mosaic import TileFolder
from lpd.data.sample import NCT_TILES


def test_halves_split_by_tile_ceil_n_over_2() -> None:
    folder = TileFolder(NCT_TILES)
    first, second = split_halves(folder)
    for name, paths in folder.paths.items():
        assert len(first.paths[name]) == math.ceil(len(paths) / 2)
        assert not set(first.paths[name]) & set(second.paths[name])
        assert set(first.paths[name]) | set(second.paths[name]) == set(paths)


def _drive(settings: AdaptSettings) -> tuple[list[str], dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = run_adapt(settings)
        phases = []
        while True:
            try:
                phases.append(next(gen).phase)
            except StopIteration as stop:
                return phases, stop.value
    finally:
        torch.set_num_threads(threads)


def test_adapt_reports_gain_and_off_target_change(tmp_path) -> None:
    base = tmp_path / "base.safetensors"
    phases, report = _drive(AdaptSettings(NCT_TILES, counts=(0, 2), seeds=2, steps=1,
                                          eval_mosaics=2, base_steps=1, base_checkpoint=base))
    assert {"base", "finetune", "evaluate"} <= set(phases)
    assert base.is_file()  # kept for the next settings
    # a second run with other fine-tuning settings starts from the kept base: no training
    phases2, report2 = _drive(AdaptSettings(NCT_TILES, counts=(0,), seeds=1, steps=1,
                                            eval_mosaics=2, base_checkpoint=base,
                                            trainable="head"))
    assert "base" not in phases2 and report2["base"] == report["base"]
    assert report2["runs"]["0"][0]["oracle"] == report["runs"]["0"][0]["oracle"]
    assert "trains head" in format_adapt(report2)
    assert report["base"] == "recipe trained on kather2016, tcga-tumour"  # nct never seen
    assert len(report["runs"]["0"]) == 1 and len(report["runs"]["2"]) == 2
    for run in report["runs"]["2"]:
        assert 0.0 <= run["off_target"] <= 1.0 and run["tagged_classes"]
        # the kinds partition the off-target pixels
        pixels = run["off_target_pixels"]
        changed = sum((run["off_target_kinds"][k] or 0.0) * pixels[k] for k in pixels)
        assert changed == pytest.approx(run["off_target"] * sum(pixels.values()))
        assert 0.0 <= run["oracle"]["mIoU"] <= 1.0
    assert report["summary"]["2"]["oracle"]["n"] == 2
    table = format_adapt(report)
    assert "| 0 | 1 |" in table and "| 2 | 2 |" in table
    assert "| N | glass / background | OTHER tissue | untagged classes |" in table
    assert plot_adapt(report, tmp_path / "curve.png").stat().st_size > 1000
    json.dumps(report)


def test_levers_change_only_what_they_name() -> None:
    model, train = {"input_size": 128, "stain_normalisation": None}, \
        {"steps": 300, "warmup_iters": 80, "hed_sigma": 0.05, "div_weight": 0.5}
    assert apply("recipe", model, train) == (model, train)
    m, t = apply("steps_x2", model, train)
    assert t["steps"] == 600 and t["warmup_iters"] == 160 and m == model
    m, t = apply("macenko", model, train)
    assert m["stain_normalisation"] == "macenko" and t == train
    with pytest.raises(KeyError, match="known"):
        apply("nope", model, train)
    assert all("note" in spec for spec in LEVERS.values())


def test_sweep_table_gives_differences_to_the_recipe() -> None:
    def report(lever, value):
        cell = {"mIoU": {"mean": value, "std": 0.01}}
        return {"lever": lever, "settings": {"seeds": 1},
                "releases": {"nct": {"summary": {"predicted": cell, "oracle": cell}}}}

    table = format_sweep([report("recipe", 0.30), report("no_div", 0.35)])
    assert "| no_div | 1 | 0.350 ± 0.010 | 0.350 ± 0.010 | +0.050 | +0.050 | no |" in table


def test_a_lever_wins_only_beyond_two_std_with_three_seeds_on_every_release() -> None:
    from lpd.bench.loro import lever_verdict, merge_by_lever

    def report(lever, release, value, std, seeds):
        cell = {"mIoU": {"mean": value, "std": std}}
        return {"lever": lever, "settings": {"seeds": seeds},
                "releases": {release: {"summary": {"predicted": cell, "oracle": cell},
                                       "runs": [{}] * seeds}}}

    base, lever = merge_by_lever([report("recipe", "nct", 0.30, 0.01, 3),
                                  report("recipe", "k", 0.30, 0.01, 3),
                                  report("x", "nct", 0.35, 0.02, 3),
                                  report("x", "k", 0.33, 0.01, 3)])
    assert set(lever["releases"]) == {"nct", "k"}
    verdict = lever_verdict(lever, base, ["nct", "k"])
    assert verdict["wins"] and verdict["min_diff"] == pytest.approx(0.03)
    close, _ = merge_by_lever([report("x", "nct", 0.35, 0.02, 3),
                               report("x", "k", 0.315, 0.01, 3)])[0], None
    assert not lever_verdict(close, base, ["nct", "k"])["wins"]  # 0.015 < 2 x 0.01
    few = merge_by_lever([report("x", "nct", 0.40, 0.0, 1), report("x", "k", 0.40, 0.0, 1)])
    assert not lever_verdict(few[0], base, ["nct", "k"])["wins"]  # one seed never wins
