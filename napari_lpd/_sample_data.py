"""Sample data contributions (see napari.yaml)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tifffile

from lpd.data.sample import CMU_SLIDE

#: Side of the square crop taken from level 0; the full region is larger than a sample
#: needs to be, and a smaller texture keeps the viewer light.
CROP = 2048


def cmu_region_array(crop: int = CROP) -> np.ndarray:
    """Central ``crop`` x ``crop`` RGB region (uint8, HxWx3) of the bundled CMU-1 slide."""
    with tifffile.TiffFile(CMU_SLIDE) as tif:
        level0 = tif.series[0].levels[0].asarray()
    height, width = level0.shape[:2]
    top, left = max(0, (height - crop) // 2), max(0, (width - crop) // 2)
    return np.ascontiguousarray(level0[top : top + crop, left : left + crop, :3])


def cmu_slide_region() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """The CMU-1 H&E region as a napari image layer."""
    return [(cmu_region_array(), {"name": "CMU-1 region", "rgb": True}, "image")]
