"""napari-lpd: the napari plugin for LPD tissue segmentation.

A thin GUI layer: sample data, readers, writers and widgets that call into the ``lpd``
library for every computation. ``lpd`` never imports this package.
"""

from __future__ import annotations

from napari_lpd._triton import keep_triton_out

# Before anything of ours imports torch: see _triton.py (napari crashes otherwise under
# software OpenGL when the plugin is first opened after the window exists).
keep_triton_out()

from lpd import __version__  # noqa: E402

__all__ = ["__version__"]
