"""The demo — the main job on the bundled real data, for people and for the README.

``compute_demo`` scores the model on the default model's held-apart mosaics (the tiles its
recipe never trains on, from three releases; exact masks, both protocols, next to the
one-class-per-patch guess), then segments the bundled CMU-1 slide region (whole-slide tiled
inference with prototype maps) — skin, not colorectal tissue: the summary says what the
model can be expected to find there. ``write_demo`` turns the
result into PNG overlays, label images and a summary; ``napari-lpd demo`` shows the same
result as napari layers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from lpd._atomic import atomic_path, atomic_write_text
from lpd.data.sample import CMU_SLIDE
from lpd.default_model import held_apart_dataset
from lpd.errors import Cancelled, InputError
from lpd.evaluation import score
from lpd.infer.device import resolve_device
from lpd.infer.patch import predict_patches
from lpd.io.checkpoint import load_checkpoint
from lpd.progress import drive
from lpd.segmentation import segment_iter
from lpd.viz import colourise_labels, overlay_heatmap, overlay_labels
from lpd.wsi.slide import open_slide

# on_progress(stage, done, total): stages "default model", "mosaics", "slide"
ProgressFn = Callable[[str, int, int], None]
#: What the bundled slide region is, and what the model can be expected to find there.
SLIDE_NOTE = ("CMU-1 region: skin (epidermis over dermis), no colorectal tissue and no "
              "tumour. The model knows colorectal-like classes only (TUM, STR, LYM, NEC) "
              "and has never seen skin: expect wrong calls here (the shipped model paints "
              "much of the dermis as NEC and dense cell layers as TUM or LYM). Tumour and "
              "necrosis calls on this slide are not findings.")
HELD_APART_TILES = ("held-apart tiles of kather2016, nct and tcga-tumour (listed in the "
                    "default model's recipe, never trained on)")


@dataclass
class DemoResult:
    checkpoint: Path
    class_names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    k: int
    slide_name: str
    slide_mpp: float | None
    slide_image: np.ndarray  # (H, W, 3) uint8
    slide_labels: np.ndarray  # (H, W) uint8, 0 background, 1..C
    prototype_maps: np.ndarray  # (C*k, h, w) float32 logits at the model's output stride
    prototype_stride: float  # image pixels per prototype-map cell
    mosaic_images: list[np.ndarray]
    mosaic_truth: list[np.ndarray]
    mosaic_labels: list[np.ndarray]
    mosaic_scores: dict  # protocol -> scores dict (incl. "one_class_guess")
    timings: dict[str, float] = field(default_factory=dict)

    def area_percent(self) -> dict[str, float]:
        """Share of the segmented tissue per class, in % (background excluded)."""
        counts = np.bincount(self.slide_labels.ravel(), minlength=len(self.class_names) + 1)
        tissue = counts[1:].sum()
        return {n: float(100 * counts[i + 1] / tissue) if tissue else 0.0
                for i, n in enumerate(self.class_names)}

    def class_heatmap(self, class_index: int, prototype: int | None = None) -> np.ndarray:
        """[0, 1] heatmap at the slide image's size: one prototype of a class, or the
        strongest of its k prototypes."""
        k = self.k
        maps = self.prototype_maps[class_index * k : (class_index + 1) * k]
        heat = maps.max(axis=0) if prototype is None else maps[prototype]
        return upsample_heatmap(normalise_heatmap(heat), self.slide_image.shape[:2])

    def summary(self) -> dict:
        return {
            "checkpoint": str(self.checkpoint),
            "mosaics": {
                "tiles": HELD_APART_TILES,
                "count": len(self.mosaic_images),
                **self.mosaic_scores,
            },
            "slide": self.slide_name,
            "slide_note": SLIDE_NOTE,
            "slide_mpp": self.slide_mpp,
            "classes_found": [n for n, p in self.area_percent().items() if p >= 1.0],
            "area_percent": {n: round(p, 2) for n, p in self.area_percent().items()},
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }


def normalise_heatmap(heat: np.ndarray) -> np.ndarray:
    """ReLU, then scale by the 99th percentile so a few hot cells don't wash out the map."""
    heat = np.maximum(np.nan_to_num(heat.astype(np.float32)), 0)
    top = float(np.percentile(heat, 99)) if heat.size else 0.0
    return np.clip(heat / top, 0, 1) if top > 0 else np.zeros_like(heat)


def upsample_heatmap(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    return resize(heat, shape, order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def compute_demo(
    checkpoint: str | Path | None = None,
    device: str | None = None,
    mosaics: int | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    region: tuple[int, int, int, int] | None = None,
) -> DemoResult:
    """Run the demo; ``checkpoint=None`` uses the default model (shipped). ``mosaics``:
    how many held-apart mosaics (default: the recipe's 16, the model card's figure).
    ``region`` (x, y, w, h in slide pixels) limits the slide part to a window."""
    report = on_progress or (lambda stage, done, total: None)
    stop = should_stop or (lambda: False)
    dev = resolve_device(device)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if checkpoint is None:
        from lpd.default_model import default_checkpoint

        checkpoint = default_checkpoint(
            on_progress=lambda p: report("default model", p.step, p.total),
            should_stop=stop, device=dev,
        )
        timings["default_model"] = time.perf_counter() - t0
    model = load_checkpoint(checkpoint, dev)

    t2 = time.perf_counter()
    dataset = held_apart_dataset(model.config)
    if mosaics is not None:
        dataset.length = max(1, int(mosaics))  # the same stream, fewer or more
    loader = DataLoader(dataset, batch_size=8)
    scores = score(model, loader, dev,
                      on_batch=lambda i: report("mosaics", i + 1, len(loader))).as_dict()
    images, truth, labels = [], [], []
    for i in range(len(dataset)):
        rgb, mask, _ = dataset.generator[i]
        x, _, _ = dataset[i]
        pred = predict_patches(model, x[None].to(dev), "predicted")
        images.append(rgb)
        truth.append(mask)
        labels.append(pred.labels[0].cpu().numpy())
    timings["mosaics"] = time.perf_counter() - t2
    if stop():
        raise Cancelled("demo cancelled")

    t1 = time.perf_counter()
    with open_slide(CMU_SLIDE) as slide:
        image = np.asarray(slide.levels[0])
        if region is not None:
            x, y, w, h = region
            image = image[y : y + h, x : x + w]
            if image.size == 0:
                raise InputError(CMU_SLIDE, f"region {region} is outside the slide")
        slide_mpp = slide.mpp
    try:
        seg = drive(segment_iter(model, image, mpp=slide_mpp, prototypes=True, device=str(dev)),
                    lambda p: report("slide", p.done, p.total), stop)
    except Cancelled:
        raise Cancelled("demo cancelled") from None
    with seg:  # a temporary store: read, then deleted
        slide_labels = np.asarray(seg.labels()[...])
        prototype_maps = np.asarray(seg.store.prototypes[...], np.float32)
    timings["slide"] = time.perf_counter() - t1
    stride = image.shape[0] / prototype_maps.shape[1]
    cfg = model.config
    timings["total"] = time.perf_counter() - t0
    return DemoResult(
        checkpoint=Path(checkpoint), class_names=cfg.class_names, colours=cfg.class_colours,
        k=model.k, slide_name=CMU_SLIDE.name, slide_mpp=slide_mpp, slide_image=image,
        slide_labels=slide_labels, prototype_maps=prototype_maps,
        prototype_stride=float(stride), mosaic_images=images, mosaic_truth=truth,
        mosaic_labels=labels, mosaic_scores=scores, timings=timings,
    )


def write_demo(result: DemoResult, out_dir: str | Path, max_side: int = 1600) -> list[Path]:
    """Write the demo's pictures, label images and summary into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str, rgb: np.ndarray) -> None:
        path = out / name
        _save_png(path, rgb)
        written.append(path)

    step = max(1, int(np.ceil(max(result.slide_image.shape[:2]) / max_side)))
    image = result.slide_image[::step, ::step]
    labels = result.slide_labels[::step, ::step]
    colours = result.colours
    save("slide.png", image)
    save("slide_labels.png", colourise_labels(labels, colours))
    save("slide_overlay.png", overlay_labels(image, labels, colours=colours))
    _save_png(out / "slide_labels_full.png", result.slide_labels, mode="L")
    written.append(out / "slide_labels_full.png")
    areas = result.area_percent()
    for c, name in enumerate(result.class_names):
        if areas[name] < 1.0:
            continue  # a class the model did not find: its heatmaps say nothing
        tiles = []
        for p in range(result.k):
            heat = result.class_heatmap(c, p)[::step, ::step]
            tiles.append(overlay_heatmap(image, heat))
        save(f"slide_prototypes_{name}.png", _grid(tiles, columns=min(result.k, 5)))
    panels = []
    for rgb, truth, pred in zip(result.mosaic_images, result.mosaic_truth,
                                result.mosaic_labels, strict=True):
        panels.append(np.concatenate([rgb, colourise_labels(truth, colours),
                                      overlay_labels(rgb, pred, colours=colours)], axis=1))
    save("mosaics_image_truth_prediction.png", _grid(panels, columns=1))
    summary = result.summary()
    path = out / "summary.json"
    atomic_write_text(path, json.dumps(summary, indent=1))
    written.append(path)
    path = out / "summary.md"
    atomic_write_text(path, summary_markdown(summary))
    written.append(path)
    return written


def summary_markdown(summary: dict) -> str:
    """The demo's summary: held-apart scores first, then the slide and what it is."""
    m = summary["mosaics"]
    lines = [
        "# LPD demo",
        "",
        f"{m['count']} mosaics of {m['tiles']} (image, ground truth, prediction: "
        "`mosaics_image_truth_prediction.png`):",
        "",
        "| protocol | mIoU | mDice |",
        "|---|---|---|",
    ]
    for key in ("predicted", "oracle", "one_class_guess"):
        if key in m:
            lines.append(f"| {key} | {m[key]['mIoU']:.3f} | {m[key]['mDice']:.3f} |")
    lines += [
        "",
        f"Slide `{summary['slide']}` (µm/px: {summary['slide_mpp']}): classes found: "
        f"{', '.join(summary['classes_found']) or 'none'}.",
        "",
        summary["slide_note"],
        "",
        "| class | area % |",
        "|---|---|",
        *[f"| {n} | {p:.1f} |" for n, p in summary["area_percent"].items()],
    ]
    return "\n".join(lines) + "\n"


def _grid(images: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    rows = -(-len(images) // columns)
    canvas = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), 255, np.uint8)
    for n, img in enumerate(images):
        r, c = divmod(n, columns)
        canvas[r * (h + gap) : r * (h + gap) + img.shape[0],
               c * (w + gap) : c * (w + gap) + img.shape[1]] = img
    return canvas


def _save_png(path: Path, array: np.ndarray, mode: str = "RGB") -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array), mode=mode).save(tmp, format="PNG")


__all__ = ["DemoResult", "compute_demo", "write_demo"]
