"""The model's forward pass for tiled inference: windows' pixels made the model's input
(``ModelInput``), then fused-scale class maps (and prototype maps) in calls that halve once
on out-of-memory, with autocast on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from lpd.errors import LPDError
from lpd.infer.patch import FUSED_SCALES
from lpd.model.lpd_model import LPDModel

_WIDE = 64  # pixels per row of the input's normalisation (see ModelInput)


class ModelInput:
    """Windows' ``(h, w, 3) uint8`` pixels as the model's input ``(B, 3, h, w)`` float on
    ``device``: stain-normalised when the model was trained so, minus the model's mean, over
    its std (both in 0-255 units). The pixels come as one ``(B, h, w, 3)`` uint8 tensor (in
    pinned memory, the copy to a GPU does not block) or as a sequence of arrays."""

    def __init__(self, model: LPDModel, device: torch.device) -> None:
        from lpd.data.sources import normalizer_for

        self.normalizer = normalizer_for(model.config)  # the stain normalisation it trained with
        mean, std = model.normalisation()
        self.shift = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.div = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.wide = (self.shift.view(3).repeat(_WIDE), self.div.view(3).repeat(_WIDE))
        self.device = device
        self._reused: torch.Tensor | None = None

    def _buffer(self, shape: torch.Size) -> torch.Tensor:
        """A float32 tensor of ``shape``, the same from batch to batch (CPU)."""
        if self._reused is None or self._reused.shape != shape:
            self._reused = torch.empty(shape, dtype=torch.float32)
        return self._reused

    def __call__(self, pixels: torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
        if self.normalizer is not None:
            arrays = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
            pixels = torch.from_numpy(np.stack([self.normalizer.transform(p) for p in arrays]))
        elif not isinstance(pixels, torch.Tensor):
            pixels = torch.from_numpy(np.stack(pixels))
        x = pixels.to(self.device, non_blocking=True)
        if x.shape[-1] == 3 and x.is_contiguous() and x.numel() % (3 * _WIDE) == 0:
            # the same per-element arithmetic, on (N, 3 * _WIDE) rows with the channels'
            # mean and std repeated along them: long rows run vectorised (3.5x faster
            # on the CPU than a broadcast over 3 channels); channels-last strides as below.
            # On the CPU into a reused buffer (a new one costs its page faults each batch):
            # the previous batch's forward pass is over when the next one is made.
            rows = x.view(-1, 3 * _WIDE)
            y = self._buffer(rows.shape).copy_(rows) if x.device.type == "cpu" else rows.float()
            y.sub_(self.wide[0]).div_(self.wide[1])
            return y.view(x.shape).permute(0, 3, 1, 2)
        return (x.permute(0, 3, 1, 2).float() - self.shift).div_(self.div)


def is_oom(exc: BaseException) -> bool:
    """CUDA (``torch.OutOfMemoryError``) or MPS (a RuntimeError naming it) out of memory."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def forward_maps(model: LPDModel, x: torch.Tensor, prototypes: bool, sub: list[int]
             ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The fused-scale class maps (and deepest prototype maps) of ``x``, in forward calls
    of at most ``sub[0]`` images. On the first out-of-memory error the size is halved for
    the rest of the run (``sub`` = [size, halved]); a second one is an error for the user."""
    while True:
        try:
            cams: list[list[torch.Tensor]] = [[] for _ in FUSED_SCALES]
            protos: list[torch.Tensor] = []
            for part in torch.split(x, sub[0]):
                out = model(part)
                for acc, s in zip(cams, FUSED_SCALES, strict=True):
                    acc.append(out.cams[s].float())
                if prototypes:
                    protos.append(out.proto_maps[-1].float())
                del out
            return ([torch.cat(a) for a in cams], torch.cat(protos) if prototypes else None)
        except RuntimeError as exc:
            if not is_oom(exc):
                raise
            del exc
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            if sub[0] > 1 and not sub[1]:
                sub[0], sub[1] = sub[0] // 2, 1  # halved once: a further error is final
                continue
            raise LPDError(
                f"the {x.device.type} device ran out of memory even with {sub[0]} image(s) "
                "per forward pass (batch size already halved once); use a smaller batch "
                "size, a smaller input size, or device='cpu'"
            ) from None


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
