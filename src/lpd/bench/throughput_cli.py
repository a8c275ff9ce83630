"""``lpd bench throughput`` (and ``benchmarks/throughput.py``): the command-line front end
of ``lpd.bench.throughput`` (prints progress and a summary, writes the JSON report)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lpd.bench.throughput import TARGETS, ThroughputSettings, run_throughput


def format_report(r: dict) -> str:
    """A short plain-text summary of a report."""
    m = r["machine"]
    lines = [
        f"model {r['model']['backbone']} input {r['model']['input_size']}, batch "
        f"{r['settings']['batch_size']}, torch threads {m['torch_threads']} + 1 reader thread "
        f"+ {m.get('decode_threads')} decode threads, {m['cpu_count']} CPUs, device "
        f"{m['gpu'] or m['device']}, torch {m['torch']}",
        f"load average before {r['load_before'][0]:.2f}, after {r['load_after'][0]:.2f} "
        f"(/proc/loadavg before: {r.get('loadavg_before')}; after: {r.get('loadavg_after')})",
        "windows/s (one window = one forward pass of input size):",
    ]
    f = r["figures"]
    if "decode_limit" in f:
        ns = r["null_slide"]
        lines += [
            f"  decode_limit   {f['decode_limit']:9.1f}  ({m.get('decode_threads')} threads of "
            f"imagecodecs JPEG decodes, {ns['side']} px SVS-like slide; median of "
            f"{len(r['null_rounds'])} rounds)",
            f"  null_pipeline  {f['null_pipeline']:9.1f}  (predict with a cached forward, "
            f"{ns['windows']} windows; fixed costs apart: set-up "
            f"{r['null_fixed_seconds']['setup']:.2f} s, pyramid "
            f"{r['null_fixed_seconds']['pyramid']:.2f} s)",
        ]
    lines += [
        f"  raw_forward    {f['raw_forward']:9.2f}  (median of {len(r['rounds'])} rounds)",
        f"  end_to_end     {f['end_to_end']:9.2f}  ({r['end_to_end_slide']['passes']} windows "
        f"over {r['end_to_end_slide']['tiles']} tiles)",
    ]
    if "null_pipeline/decode_limit" in r["ratios"]:
        lines.append(f"null_pipeline / decode_limit {r['ratios']['null_pipeline/decode_limit']:.3f}"
                     f" (goal >= {TARGETS['null_over_decode']}); null pipeline CPU "
                     f"{r['null_cpu_ms_per_window']:.2f} ms per window (target <= "
                     f"{TARGETS['null_cpu_ms']})")
        for name, run in (("", r["null_rounds"][-1]["null_pipeline"]),
                          (" (no store)", r.get("null_without_store"))):
            by = (run or {}).get("cpu_ms_per_window_by_thread")
            if by:
                lines.append(f"    CPU ms per window by thread{name}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in by.items()) + f"; total {run['cpu_ms_per_window']:.2f}")
    lines.append(f"end_to_end / raw_forward {r['ratio']:.3f} (median of rounds; target >= "
                 f"{TARGETS['ratio']}); ratio of medians {r['ratio_of_medians']:.3f}; per CPU "
                 f"second {r['cpu_ratio']:.3f}")
    if "open" in r:
        lines.append(f"(c) open {r['open']['shape'][0]} x {r['open']['shape'][1]}: "
                     f"{r['open']['seconds_median'] * 1000:.1f} ms median, "
                     f"{r['open']['seconds_first'] * 1000:.1f} ms first (target < "
                     f"{TARGETS['open_s']} s)")
    for name, v in r.get("rss", {}).items():
        during = v.get("peak_rss_predict_bytes")
        lines.append(f"(d) peak RSS {name:7s} {v['peak_rss_gib']:.2f} GiB (after loading the "
                     f"model {_gib(v['rss_after_model_bytes'])}, peak while predicting "
                     f"{_gib(during)}; level {v['level']}, {v['passes']} passes, store "
                     f"{v['store_bytes'] / 2**20:.1f} MiB)")
    lines.append("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}"
                                             for k, v in r["met"].items()))
    return "\n".join(lines)


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f} GiB"


def register(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser(
        "throughput",
        help="decode limit, null pipeline, raw and end-to-end throughput, open time, memory",
        description="Measures, in one run, four figures in windows/s: the JPEG decoding "
        "limit and the null pipeline (predict with a cached forward) on a generated "
        "SVS-like slide, raw model forward throughput and end-to-end whole-slide prediction "
        "(interleaved); the ratios null/decode and end-to-end/raw; the time to open a "
        "100k x 100k pyramid and the peak RSS of prediction over a 20k x 20k region and a "
        "100k x 100k slide. Thread layout: --threads torch threads plus one reader thread "
        "and --decode-threads decoding threads.",
    )
    add_arguments(p)
    p.set_defaults(func=main_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, help="write the full report here (atomically)")
    p.add_argument("--threads", type=int,
                   help="torch threads (default: CPU cores - 1, at least 1, as lpd predict; "
                   "one reader thread besides)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tiles", type=int, default=96,
                   help="forward passes per end-to-end run, about (default 96)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved raw/end-to-end rounds")
    p.add_argument("--decode-threads", type=int,
                   help="threads decoding the slide, in predict and the decode limit "
                   "(default: the usable CPU cores)")
    p.add_argument("--null-windows", type=int, default=3000,
                   help="about the windows of the null pipeline's slide (default 3000)")
    p.add_argument("--null-rounds", type=int, default=3,
                   help="interleaved decode-limit/null-pipeline rounds")
    p.add_argument("--no-null", action="store_true",
                   help="skip the decode limit and the null pipeline")
    p.add_argument("--no-open", action="store_true",
                   help="skip the open-time and peak-memory runs")
    p.add_argument("--quick", action="store_true",
                   help="everything tiny (checks the machinery; the figures mean nothing)")
    p.add_argument("--big", action="store_true",
                   help="memory runs at finer levels (about 4x the tiles: ~1600 per run)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (autocast, as predict)")
    p.add_argument("--backbone", help="timm backbone (default: the default model's)")
    p.add_argument("--workdir", type=Path, help="keep the generated slides here")


def main_args(args: argparse.Namespace) -> int:
    from lpd._atomic import atomic_write_text

    kw = {"threads": args.threads, "backbone": args.backbone, "workdir": args.workdir,
          "device": args.device, "decode_threads": args.decode_threads,
          "null": not args.no_null, "measure_open": not args.no_open}
    if args.quick:
        s = ThroughputSettings.quick(**kw)
    else:
        s = ThroughputSettings(batch_size=args.batch_size, tiles=args.tiles, rounds=args.rounds,
                               rss=not args.no_rss, rss_max_tiles=1600 if args.big else 400,
                               null_windows=args.null_windows, null_rounds=args.null_rounds,
                               **kw)
    report = run_throughput(s, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``benchmarks/throughput.py`` entry point (same options as ``lpd bench throughput``)."""
    from lpd.bench import throughput

    p = argparse.ArgumentParser(prog="benchmarks/throughput.py", description=throughput.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return main_args(p.parse_args(argv))
