"""napari-lpd: the napari plugin for LPD tissue segmentation.

A thin GUI layer: sample data, readers, writers and widgets that call into the ``lpd``
library for every computation. ``lpd`` never imports this package.
"""

from __future__ import annotations

from lpd import __version__

__all__ = ["__version__"]
