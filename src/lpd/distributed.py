"""Distributed data parallel training under ``torchrun`` (torch's own launcher; nothing
home-made): ``torchrun --nproc_per_node=N -m lpd.cli.main train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``setup`` joins
the process group from them (NCCL on CUDA, gloo on CPU) and says which device this rank
uses. Outside torchrun (no WORLD_SIZE, or WORLD_SIZE=1 without an initialised group),
everything here is a no-op and training runs in one process as usual."""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lpd.model.lpd_model import LPDOutput


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def setup(device: torch.device | str) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun with several processes (once per
    process) and return the context and the device of this rank: a bare ``cuda`` becomes
    ``cuda:LOCAL_RANK``. Without torchrun: ``(DistContext(), device)``."""
    device = torch.device(device)
    if not dist.is_available() or not (dist.is_initialized() or launched_by_torchrun()):
        return DistContext(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(cleanup)  # we joined, we leave (also when the caller forgets)
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    return ctx, device


def context() -> DistContext:
    """The current process's context (single process when no group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def is_main_process() -> bool:
    """True except on ranks other than 0 of a distributed job: only rank 0 writes files
    and prints progress."""
    return context().is_main


class _TrainingForward(nn.Module):
    """The model as DDP sees it: the same forward, with the outputs of scales that no loss
    uses (classification weight 0) detached.

    DDP expects a gradient for every parameter reachable from the forward's outputs; the
    scale-1 head's parameters are reachable only through outputs the losses never touch,
    so without the detach DDP would wait for their gradients forever. Detached, they are
    unreachable and ``find_unused_parameters`` marks them ready."""

    def __init__(self, model: nn.Module, live_scales: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.live_scales = live_scales

    def forward(self, images: torch.Tensor) -> LPDOutput:
        out = self.model(images)
        for name in ("proto_maps", "cos_maps", "proto_scores", "class_logits", "cams",
                     "features"):
            maps = getattr(out, name)
            if maps is not None:
                setattr(out, name, [m if s in self.live_scales else m.detach()
                                    for s, m in enumerate(maps)])
        return out


def wrap(model: nn.Module, device: torch.device, live_scales: tuple[int, ...]) -> nn.Module:
    """``DistributedDataParallel`` around ``model``, whose forward returns ``LPDOutput``
    (DDP finds the tensors inside the dataclass). ``live_scales``: the scales whose outputs
    feed a loss. ``find_unused_parameters``: parameters behind the other scales get no
    gradient (and which ones are used may change, e.g. after warm-up)."""
    ids = [device.index] if device.type == "cuda" else None
    # Depthwise convolutions (e.g. pvt_v2's) give gradients whose strides differ from the
    # bucket's only along a size-1 dimension: same memory layout, a warning without cause.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return nn.parallel.DistributedDataParallel(
        _TrainingForward(model, live_scales), device_ids=ids,
        output_device=ids[0] if ids else None, find_unused_parameters=True,
    )


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of parameters that live outside the DDP model (e.g.
    the contrastive loss's projection), so every rank applies the same update."""
    ctx = context()
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(ctx.world_size)


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (call once, at the end of the job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
