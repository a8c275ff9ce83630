"""Readable colours: WCAG 2.x contrast against the canvas, and shades of a class colour
(numpy only).

Every class colour must reach ``MIN_CONTRAST`` against napari's dark canvas, so labels,
legends and tag chips stay visible there (``tests/core/test_classes_colours.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: napari's dark-theme canvas colour (``napari.utils.theme.get_theme("dark").canvas`` is
#: "black" in napari 0.5 - 0.9)
DARK_CANVAS: tuple[int, int, int] = (0, 0, 0)
#: WCAG 2.x success criterion 1.4.11 (non-text contrast): graphical objects need 3:1
MIN_CONTRAST = 3.0


def relative_luminance(rgb: Sequence[float]) -> float:
    """Relative luminance of an sRGB colour, as WCAG 2.x defines it.

    Parameters
    ----------
    rgb : sequence of 3 numbers
        Red, green and blue, 0-255.

    Returns
    -------
    float
        0 (black) to 1 (white).

    References
    ----------
    W3C, Web Content Accessibility Guidelines (WCAG) 2.2, definition of "relative
    luminance": https://www.w3.org/TR/WCAG22/#dfn-relative-luminance
    """
    c = np.asarray(rgb, dtype=np.float64)[:3] / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(linear @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """WCAG 2.x contrast ratio of two sRGB colours, (L1 + 0.05) / (L2 + 0.05), L1 the
    lighter's relative luminance.

    Parameters
    ----------
    a, b : sequence of 3 numbers
        Red, green and blue, 0-255.

    Returns
    -------
    float
        1 (same luminance) to 21 (black on white).

    References
    ----------
    W3C, WCAG 2.2, definition of "contrast ratio":
    https://www.w3.org/TR/WCAG22/#dfn-contrast-ratio
    """
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def class_shades(
    colour: Sequence[int],
    k: int,
    background: Sequence[int] = DARK_CANVAS,
    min_contrast: float = MIN_CONTRAST,
    spread: float = 0.5,
) -> np.ndarray:
    """``k`` shades of a class colour, from lighter to darker.

    The lightest is the colour mixed with white by ``spread``; the darkest is the colour
    mixed with black by as much as ``spread`` allows while it keeps ``min_contrast`` against
    ``background`` (mixing with white only raises the contrast against a dark background, so
    every shade of a readable colour stays readable). The shades are evenly spaced between.

    Parameters
    ----------
    colour : sequence of 3 ints
        The class colour (RGB, 0-255).
    k : int
        Number of shades; 1 gives the colour itself.
    background : sequence of 3 ints
        The colour the shades are drawn on (default: napari's dark canvas).
    min_contrast : float
        WCAG contrast ratio the darkest shade keeps against ``background``.
    spread : float
        Largest mix with white (lightest) and with black (darkest), 0-1.

    Returns
    -------
    numpy.ndarray
        ``(k, 3)`` uint8, lightest first.
    """
    rgb = np.asarray(colour, dtype=np.float64)[:3]
    if k <= 1:
        return np.round(rgb)[None].astype(np.uint8)
    dark = 0.0  # contrast falls as the mix with black grows: take the last one that passes
    for f in np.linspace(0.0, spread, 51)[1:]:
        if contrast_ratio(np.round(rgb * (1 - f)), background) < min_contrast:
            break
        dark = float(f)
    t = np.linspace(-spread, dark, k)[:, None]  # < 0: towards white, > 0: towards black
    shades = np.where(t < 0, rgb + -t * (255.0 - rgb), rgb * (1.0 - t))
    return np.round(shades).astype(np.uint8)
