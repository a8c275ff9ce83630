"""LPD: learnable class prototypes with diversity regularization for weakly supervised
segmentation of H&E histopathology. The core library; it never imports a GUI toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
