"""Pictures for people: label maps and heatmaps over the image (numpy only, for the
demo, exports and docs; napari does its own rendering)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lpd.classes import CLASS_COLOURS, CLASS_NAMES


def colourise_labels(
    labels: np.ndarray,
    colours: Sequence[tuple[int, int, int]] = tuple(CLASS_COLOURS[c] for c in CLASS_NAMES),
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """RGB picture of a label map (0 background, 1..C classes)."""
    lut = np.array([background, *colours], dtype=np.uint8)
    return lut[np.clip(labels, 0, len(lut) - 1)]


def overlay_labels(
    image: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.45,
    colours: Sequence[tuple[int, int, int]] = tuple(CLASS_COLOURS[c] for c in CLASS_NAMES),
) -> np.ndarray:
    """Blend class colours over ``image`` where a class is predicted; background shows
    the image unchanged."""
    colour = colourise_labels(labels, colours).astype(np.float32)
    out = image.astype(np.float32)
    where = labels > 0
    out[where] = (1 - alpha) * out[where] + alpha * colour[where]
    return out.round().astype(np.uint8)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A [0, 1] heatmap in the 'inferno' colormap blended over ``image`` (weight = heat)."""
    from matplotlib import colormaps

    heat = np.clip(np.nan_to_num(heat.astype(np.float32)), 0, 1)
    rgb = colormaps["inferno"](heat)[..., :3] * 255
    weight = alpha * heat[..., None]
    out = (1 - weight) * image.astype(np.float32) + weight * rgb
    return out.round().astype(np.uint8)


def legend_strip(
    width: int,
    class_names: Sequence[str] = CLASS_NAMES,
    colours: Sequence[tuple[int, int, int]] = tuple(CLASS_COLOURS[c] for c in CLASS_NAMES),
    height: int = 24,
) -> np.ndarray:
    """A row of colour swatches with class names (needs matplotlib for the text)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    n = len(class_names)
    for i, (name, colour) in enumerate(zip(class_names, colours, strict=True)):
        x = i / n
        ax.add_patch(
            matplotlib.patches.Rectangle((x + 0.01, 0.15), 0.04, 0.7, color=np.array(colour) / 255)
        )
        ax.text(x + 0.06, 0.5, name, va="center", fontsize=9)
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(buf)


def dominant_prototype(labels: np.ndarray, protos: np.ndarray, k: int) -> np.ndarray:
    """Per cell, which of its class's k prototypes responds most.

    Parameters
    ----------
    labels : numpy.ndarray, shape (H, W)
        Class labels of the cells: 0 background, 1..C classes.
    protos : numpy.ndarray, shape (C * k, H, W)
        Prototype activations (e.g. logits) per cell, class-major: rows
        ``(c - 1) * k .. c * k - 1`` are the prototypes of class c.
    k : int
        Prototypes per class.

    Returns
    -------
    numpy.ndarray, shape (H, W), uint8
        1 + the index (0..k-1) of the strongest prototype of the cell's class; 0 where the
        label is background.
    """
    out = np.zeros(labels.shape, np.uint8)
    for c in range(1, protos.shape[0] // k + 1):
        mask = labels == c
        if mask.any():
            out[mask] = np.argmax(protos[(c - 1) * k : c * k][:, mask], axis=0) + 1
    return out
