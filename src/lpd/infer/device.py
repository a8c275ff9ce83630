"""Device choice: cuda > mps > cpu, with an override that is checked."""

from __future__ import annotations

import torch

from lpd.errors import InputError


def available_devices() -> list[str]:
    """Devices this machine can run on, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(requested: str | None = None) -> torch.device:
    """``None``/"auto" gives the best available device; anything else must be available."""
    if requested in (None, "", "auto"):
        return torch.device(available_devices()[0])
    kind = requested.split(":")[0]
    if kind not in available_devices():
        raise InputError(
            None,
            f"device {requested!r} is not available here (available: "
            f"{', '.join(available_devices())})",
        )
    return torch.device(requested)
