"""Shared layer helpers: class colours, layer names and replacement, the geometry that puts
a prediction grid over its image, and small pure helpers the widgets share.

Geometry: a prediction covers output pixels (u, v); output pixel u spans level-0 image
pixels ``[offset + u*scale, offset + (u+1)*scale)`` (``lpd.io.store``). napari puts pixel
*centres* at ``translate + index*scale``, so a grid ``factor`` times coarser than the output
(a preview, the prototype cells) lands on the image with ``scale_world = image_scale *
scale * factor`` and ``translate_world = image_translate + image_scale * (offset + 0.5 *
scale * factor - 0.5)``."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from lpd.classes import CLASS_COLOURS, CLASS_NAMES
from lpd.wsi.levels import Pyramid
from lpd.wsi.slide import reader_summary
from napari_lpd._metadata import LayerMeta

LayerData = tuple[Any, dict[str, Any], str]

DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = tuple(CLASS_COLOURS[c] for c in CLASS_NAMES)
RUNNING = " (running)"
INCOMPLETE = " (incomplete)"
LABELS_OPACITY = 0.6
IN_MEMORY_MAX = 4096 * 4096  # label maps up to this many pixels are shown from memory


# ---- names ------------------------------------------------------------------------------
def labels_name(image_name: str) -> str:
    """Name of the label layer a segmentation of ``image_name`` produces (one per image)."""
    return f"LPD labels [{image_name}]"


def heatmap_name(image_name: str) -> str:
    return f"LPD prototype heatmap [{image_name}]"


def dominant_name(image_name: str) -> str:
    return f"LPD dominant prototype [{image_name}]"


def is_result_name(name: str) -> bool:
    return name.startswith("LPD ")


# ---- colours ----------------------------------------------------------------------------
def class_colormap(colours: Sequence[Sequence[int]] = DEFAULT_COLOURS) -> DirectLabelColormap:
    """Fixed class colours for a Labels layer: 0 (background) and unknown values clear."""
    color_dict: dict[int | None, Any] = {0: (0, 0, 0, 0), None: (0, 0, 0, 0)}
    for i, c in enumerate(colours):
        color_dict[i + 1] = (c[0] / 255, c[1] / 255, c[2] / 255, 1.0)
    return DirectLabelColormap(color_dict=color_dict)


# ---- geometry ---------------------------------------------------------------------------
def grid_transform(
    image_scale: Sequence[float], image_translate: Sequence[float], scale: float,
    offset_xy: Sequence[float], factor: float = 1.0,
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) in world units of a grid ``factor`` times coarser than the output
    grid of a prediction (``scale``: level-0 px per output px, ``offset_xy``: its corner in
    level-0 px) over an image layer with ``image_scale``/``image_translate`` (y, x)."""
    f = scale * factor
    sy, sx = float(image_scale[-2]), float(image_scale[-1])
    ty, tx = float(image_translate[-2]), float(image_translate[-1])
    ox, oy = float(offset_xy[0]), float(offset_xy[1])
    return (sy * f, sx * f), (ty + sy * (oy + 0.5 * f - 0.5), tx + sx * (ox + 0.5 * f - 0.5))


def store_image_frame(store: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, translate) of the store's level-0 image when no image layer is known:
    µm when the store knows its microns per pixel, else level-0 pixels."""
    unit = 1.0 if store.mpp is None else store.mpp / store.scale
    return (unit, unit), (0.0, 0.0)


def units_of(mpp: float | None) -> tuple[str, str]:
    return ("µm", "µm") if mpp is not None else ("pixel", "pixel")


def layer_mpp(layer: Any) -> float | None:
    """Microns per level-0 pixel of an image layer: our reader's metadata, else its scale
    when its units are a length (napari's default unit, pixel, gives None)."""
    mpp = LayerMeta.from_layer(layer).mpp
    if mpp:
        return float(mpp)
    try:
        unit = layer.units[-1]
        factor = float((1 * unit).to("micrometer").magnitude)
    except Exception:  # pixel, or a unit that is not a length
        return None
    return float(layer.scale[-1]) * factor


def visible_region(layer: Any, viewer: Any = None) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) in level-0 pixels of the part of ``layer`` the canvas shows: the
    camera's view (centre, zoom, canvas size) mapped into the layer, clipped to it. Without
    a viewer (or before napari 0.9's ``viewer.canvas``), napari's ``corner_pixels`` at the
    displayed pyramid level (chunk-aligned for multiscale layers, so a little larger).
    None when nothing of the layer is visible."""
    canvas = getattr(viewer, "canvas", None) if viewer is not None else None
    if canvas is not None and hasattr(canvas, "size"):
        scene = getattr(viewer, "scene", None)
        camera = scene.camera if scene is not None else viewer.camera
        half = np.asarray(canvas.size[-2:], dtype=float) / (2.0 * float(camera.zoom))
        centre = np.asarray(camera.center, dtype=float)[-2:]
        lo = np.asarray(layer.world_to_data(centre - half), dtype=float)[-2:]
        hi = np.asarray(layer.world_to_data(centre + half), dtype=float)[-2:]
        (y0, x0), (y1, x1) = np.minimum(lo, hi) + 0.5, np.maximum(lo, hi) + 0.5
        factor = 0.0
    else:
        corners = np.asarray(layer.corner_pixels, dtype=float)[:, -2:]  # rgb: not a dim
        factor = 1.0
        if layer.multiscale:
            factor = float(np.asarray(layer.downsample_factors)[layer.data_level][-2])
        (y0, x0), (y1, x1) = corners * factor
    h0, w0 = image_shape(layer)
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(w0, math.ceil(x1 + factor)), min(h0, math.ceil(y1 + factor))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def shape_region(shapes: Any, image: Any, index: int | None = None) -> tuple[int, int, int, int]:
    """(x, y, w, h) in the image's level-0 pixels: bounding box of shape ``index`` (default:
    the selected shape, else the last one) of a Shapes layer, clipped to the image."""
    if not len(shapes.data):
        raise ValueError(f"the shapes layer {shapes.name!r} has no shapes; draw one first")
    if index is None:
        selected = sorted(shapes.selected_data)
        index = selected[0] if selected else len(shapes.data) - 1
    vertices = np.asarray(shapes.data[index], dtype=float)
    points = np.array([image.world_to_data(shapes.data_to_world(v))[-2:] for v in vertices])
    h0, w0 = image_shape(image)
    y0, x0 = np.floor(points.min(axis=0))
    y1, x1 = np.ceil(points.max(axis=0))
    x0, y0, x1, y1 = max(0, int(x0)), max(0, int(y0)), min(w0, int(x1)), min(h0, int(y1))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError("the selected shape lies outside the image")
    return x0, y0, x1 - x0, y1 - y0


def shape_polygon(shapes: Any, image: Any, index: int | None = None) -> np.ndarray:
    """(N, 2) vertices (x, y) in the image's level-0 pixels of shape ``index`` (default:
    the selected shape, else the last one): a rectangle or polygon as drawn, an ellipse as
    a 64-gon. Raises ValueError for lines and paths (they enclose no area)."""
    if not len(shapes.data):
        raise ValueError(f"the shapes layer {shapes.name!r} has no shapes; draw one first")
    if index is None:
        selected = sorted(shapes.selected_data)
        index = selected[0] if selected else len(shapes.data) - 1
    kind = shapes.shape_type[index]
    if kind in ("line", "path"):
        raise ValueError(f"the selected shape is a {kind}: draw a rectangle, polygon or ellipse")
    vertices = np.asarray(shapes.data[index], dtype=float)
    points = np.array([image.world_to_data(shapes.data_to_world(v))[-2:] for v in vertices])
    if kind == "ellipse":  # napari stores its bounding box's four corners
        centre = points.mean(axis=0)
        radii = (points.max(axis=0) - points.min(axis=0)) / 2
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        points = centre + np.stack([radii[0] * np.sin(t), radii[1] * np.cos(t)], axis=1)
    return points[:, ::-1].copy()  # (y, x) -> (x, y)


def image_shape(layer: Any) -> tuple[int, int]:
    """Level-0 (H, W) of an RGB image layer."""
    data = layer.data[0] if layer.multiscale else layer.data
    return (int(data.shape[-3]), int(data.shape[-2])) if layer.rgb else \
        (int(data.shape[-2]), int(data.shape[-1]))


def image_source(layer: Any) -> tuple[Any, float | None, str]:
    """What ``predict_tiled`` reads for an image layer, its µm/px and a key naming it.
    A layer from our reader names its file (reopened in the worker, so napari's and the
    worker's reads never share a file handle); otherwise the layer's arrays are used."""
    mpp = layer_mpp(layer)
    path = LayerMeta.from_layer(layer).path
    if path and Path(path).is_file():
        stat = Path(path).stat()
        return Path(path), mpp, f"{path}:{stat.st_mtime_ns}:{stat.st_size}"
    if layer.multiscale:
        levels = list(layer.data)
        downsamples = [float(d[-2]) for d in np.asarray(layer.downsample_factors)]
        image: Any = Pyramid(levels, downsamples, mpp, layer.name)
    else:
        image = layer.data
    return image, mpp, ""


def run_key(*parts: object) -> str:
    """A short, stable name for a run's store from what defines it."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


# ---- layers -----------------------------------------------------------------------------
def slide_layer(slide: Any, name: str | None = None) -> LayerData:
    """A multiscale RGB image layer of an ``lpd.wsi.slide.Slide`` (lazy levels), scaled in
    µm when the slide knows its microns per pixel."""
    levels = list(slide.levels)
    mpp = slide.mpp
    unit = 1.0 if mpp is None else float(mpp)
    meta = {
        "name": name or Path(slide.path).name,
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": (unit, unit),
        "units": units_of(mpp),
        "metadata": LayerMeta(path=str(slide.path), mpp=mpp, mpp_source=slide.mpp_source,
                              reader=reader_summary(slide)).to_metadata(),
    }
    return (levels if len(levels) > 1 else levels[0]), meta, "image"


def store_labels_layer(
    store: Any, name: str | None = None, image_scale: Sequence[float] | None = None,
    image_translate: Sequence[float] | None = None, in_memory_max: int = IN_MEMORY_MAX,
    in_memory: np.ndarray | None = None,
) -> LayerData:
    """A Labels layer of an ``OutputStore``: every pyramid level (lazy zarr), or level 0 in
    memory when it is small (``in_memory``: level 0 already read). An incomplete store says
    so in its name."""
    if image_scale is None or image_translate is None:
        image_scale, image_translate = store_image_frame(store)
    scale, translate = grid_transform(image_scale, image_translate, store.scale, store.offset)
    levels = [store.level(i) for i in range(store.n_levels)] if store.complete else [store.labels]
    h, w = store.shape
    data: Any = levels
    if in_memory is not None:
        data = in_memory
    elif h * w <= in_memory_max:
        data = np.asarray(levels[0][...])
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    base = name or f"LPD labels [{Path(store.path).stem}]"
    meta = {
        "name": base if store.complete else base + INCOMPLETE,
        "scale": scale,
        "translate": translate,
        "units": units_of(store.mpp),
        "colormap": class_colormap(store.class_colours),
        "opacity": LABELS_OPACITY,
        "multiscale": isinstance(data, list),
        "metadata": LayerMeta(store=str(store.path), complete=bool(store.complete),
                              class_names=list(store.class_names)).to_metadata(),
    }
    return data, meta, "labels"


def upsert_layer(viewer: Any, data: Any, meta: dict[str, Any], kind: str,
                 replace: Sequence[str] = (), prepare: Any = None) -> Any:
    """Add a layer, replacing (at the same place in the list) a layer of the same name or
    one named in ``replace``, so reruns never pile up duplicates. ``prepare(layer)``, when
    given, runs on the new layer before it is added."""
    from napari.layers import Image, Labels

    names = {meta["name"], *replace}
    index = None
    for layer in list(viewer.layers):
        if layer.name in names:
            index = viewer.layers.index(layer) if index is None else index
            viewer.layers.remove(layer)
    layer = (Labels if kind == "labels" else Image)(data, **meta)
    if prepare is not None:
        prepare(layer)
    if index is None:
        viewer.layers.append(layer)
    else:
        viewer.layers.insert(min(index, len(viewer.layers)), layer)
    return layer


def shown_result(viewer: Any, store: str | Path) -> Any:
    """The finished result Labels layer of ``viewer`` showing ``store``, or None."""
    from napari.layers import Labels

    for layer in viewer.layers:
        meta = LayerMeta.from_layer(layer)
        if isinstance(layer, Labels) and meta.store and meta.complete \
                and Path(meta.store) == Path(store):
            return layer
    return None


def watch_layers(viewer: Any, callback: Any) -> None:
    """Call ``callback()`` when a layer is added, removed or renamed (widgets' layer
    pickers list names; a rerun renames its running layer into the result)."""

    def on_name(event: Any = None) -> None:
        callback()

    def hook(layer: Any) -> None:
        layer.events.name.connect(on_name)

    def inserted(event: Any) -> None:
        hook(event.value)
        callback()

    for layer in viewer.layers:
        hook(layer)
    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(on_name)


def remove_layers(viewer: Any, names: Sequence[str]) -> None:
    for layer in list(viewer.layers):
        if layer.name in names:
            viewer.layers.remove(layer)


# ---- image files ------------------------------------------------------------------------
@dataclass
class TaggedImage:
    """An image layer read from a file, as the tag annotator and fine-tuning use it."""

    layer: Any  # napari.layers.Image
    path: Path  # the image file (its tags: lpd.data.tags.sidecar_path(path))
    size: tuple[int, int]  # level-0 (height, width)
    mpp: float | None


def layer_file(layer: Any) -> Path | None:
    """The file a layer came from: our reader's ``lpd_path``, else ``layer.source.path``."""
    path = LayerMeta.from_layer(layer).path or getattr(
        getattr(layer, "source", None), "path", None)
    return Path(path) if path else None


def tagged_image(layer: Any) -> TaggedImage | None:
    """The image layer with its file, level-0 size and µm/px; None for another layer or an
    image not read from a file (it has nowhere to keep tags)."""
    from napari.layers import Image

    path = layer_file(layer) if isinstance(layer, Image) else None
    return path and TaggedImage(layer, path, image_shape(layer), image_source(layer)[1])


@contextlib.contextmanager
def opened_pixels(layer: Any) -> Iterator[tuple[Any, float | None]]:
    """(image for lpd, µm/px): our reader's slide file reopened lazily (never napari's
    file handle; closed at the end), else the layer's own arrays."""
    image, mpp, _ = image_source(layer)
    if isinstance(image, Path):
        from lpd.wsi.slide import open_slide

        with open_slide(image, mpp=mpp) as pixels:
            yield pixels, mpp
    else:
        yield image, mpp


def view_region(layer: Any) -> tuple[int, int, int, int] | None:
    """The visible part of a layer (x, y, w, h, level-0 px); None: unknown (whole image)."""
    try:
        return visible_region(layer)
    except (ValueError, IndexError):  # visible_region fails on RGB
        return None
