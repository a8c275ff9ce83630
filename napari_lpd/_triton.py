"""Keep Triton out of the napari process.

Under Mesa's software OpenGL (llvmpipe: VMs, remote desktops, WSL, CI, Xvfb) napari's
canvas loads Mesa's LLVM. Importing torchvision afterwards makes torch import Triton, whose
own bundled LLVM then clashes with Mesa's in the same process: a segmentation fault (seen
with torch 2.14 / triton 3.8 / Mesa llvmpipe: ``import napari; napari.Viewer();
import torchvision``). Importing torch *before* the window opens is fine, but a plugin is
imported when the user first opens one of its widgets, long after napari's window exists.

The plugin needs no Triton: inference and training run eager PyTorch (no
``torch.compile``, no Triton kernels). So before anything of ours imports torch, the
plugin marks Triton as absent (``sys.modules["triton"] = None``, the import system's own
"not importable" marker): ``import triton`` raises ImportError and
``importlib.util.find_spec("triton")`` returns None, which torch treats as "no Triton"
everywhere (``torch.utils._triton.has_triton`` is False). Triton's library is never loaded,
so nothing can clash, whatever GL driver is loaded and whenever torch is first imported.

Nothing is done when Triton is already imported (another plugin or the user loaded it; its
LLVM is then in the process already) or when ``NAPARI_LPD_ALLOW_TRITON=1`` is set (for a
user who runs ``torch.compile`` in napari's console on a GPU machine with a hardware GL
driver).
"""

from __future__ import annotations

import os
import sys

ALLOW_ENV = "NAPARI_LPD_ALLOW_TRITON"


def keep_triton_out() -> bool:
    """Mark Triton as not importable in this process, unless already imported or allowed.

    Returns
    -------
    bool
        True when Triton is now blocked (by this call or an earlier one).
    """
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        return False
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]
    return sys.modules["triton"] is None
