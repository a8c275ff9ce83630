"""Training / evaluation data from what a user points at: a BCSS-WSSS folder or a tile
folder (mosaics). One place that turns paths + settings into torch datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from lpd.config import ModelConfig, TrainConfig
from lpd.data.augment import MacenkoNormalizer
from lpd.data.bcss import MPP as BCSS_MPP
from lpd.data.bcss import find_bcss
from lpd.data.datasets import BCSSEvalDataset, BCSSTrainDataset, MosaicDataset
from lpd.data.mosaic import MosaicGenerator, TileFolder
from lpd.errors import InputError

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


def normalizer_for(model: ModelConfig) -> MacenkoNormalizer | None:
    if model.stain_normalisation in (None, "", "none"):
        return None
    if model.stain_normalisation == "macenko":
        return MacenkoNormalizer()
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
    train = train or TrainConfig()
    return MosaicDataset(
        generator,
        count,
        augment=augment,
        mean=model.mean,
        std=model.std,
        hed_sigma=train.hed_sigma if train.stain_augment else 0.0,
        hed_bias=train.hed_bias if train.stain_augment else 0.0,
        seed=seed,
        normalizer=normalizer_for(model),
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
    train = train or TrainConfig()
    jitter = augment and train.stain_augment
    return MosaicDataset(generator, count, augment=augment, mean=model.mean, std=model.std,
                         hed_sigma=train.hed_sigma if jitter else 0.0,
                         hed_bias=train.hed_bias if jitter else 0.0, seed=seed,
                         normalizer=normalizer_for(model))


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
            hed_sigma=train.hed_sigma if train.stain_augment else 0.0,
            hed_bias=train.hed_bias if train.stain_augment else 0.0,
            seed=train.seed,
            **common,
        )
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
