"""The default model: shipped with the package, made by its own recipe, scored on a fixed
held-apart set.

Files (``lpd/weights/``):

- ``lpd-crc-v1.recipe.json`` — the recipe: architecture, training settings, the tile
  releases it trains on (each at its own microns per pixel), the held-apart tiles it never
  trains on, and how it is scored. Its ``recipe_id`` (a hash of the file's canonical JSON)
  is written into the weights' metadata, so a changed recipe never passes for the shipped
  weights.
- ``lpd-crc-v1.safetensors`` — the weights, float16, with the JSON model config (loads
  like any checkpoint; nothing is trained on first use).
- ``lpd-crc-v1.card.json`` — the figures the model card (``docs/model-card.md``) reports,
  measured by the command that made the weights.

``python -m lpd.default_model`` (``make default-model``) reproduces the weights and the
figures on a CPU; ``--short`` runs the shortened recipe the slow test checks.

``LPD_DEFAULT_MODEL`` names another file to use as the default model. When the shipped file
is missing (a stripped install), the default model is trained once from the recipe into the
user's cache folder, as before the weights were shipped."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lpd._userfile import read_json
from lpd.config import ModelConfig, RunConfig, TrainConfig
from lpd.data.mosaic import OTHER, TileFolder
from lpd.data.sample import SAMPLE_ROOT
from lpd.errors import Cancelled, InputError

WEIGHTS_DIR = Path(str(resources.files("lpd") / "weights"))
DEFAULT_NAME = "lpd-crc-v1"
RECIPE_PATH = WEIGHTS_DIR / f"{DEFAULT_NAME}.recipe.json"
SHIPPED_PATH = WEIGHTS_DIR / f"{DEFAULT_NAME}.safetensors"
CARD_PATH = WEIGHTS_DIR / f"{DEFAULT_NAME}.card.json"
KATHER2016_MPP = 0.495


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe file (see the module docstring)."""

    raw: dict[str, Any]
    path: Path

    @classmethod
    def load(cls, path: str | Path = RECIPE_PATH) -> Recipe:
        """Read and check a recipe.

        Raises
        ------
        InputError
            The file is missing, not JSON, or lacks a section.
        """
        path = Path(path)
        raw = read_json(path, "recipe")
        if not isinstance(raw, dict):
            raise InputError(path, "a recipe is a JSON object")
        missing = [k for k in ("name", "model", "train", "releases", "held_apart",
                               "evaluation") if k not in raw]
        if missing:
            raise InputError(path, f"recipe lacks {', '.join(missing)}")
        return cls(raw, path)

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def scope(self) -> str:
        return str(self.raw.get("scope", ""))

    @property
    def id(self) -> str:
        """Hash of the recipe's canonical JSON (12 hex digits)."""
        text = json.dumps(self.raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def run(self, short: bool = False) -> RunConfig:
        """Model and training settings (``short``: the shortened recipe)."""
        train = dict(self.raw["train"])
        if short:
            train.update(self.raw.get("short", {}))
        return RunConfig(ModelConfig.from_dict(dict(self.raw["model"]), str(self.path)),
                         TrainConfig.from_dict(train, str(self.path)))

    def tiles(self, root: Path = SAMPLE_ROOT) -> tuple[TileFolder, TileFolder, dict[Path, float]]:
        """(training tiles, held-apart tiles, microns per pixel of every tile), pooled over
        the releases. A release may lack classes (``tcga-tumour``: tumour only).

        Raises
        ------
        InputError
            A held-apart tile listed in the recipe does not exist.
        """
        classes = ModelConfig.from_dict(dict(self.raw["model"])).class_names
        held = {root / "tiles" / p for p in self.raw["held_apart"]}
        missing = sorted(str(p) for p in held if not p.is_file())
        if missing:
            raise InputError(self.path, f"held-apart tiles not found: {', '.join(missing)}")
        train: dict[str, list[Path]] = {c: [] for c in (*classes, OTHER)}
        test: dict[str, list[Path]] = {c: [] for c in (*classes, OTHER)}
        mpps: dict[Path, float] = {}
        for release, spec in self.raw["releases"].items():
            folder = root / spec["folder"]
            for name in (*classes, OTHER):
                sub = folder / name
                if not sub.is_dir():
                    continue
                for p in sorted(sub.iterdir()):
                    if p.name.startswith(".") or not p.is_file():
                        continue
                    mpps[p] = _mpp_of(p.name, spec["mpp"], release)
                    (test if p in held else train)[name].append(p)
        as_folder = lambda d: TileFolder(root / "tiles", classes,  # noqa: E731
                                         {k: tuple(v) for k, v in d.items()})
        return as_folder(train), as_folder(test), mpps


def _mpp_of(name: str, spec: float | dict[str, float], release: str) -> float:
    if isinstance(spec, (int, float)):
        return float(spec)
    for pattern, value in spec.items():
        if fnmatch.fnmatch(name, pattern):
            return float(value)
    raise InputError(None, f"recipe: no microns per pixel for {release}/{name}")


def load_recipe() -> Recipe:
    """The shipped default model's recipe."""
    return Recipe.load(RECIPE_PATH)


DEFAULT_RUN = load_recipe().run()


def cache_dir() -> Path:
    """``$LPD_CACHE_DIR``, else ``$XDG_CACHE_HOME/napari-lpd``, else ``~/.cache/napari-lpd``."""
    env = os.environ.get("LPD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-lpd"


def recipe_id(run: RunConfig | None = None) -> str:
    """The recipe's id; for another ``run`` (a variant), a hash of the recipe with its
    model and training settings replaced."""
    recipe = load_recipe()
    if run is None or run == DEFAULT_RUN:
        return recipe.id
    raw = {**recipe.raw, "model": run.model.to_dict(), "train": run.train.to_dict()}
    return Recipe(raw, recipe.path).id


def default_checkpoint_path(run: RunConfig | None = None) -> Path:
    """Where the default model is: ``$LPD_DEFAULT_MODEL``, else the shipped file, else
    (stripped install, or a variant ``run``) its copy in the cache folder."""
    if run is None or run == DEFAULT_RUN:
        env = os.environ.get("LPD_DEFAULT_MODEL")
        if env:
            return Path(env)
        if SHIPPED_PATH.is_file():
            return SHIPPED_PATH
    return cache_dir() / f"default-model-{recipe_id(run)}.safetensors"


def is_cached(run: RunConfig | None = None) -> bool:
    """Whether the default model is ready to load (always, when it is shipped)."""
    return default_checkpoint_path(run).is_file()


def train_default_model(
    run: RunConfig | None = None,
    device: Any = "cpu",
    out: str | Path | None = None,
    recipe: Recipe | None = None,
) -> Iterator[Any]:
    """Train the default model from its recipe, yielding ``TrainProgress`` per step; the
    checkpoint (float16) is written atomically only when training completes. Returns its
    path (``StopIteration.value``).

    Parameters
    ----------
    run : RunConfig, optional
        Settings replacing the recipe's (a shortened run, say).
    device : str or torch.device
        Where to train.
    out : str or Path, optional
        The file to write (default: ``default_checkpoint_path(run)``).
    recipe : Recipe, optional
        Default: the shipped model's.
    """
    import torch

    from lpd.io.checkpoint import save_checkpoint

    recipe = recipe or load_recipe()
    run = run or recipe.run()
    path = Path(out) if out is not None else default_checkpoint_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the cache copy: one trainer at a time (the demo and the plugin may race)
    with _lock(path) if out is None else contextlib.nullcontext():
        if out is None and path.is_file():  # another process finished it while we waited
            return path
        train_tiles, _, mpps = recipe.tiles()
        model = yield from train_on_tiles(run, train_tiles, mpps, device)
        rid = recipe.id if run == recipe.run() else recipe_id(run)
        save_checkpoint(path, model, {
            "name": recipe.name, "recipe": rid, "scope": recipe.scope,
            "data": {r: s["folder"] for r, s in recipe.raw["releases"].items()},
            "held_apart": len(recipe.raw["held_apart"]), "steps": run.train.steps,
        }, dtype=torch.float16)
    return path


def train_on_tiles(run: RunConfig, tiles: TileFolder, tile_mpps: dict[Path, float],
                   device: Any = "cpu") -> Iterator[Any]:
    """Train a model of ``run`` (ImageNet-initialised backbone) on mosaics of ``tiles``
    (each tile at its own microns per pixel), yielding ``TrainProgress`` per step; returns
    the trained model (``StopIteration.value``). The recipe's one training path: the
    shipped model and the leave-one-release-out benchmark both use it."""
    from lpd.data.sources import TRAIN_MOSAIC_SEED, pooled_mosaic_dataset
    from lpd.model import create_model
    from lpd.trainer import Trainer, seed_everything

    seed_everything(run.train.seed)
    config = ModelConfig.from_dict(run.model.to_dict())
    if config.stain_normalisation == "reinhard" and config.stain_reference is None:
        from lpd.data.sources import reinhard_reference

        config.stain_reference = reinhard_reference(
            sorted(p for ps in tiles.paths.values() for p in ps))
    model = create_model(config=config, pretrained=True)
    if run.model.head == "bank":  # PBIP-style: k-means centroids, fixed
        from lpd.model.prototype_bank import install_bank

        install_bank(model, tiles, seed=run.train.seed)
    elif run.train.prototype_init == "kmeans":
        from lpd.model.prototype_bank import init_prototypes_kmeans

        init_prototypes_kmeans(model, tiles, seed=run.train.seed)
    data = pooled_mosaic_dataset(tiles, tile_mpps, model.config,
                                 run.train.steps * run.train.batch_size,
                                 TRAIN_MOSAIC_SEED + run.train.seed, True, run.train)
    trainer = Trainer(model, run.train, data, None, None, device)
    yield from trainer.steps()
    return model


def default_checkpoint(
    on_progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: Any = "cpu",
    run: RunConfig | None = None,
) -> Path:
    """Path of the default model (the shipped file; trained first only when missing)."""
    path = default_checkpoint_path(run)
    if path.is_file():
        return path
    from lpd.progress import drive

    try:
        return Path(drive(train_default_model(run, device), on_progress, should_stop))
    except Cancelled:
        raise Cancelled("training of the default model was cancelled") from None


def describe_default() -> str:
    """One line for a model chooser: the default model's name and scope."""
    from lpd.io.checkpoint import read_checkpoint_metadata

    path = default_checkpoint_path()
    try:
        _, extra = read_checkpoint_metadata(path)
    except InputError:
        return f"Default model: {path.name}"
    name = extra.get("name") or path.stem
    scope = extra.get("scope") or "no scope recorded"
    return f"{name}: {scope} (not a diagnostic device; see docs/model-card.md)"


def resolve_default(checkpoint: str | Path | None) -> Path | None:
    """``"default"`` (any case) is the default model's path; anything else is kept."""
    if checkpoint is not None and str(checkpoint).lower() == "default":
        return default_checkpoint()
    return None if checkpoint is None else Path(checkpoint)


def held_apart_dataset(model: ModelConfig, recipe: Recipe | None = None) -> Any:
    """The recipe's held-apart mosaics (its ``evaluation`` section: count, seed) of the
    held-apart tiles, each tile at its own microns per pixel, at the model's."""
    from lpd.data.sources import pooled_mosaic_dataset

    recipe = recipe or load_recipe()
    _, held, mpps = recipe.tiles()
    ev = recipe.raw["evaluation"]
    return pooled_mosaic_dataset(held, mpps, model, int(ev["mosaics"]), int(ev["seed"]), False)


def score_held_apart(checkpoint: str | Path, recipe: Recipe | None = None,
                     device: Any = "cpu") -> dict[str, Any]:
    """Scores of a checkpoint on the held-apart mosaics, both protocols and the
    one-class guess (``lpd.evaluation.Evaluation.as_dict``)."""
    from torch.utils.data import DataLoader

    from lpd.evaluation import score
    from lpd.io.checkpoint import load_checkpoint

    recipe = recipe or load_recipe()
    model = load_checkpoint(checkpoint, device)
    loader = DataLoader(held_apart_dataset(model.config, recipe),
                        batch_size=int(recipe.raw["evaluation"].get("batch_size", 8)))
    return score(model, loader, device).as_dict()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One trainer at a time per file (the demo and the plugin may race): a lock file
    beside it, held through ``filelock`` (portable: POSIX and Windows)."""
    from filelock import FileLock

    with FileLock(path.with_suffix(".lock")):
        yield


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    keep = ("predicted", "oracle", "one_class_guess")
    return {k: {"mIoU": round(scores[k]["mIoU"], 4),
                "IoU": {c: None if v is None else round(v, 4)
                        for c, v in scores[k]["IoU"].items()}}
            for k in keep if k in scores}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lpd.default_model``: reproduce the shipped model and its card figures."""
    import torch

    p = argparse.ArgumentParser(prog="python -m lpd.default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR,
                   help="folder for the weights and card figures (default: the package's)")
    p.add_argument("--short", action="store_true",
                   help="the shortened recipe (its figure goes to the card as 'short')")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2)),
                   help="torch threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_recipe()
    run = recipe.run(short=args.short)
    name = f"{recipe.name}-short" if args.short else recipe.name
    target = args.out / f"{name}.safetensors"
    t0 = time.perf_counter()
    def report(step: Any) -> None:
        if step.step % 20 == 0 or step.step == run.train.steps:
            print(f"step {step.step}/{run.train.steps} loss {step.loss:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    from lpd.progress import drive

    drive(train_default_model(run, "cpu", out=target, recipe=recipe), report)
    seconds = time.perf_counter() - t0
    scores = score_held_apart(target, recipe)
    card_file = args.out / f"{recipe.name}.card.json"
    card = read_json(card_file, "model card") if card_file.is_file() else {}
    key = "short" if args.short else "shipped"
    card["recipe"] = recipe.id
    card[key] = {"held_apart": _summary(scores), "steps": run.train.steps,
                 "train_seconds": round(seconds), "threads": args.threads,
                 "file_bytes": target.stat().st_size}
    if args.short:
        target.unlink()  # only its figure is kept
    from lpd._atomic import atomic_write_text

    atomic_write_text(card_file, json.dumps(card, indent=1) + "\n")
    print(json.dumps(card[key], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
