"""BCSS-WSSS: the weakly supervised breast cancer segmentation benchmark.

Layout (as distributed)::

    root/train/*.png            tags in the file name: ...+0[1101].png = TUM, STR, LYM, NEC
    root/val/ or root/valid/    img/*.png and mask/*.png (same file names)
    root/test/                  img/*.png and mask/*.png

Masks are P-mode PNGs whose palette indices are 0 TUM, 1 STR, 2 LYM, 3 NEC, 4 background.
They are converted on reading to the project's label convention: ``x + 1`` for 0..3 and
``4 -> 0``. Any other value is refused (``read_bcss_mask``): a mask converted to greyscale
or RGB holds colours (e.g. 29/76/150/255), not classes, and would otherwise be scored as
all background, giving undefined scores without a word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lpd._atomic import atomic_path
from lpd.classes import CLASS_NAMES
from lpd.data.synthetic import synthetic_tissue
from lpd.errors import InputError
from lpd.wsi.images import image_shape, read_mask, read_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test",)
MPP = 0.25  # microns per pixel of BCSS-WSSS patches

# BCSS mask value -> label: 0..3 -> 1..4, 4 (background) -> 0 (read_bcss_mask refuses others).
BCSS_TO_LABEL = np.zeros(256, np.uint8)
BCSS_TO_LABEL[:4] = np.arange(1, 5, dtype=np.uint8)
# label -> BCSS mask value (for writing): 0 -> 4, 1..4 -> 0..3.
LABEL_TO_BCSS = np.array([4, 0, 1, 2, 3], np.uint8)
# The palette BCSS-WSSS masks are usually saved with (colours only matter for viewing).
BCSS_PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255]

_TAG_RE = re.compile(r"\[([^\[\]]*)\]")

EvalItem = tuple[Path, Path]
TrainItem = tuple[Path, np.ndarray]


def parse_tags(name: str | Path, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Image-level tags (float32 0/1, class order TUM, STR, LYM, NEC) from a BCSS-WSSS
    training file name such as ``TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png``.
    """
    stem = Path(name).name
    suffix = Path(stem).suffix  # "...MPP-0.2500+0[1101]" (no extension) has no real suffix
    stem = stem[: -len(suffix)] if suffix and "[" not in suffix else stem
    found = _TAG_RE.findall(stem)
    if not found:
        raise InputError(name, f"no image-level tags in the file name; a BCSS-WSSS training "
                         f"image is named like 'SLIDE_xmin0_ymin0+0[1101].png' with "
                         f"{num_classes} digits 0/1 in brackets")
    digits = found[-1]
    if len(digits) != num_classes or set(digits) - {"0", "1"}:
        raise InputError(name, f"tags '[{digits}]' in the file name must be {num_classes} "
                         f"digits 0/1 (order {', '.join(CLASS_NAMES[:num_classes])})")
    return np.array([float(d) for d in digits], np.float32)


def bcss_to_labels(mask: np.ndarray) -> np.ndarray:
    """BCSS mask values (0 TUM .. 3 NEC, 4 background) -> labels (0 background, 1..4)."""
    return BCSS_TO_LABEL[np.asarray(mask, np.uint8)]


def read_bcss_mask(path: str | Path) -> np.ndarray:
    """Read a BCSS-WSSS mask and convert it to labels.

    Parameters
    ----------
    path : str or Path
        A mask image holding BCSS class indices 0..4 (P-mode PNG as distributed, or a
        greyscale image of the same indices).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W): 0 background, 1..4 TUM, STR, LYM, NEC.

    Raises
    ------
    InputError
        Naming the mask: unreadable, or holding values outside 0..4 (e.g. a mask saved
        as a greyscale or colour picture of the classes).
    """
    values = read_mask(path)
    counts = np.bincount(values.ravel(), minlength=256)
    if counts[len(LABEL_TO_BCSS):].any():
        found = np.flatnonzero(counts)
        shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
        raise InputError(path, f"mask holds values {shown}; a BCSS-WSSS mask holds class "
                         "indices 0..4 (0 TUM, 1 STR, 2 LYM, 3 NEC, 4 background): was it "
                         "converted to greyscale or RGB? Keep the palette indices")
    return bcss_to_labels(values)


def check_eval_masks(items: Sequence[EvalItem]) -> int:
    """Read every mask of an evaluation split and count its labelled (tissue) pixels.

    Parameters
    ----------
    items : sequence of (image, mask) paths
        The split, as ``find_bcss`` lists it.

    Returns
    -------
    int
        Tissue pixels (labels 1..4) over all masks.

    Raises
    ------
    InputError
        Naming the first mask with values outside 0..4, or, when no mask holds a single
        tissue pixel (scores would be undefined), the mask (or its folder for several).
    """
    total = 0
    for _, mask in items:
        total += int(np.count_nonzero(read_bcss_mask(mask)))
    if items and total == 0:
        masks = [Path(m) for _, m in items]
        where = masks[0] if len(masks) == 1 else masks[0].parent
        raise InputError(where, f"no labelled pixel in {len(masks)} mask(s): every pixel is "
                         "background (4), so nothing can be scored")
    return total


def read_eval_pair(image_path: str | Path, mask_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, labels) of an evaluation item; refuses a mask whose size differs from its
    image (the error names both files)."""
    rgb = read_rgb(image_path)
    labels = read_bcss_mask(mask_path)
    if labels.shape != rgb.shape[:2]:
        raise InputError(mask_path, f"mask is {labels.shape[0]}x{labels.shape[1]} px but its "
                         f"image {image_path} is {rgb.shape[0]}x{rgb.shape[1]} px")
    return rgb, labels


@dataclass
class BCSSLayout:
    """The files of a BCSS-WSSS folder. Missing, not-required splits are empty lists."""

    root: Path
    train: list[TrainItem] = field(default_factory=list)
    val: list[EvalItem] = field(default_factory=list)
    test: list[EvalItem] = field(default_factory=list)

    def check_sizes(self) -> None:
        """Compare every eval mask's size with its image's (headers only); InputError names
        both files of the first mismatch."""
        for image, mask in (*self.val, *self.test):
            ih, iw = image_shape(image)
            mh, mw = image_shape(mask)
            if (ih, iw) != (mh, mw):
                raise InputError(mask, f"mask is {mh}x{mw} px but its image {image} is "
                                 f"{ih}x{iw} px")


def find_bcss(
    root: str | Path, require: Sequence[str] = ("train", "val", "test")
) -> BCSSLayout:
    """Index a BCSS-WSSS folder. ``require``: the splits that must be there (e.g.
    ``("test",)`` for evaluation only); tags are parsed now, images are read later."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "BCSS-WSSS folder not found" if not root.exists()
                         else "is a file; expected the BCSS-WSSS folder")
    unknown = set(require) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, val, test")
    layout = BCSSLayout(root)
    train_dir = _first_dir(root, TRAIN_DIRS)
    if train_dir is not None:
        layout.train = [(p, parse_tags(p)) for p in _images(train_dir)]
        if not layout.train and "train" in require:
            raise InputError(train_dir, "no training images (.png) in this folder")
    elif "train" in require:
        raise InputError(root / "train", "missing folder of training images (train/*.png "
                         "with tags in the file names)")
    for split, names in (("val", VAL_DIRS), ("test", TEST_DIRS)):
        folder = _first_dir(root, names)
        if folder is None:
            if split in require:
                raise InputError(root / names[0], f"missing {split} folder (expected "
                                 f"{' or '.join(n + '/' for n in names)} with img/ and mask/)")
            continue
        setattr(layout, split, _eval_items(folder, split in require))
    return layout


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)


def _eval_items(folder: Path, required: bool) -> list[EvalItem]:
    img_dir, mask_dir = folder / "img", folder / "mask"
    for sub in (img_dir, mask_dir):
        if not sub.is_dir():
            raise InputError(sub, f"missing folder; {folder.name}/ must hold img/ and mask/")
    images = _images(img_dir)
    masks = {p.stem: p for p in _images(mask_dir)}
    if not images and required:
        raise InputError(img_dir, "no images in this folder")
    items: list[EvalItem] = []
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise InputError(image, f"image has no mask; expected {mask_dir / (image.stem + '.png')}")
        items.append((image, mask))
    if masks:
        orphan = sorted(masks.values())[0]
        raise InputError(orphan, f"mask has no image in {img_dir} ({len(masks)} such mask(s))")
    return items


def write_bcss_sample(
    root: str | Path,
    n_train: int = 8,
    n_val: int = 4,
    n_test: int = 4,
    size: int = 224,
    seed: int = 0,
    val_name: str = "val",
) -> BCSSLayout:
    """Write a small BCSS-WSSS-format dataset of synthetic tissue under ``root`` (for tests
    and demos): training PNGs with tags in their names, eval PNGs with P-mode masks holding
    BCSS values. Returns the layout as ``find_bcss`` reads it."""
    if val_name not in VAL_DIRS:
        raise ValueError(f"val_name must be one of {VAL_DIRS}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    index = 0
    for i in range(n_train):
        rgb, labels = synthetic_tissue(size, int(rng.integers(2**31)))
        tags = "".join(str(int(np.any(labels == c + 1))) for c in range(len(CLASS_NAMES)))
        name = f"SYNTH-{seed:02d}-{i:04d}_xmin{index * size}_ymin0_MPP-0.2500+0[{tags}].png"
        _save_png(root / "train" / name, Image.fromarray(rgb))
        index += 1
    for split, count in ((val_name, n_val), ("test", n_test)):
        for i in range(count):
            rgb, labels = synthetic_tissue(size, int(rng.integers(2**31)))
            name = f"SYNTH-{seed:02d}-{split}-{i:04d}.png"
            _save_png(root / split / "img" / name, Image.fromarray(rgb))
            values = LABEL_TO_BCSS[labels]
            mask = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
            mask.putpalette(BCSS_PALETTE)
            _save_png(root / split / "mask" / name, mask)
    require = [s for s, n in (("train", n_train), ("val", n_val), ("test", n_test)) if n > 0]
    return find_bcss(root, require=require)


def _save_png(path: Path, image: Image.Image) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
