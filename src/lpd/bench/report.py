"""Aggregation over seeds and the benchmark's three outputs: JSON, a markdown table and a
PNG plot, written next to each other (``x.json``, ``x.md``, ``x.png``)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lpd._atomic import atomic_write_bytes, atomic_write_text
from lpd.bench import variants
from lpd.classes import CLASS_NAMES

EVAL_SETS = ("held_apart", "test")
PROTOCOLS = ("predicted", "oracle")
METRICS = ("mIoU", "mDice", "FwIoU")
SET_TITLES = {"held_apart": "held-apart mosaics of the training folder",
              "test": "mosaics of the test folder"}


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values; NaN/None dropped."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "n": int(v.size), "values": list(values)}


def summarise(runs: list[dict[str, Any]], configs: tuple[str, ...]) -> dict[str, Any]:
    """Mean ± std over seeds per configuration, eval set and protocol; the one-class guess;
    margins over the CAM baseline; the inference sweep averaged over seeds."""
    summary: dict[str, Any] = {}
    sweeps: dict[str, Any] = {}
    guess: dict[str, Any] = {}
    for name in configs:
        mine = [r for r in runs if r["config"] == name]
        if not mine:
            continue
        summary[name] = {}
        for which in EVAL_SETS:
            summary[name][which] = {}
            for protocol in PROTOCOLS:
                cell = {m: mean_std([r["scores"][which][protocol][m] for r in mine])
                        for m in METRICS}
                cell["IoU"] = {c: mean_std([r["scores"][which][protocol]["IoU"][c]
                                            for r in mine]) for c in CLASS_NAMES}
                summary[name][which][protocol] = cell
            guess.setdefault(which, mine[0]["one_class_guess"][which])
        with_sweep = [r for r in mine if "inference_sweep" in r]
        if with_sweep:
            sweeps[name] = {}
            for which in EVAL_SETS:
                runs_ = [r["inference_sweep"][which] for r in with_sweep]
                cell = {protocol: {key: mean_std([r[protocol][key] for r in runs_])["mean"]
                                   for key in runs_[0][protocol]} for protocol in PROTOCOLS}
                if "confusion" in runs_[0]:  # summed over seeds
                    cell["confusion"] = {
                        protocol: np.sum([r["confusion"][protocol] for r in runs_],
                                         axis=0).tolist() for protocol in PROTOCOLS}
                sweeps[name][which] = cell
    return {"summary": summary, "one_class_guess": guess,
            "margins": _margins(summary), "inference_sweep": sweeps}


def _margins(summary: dict[str, Any]) -> dict[str, Any]:
    """mIoU difference to the CAM baseline and whether it exceeds two standard deviations
    (the larger of the two configurations')."""
    base = summary.get(variants.BASELINE)
    if base is None:
        return {}
    out: dict[str, Any] = {}
    for name, cell in summary.items():
        if name == variants.BASELINE:
            continue
        out[name] = {}
        for which in EVAL_SETS:
            out[name][which] = {}
            for protocol in PROTOCOLS:
                a, b = cell[which][protocol]["mIoU"], base[which][protocol]["mIoU"]
                if a["mean"] is None or b["mean"] is None:
                    continue
                diff = a["mean"] - b["mean"]
                two_std = 2 * max(a["std"], b["std"])
                out[name][which][protocol] = {
                    "diff": diff, "two_std": two_std,
                    "beats_baseline": bool(diff > two_std and a["n"] > 1 and b["n"] > 1),
                }
    return out


# -- markdown ---------------------------------------------------------------------------
def _pm(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Accuracy benchmark" + (" (quick smoke run, not a measurement)" if report["quick"]
                                  else ""),
        "",
        f"- training tiles: `{s['train_tiles']}`; test tiles: `{s['test_tiles']}`",
        f"- backbone `{s['backbone']}` ({'ImageNet-pretrained' if s['pretrained'] else 'random init'}), "
        f"k = {s['k']}, lr {s['lr']:g} (head ×10)",
        f"- budget: {report['budget']}",
        f"- evaluation: {s['eval_mosaics']} mosaics per set; means ± sample std over seeds",
        f"- wall time: {report['wall_seconds']:.0f} s"
        + ("" if report["complete"] else " (**incomplete: still running or stopped**)"),
    ]
    if report["data"]["shared_tiles"]:
        lines.append(f"- **WARNING**: {len(report['data']['shared_tiles'])} tile(s) appear in "
                     "both folders; the test score is not a generalisation measure")
    summary = report["summary"]
    for which in EVAL_SETS:
        for protocol in PROTOCOLS:
            lines += ["", f"## {SET_TITLES[which]}: {protocol} presence", "",
                      "| configuration | mIoU | mDice | FwIoU | "
                      + " | ".join(f"IoU {c}" for c in CLASS_NAMES) + " |",
                      "|---" * (4 + len(CLASS_NAMES)) + "|"]
            for name, cell in summary.items():
                c = cell[which][protocol]
                label = report["configs"][name]["label"]
                lines.append(f"| {label} | " + " | ".join(_pm(c[m]) for m in METRICS) + " | "
                             + " | ".join(_pm(c["IoU"][k]) for k in CLASS_NAMES) + " |")
            g = report["one_class_guess"].get(which)
            if g:
                lines.append(f"| one-class-per-patch guess | {g['mIoU']:.3f} | {g['mDice']:.3f}"
                             f" | {g['FwIoU']:.3f} | " + " | ".join(
                                 "-" if g["IoU"][k] is None else f"{g['IoU'][k]:.3f}"
                                 for k in CLASS_NAMES) + " |")
    lines += _margin_lines(report) + _stain_lines(report) + _sweep_lines(report)
    lines += ["", "## Runs", "", "| configuration | seed | s/step | train s | eval s |",
              "|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['config']} | {r['seed']} | {r['seconds_per_step']:.2f} | "
                     f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _margin_lines(report: dict[str, Any]) -> list[str]:
    if not report["margins"]:
        return []
    lines = ["", "## mIoU margin over the CAM baseline (✔ = larger than 2 std, ≥ 2 seeds)",
             "", "| configuration | " + " | ".join(f"{w} {p}" for w in EVAL_SETS
                                                   for p in PROTOCOLS) + " |",
             "|---" * 5 + "|"]
    for name, m in report["margins"].items():
        cells = []
        for w in EVAL_SETS:
            for p in PROTOCOLS:
                d = m.get(w, {}).get(p)
                cells.append("-" if d is None else
                             f"{d['diff']:+.3f}{' ✔' if d['beats_baseline'] else ''}")
        lines.append(f"| {report['configs'][name]['label']} | " + " | ".join(cells) + " |")
    return lines


def _stain_lines(report: dict[str, Any]) -> list[str]:
    pairs = [(a, b) for a, b in variants.STAIN_PAIRS.items()
             if a in report["summary"] and b in report["summary"]]
    if not pairs:
        return []
    lines = ["", "## Stain augmentation: mIoU with / without (HED jitter)", "",
             "| configuration | " + " | ".join(f"{w} {p}" for w in EVAL_SETS
                                               for p in PROTOCOLS) + " |", "|---" * 5 + "|"]
    for a, b in pairs:
        cells = [f"{_pm(report['summary'][a][w][p]['mIoU'])} / "
                 f"{_pm(report['summary'][b][w][p]['mIoU'])}"
                 for w in EVAL_SETS for p in PROTOCOLS]
        lines.append(f"| {report['configs'][a]['label']} | " + " | ".join(cells) + " |")
    return lines


def _sweep_lines(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, sweep in report["inference_sweep"].items():
        lines += ["", f"## Inference settings, {report['configs'][name]['label']} "
                  "(mIoU, mean over seeds; no retraining)", "",
                  "| setting | " + " | ".join(f"{w} {p}" for w in EVAL_SETS
                                             for p in PROTOCOLS) + " |", "|---" * 5 + "|"]
        for key in sweep["held_apart"]["predicted"]:
            oracle_key = key.split(",")[0]
            cells = []
            for w in EVAL_SETS:
                cells.append(_num(sweep[w]["predicted"][key]))
                cells.append(_num(sweep[w]["oracle"][oracle_key]))
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines += _confusion_lines(sweep)
    return lines


def _confusion_lines(sweep: dict[str, Any]) -> list[str]:
    """Where each tissue class's pixels go (row-normalised, predicted protocol)."""
    lines: list[str] = []
    for which in EVAL_SETS:
        matrix = sweep[which].get("confusion", {}).get("predicted")
        if matrix is None:
            continue
        m = np.asarray(matrix, float)[1:]  # tissue ground-truth rows
        rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        lines += ["", f"Pixels of each class on {SET_TITLES[which]} go to (predicted "
                  "presence, model's settings):", "",
                  "| truth \\ predicted | background | " + " | ".join(CLASS_NAMES) + " |",
                  "|---" * (2 + len(CLASS_NAMES)) + "|"]
        for name, row in zip(CLASS_NAMES, rows, strict=True):
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return lines


def _num(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


# -- plot -------------------------------------------------------------------------------
def plot_png(report: dict[str, Any]) -> bytes:
    """Bars of mIoU (mean ± std over seeds) per configuration: one panel per evaluation
    set and protocol, the one-class guess as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(report["summary"])
    fig = Figure(figsize=(max(8.0, 0.9 * len(names) + 3), 7.5), layout="constrained")
    axes = fig.subplots(2, 2, sharey=True)
    x = np.arange(len(names))
    for i, which in enumerate(EVAL_SETS):
        for j, protocol in enumerate(PROTOCOLS):
            ax = axes[i][j]
            cells = [report["summary"][n][which][protocol]["mIoU"] for n in names]
            means = [c["mean"] if c["mean"] is not None else 0.0 for c in cells]
            stds = [c["std"] or 0.0 for c in cells]
            ax.bar(x, means, yerr=stds, capsize=3, color="#4c78a8")
            g = report["one_class_guess"].get(which)
            if g and g["mIoU"] is not None:
                ax.axhline(g["mIoU"], ls="--", color="#e45756", label="one-class guess")
                ax.legend(loc="lower right", fontsize=8)
            ax.set_title(f"{SET_TITLES[which]}\n{protocol} presence", fontsize=9)
            ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
        axes[i][0].set_ylabel("mIoU")
    fig.suptitle(f"LPD accuracy benchmark — {report['budget']}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_outputs(report: dict[str, Any], json_path: str | Path) -> tuple[Path, Path, Path]:
    """Write ``json_path`` and, next to it, the markdown table and the PNG plot."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md, png = json_path.with_suffix(".md"), json_path.with_suffix(".png")
    atomic_write_text(json_path, json.dumps(_finite(report), indent=1, default=_jsonable))
    atomic_write_text(md, markdown(report))
    if report["summary"]:
        atomic_write_bytes(png, plot_png(report))
    return json_path, md, png


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so the JSON file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
