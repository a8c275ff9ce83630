"""Sample data contributions (see napari.yaml): a real slide region and a real-tile mosaic
with its exact ground truth."""

from __future__ import annotations

import numpy as np
import tifffile

from lpd.data.mosaic import MosaicGenerator, TileFolder
from lpd.data.sample import CMU_SLIDE, NCT_TILES
from lpd.wsi.slide import open_slide
from napari_lpd._layers import LABELS_OPACITY, LayerData, class_colormap, slide_layer, units_of
from napari_lpd._metadata import LayerMeta

#: Side of the square crop ``cmu_region_array`` takes from level 0 (tests, docs).
CROP = 2048
NCT_MPP = 0.5  # NCT-CRC-HE tiles: 224 px at 0.5 µm/px
MOSAIC_SIZE = 1024
MOSAIC_SEED, MOSAIC_INDEX = 7, 0  # a mosaic showing all four classes and background


def cmu_region_array(crop: int = CROP) -> np.ndarray:
    """Central ``crop`` x ``crop`` RGB region (uint8, HxWx3) of the bundled CMU-1 slide."""
    with tifffile.TiffFile(CMU_SLIDE) as tif:
        level0 = tif.series[0].levels[0].asarray()
    height, width = level0.shape[:2]
    top, left = max(0, (height - crop) // 2), max(0, (width - crop) // 2)
    return np.ascontiguousarray(level0[top : top + crop, left : left + crop, :3])


def cmu_slide_region() -> list[LayerData]:
    """The bundled CMU-1 H&E slide region (Aperio SVS, 2220x2967 px at 0.499 µm/px) as the
    slide reader opens it: lazy, scaled in µm, segmentable like any opened slide."""
    data, meta, kind = slide_layer(open_slide(CMU_SLIDE), name="CMU-1 region")
    return [(data, meta, kind)]


def nct_mosaic(size: int = MOSAIC_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, labels): a mosaic of real NCT-CRC-HE tiles and its exact label map."""
    generator = MosaicGenerator(TileFolder(NCT_TILES), size=size, seed=MOSAIC_SEED,
                                min_regions=8, max_regions=12, background_fraction=0.15)
    mosaic = generator[MOSAIC_INDEX]
    return mosaic.rgb, mosaic.labels


def nct_mosaic_layers() -> list[LayerData]:
    """The NCT tile mosaic (image) and its ground truth (Labels, the class colours). The
    shipped default model trained on most of these tiles: judge it on the held-apart
    mosaic instead."""
    rgb, labels = nct_mosaic()
    return _mosaic_layers(rgb, labels, "NCT mosaic", NCT_MPP, truth_visible=False)


def held_apart_mosaic(size: int = MOSAIC_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, labels): a mosaic of the default model's held-apart tiles (three releases,
    each tile at its own microns per pixel, resampled to the model's), never trained on."""
    from lpd.data.mosaic import MosaicGenerator
    from lpd.default_model import DEFAULT_RUN, load_recipe

    _, held, mpps = load_recipe().tiles()
    mpp = DEFAULT_RUN.model.microns_per_pixel
    generator = MosaicGenerator(held, size=size, seed=MOSAIC_SEED, min_regions=8,
                                max_regions=12, background_fraction=0.15, tile_mpp=mpp,
                                target_mpp=mpp, tile_mpps=mpps)
    mosaic = generator[MOSAIC_INDEX]
    return mosaic.rgb, mosaic.labels


def held_apart_mosaic_layers() -> list[LayerData]:
    """The held-apart tile mosaic (image) and its ground truth (Labels), at 0.5 µm/px."""
    from lpd.default_model import DEFAULT_RUN

    rgb, labels = held_apart_mosaic()
    return _mosaic_layers(rgb, labels, "Held-apart mosaic",
                          float(DEFAULT_RUN.model.microns_per_pixel), truth_visible=True)


def _mosaic_layers(rgb: np.ndarray, labels: np.ndarray, name: str, mpp: float,
                   truth_visible: bool) -> list[LayerData]:
    spatial = {"scale": (mpp, mpp), "units": units_of(mpp)}
    image_meta = {"name": name, "rgb": True, **spatial, "metadata": LayerMeta(mpp=mpp).to_metadata()}
    labels_meta = {"name": f"{name} ground truth", **spatial, "colormap": class_colormap(),
                   "opacity": LABELS_OPACITY, "visible": truth_visible}
    return [(rgb, image_meta, "image"), (labels, labels_meta, "labels")]
