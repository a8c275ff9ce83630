"""One-stage LPD training (docs/method.md, Training).

``Trainer.steps()`` is a generator that yields a ``TrainProgress`` after every step, so a
napari worker or the CLI drives it and can stop it between steps; ``Trainer.run()`` does
the same with plain callbacks. Nothing here prints."""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lpd import distributed
from lpd._atomic import atomic_write_text
from lpd._userfile import read_json
from lpd.config import TrainConfig
from lpd.errors import Cancelled
from lpd.evaluation import score
from lpd.io.checkpoint import save_checkpoint
from lpd.io.train_state import load_train_state, save_train_state
from lpd.losses import (
    ContrastiveLoss,
    classification_loss,
    diversity_loss,
    diversity_pseudo_mask,
)
from lpd.model.lpd_model import LPDModel

LAST, BEST, STATE, HISTORY = "last.safetensors", "best.safetensors", "train_state.safetensors", "history.json"


@dataclass
class TrainProgress:
    step: int  # steps done
    total: int
    loss: float
    losses: dict[str, float]
    lr: float
    elapsed: float
    eta: float
    val_miou: float | None = None  # set on the steps where validation ran

    @property
    def fraction(self) -> float:
        return self.step / max(self.total, 1)


@dataclass
class TrainResult:
    steps_done: int
    completed: bool  # False when stopped early
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_val_miou: float | None
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(
        self,
        model: LPDModel,
        config: TrainConfig,
        train_data: Dataset,
        val_data: Dataset | None = None,
        out_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        resume: bool = False,
    ) -> None:
        # under torchrun: join the process group; a bare "cuda" becomes this rank's GPU
        self.dist, self.device = distributed.setup(device)
        self.model = model.to(self.device)
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.train_data = train_data
        self.val_data = val_data
        self.start_step = 0
        self.best_val: float | None = None
        self.history: list[dict] = []
        if config.threads and self.device.type == "cpu":
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        self.optimizer = self._make_optimizer()
        self.contrastive = self._make_contrastive()
        if resume and self.out_dir is not None and (self.out_dir / STATE).exists():
            self._resume()
        self._forward: torch.nn.Module = self.model  # the training step's: DDP's if any
        if self.dist.enabled:
            live = tuple(s for s, w in enumerate(config.cls_weights) if w)
            live = tuple(sorted({*live, len(config.cls_weights) - 1}))  # div, sim: deepest
            self._forward = distributed.wrap(self.model, self.device, live)

    # -- set-up -------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.config.freeze_backbone:  # weights fixed; BatchNorm statistics still adapt
            self.model.backbone.requires_grad_(False)
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        c = self.config
        groups = [
            {"params": backbone, "lr": c.lr, "base_lr": c.lr},
            {"params": head, "lr": c.lr * c.head_lr_scale, "base_lr": c.lr * c.head_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def _make_contrastive(self) -> ContrastiveLoss | None:
        if not self.config.sim_weight or self.model.config.head != "prototype":
            return None
        from lpd.model.backbone import imagenet_classifier

        encoder = imagenet_classifier(self.config.sim_encoder)
        encoder.reset_classifier(0)
        loss = ContrastiveLoss(encoder, self.model.config.prototype_dim).to(self.device)
        self.optimizer.add_param_group(
            {"params": list(loss.to_embedding.parameters()), "lr": self.config.lr,
             "base_lr": self.config.lr}
        )
        return loss

    def _resume(self) -> None:
        assert self.out_dir is not None
        from lpd.io.checkpoint import load_checkpoint

        last = load_checkpoint(self.out_dir / LAST, device=self.device)
        self.model.load_state_dict(last.state_dict())
        state = load_train_state(self.out_dir / STATE, self.optimizer)
        self.start_step = int(state["step"])
        self.best_val = state.get("best_val")
        history = self.out_dir / HISTORY
        if history.exists():
            self.history = read_json(history, "training history")

    def _loader(self) -> Iterator:
        gen = torch.Generator().manual_seed(self.config.seed + self.start_step)
        sampler: DistributedSampler | None = None
        per_rank = len(self.train_data)
        if self.dist.enabled:  # each rank its own shard (batch_size is per rank)
            sampler = DistributedSampler(
                self.train_data, self.dist.world_size, self.dist.rank, shuffle=True,
                seed=self.config.seed + self.start_step,
            )
            per_rank = sampler.num_samples
        epoch = 0
        while True:  # endless: training counts steps, not epochs
            if hasattr(self.train_data, "set_epoch"):
                self.train_data.set_epoch(epoch)  # new augmentation draws every epoch
            if sampler is not None:
                sampler.set_epoch(epoch)
            epoch += 1
            loader = DataLoader(
                self.train_data,
                batch_size=self.config.batch_size,
                shuffle=sampler is None,
                sampler=sampler,
                drop_last=per_rank >= self.config.batch_size,
                num_workers=self.config.num_workers,
                generator=gen if sampler is None else None,
                collate_fn=collate_images_tags,
            )
            yield from loader

    # -- the loop -----------------------------------------------------------------------
    def steps(self) -> Iterator[TrainProgress]:
        """Train, yielding after every step. Closing the generator stops training and
        keeps the last checkpoint written so far."""
        c = self.config
        batches = self._loader()
        t0 = time.perf_counter()
        for step in range(self.start_step, c.steps):
            images, tags = next(batches)
            lr = self._set_lr(step)
            losses = self._train_step(images.to(self.device), tags.to(self.device), step)
            done = step + 1
            elapsed = time.perf_counter() - t0
            rate = elapsed / (done - self.start_step)
            val = None
            if c.val_every and done % c.val_every == 0 and done < c.steps:
                val = self._validate(done)
            if c.checkpoint_every and done % c.checkpoint_every == 0 and done < c.steps:
                self._save(done)
            record = {"step": done, "lr": lr, **losses}
            if val is not None:
                record["val_miou"] = val
            self.history.append(record)
            yield TrainProgress(
                done, c.steps, losses["loss"], losses, lr, elapsed, rate * (c.steps - done), val
            )
        val = self._validate(c.steps)
        if val is not None and self.history:
            self.history[-1]["val_miou"] = val
        self._save(c.steps)
        distributed.barrier()  # ranks finish together, after rank 0 has written

    def run(
        self,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train to the end or until ``should_stop()``; returns what was written."""
        done = self.start_step
        gen = self.steps()
        completed = True
        try:
            for progress in gen:
                done = progress.step
                if on_progress is not None:
                    on_progress(progress)
                if should_stop is not None and should_stop():
                    completed = done >= self.config.steps
                    break
        finally:
            gen.close()
        if not completed:
            self._save(done)
        return self.result(done, completed)

    def result(self, done: int, completed: bool) -> TrainResult:
        last = self.out_dir / LAST if self.out_dir is not None else None
        best = self.out_dir / BEST if self.out_dir is not None else None
        return TrainResult(
            done,
            completed,
            last if last is not None and last.exists() else None,
            best if best is not None and best.exists() else None,
            self.best_val,
            self.history,
        )

    def _set_lr(self, step: int) -> float:
        factor = (1 - step / max(self.config.steps, 1)) ** self.config.poly_power
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_step(self, images: torch.Tensor, tags: torch.Tensor, step: int) -> dict[str, float]:
        c, model = self.config, self.model
        self._forward.train()
        with self._autocast():
            out = self._forward(images)
        l_cls = classification_loss(out.class_logits, tags, c.cls_weights)
        total = l_cls
        losses = {"cls": float(l_cls.detach())}
        after_warmup = step >= c.warmup_iters
        if c.div_weight and out.cos_maps is not None and after_warmup:
            mask = diversity_pseudo_mask(out.cams[-1], tags, c.div_background_score)
            l_div = diversity_loss(
                out.cos_maps[-1], mask, model.config.num_classes, model.k, c.div_tau, c.div_mode
            )
            total = total + c.div_weight * l_div
            losses["div"] = float(l_div.detach())
        if self.contrastive is not None and after_warmup:
            l_sim = self.contrastive(images, out.cams[-1], tags, model.head.prototypes, model.k)
            total = total + c.sim_weight * l_sim
            losses["sim"] = float(l_sim.detach())
        if not torch.isfinite(total):
            raise FloatingPointError(f"training diverged at step {step}: loss {float(total)}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.contrastive is not None and self.dist.enabled:  # outside the DDP model
            distributed.average_gradients(self.contrastive.to_embedding.parameters())
        self.optimizer.step()
        losses["loss"] = float(total.detach())
        return losses

    def _validate(self, step: int) -> float | None:
        if self.val_data is None or not self.dist.is_main:  # rank 0 validates and saves
            return None
        loader = DataLoader(self.val_data, batch_size=self.config.batch_size, shuffle=False)
        result = score(self.model, loader, self.device, protocols=("predicted",))
        miou = result.scores["predicted"].miou
        if self.out_dir is not None and math.isfinite(miou) and (
            self.best_val is None or miou > self.best_val
        ):
            self.best_val = miou
            save_checkpoint(self.out_dir / BEST, self.model, {"step": step, "val_miou": miou})
        return miou

    def _save(self, step: int) -> None:
        if self.out_dir is None or not self.dist.is_main:  # only rank 0 writes
            return
        save_checkpoint(self.out_dir / LAST, self.model, {"step": step})
        save_train_state(
            self.out_dir / STATE, self.optimizer, {"step": step, "best_val": self.best_val}
        )
        atomic_write_text(self.out_dir / HISTORY, json.dumps(self.history, indent=1))


def collate_images_tags(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """Training batches need images and tags only (datasets may also give masks)."""
    images = torch.stack([item[0] for item in batch])
    tags = torch.stack([torch.as_tensor(item[1], dtype=torch.float32) for item in batch])
    return images, tags


def fit(
    model: LPDModel,
    config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Functional entry point; raises ``Cancelled`` never — check ``result.completed``."""
    trainer = Trainer(model, config, train_data, val_data, out_dir, device, resume)
    return trainer.run(on_progress, should_stop)


__all__ = ["Cancelled", "TrainProgress", "TrainResult", "Trainer", "fit", "seed_everything"]
