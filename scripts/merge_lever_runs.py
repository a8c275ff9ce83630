"""Merge lever-sweep runs (JSON files written by ``lpd bench accuracy
--leave-one-release-out``, e.g. one process per held-out release or per lever) into one
JSON and one markdown file: the sweep table (``lpd.bench.loro.format_sweep``: differences
to the recipe, the worse release, the verdict), then per lever and release the per-class
IoU and the confusion matrix summed over seeds (predicted protocol).

    python scripts/merge_lever_runs.py OUT.json RUN.json [RUN.json ...] [--drop LEVER@FILE]

``--drop LEVER@FILE`` leaves out one lever's runs of one file (e.g. a run made before a fix).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lpd.bench.loro import format_sweep, merge_by_lever


def per_class_lines(reports: list[dict]) -> list[str]:
    """Per lever and release: IoU per class (mean over seeds) and the summed confusion."""
    lines = ["", "Per-class IoU (predicted protocol, mean over seeds) and the confusion matrix "
             "summed over seeds (rows: truth background, TUM, STR, LYM, NEC; columns: "
             "predicted), in thousands of pixels:", ""]
    for rep in merge_by_lever(reports):
        names = rep["model"]["class_names"]
        for release, entry in sorted(rep["releases"].items()):
            runs = entry.get("runs", [])
            if not runs or "IoU" not in runs[0]["predicted"]:
                continue
            iou = np.nanmean(np.array([[np.nan if v is None else v for v in r["predicted"]["IoU"]]
                                       for r in runs], float), axis=0)
            cells = " / ".join(f"{n} {v:.2f}" for n, v in zip(names, iou, strict=True))
            lines.append(f"- **{rep['lever']}**, held out {release}: {cells}")
            if "confusion" in runs[0]["predicted"]:
                m = sum(np.array(r["predicted"]["confusion"]) for r in runs)
                rows = ["    " + " ".join(f"{v / 1000:7.1f}" for v in row) for row in m]
                lines += ["", "  ```", *rows, "  ```", ""]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--drop", action="append", default=[], help="LEVER@FILE to leave out")
    p.add_argument("--title", default="", help="a line above the table (conditions)")
    args = p.parse_args()
    drop = {tuple(d.split("@", 1)) for d in args.drop}
    reports = []
    for path in args.runs:
        data = json.loads(path.read_text(encoding="utf-8"))
        for rep in data if isinstance(data, list) else [data]:
            if (rep["lever"], path.name) not in drop:
                reports.append({**rep, "source": path.name})
    args.out.write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
    text = ([args.title, ""] if args.title else []) + [format_sweep(reports)] + \
        per_class_lines(reports)
    args.out.with_suffix(".md").write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()
