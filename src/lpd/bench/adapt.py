"""Adaptation to a lab from its own tags, measured (``lpd bench adapt``).

For one tile release (a folder TUM/ STR/ LYM/ NEC/ [OTHER/]):

1. the *base* model is the default recipe trained without that release (a bundled release:
   trained here on the others, as the leave-one-release-out benchmark does; any other
   folder: the shipped default model, which never saw it);
2. the release's tiles are split in halves by tile, ``ceil(n / 2)`` of each class in the
   first (``lpd.data.mosaic.split_tiles``);
3. a user tagging N regions is simulated: N mosaics of the first half, each saved as an
   image with one tagged region covering it (its image-level tags only), exactly what the
   Tag regions widget writes;
4. the base model is fine-tuned on them through ``lpd.finetune.fine_tune`` (the Fine-tune
   widget's code path) with the widget's defaults (``WIDGET_STEPS`` steps: what it makes in
   about two minutes at two threads here);
5. base and fine-tuned models are scored on mosaics of the second half (both protocols),
   for several seeds (each seed draws other tagged mosaics and trains anew), and the
   *off-target change* is measured: the share of pixels whose true class is not among the
   tagged classes (OTHER tissue, glass, untagged classes) whose label fine-tuning changed.

N = 0 is the base model. ``run_adapt`` is a generator of progress that returns the report;
``format_adapt`` and ``plot_adapt`` make the table and the curve."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpd.config import FINETUNE_BATCH as WIDGET_BATCH
from lpd.config import FINETUNE_LR as WIDGET_LR
from lpd.config import FINETUNE_STEPS as WIDGET_STEPS
from lpd.config import FINETUNE_TRAINABLE as WIDGET_TRAINABLE
from lpd.config import PROTOCOLS
from lpd.data.mosaic import MosaicGenerator, TileFolder
from lpd.metrics import ConfusionMatrix
from lpd.progress import relay

TAG_SEED = 3_000_000  # the stream of "tagged" mosaics (first half)
EVAL_SEED = 4_000_000  # the stream of evaluation mosaics (second half)


@dataclass
class AdaptSettings:
    tiles: Path
    counts: tuple[int, ...] = (0, 8, 32, 128)  # tagged regions N
    seeds: int = 3
    steps: int = WIDGET_STEPS
    batch_size: int = WIDGET_BATCH
    lr: float = WIDGET_LR
    eval_mosaics: int = 32
    device: str = "cpu"
    base_steps: int | None = None  # training of the base model (None: the recipe's)
    trainable: str = WIDGET_TRAINABLE  # "all" or "head" (fine_tune's)
    # where the base model is kept: loaded when the file exists, else trained and saved
    # there (several fine-tuning settings then start from the same base)
    base_checkpoint: Path | None = None


@dataclass
class AdaptEvent:
    phase: str  # "base", "finetune", "evaluate"
    n: int = 0
    seed: int = 0
    step: int = 0
    total: int = 0


def split_halves(folder: TileFolder) -> tuple[TileFolder, TileFolder]:
    """(first, second): per class ``ceil(n / 2)`` tiles in the first, by sorted name."""
    first, second = {}, {}
    for name, paths in folder.paths.items():
        k = math.ceil(len(paths) / 2)
        first[name], second[name] = tuple(paths[:k]), tuple(paths[k:])
    return (TileFolder(folder.root, folder.class_names, first),
            TileFolder(folder.root, folder.class_names, second))


def _release_of(tiles: Path) -> str | None:
    from lpd.data.sample import SAMPLE_ROOT
    from lpd.default_model import load_recipe

    for release, spec in load_recipe().raw["releases"].items():
        if (SAMPLE_ROOT / spec["folder"]).resolve() == tiles.resolve():
            return release
    return None


def _base_model(settings: AdaptSettings) -> Iterator[AdaptEvent]:
    """The model that never saw ``settings.tiles`` (see the module docstring)."""
    import dataclasses

    from lpd.bench.loro import release_tiles
    from lpd.default_model import default_checkpoint_path, load_recipe, train_on_tiles
    from lpd.io.checkpoint import load_checkpoint

    release = _release_of(settings.tiles)
    if release is None:
        return load_checkpoint(default_checkpoint_path(), settings.device), "shipped default"
    cached = settings.base_checkpoint
    if cached is not None and Path(cached).is_file():
        from lpd.io.checkpoint import read_checkpoint_metadata

        label = read_checkpoint_metadata(cached)[1].get("base", str(cached))
        return load_checkpoint(cached, settings.device), label
    recipe = load_recipe()
    run = recipe.run()
    if settings.base_steps is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(
            run.train, steps=settings.base_steps,
            warmup_iters=min(run.train.warmup_iters, settings.base_steps // 3)))
    others = set(recipe.raw["releases"]) - {release}
    tiles, mpps = release_tiles(recipe, others)
    model = yield from relay(train_on_tiles(run, tiles, mpps, settings.device),
                             lambda p: AdaptEvent("base", step=p.step, total=p.total))
    label = f"recipe trained on {', '.join(sorted(others))}"
    if cached is not None:
        from lpd.io.checkpoint import save_checkpoint

        save_checkpoint(Path(cached), model, {"base": label})
    return model, label


def _mosaics(folder: TileFolder, model, count: int, seed: int, mpp: float | None,
             other_label: int = 0) -> MosaicGenerator:
    cfg = model.config
    return MosaicGenerator(folder, size=cfg.input_size, seed=seed, tile_mpp=mpp,
                           target_mpp=cfg.microns_per_pixel if mpp else None,
                           other_label=other_label)


def _predict(model, rgbs: Sequence[np.ndarray], tags: Sequence[np.ndarray], protocol: str,
             device: str) -> list[np.ndarray]:
    from lpd.data.datasets import to_tensor
    from lpd.infer.patch import predict_patches

    mean, std = model.normalisation()
    model.eval()  # a freshly trained base comes back in training mode (BatchNorm batch stats)
    out = []
    for i in range(0, len(rgbs), 8):
        x = torch.stack([to_tensor(r, mean, std) for r in rgbs[i : i + 8]]).to(device)
        t = torch.as_tensor(np.stack(tags[i : i + 8]))
        with torch.inference_mode():
            out += list(predict_patches(model, x, protocol, t).labels.cpu().numpy())
    return out


def _score(preds: dict[str, list[np.ndarray]], truth: list[np.ndarray], c: int) -> dict:
    scores = {}
    for protocol, labels in preds.items():
        m = ConfusionMatrix(c)
        for p, t in zip(labels, truth, strict=True):
            m.update(p, t)
        s = m.scores()
        scores[protocol] = {"mIoU": s.miou, "IoU": [None if np.isnan(v) else float(v)
                                                    for v in s.iou]}
    return scores


def _tagged_regions(folder: TileFolder, model, n: int, seed: int, mpp: float | None,
                    workdir: Path) -> tuple[list, list, set[int]]:
    """N "tagged regions": mosaics saved as PNG images, each with one region covering it
    tagged with its classes (a TagStore sidecar, as the Tag regions widget writes)."""
    from PIL import Image

    from lpd.data.tags import TagStore

    gen = _mosaics(folder, model, n, seed, mpp)
    names = model.config.class_names
    stores, images, tagged = [], [], set()
    for i in range(n):
        mosaic = gen[i]
        path = workdir / f"tagged-{seed}-{i}.png"
        Image.fromarray(mosaic.rgb).save(path)
        store = TagStore.load(path, names, image_size=mosaic.rgb.shape[:2])
        classes = [names[c] for c in np.flatnonzero(mosaic.tags)]
        tagged |= {int(c) + 1 for c in np.flatnonzero(mosaic.tags)}
        store.add((0, 0, mosaic.rgb.shape[1], mosaic.rgb.shape[0]), classes)
        store.save()  # the sidecar beside the image, as the widget writes it
        stores.append(store)
        images.append(mosaic.rgb)
    return stores, images, tagged


def run_adapt(settings: AdaptSettings) -> Iterator[AdaptEvent]:
    """Yields progress; returns the report (``StopIteration.value``)."""
    from lpd.finetune import fine_tune

    t0 = time.perf_counter()
    folder = TileFolder(settings.tiles)
    first, second = split_halves(folder)
    mpp = _tile_mpp(settings.tiles)
    base, base_label = yield from _base_model(settings)
    c = base.config.num_classes
    ev = _mosaics(second, base, settings.eval_mosaics, EVAL_SEED, mpp, other_label=c + 1)
    items = [ev[i] for i in range(settings.eval_mosaics)]
    rgbs = [m.rgb for m in items]
    tags = [m.tags for m in items]
    truth = [m.labels for m in items]
    base_preds = {p: _predict(base, rgbs, tags, p, settings.device) for p in PROTOCOLS}
    report: dict[str, Any] = {
        "settings": {**asdict(settings), "tiles": str(settings.tiles),
                     "base_checkpoint": None if settings.base_checkpoint is None
                     else str(settings.base_checkpoint)},
        "base": base_label,
        "tiles": {"first_half": {k: len(v) for k, v in first.paths.items()},
                  "second_half": {k: len(v) for k, v in second.paths.items()}},
        "runs": {},
    }
    for n in settings.counts:
        runs = []
        for seed in range(settings.seeds if n else 1):
            if n == 0:
                runs.append({"seed": seed, **_score(base_preds, truth, c), "off_target": 0.0})
                continue
            with tempfile.TemporaryDirectory(prefix="lpd-adapt-") as work:
                stores, images, tagged = _tagged_regions(
                    first, base, n, TAG_SEED + 1000 * seed, mpp, Path(work))
                gen = fine_tune(base, stores, images, steps=settings.steps,
                                batch_size=settings.batch_size, lr=settings.lr,
                                out_path=Path(work) / "tuned.safetensors",
                                device=settings.device, mpp=base.config.microns_per_pixel,
                                trainable=settings.trainable)
                result = yield from relay(gen, lambda p, n=n, s=seed: AdaptEvent(
                    "finetune", n, s, p.step, p.total))
                from lpd.io.checkpoint import load_checkpoint

                tuned = load_checkpoint(result.checkpoint, settings.device)
            yield AdaptEvent("evaluate", n, seed)
            preds = {p: _predict(tuned, rgbs, tags, p, settings.device) for p in PROTOCOLS}
            runs.append({"seed": seed, **_score(preds, truth, c),
                         **_off_target(preds["predicted"], base_preds["predicted"], truth,
                                       tagged, c),
                         "tagged_classes": sorted(tagged)})
        report["runs"][str(n)] = runs
    report["summary"] = {n: _summary(runs) for n, runs in report["runs"].items()}
    report["seconds"] = round(time.perf_counter() - t0)
    return report


def _off_target(tuned: list[np.ndarray], base: list[np.ndarray], truth: list[np.ndarray],
                tagged: set[int], c: int) -> dict[str, Any]:
    """Share of the pixels whose true class is not among ``tagged`` that fine-tuning
    relabelled (``off_target``), and the same by kind: glass / background (truth 0), OTHER
    tissue (truth ``c + 1``, which a model of C classes must paint as one of them) and
    tissue of untagged classes (``off_target_kinds``; None where there is none)."""
    kinds = {"glass": lambda t: t == 0, "other_tissue": lambda t: t == c + 1,
             "untagged_class": lambda t: (t >= 1) & (t <= c) & ~np.isin(t, sorted(tagged))}
    counts = {k: [0, 0] for k in (*kinds, "all")}
    for a, b, t in zip(tuned, base, truth, strict=True):
        diff = a != b
        for kind, select in kinds.items():
            m = select(t)
            counts[kind][0] += int(diff[m].sum())
            counts[kind][1] += int(m.sum())
            counts["all"][0] += int(diff[m].sum())
            counts["all"][1] += int(m.sum())

    def share(kind: str) -> float | None:
        changed, total = counts[kind]
        return changed / total if total else None

    return {"off_target": share("all"),
            "off_target_kinds": {k: share(k) for k in kinds},
            "off_target_pixels": {k: counts[k][1] for k in kinds}}


def _tile_mpp(tiles: Path) -> float | None:
    """Microns per pixel of a bundled release's tiles (the recipe's), else None."""
    from lpd.default_model import load_recipe

    release = _release_of(tiles)
    if release is None:
        return None
    spec = load_recipe().raw["releases"][release]["mpp"]
    return float(spec) if isinstance(spec, (int, float)) else None


def _summary(runs: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (*PROTOCOLS, "off_target"):
        values = [r[key]["mIoU"] if key in PROTOCOLS else r[key] for r in runs]
        values = [v for v in values if v is not None and not math.isnan(v)]
        out[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
                    "n": len(values)}
    return out


def format_adapt(report: dict[str, Any]) -> str:
    """Markdown table: one row per N (mean ± std over seeds), gains over N = 0."""
    s = report["settings"]
    base = report["summary"].get("0", {})
    lines = [f"Adaptation on `{s['tiles']}` (base: {report['base']}); fine-tune "
             f"{s['steps']} steps, batch {s['batch_size']}, lr {s['lr']}, trains "
             f"{s.get('trainable', 'all')}; "
             f"{s['eval_mosaics']} evaluation mosaics of the second half",
             "", "| tagged regions N | seeds | predicted mIoU | oracle mIoU | Δ oracle vs N=0 "
             "| off-target pixels changed |", "|---|---|---|---|---|---|"]
    for n, summ in report["summary"].items():
        def ms(d):
            return "–" if d["mean"] is None else f"{d['mean']:.3f} ± {d['std']:.3f}"
        gain = ("–" if not base or summ["oracle"]["mean"] is None
                else f"{summ['oracle']['mean'] - base['oracle']['mean']:+.3f}")
        off = summ["off_target"]
        lines.append(f"| {n} | {summ['predicted']['n']} | {ms(summ['predicted'])} | "
                     f"{ms(summ['oracle'])} | {gain} | "
                     f"{'–' if n == '0' else ms(off)} |")
    kinds = [(n, runs) for n, runs in report["runs"].items()
             if runs and "off_target_kinds" in runs[0]]
    if kinds:
        lines += ["", "Off-target change by kind (mean over seeds; share of the off-target "
                  "pixels in brackets):", "",
                  "| N | glass / background | OTHER tissue | untagged classes |",
                  "|---|---|---|---|"]
        for n, runs in kinds:
            cells = []
            for kind in ("glass", "other_tissue", "untagged_class"):
                vals = [r["off_target_kinds"][kind] for r in runs
                        if r["off_target_kinds"][kind] is not None]
                pix = [r["off_target_pixels"][kind] for r in runs]
                tot = [sum(r["off_target_pixels"].values()) for r in runs]
                frac = sum(pix) / sum(tot) if sum(tot) else 0.0
                cells.append("–" if not vals else f"{np.mean(vals):.3f} ({frac:.0%})")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_adapt(report: dict[str, Any], path: Path) -> Path:
    """The adaptation curve (mIoU against N, both protocols, ± std) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [int(n) for n in report["summary"]]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for protocol in PROTOCOLS:
        mean = [report["summary"][str(n)][protocol]["mean"] for n in ns]
        std = [report["summary"][str(n)][protocol]["std"] for n in ns]
        ax.errorbar(ns, mean, yerr=std, marker="o", capsize=3, label=protocol)
    ax.set_xscale("symlog", linthresh=8)
    ax.set_xlabel("tagged regions N")
    ax.set_ylabel("mIoU, second half")
    ax.set_title(Path(report["settings"]["tiles"]).name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["AdaptSettings", "format_adapt", "plot_adapt", "run_adapt", "split_halves"]
