"""``lpd bench throughput``: the machinery on a tiny setting (fast), a realistic run (slow)."""

from __future__ import annotations

import json

import pytest

from lpd.bench.throughput import ThroughputSettings, _model, level_for, rss_child, run_throughput
from lpd.bench.throughput_cli import format_report
from lpd.cli.main import build_parser
from lpd.io.checkpoint import save_checkpoint

ROUND_KEYS = {"passes", "seconds", "passes_per_s", "cpu_seconds", "passes_per_cpu_s"}


def check_report(r: dict, rounds: int, rss: bool = True) -> None:
    assert set(r) >= {"settings", "machine", "model", "rounds", "raw_passes_per_s",
                      "end_to_end_passes_per_s", "ratio", "ratio_of_medians", "cpu_ratio",
                      "end_to_end_slide", "open", "load_before", "load_after", "targets",
                      "met"}
    m = r["machine"]
    assert m["cpu_count"] >= 1 and m["torch"] and m["device"] == "cpu"
    assert m["torch_threads"] == r["settings"]["threads"] and m["reader_threads"] == 1
    assert len(r["load_before"]) == 3 and len(r["load_after"]) == 3
    assert len(r["rounds"]) == rounds
    for rnd in r["rounds"]:
        assert set(rnd["raw"]) >= ROUND_KEYS and set(rnd["end_to_end"]) >= ROUND_KEYS
        e2e = rnd["end_to_end"]
        assert e2e["complete"] and 0 < e2e["passes"] <= e2e["tiles"]
        # raw runs the same number of passes, in whole batches
        assert e2e["passes"] <= rnd["raw"]["passes"] < e2e["passes"] + r["settings"]["batch_size"]
        assert rnd["ratio"] > 0 and rnd["load"] >= 0
    assert r["open"]["shape"][0] == r["settings"]["open_size"] and r["open"]["levels"] > 1
    if rss:
        for name in ("region", "slide"):
            check_rss(r["rss"][name], r["settings"]["rss_max_tiles"])
    assert set(r["met"]) == {"ratio", "open_s", *(["peak_rss_gib"] if rss else [])}
    json.dumps(r)  # JSON-able


def check_rss(v: dict, max_tiles: int) -> None:
    assert v["peak_rss_bytes"] >= v["peak_rss_loading_bytes"] >= v["rss_after_model_bytes"] > 0
    assert v["peak_rss_bytes"] >= v["peak_rss_predict_bytes"] > 0
    assert v["peak_rss_gib"] == v["peak_rss_bytes"] / 2**30 and v["store_bytes"] > 0
    assert 0 < v["passes"] <= v["tiles"] <= max_tiles


def test_tiny_run_has_every_figure(tmp_path, capsys) -> None:
    """(a)-(c) in process; (d)'s child code is run here too (the real run spawns it: an
    interpreter importing torch costs tens of seconds on the shared cores)."""
    s = ThroughputSettings(threads=1, batch_size=2, tiles=4, rounds=2, backbone="resnet18",
                           null=False,  # the null pipeline: test_throughput_quick.py
                           input_size=96, k=2, open_size=3000, open_repeats=2, rss=False,
                           workdir=tmp_path)
    r = run_throughput(s)
    check_report(r, 2, rss=False)
    text = format_report(r)
    assert "end_to_end / raw_forward" in text and "load average" in text and "open 3000 x 3000" in text
    # the RSS child, on the 3000 px pyramid (1 s of it at level 2: 750 px, 24 x 24 tiles)
    model = _model(s)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    capsys.readouterr()
    rss_child(json.dumps({"checkpoint": str(ckpt), "slide": str(tmp_path / "constant-3000.tiff"),
                          "region": [0, 0, 256, 256], "level": 0, "store": str(tmp_path / "s.zarr"),
                          "threads": 1, "batch_size": 4}))
    v = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    check_rss(v, 64)
    assert v["tiles"] == 64 and v["shape"] == [256, 256]


def test_level_for_bounds_the_tiles() -> None:
    downs = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert level_for(20_000, downs, 160, 400) == 3  # 2500 px: 16 x 16 tiles
    assert level_for(1000, downs, 160, 10_000) == 0
    assert level_for(10**6, downs, 160, 4) == 4  # never past the coarsest level


def test_cli_is_registered() -> None:
    args = build_parser().parse_args(["bench", "throughput", "--threads", "1", "--json",
                                      "x.json", "--big"])
    assert args.threads == 1 and args.big and callable(args.func)


@pytest.mark.slow
def test_realistic_run(tmp_path) -> None:
    """The default model's architecture, about 96 passes per end-to-end run, 100k pyramid."""
    r = run_throughput(ThroughputSettings(workdir=tmp_path))
    check_report(r, 5)
    assert r["open"]["seconds_median"] < 1.0  # target 0.2 s; loose here: a shared machine
    assert max(v["peak_rss_gib"] for v in r["rss"].values()) < 2.0
