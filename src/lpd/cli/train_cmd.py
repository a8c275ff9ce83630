"""``lpd train``: train on a BCSS-WSSS folder or on mosaics of a tile folder."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lpd._atomic import atomic_write_text
from lpd.config import ModelConfig, RunConfig, TrainConfig
from lpd.errors import InputError

# flag -> (section, field); only flags the user gave override the config file
MODEL_FLAGS = {
    "backbone": "backbone",
    "k": "prototypes_per_class",
    "head": "head",
    "input_size": "input_size",
    "mpp": "microns_per_pixel",
    "stain_normalisation": "stain_normalisation",
}
TRAIN_FLAGS = {
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from image-level tags",
        description="Train LPD on a BCSS-WSSS folder (train/ with tags in the file names, "
        "val/ or valid/ with img/ and mask/) or on mosaics of a tile folder "
        "(TUM/ STR/ LYM/ NEC/ [OTHER/]). Writes last.safetensors, best.safetensors, "
        "train_state.safetensors and history.json to --out.",
    )
    p.add_argument("data", type=Path, help="BCSS-WSSS folder or tile folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, help='JSON file {"model": {...}, "train": {...}}')
    p.add_argument("--backbone", help="any timm model name (default tf_efficientnet_lite0)")
    p.add_argument("--k", type=int, help="prototypes per class (default 10)")
    p.add_argument("--head", choices=("prototype", "cam"))
    p.add_argument("--input-size", type=int)
    p.add_argument("--mpp", type=float, help="microns per pixel of the training data")
    p.add_argument("--stain-normalisation", choices=("none", "macenko"))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="steps with the classification loss only")
    p.add_argument("--div-weight", type=float, help="lambda_div (0 switches it off)")
    p.add_argument("--div-mode", choices=("correct", "released"))
    p.add_argument("--div-tau", type=float)
    p.add_argument("--sim-weight", type=float, help="FG/BG contrastive loss weight (0 = off)")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--no-stain-augment", action="store_true")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone init")
    p.add_argument("--mosaics", type=int, default=2000, help="training mosaics (tile folder)")
    p.add_argument("--val-mosaics", type=int, default=64,
                   help="held-apart validation mosaics (tile folder)")
    p.add_argument("--tile-mpp", type=float, help="microns per pixel of the tiles")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--resume", action="store_true", help="continue from --out's last state")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    run = RunConfig.load(args.config) if args.config else RunConfig()
    model = run.model.to_dict()
    train = run.train.to_dict()
    for flag, name in MODEL_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            model[name] = None if value == "none" else value
    for flag, name in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            train[name] = value
    if getattr(args, "no_stain_augment", False):
        train["stain_augment"] = False
    return RunConfig(ModelConfig.from_dict(model), TrainConfig.from_dict(train))


def run(args: argparse.Namespace) -> int:
    from lpd.cli._progress import progress_bar
    from lpd.data.sources import training_sources
    from lpd.distributed import is_main_process
    from lpd.infer.device import resolve_device
    from lpd.model import create_model
    from lpd.train import Trainer

    cfg = resolve_config(args)
    device = resolve_device(args.device)
    if args.resume and not (args.out / "last.safetensors").exists():
        raise InputError(args.out, "nothing to resume: no last.safetensors in this folder")
    model = create_model(config=cfg.model, pretrained=not args.no_pretrained)
    sources = training_sources(args.data, model.config, cfg.train, args.mosaics,
                               args.val_mosaics, tile_mpp=args.tile_mpp)
    if model.config.microns_per_pixel is None and sources.microns_per_pixel is not None:
        model.config.microns_per_pixel = sources.microns_per_pixel
    if cfg.train.prototype_init == "kmeans" and not args.resume:
        if sources.kind != "mosaics":
            raise InputError(args.data, "prototype_init 'kmeans' needs a tile folder (one "
                             "sub-folder per class), not BCSS-WSSS")
        from lpd.data.mosaic import TileFolder
        from lpd.model.prototype_bank import init_prototypes_kmeans

        init_prototypes_kmeans(model, TileFolder(args.data, model.config.class_names),
                               seed=cfg.train.seed)
    elif cfg.train.prototype_init != "random":
        raise InputError(None, f"unknown prototype_init {cfg.train.prototype_init!r} "
                         "(expected 'random' or 'kmeans')")
    trainer = Trainer(model, cfg.train, sources.train, sources.val, args.out, device,
                      resume=args.resume)
    main_rank = is_main_process()  # under torchrun only rank 0 writes and reports
    if main_rank:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "config.json", json.dumps(
            {"model": model.config.to_dict(), "train": dataclasses.asdict(cfg.train)}, indent=1))
    with progress_bar(cfg.train.steps, "train", "step", disable=not main_rank) as bar:
        bar.update(trainer.start_step)
        for p in trainer.steps():
            bar.update(1)
            post = {"loss": f"{p.loss:.3f}"}
            if p.val_miou is not None:
                post["val_mIoU"] = f"{p.val_miou:.3f}"
            bar.set_postfix(post, refresh=False)
    result = trainer.result(cfg.train.steps, True)
    if not main_rank:
        return 0
    best = f", best val mIoU {result.best_val_miou:.4f}" if result.best_val_miou else ""
    print(f"trained {cfg.train.steps} steps on {sources.kind}{best}; "
          f"checkpoint: {result.best_checkpoint or result.last_checkpoint}")
    return 0
