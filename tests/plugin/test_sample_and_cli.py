"""Sample data contribution and the ``napari-lpd`` console script."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lpd import _cli
from napari_lpd._sample_data import CROP, cmu_slide_region


def test_cmu_sample_is_one_rgb_image_layer() -> None:
    [(data, meta, kind)] = cmu_slide_region()
    assert kind == "image" and meta["name"] == "CMU-1 region" and meta["rgb"]
    assert data.dtype == np.uint8 and data.shape == (2967, 2220, 3)  # the whole region, lazy
    assert meta["scale"] == pytest.approx((0.499, 0.499)) and meta["units"] == ("µm", "µm")
    crop = np.asarray(data[1000 : 1000 + CROP // 4, 800 : 800 + CROP // 4])
    # Real H&E, not a blank decode: mostly pink/white with stained (darker) tissue.
    assert 100 < crop.mean() < 250 and crop.std() > 10


def test_demo_without_display_points_to_headless_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert _cli.main(["demo", "--device", "cpu"]) == 2
    assert "lpd demo --out DIR" in capsys.readouterr().err


def test_cli_requires_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _cli.main([])
    assert exc.value.code == 2 and "demo" in capsys.readouterr().err
