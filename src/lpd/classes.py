"""Tissue classes and the label convention shared by every part of the project.

Label maps everywhere (patch inference, slide stores, exports, napari Labels) use
``0`` for background / unlabelled and ``1..C`` for the tissue classes, so that napari shows
background as transparent. Model channels and image tags are indexed ``0..C-1`` in the
same class order. BCSS-WSSS masks (0 TUM .. 3 NEC, 4 background) are converted on reading.
"""

from __future__ import annotations

BACKGROUND = 0
CLASS_NAMES: tuple[str, ...] = ("TUM", "STR", "LYM", "NEC")
CLASS_LONG_NAMES: dict[str, str] = {
    "TUM": "Tumor",
    "STR": "Stroma",
    "LYM": "Lymphocytic infiltrate",
    "NEC": "Necrosis",
}
# Fixed colours (RGB 0-255); chosen to stay distinguishable over pink H&E.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "TUM": (220, 20, 60),  # crimson
    "STR": (255, 200, 0),  # amber
    "LYM": (30, 144, 255),  # blue
    "NEC": (40, 40, 40),  # near-black
}


def label_of(class_index: int) -> int:
    """Label value of model channel ``class_index`` (0-based)."""
    return class_index + 1
