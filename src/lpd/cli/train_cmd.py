"""``lpd train``: train on a BCSS-WSSS folder or on mosaics of a tile folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from lpd.config import RunConfig


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
    """The run's settings from the command line (``lpd.training.run_config``)."""
    from lpd.training import MODEL_OPTIONS, TRAIN_OPTIONS, run_config

    options = {k: getattr(args, k, None) for k in (*MODEL_OPTIONS, *TRAIN_OPTIONS)}
    return run_config(args.config, stain_augment=False if getattr(
        args, "no_stain_augment", False) else None, **options)


def run(args: argparse.Namespace) -> int:
    from lpd.cli._progress import progress_bar
    from lpd.distributed import is_main_process
    from lpd.progress import drive
    from lpd.training import train_iter

    cfg = resolve_config(args)
    main_rank = is_main_process()  # under torchrun only rank 0 reports
    gen = train_iter(args.data, args.out, config=cfg, pretrained=not args.no_pretrained,
                     mosaics=args.mosaics, val_mosaics=args.val_mosaics,
                     tile_mpp=args.tile_mpp, device=args.device, resume=args.resume)
    with progress_bar(cfg.train.steps, "train", "step", disable=not main_rank) as bar:
        def show(p) -> None:
            bar.update(p.step - bar.n)
            post = {"loss": f"{p.loss:.3f}"}
            if p.val_miou is not None:
                post["val_mIoU"] = f"{p.val_miou:.3f}"
            bar.set_postfix(post, refresh=False)

        result = drive(gen, show)
    if not main_rank:
        return 0
    best = f", best val mIoU {result.best_val_miou:.4f}" if result.best_val_miou else ""
    from lpd.data.sources import is_bcss_folder

    kind = "bcss" if is_bcss_folder(Path(args.data)) else "mosaics"
    print(f"trained {cfg.train.steps} steps on {kind}{best}; "
          f"checkpoint: {result.best_checkpoint or result.last_checkpoint}")
    return 0
