"""The napari reader on issue 14's slides: the tissue image of an SVS whose macro photo is
larger, and a notification for an implausible microns per pixel."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_lpd._reader import napari_get_reader

APERIO = "Aperio Image Library v12.0.15 \r\n"


def test_svs_opens_its_tissue_and_warns_of_implausible_mpp(tmp_path, monkeypatch) -> None:
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    tissue = np.full((128, 96, 3), (220, 150, 190), np.uint8)
    path = tmp_path / "region.svs"
    with tifffile.TiffWriter(path) as tif:
        tif.write(tissue, photometric="rgb", tile=(32, 32), metadata=None,
                  description=APERIO + "96x128 [0,0 96x128] (32x32) RAW|MPP = 0.04")
        tif.write(tissue[::4, ::4], photometric="rgb", metadata=None,
                  description=APERIO + "96x128 -> 24x32 - |MPP = 0.04")
        tif.write(np.full((200, 600, 3), 30, np.uint8), photometric="rgb", metadata=None,
                  subfiletype=9, description=APERIO + "macro 600x200")
    [(data, meta, kind)] = napari_get_reader(str(path))(str(path))
    assert kind == "image" and data.shape == (128, 96, 3)
    assert meta["scale"] == pytest.approx((0.04, 0.04))
    (note,) = shown
    assert "0.04 µm/px" in note and "--mpp" in note and note.endswith("region.svs")
