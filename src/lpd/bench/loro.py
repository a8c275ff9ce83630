"""Leave one release out: how the default model's recipe does on a lab it never saw.

Each release folder of the recipe (``kather2016``, ``nct``, ``tcga-tumour``) is held out
in turn: the recipe trains on all tiles of the other releases (each at its own microns per
pixel), and is scored on mosaics of every tile of the held-out one, under both presence
protocols, for several seeds (mean ± std), next to two baselines that need no model:

- ``one_class_guess``: each mosaic painted with its true majority class (an oracle patch
  classifier);
- ``random_present_class``: each mosaic painted with one class drawn uniformly from its
  true present classes (mean of ``RANDOM_DRAWS`` draws).

The metric ignores OTHER tissue (mucosa, muscle, fat...); a pathologist does not, so the
share of OTHER-tissue pixels the model paints as a tissue class is reported too. A held-out
release with one class (``tcga-tumour``, tumour only) reports TUM IoU and recall only: its
mIoU would be one class's IoU, and precision-free.

``lpd bench accuracy --leave-one-release-out`` runs it; ``run_loro`` is a generator of
progress events that returns the report."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpd.config import PROTOCOLS, RunConfig
from lpd.data.datasets import MosaicDataset
from lpd.data.mosaic import MosaicGenerator, TileFolder
from lpd.data.sample import SAMPLE_ROOT
from lpd.data.sources import HELD_APART_SEED, normalizer_for, reinhard_reference
from lpd.default_model import Recipe, load_recipe, train_on_tiles
from lpd.infer.patch import predict_patches
from lpd.metrics import ConfusionMatrix, one_class_guess
from lpd.progress import relay

RANDOM_DRAWS = 10


@dataclass
class LoroSettings:
    """What a leave-one-release-out run does. ``steps=None``: the recipe's."""

    seeds: int = 2
    steps: int | None = None
    eval_mosaics: int = 64
    short: bool = False  # the recipe's shortened training
    device: str = "cpu"
    releases: tuple[str, ...] | None = None  # default: every release of the recipe
    lever: str = "recipe"  # a change to the recipe (``lpd.bench.levers``)
    input_size: int | None = None  # screening at a smaller input (None: the recipe's)
    # mosaics of the held-out release: a screen chooses on one seed (A), a confirmation
    # reports on another (B), so the choice is not scored on the mosaics it was made on
    eval_seed: int = HELD_APART_SEED

    def run(self, recipe: Recipe) -> RunConfig:
        from lpd.bench.levers import apply
        from lpd.config import ModelConfig, TrainConfig

        run = recipe.run(short=self.short)
        model, train = run.model.to_dict(), run.train.to_dict()
        if self.steps is not None:
            train.update(steps=self.steps,
                         warmup_iters=min(train["warmup_iters"], self.steps // 3))
        if self.input_size is not None:
            model["input_size"] = self.input_size
        model, train = apply(self.lever, model, train)
        return RunConfig(ModelConfig.from_dict(model), TrainConfig.from_dict(train))


@dataclass
class LoroEvent:
    release: str
    seed: int
    phase: str  # "train", "evaluate", "done"
    step: int = 0
    total: int = 0


def release_tiles(recipe: Recipe, keep: set[str], root: Path = SAMPLE_ROOT,
                  relabel: dict[str, str] | None = None
                  ) -> tuple[TileFolder, dict[Path, float]]:
    """All tiles of the releases in ``keep`` (held-apart tiles included), pooled.
    ``relabel`` moves a class's tiles to another (``{"NEC": "OTHER"}``: NEC untagged)."""
    train, held, mpps = recipe.tiles(root)
    relabel = relabel or {}
    paths: dict[str, list[Path]] = {name: [] for name in train.paths}
    for folder in (train, held):
        for name, ps in folder.paths.items():
            paths.setdefault(relabel.get(name, name), []).extend(
                p for p in ps if p.relative_to(folder.root).parts[0] in keep)
    folder = TileFolder(train.root, train.class_names,
                        {k: tuple(sorted(v)) for k, v in paths.items()})
    return folder, {p: mpps[p] for ps in folder.paths.values() for p in ps}


def _test_batches(recipe: Recipe, run: RunConfig, release: str, count: int,
                  model_config, seed: int = HELD_APART_SEED,
                  relabel: dict[str, str] | None = None
                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Mosaics of the held-out release; OTHER tissue labelled C + 1 (ignored by the
    metrics, counted for the OTHER-painted share)."""
    tiles, mpps = release_tiles(recipe, {release}, relabel=relabel)
    mpp = run.model.microns_per_pixel
    generator = MosaicGenerator(tiles, size=run.model.input_size, seed=seed,
                                tile_mpp=mpp, target_mpp=mpp, tile_mpps=mpps,
                                other_label=len(tiles.class_names) + 1)
    ds = MosaicDataset(generator, count, mean=model_config.mean, std=model_config.std,
                       normalizer=normalizer_for(model_config))
    items = [ds[i] for i in range(len(ds))]
    return [tuple(torch.stack([it[j] for it in items[i : i + 8]]) for j in range(3))
            for i in range(0, len(items), 8)]


def _scores(matrix: ConfusionMatrix, single: int | None, other: tuple[int, int] | None
            ) -> dict[str, Any]:
    s = matrix.scores()
    out: dict[str, Any] = {}
    if single is None:
        out["mIoU"] = s.miou
        out["IoU"] = [None if np.isnan(v) else float(v) for v in s.iou]
    else:
        tp = matrix.matrix[single + 1, single + 1]
        out["TUM_IoU"] = float(s.iou[single])
        out["TUM_recall"] = float(tp / max(1, matrix.matrix[single + 1].sum()))
    if other is not None:
        painted, total = other
        out["other_painted"] = painted / total if total else None
    return out


def run_loro(settings: LoroSettings) -> Iterator[LoroEvent]:
    """Train and score every (held-out release, seed); yields progress; returns the
    report (``StopIteration.value``): per release, per protocol, each seed's scores and
    their mean and std, and the baselines."""
    from lpd.model import create_model

    recipe = load_recipe()
    run = settings.run(recipe)
    releases = settings.releases or tuple(recipe.raw["releases"])
    t0 = time.perf_counter()
    report: dict[str, Any] = {"recipe": recipe.name, "recipe_id": recipe.id,
                              "lever": settings.lever, "settings": dataclasses.asdict(settings),
                              "model": run.model.to_dict(), "train": run.train.to_dict(),
                              "releases": {}}
    config = create_model(config=run.model, pretrained=False).config  # normalisation
    from lpd.bench.levers import relabelling

    relabel = relabelling(settings.lever)
    for release in releases:
        others = set(recipe.raw["releases"]) - {release}
        train_tiles, train_mpps = release_tiles(recipe, others, relabel=relabel)
        test_config = config
        if config.stain_normalisation == "reinhard":  # the reference training will fit
            test_config = dataclasses.replace(config, stain_reference=reinhard_reference(
                sorted(p for ps in train_tiles.paths.values() for p in ps)))
        batches = _test_batches(recipe, run, release, settings.eval_mosaics, test_config,
                                settings.eval_seed, relabel)
        masks = [m.numpy() for _, _, m in batches]
        present = sorted({int(v) for m in masks for v in np.unique(m)
                          if 0 < v <= config.num_classes})
        single = present[0] - 1 if len(present) == 1 else None
        entry: dict[str, Any] = {"train_releases": sorted(others), "present": present,
                                 "tiles": {k: len(v) for k, v in release_tiles(
                                     recipe, {release}, relabel=relabel)[0].paths.items()},
                                 "baselines": _baselines(masks, config.num_classes, single)}
        runs = []
        for seed in range(settings.seeds):
            seeded = dataclasses.replace(run, train=dataclasses.replace(run.train, seed=seed))
            model = yield from relay(
                train_on_tiles(seeded, train_tiles, train_mpps, settings.device),
                lambda p, r=release, s=seed: LoroEvent(r, s, "train", p.step, p.total))
            yield LoroEvent(release, seed, "evaluate")
            runs.append(_score_model(model, batches, single, settings.device))
            yield LoroEvent(release, seed, "done")
        entry["runs"] = runs
        entry["summary"] = _summarise(runs)
        report["releases"][release] = entry
    report["seconds"] = round(time.perf_counter() - t0)
    return report


def _score_model(model, batches, single: int | None, device: str) -> dict[str, Any]:
    model.eval()
    c = model.config.num_classes
    out = {}
    for protocol in PROTOCOLS:
        matrix, painted, total = ConfusionMatrix(c), 0, 0
        for images, tags, masks in batches:
            with torch.inference_mode():
                pred = predict_patches(model, images.to(device), protocol, tags)
            labels, truth = pred.labels.cpu().numpy(), masks.numpy()
            matrix.update(labels, truth)
            other = truth == c + 1
            painted += int((labels[other] > 0).sum())
            total += int(other.sum())
        out[protocol] = _scores(matrix, single, (painted, total))
        # rows: true background, TUM..; columns: predicted (what the figures rest on)
        out[protocol]["confusion"] = matrix.matrix.tolist()
    return out


def _baselines(masks: list[np.ndarray], c: int, single: int | None) -> dict[str, Any]:
    guess = ConfusionMatrix(c)
    draws = [ConfusionMatrix(c) for _ in range(RANDOM_DRAWS)]
    rng = np.random.default_rng(0)
    for batch in masks:
        for truth in batch:
            guess.update(one_class_guess(truth), truth)
            classes = [v for v in np.unique(truth) if 0 < v <= c]
            for m in draws:
                pick = classes[int(rng.integers(len(classes)))] if classes else 0
                m.update(np.full_like(truth, pick), truth)
    random_scores = [_scores(m, single, None) for m in draws]
    key = "mIoU" if single is None else "TUM_IoU"
    return {"one_class_guess": _scores(guess, single, None),
            "random_present_class": {key: float(np.mean([r[key] for r in random_scores]))}}


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        keys = [k for k, v in runs[0][protocol].items() if isinstance(v, float)]
        out[protocol] = {}
        for k in keys:
            values = [r[protocol][k] for r in runs if r[protocol][k] is not None]
            out[protocol][k] = {"mean": float(np.mean(values)),
                                "std": float(statistics.stdev(values)) if len(values) > 1
                                else 0.0}
    return out


def format_loro(report: dict[str, Any]) -> str:
    """A markdown table: one row per held-out release."""
    n = report["settings"]["seeds"]
    lines = [f"Leave one release out — recipe {report['recipe']} ({report['recipe_id']}), "
             f"{report['train']['steps']} steps, {n} seed(s), "
             f"{report['settings']['eval_mosaics']} mosaics per release; mean ± std over seeds",
             "",
             "| held out | trained on | predicted | oracle | one-class guess | random present "
             "class | OTHER painted (predicted) |",
             "|---|---|---|---|---|---|---|"]
    for release, e in report["releases"].items():
        s, b = e["summary"], e["baselines"]
        key = "mIoU" if "mIoU" in s["predicted"] else "TUM_IoU"
        label = "mIoU" if key == "mIoU" else "TUM IoU"

        def ms(d: dict) -> str:
            return f"{d['mean']:.3f} ± {d['std']:.3f}"

        extra = ""
        if key == "TUM_IoU":
            extra = f" (recall {ms(s['predicted']['TUM_recall'])})"
        other = s["predicted"].get("other_painted")
        lines.append(
            f"| {release} ({label}) | {', '.join(e['train_releases'])} | "
            f"{ms(s['predicted'][key])}{extra} | {ms(s['oracle'][key])} | "
            f"{b['one_class_guess'][key]:.3f} | {b['random_present_class'][key]:.3f} | "
            f"{'-' if other is None else ms(other)} |")
    return "\n".join(lines) + "\n"


def merge_by_lever(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report per lever: runs of the same lever on different held-out releases (e.g.
    one process per release) merged, in first-seen order."""
    merged: dict[str, dict[str, Any]] = {}
    for rep in reports:
        if rep["lever"] not in merged:
            merged[rep["lever"]] = {**rep, "releases": dict(rep["releases"])}
        else:
            merged[rep["lever"]]["releases"].update(rep["releases"])
    return list(merged.values())


MIN_SEEDS_TO_WIN = 3


def lever_verdict(rep: dict[str, Any], base: dict[str, Any] | None,
                  releases: list[str]) -> dict[str, Any]:
    """How a lever compares with the recipe on the predicted protocol: per release the
    difference of means and twice the larger std; ``min_diff`` (the worse release) and
    ``wins`` — as ``lpd.bench.report`` decides a win: the difference exceeds twice the
    larger std, with at least ``MIN_SEEDS_TO_WIN`` seeds each, on every release given."""
    out: dict[str, Any] = {"per_release": {}, "min_diff": None, "wins": False}
    if base is None or rep is base:
        return out
    diffs, wins = [], []
    for r in releases:
        a, b = rep["releases"].get(r), base["releases"].get(r)
        if a is None or b is None or "mIoU" not in a["summary"]["predicted"]:
            wins.append(False)
            continue
        ma, mb = a["summary"]["predicted"]["mIoU"], b["summary"]["predicted"]["mIoU"]
        diff, two_std = ma["mean"] - mb["mean"], 2 * max(ma["std"], mb["std"])
        seeds = min(len(a.get("runs", ())), len(b.get("runs", ())))
        out["per_release"][r] = {"diff": diff, "two_std": two_std, "seeds": seeds}
        diffs.append(diff)
        wins.append(diff > two_std and seeds >= MIN_SEEDS_TO_WIN)
    out["min_diff"] = min(diffs) if diffs else None
    out["wins"] = bool(wins) and all(wins)
    return out


def format_sweep(reports: list[dict[str, Any]]) -> str:
    """A markdown table of a lever sweep: one row per lever, per held-out release the
    predicted and oracle mIoU (mean ± std over seeds) and the predicted difference to
    the ``recipe`` lever's; then the worse release's difference and the verdict
    (``lever_verdict``)."""
    reports = merge_by_lever(reports)
    releases = sorted({r for rep in reports for r in rep["releases"]})
    base = next((rep for rep in reports if rep["lever"] == "recipe"), None)

    def cell(rep: dict, release: str, protocol: str) -> tuple[float, float] | None:
        e = rep["releases"].get(release)
        if e is None or "mIoU" not in e["summary"][protocol]:
            return None
        m = e["summary"][protocol]["mIoU"]
        return m["mean"], m["std"]

    head = "| lever | seeds | " + " | ".join(
        f"{r} predicted | {r} oracle | {r} Δ predicted" for r in releases) + \
        " | worse Δ | wins |"
    lines = [head, "|---|---|" + "---|---|---|" * len(releases) + "---|---|"]
    for rep in reports:
        parts = []
        for r in releases:
            p, o = cell(rep, r, "predicted"), cell(rep, r, "oracle")
            b = cell(base, r, "predicted") if base else None
            parts.append("–" if p is None else f"{p[0]:.3f} ± {p[1]:.3f}")
            parts.append("–" if o is None else f"{o[0]:.3f} ± {o[1]:.3f}")
            parts.append("–" if p is None or b is None else f"{p[0] - b[0]:+.3f}")
        verdict = lever_verdict(rep, base, releases)
        worse = "–" if verdict["min_diff"] is None else f"{verdict['min_diff']:+.3f}"
        mark = "–" if rep is base else ("yes" if verdict["wins"] else "no")
        lines.append(f"| {rep['lever']} | {rep['settings']['seeds']} | " + " | ".join(parts)
                     + f" | {worse} | {mark} |")
    return "\n".join(lines) + "\n"
