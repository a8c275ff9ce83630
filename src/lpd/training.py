"""Train a model: the one code path of the job (``lpd train`` and ``lpd.trainer``).

``train_iter`` builds the settings (a config file, then the command line's options as
keyword arguments), the model, the data (a BCSS-WSSS folder or mosaics of a tile folder)
and the ``Trainer``, and yields its progress per step; ``train`` drives it to the end."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from lpd._atomic import atomic_write_text
from lpd.config import ModelConfig, RunConfig, TrainConfig
from lpd.errors import InputError
from lpd.progress import drive

# option -> field; only options given (not None) override the config file
MODEL_OPTIONS = {
    "backbone": "backbone",
    "k": "prototypes_per_class",
    "head": "head",
    "input_size": "input_size",
    "mpp": "microns_per_pixel",
    "stain_normalisation": "stain_normalisation",
}
TRAIN_OPTIONS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup": "warmup_iters",
    "div_weight": "div_weight",
    "div_mode": "div_mode",
    "div_tau": "div_tau",
    "sim_weight": "sim_weight",
    "seed": "seed",
    "val_every": "val_every",
    "checkpoint_every": "checkpoint_every",
    "threads": "threads",
    "num_workers": "num_workers",
}


def run_config(config: str | Path | RunConfig | None = None, *,
               stain_augment: bool | None = None, **options: Any) -> RunConfig:
    """The settings of a training run: ``config`` (a JSON file or a ``RunConfig``; default
    the defaults), then every option given (not None).

    Parameters
    ----------
    config : str or Path or RunConfig, optional
        ``{"model": {...}, "train": {...}}``.
    stain_augment : bool, optional
        False switches stain augmentation off.
    **options
        Keys of ``MODEL_OPTIONS`` and ``TRAIN_OPTIONS`` (the command line's names);
        ``stain_normalisation="none"`` means none.

    Returns
    -------
    RunConfig

    Raises
    ------
    InputError
        An unknown option, or a config file that cannot be read.
    """
    unknown = set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS)
    if unknown:
        raise InputError(None, f"unknown training option(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join([*MODEL_OPTIONS, *TRAIN_OPTIONS])}")
    if isinstance(config, RunConfig):
        run = config
    else:
        run = RunConfig.load(config) if config else RunConfig()
    model, train = run.model.to_dict(), run.train.to_dict()
    for option, name in MODEL_OPTIONS.items():
        value = options.get(option)
        if value is not None:
            model[name] = None if value == "none" else value
    for option, name in TRAIN_OPTIONS.items():
        if options.get(option) is not None:
            train[name] = options[option]
    if stain_augment is False:
        train["stain_augment"] = False
    return RunConfig(ModelConfig.from_dict(model), TrainConfig.from_dict(train))


def train_iter(
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | RunConfig | None = None,
    pretrained: bool = True,
    mosaics: int = 2000,
    val_mosaics: int = 64,
    tile_mpp: float | None = None,
    device: str = "auto",
    resume: bool = False,
    stain_augment: bool | None = None,
    **options: Any,
) -> Generator[Any, None, Any]:
    """Train on ``data``, writing checkpoints to ``out``; yields ``TrainProgress`` per step.

    Parameters
    ----------
    data : str or Path
        A BCSS-WSSS folder (train/ with tags in the file names, val/ with img/ and mask/)
        or a tile folder (TUM/ STR/ LYM/ NEC/ [OTHER/]) made into mosaics.
    out : str or Path
        Output folder: ``last.safetensors``, ``best.safetensors``, ``train_state``,
        ``history.json``, ``config.json``.
    config : str or Path or RunConfig, optional
        Base settings (see ``run_config``).
    pretrained : bool
        Start from ImageNet weights (offline: tf_efficientnet_lite0's package).
    mosaics, val_mosaics : int
        Training / held-apart validation mosaics of a tile folder.
    tile_mpp : float, optional
        Microns per pixel of the tiles (resampled to the model's).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    resume : bool
        Continue from ``out``'s last state.
    stain_augment : bool, optional
        False switches stain augmentation off.
    **options
        ``run_config``'s options (``steps=``, ``k=``, ``lr=``...).

    Returns
    -------
    TrainResult
        As the generator's return value.

    Raises
    ------
    InputError
        Bad data, options, or nothing to resume.
    """
    from lpd.data.sources import training_sources
    from lpd.distributed import is_main_process
    from lpd.infer.device import resolve_device
    from lpd.model import create_model
    from lpd.trainer import Trainer

    out = Path(out)
    cfg = run_config(config, stain_augment=stain_augment, **options)
    dev = resolve_device(device)
    if resume and not (out / "last.safetensors").exists():
        raise InputError(out, "nothing to resume: no last.safetensors in this folder")
    model = create_model(config=cfg.model, pretrained=pretrained)
    sources = training_sources(data, model.config, cfg.train, mosaics, val_mosaics,
                               tile_mpp=tile_mpp)
    if model.config.microns_per_pixel is None and sources.microns_per_pixel is not None:
        model.config.microns_per_pixel = sources.microns_per_pixel
    if not resume:
        _init_prototypes(model, cfg.train, sources.kind, Path(data))
    trainer = Trainer(model, cfg.train, sources.train, sources.val, out, dev, resume=resume)
    if is_main_process():  # under torchrun only rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(
            {"model": model.config.to_dict(), "train": dataclasses.asdict(cfg.train)}, indent=1))
    yield from trainer.steps()
    return trainer.result(cfg.train.steps, True)


def _init_prototypes(model: Any, train: TrainConfig, kind: str, data: Path) -> None:
    if train.prototype_init == "random":
        return
    if train.prototype_init != "kmeans":
        raise InputError(None, f"unknown prototype_init {train.prototype_init!r} "
                         "(expected 'random' or 'kmeans')")
    if kind != "mosaics":
        raise InputError(data, "prototype_init 'kmeans' needs a tile folder (one sub-folder "
                         "per class), not BCSS-WSSS")
    from lpd.data.mosaic import TileFolder
    from lpd.model.prototype_bank import init_prototypes_kmeans

    init_prototypes_kmeans(model, TileFolder(data, model.config.class_names), seed=train.seed)


def train(data: str | Path, out: str | Path, *,
          on_progress: Callable[[Any], None] | None = None,
          should_stop: Callable[[], bool] | None = None, **options: Any) -> Any:
    """Train (blocking); ``train_iter``'s parameters, plus ``on_progress`` (called with
    each ``TrainProgress``) and ``should_stop`` (True stops after the current step:
    ``lpd.errors.Cancelled``; ``out`` keeps the last saved state for ``resume=True``).

    Returns
    -------
    TrainResult
        ``last_checkpoint``, ``best_checkpoint``, ``best_val_miou``, ``history``.
    """
    return drive(train_iter(data, out, **options), on_progress, should_stop)
