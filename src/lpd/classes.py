"""Tissue classes and the label convention shared by every part of the project.

Label maps everywhere (patch inference, slide stores, exports, napari Labels) use
``0`` for background / unlabelled and ``1..C`` for the tissue classes, so that napari shows
background as transparent. Model channels and image tags are indexed ``0..C-1`` in the
same class order. BCSS-WSSS masks (0 TUM .. 3 NEC, 4 background) are converted on reading.
"""

from __future__ import annotations

from collections.abc import Sequence

BACKGROUND = 0
CLASS_NAMES: tuple[str, ...] = ("TUM", "STR", "LYM", "NEC")
CLASS_LONG_NAMES: dict[str, str] = {
    "TUM": "Tumor",
    "STR": "Stroma",
    "LYM": "Lymphocytic infiltrate",
    "NEC": "Necrosis",
}
# Fixed colours (RGB 0-255); chosen to stay distinguishable over pink H&E and to reach 3:1
# WCAG contrast on napari's black canvas (lpd.colours; tests/core/test_classes_colours.py).
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "TUM": (220, 20, 60),  # crimson, 4.2:1
    "STR": (255, 200, 0),  # amber, 13.5:1
    "LYM": (30, 144, 255),  # blue, 6.5:1
    "NEC": (160, 160, 160),  # mid grey, 8.0:1 (black text on it in chips)
}
# Earlier defaults, now replaced: NEC's near-black (40, 40, 40) was 1.4:1 on the canvas.
# Checkpoints written with it (the shipped lpd-crc-v1 among them) still carry it in their
# config; readable_colours() swaps it for the current colour where configs are read.
RETIRED_COLOURS: dict[str, tuple[int, int, int]] = {"NEC": (40, 40, 40)}


# for classes without a fixed colour: distinct, and 3:1 or more on a black canvas
EXTRA_COLOURS: tuple[tuple[int, int, int], ...] = (
    (46, 204, 113), (155, 89, 182), (255, 127, 80), (0, 206, 209), (255, 105, 180),
    (189, 183, 107), (135, 206, 250), (244, 164, 96))


def default_colours(class_names: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """A colour per class: its fixed one (``CLASS_COLOURS``) or, for another class, the
    next of ``EXTRA_COLOURS`` (cycling).

    Parameters
    ----------
    class_names : sequence of str

    Returns
    -------
    tuple of RGB triples (0-255), one per class
    """
    out, extra = [], 0
    for name in class_names:
        if name in CLASS_COLOURS:
            out.append(CLASS_COLOURS[name])
        else:
            out.append(EXTRA_COLOURS[extra % len(EXTRA_COLOURS)])
            extra += 1
    return tuple(out)


def label_of(class_index: int) -> int:
    """Label value of model channel ``class_index`` (0-based)."""
    return class_index + 1


def readable_colours(
    class_names: Sequence[str], colours: Sequence[Sequence[int]]
) -> tuple[Sequence[int], ...]:
    """The colours with retired default class colours replaced by the current ones.

    Parameters
    ----------
    class_names : sequence of str
        The class of each colour.
    colours : sequence of RGB triples
        Colours as a checkpoint or a config carries them.

    Returns
    -------
    tuple
        ``colours``, where a class still has its retired default (``RETIRED_COLOURS``), its
        current one (``CLASS_COLOURS``); every other colour is kept as it is.
    """
    out = []
    for i, colour in enumerate(colours):
        name = class_names[i] if i < len(class_names) else ""
        if isinstance(colour, (list, tuple)) and tuple(colour) == RETIRED_COLOURS.get(name):
            colour = CLASS_COLOURS[name]
        out.append(colour)
    return tuple(out)
