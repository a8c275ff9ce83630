"""Training / evaluation data from what a user points at: a BCSS-WSSS folder or a tile
folder (mosaics). One place that turns paths + settings into torch datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from lpd.config import ModelConfig, TrainConfig
from lpd.data.augment import MacenkoNormalizer
from lpd.data.augment_policy import (
    AugmentSpec,
    LabTemplate,
    ReinhardNormalizer,
    fit_lab_template,
)
from lpd.data.bcss import MPP as BCSS_MPP
from lpd.data.bcss import check_eval_masks, find_bcss
from lpd.data.datasets import BCSSEvalDataset, BCSSTrainDataset, MosaicDataset
from lpd.data.mosaic import MosaicGenerator, TileFolder
from lpd.errors import InputError
from lpd.wsi.images import read_rgb

# Seeds of the mosaic streams: training and held-apart evaluation never share a layout.
TRAIN_MOSAIC_SEED = 1_000
HELD_APART_SEED = 2_000_000


@dataclass
class DataSources:
    train: Dataset | None
    val: Dataset | None
    kind: str  # "bcss" or "mosaics"
    microns_per_pixel: float | None


def is_bcss_folder(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "training").is_dir()


# RandStainNA's template is fitted to at most this many training images (read once)
LAB_TEMPLATE_IMAGES = 256


def augment_policy(train: TrainConfig | None, augment: bool,
                   images: Sequence[Path] = ()) -> AugmentSpec | None:
    """The training augmentation ``train`` asks for (None when ``augment`` is False),
    with RandStainNA's LAB template fitted to ``images`` (evenly spaced, at most
    ``LAB_TEMPLATE_IMAGES``) when ``train.lab_jitter`` is on."""
    train = train or TrainConfig()
    if not augment:
        return None
    template: LabTemplate | None = None
    if train.stain_augment and train.lab_jitter > 0 and images:
        step = max(1, len(images) // LAB_TEMPLATE_IMAGES)
        template = fit_lab_template(read_rgb(p, min_size=8) for p in list(images)[::step])
    return AugmentSpec.from_train(train, True, template)


def _tile_paths(folder: TileFolder) -> list[Path]:
    return sorted(p for ps in folder.paths.values() for p in ps)


def reinhard_reference(paths: Sequence[Path]) -> tuple[float, ...]:
    """The Reinhard reference of a set of training images: their mean LAB channel means
    and standard deviations (6 floats; evenly spaced, at most ``LAB_TEMPLATE_IMAGES``)."""
    step = max(1, len(paths) // LAB_TEMPLATE_IMAGES)
    t = fit_lab_template(read_rgb(p, min_size=8) for p in list(paths)[::step])
    return (*t.mean_mu, *t.std_mu)


def normalizer_for(model: ModelConfig) -> MacenkoNormalizer | ReinhardNormalizer | None:
    if model.stain_normalisation in (None, "", "none"):
        return None
    if model.stain_normalisation == "macenko":
        return MacenkoNormalizer()
    if model.stain_normalisation == "reinhard":
        if model.stain_reference is None:
            raise InputError(None, "Reinhard stain normalisation needs the model's "
                             "stain_reference (fitted to its training tiles)")
        return ReinhardNormalizer(model.stain_reference)
    raise InputError(None, f"unknown stain normalisation {model.stain_normalisation!r}")


def mosaic_dataset(
    tiles: str | Path | TileFolder,
    model: ModelConfig,
    count: int,
    seed: int,
    augment: bool = False,
    train: TrainConfig | None = None,
    tile_mpp: float | None = None,
) -> MosaicDataset:
    """``count`` mosaics of the model's input size from a tile folder (``seed`` picks the
    stream: a new seed gives new crops and layouts of the same tiles)."""
    folder = tiles if isinstance(tiles, TileFolder) else TileFolder(tiles, model.class_names)
    resample = tile_mpp is not None and model.microns_per_pixel is not None
    generator = MosaicGenerator(
        folder,
        size=model.input_size,
        seed=seed,
        tile_mpp=tile_mpp if resample else None,
        target_mpp=model.microns_per_pixel if resample else None,
    )
    return MosaicDataset(
        generator,
        count,
        augment=augment,
        mean=model.mean,
        std=model.std,
        seed=seed,
        normalizer=normalizer_for(model),
        policy=augment_policy(train, augment, _tile_paths(folder)),
    )


def pooled_mosaic_dataset(
    tiles: TileFolder,
    tile_mpps: dict[Path, float],
    model: ModelConfig,
    count: int,
    seed: int,
    augment: bool = False,
    train: TrainConfig | None = None,
) -> MosaicDataset:
    """``count`` mosaics of tiles pooled from several releases, each tile resampled from
    its own microns per pixel (``tile_mpps``) to the model's (the default model's recipe).

    Parameters
    ----------
    tiles : TileFolder
        The pooled tiles (``TileFolder(root, classes, paths)``).
    tile_mpps : dict
        Microns per pixel of every tile path.
    model : ModelConfig
        Input size, normalisation and microns per pixel of the patches.
    count, seed : int
        How many mosaics, and the stream they come from.
    augment : bool
        Flips, rotations and stain jitter (``train``'s settings), for training.
    train : TrainConfig, optional
        Stain augmentation settings.
    """
    generator = MosaicGenerator(tiles, size=model.input_size, seed=seed,
                                tile_mpp=model.microns_per_pixel,
                                target_mpp=model.microns_per_pixel, tile_mpps=tile_mpps)
    return MosaicDataset(generator, count, augment=augment, mean=model.mean, std=model.std,
                         seed=seed, normalizer=normalizer_for(model),
                         policy=augment_policy(train, augment, _tile_paths(tiles)))


def training_sources(
    path: str | Path,
    model: ModelConfig,
    train: TrainConfig,
    mosaics: int = 2000,
    val_mosaics: int = 64,
    tile_mpp: float | None = None,
) -> DataSources:
    """Datasets for ``lpd train``: BCSS-WSSS (train + val split) or mosaics of a tile folder
    (training mosaics + held-apart mosaics of the same tiles for validation)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "training data folder not found")
    if is_bcss_folder(path):
        layout = find_bcss(path, require=("train",))
        common = {"mean": model.mean, "std": model.std, "normalizer": normalizer_for(model)}
        train_ds = BCSSTrainDataset(
            layout.train,
            augment=True,
            seed=train.seed,
            policy=augment_policy(train, True, [path for path, _ in layout.train]),
            **common,
        )
        if layout.val:  # unusable validation masks fail now, not after the first steps
            check_eval_masks(layout.val)
        val_ds = BCSSEvalDataset(layout.val, **common) if layout.val else None
        return DataSources(train_ds, val_ds, "bcss", BCSS_MPP)
    train_ds = mosaic_dataset(
        path, model, mosaics, TRAIN_MOSAIC_SEED + train.seed, True, train, tile_mpp
    )
    val_ds = mosaic_dataset(path, model, val_mosaics, HELD_APART_SEED, False, train, tile_mpp)
    return DataSources(train_ds, val_ds, "mosaics", model.microns_per_pixel)


def evaluation_dataset(
    path: str | Path,
    model: ModelConfig,
    split: str = "test",
    mosaics: int = 64,
    seed: int = HELD_APART_SEED,
    tile_mpp: float | None = None,
) -> Dataset:
    """Labelled patches for ``lpd evaluate``: a BCSS split or held-apart mosaics."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "evaluation data folder not found")
    if is_bcss_folder(path) or (path / "test").is_dir():
        layout = find_bcss(path, require=(split,))
        items = layout.test if split == "test" else layout.val
        if not items:
            raise InputError(path, f"no {split} split (img/ and mask/) in this BCSS folder")
        return BCSSEvalDataset(
            items, mean=model.mean, std=model.std, normalizer=normalizer_for(model)
        )
    return mosaic_dataset(path, model, mosaics, seed, False, None, tile_mpp)
