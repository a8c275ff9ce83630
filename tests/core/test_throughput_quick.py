"""``lpd bench throughput``'s four figures (decode limit, null pipeline, raw forward,
end-to-end) on the quick setting, and the null pipeline's parts. No wall-time assertions."""

from __future__ import annotations

import json

import numpy as np
import torch

from lpd.bench.throughput import FIGURES, ThroughputSettings, _model, run_throughput
from lpd.bench.throughput_cli import format_report
from lpd.bench.throughput_decode import bench_slide, decode_limit
from lpd.bench.throughput_null import cached_forward, labels_digest, null_pipeline
from lpd.cli.main import build_parser
from lpd.wsi.slide import open_slide

TINY = {"threads": 1, "backbone": "resnet18", "input_size": 96, "k": 2}


def test_quick_run_has_the_four_figures_and_the_ratios(tmp_path) -> None:
    r = run_throughput(ThroughputSettings.quick(**TINY, workdir=tmp_path, measure_open=False))
    assert tuple(r["figures"]) == FIGURES
    assert all(v > 0 for v in r["figures"].values())
    assert set(r["ratios"]) == {"null_pipeline/decode_limit", "end_to_end/raw_forward"}
    assert r["ratios"]["null_pipeline/decode_limit"] == r["null_over_decode"] > 0
    assert r["null_cpu_ms_per_window"] > 0
    null = r["null_rounds"][0]["null_pipeline"]
    assert null["complete"] and null["windows"] == r["null_slide"]["windows"] > 0
    assert null["forward_calls"] > 0 and null["setup_seconds"] >= 0
    assert null["cpu_ms_per_window"] == r["null_cpu_ms_per_window"]
    dec = r["null_rounds"][0]["decode_limit"]
    assert dec["threads"] == r["machine"]["decode_threads"] >= 1 and dec["tiles"] >= 1
    assert set(r["met"]) == {"ratio", "null_cpu_ms", "null_over_decode"}
    assert len(r["loadavg_before"].split()) >= 3
    text = format_report(r)
    assert "null_pipeline / decode_limit" in text and "end_to_end / raw_forward" in text
    assert "decode_limit" in text and "CPU" in text
    json.dumps(r)


def test_null_forward_cycles_real_outputs_and_labels_repeat(tmp_path) -> None:
    """The null forward's outputs are the model's for different windows (not a constant),
    handed out in turn; two runs give the same labels (digest)."""
    torch.manual_seed(0)
    model = _model(ThroughputSettings(**TINY))
    path = tmp_path / "svs.tiff"
    info = bench_slide(path, 480, seed=10)
    assert info["tile"] == 240
    with open_slide(path) as slide:
        null = cached_forward(model, slide, 3, "cpu")
        assert null.protos.shape[0] == 3
        assert not torch.equal(null.cams[3][0], null.cams[3][1])
        out = null(torch.zeros(4, 3, 96, 96))
        assert torch.equal(out.cams[3][3], null.cams[3][0])  # cycled back to the first
        runs = [null_pipeline(null, slide, tmp_path / "n.zarr", 2, 2) for _ in range(2)]
    assert runs[0]["labels_sha256"] == runs[1]["labels_sha256"]
    assert runs[0]["windows"] > 0 and runs[0]["cpu_ms_per_window"] > 0
    dec = decode_limit(path, 0, 2, 32)
    assert dec["tiles"] == 4 and dec["windows"] == 480 * 480 / 32**2


def test_labels_digest_reads_in_bands() -> None:
    labels = np.arange(5000 * 4000, dtype=np.uint32).astype(np.uint8).reshape(5000, 4000)
    import hashlib

    assert labels_digest(labels) == hashlib.sha256(labels.tobytes()).hexdigest()


def test_quick_flag_is_registered() -> None:
    args = build_parser().parse_args(["bench", "throughput", "--quick", "--decode-threads", "2",
                                      "--no-open"])
    assert args.quick and args.decode_threads == 2 and args.no_open and callable(args.func)
