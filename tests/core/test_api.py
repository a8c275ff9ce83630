"""The public face: ``import lpd`` is light, and its names are the documented jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lpd
from lpd.errors import Cancelled, InputError, StoreMismatch
from lpd.progress import drive


def test_import_lpd_loads_no_torch() -> None:
    code = "import sys, lpd; print('torch' in sys.modules); lpd.__all__"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_public_names() -> None:
    for name in ("load_model", "open_slide", "segment", "segment_iter", "Segmentation",
                 "export", "train", "evaluate"):
        assert name in lpd.__all__ and callable(getattr(lpd, name))
    with pytest.raises(AttributeError):
        lpd.nope  # noqa: B018


def test_drive_returns_the_result_and_stops_on_request() -> None:
    closed = []

    def job():
        try:
            yield from range(5)
            return "done"
        finally:
            closed.append(True)

    seen: list[int] = []
    assert drive(job(), seen.append) == "done" and seen == [0, 1, 2, 3, 4]
    with pytest.raises(Cancelled):
        drive(job(), should_stop=lambda: True)
    assert closed == [True, True]  # the generator was closed both times


def test_segment_resumes_its_store_and_names_a_mismatch(tmp_path) -> None:
    from lpd.model import create_model

    model = create_model("resnet18", prototypes_per_class=2, input_size=96).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)
    out = tmp_path / "a.zarr"
    events = []
    with lpd.segment(model, image, out=out, tissue_threshold=None, device="cpu",
                     on_progress=events.append) as seg:
        assert seg.labels().shape == (200, 260) and not seg.owns_store
        assert seg.mpp is None and set(seg.areas()) == {"TUM", "STR", "LYM", "NEC"}
        assert sum(seg.areas().values()) == 200 * 260 - int((np.asarray(seg.labels()) == 0)
                                                            .sum())
        assert events and events[-1].done == events[-1].total
    assert out.is_dir()  # a given store stays
    again = lpd.segment(model, image, out=out, tissue_threshold=None, device="cpu")
    assert again.result.forward_passes == 0 and again.result.reused_passes > 0
    with pytest.raises(StoreMismatch) as err:
        lpd.segment(model, image, out=out, region=(0, 0, 100, 100), tissue_threshold=None,
                    device="cpu")
    assert err.value.differences  # names what differs (here the shape)
    replaced = lpd.segment(model, image, out=out, region=(0, 0, 100, 100),
                           tissue_threshold=None, device="cpu", resume=False)
    assert replaced.labels().shape == (100, 100)


def test_export_takes_a_segmentation_or_a_store(tmp_path) -> None:
    from lpd.io.formats import FORMATS
    from lpd.model import create_model

    model = create_model("resnet18", prototypes_per_class=2, input_size=96).eval()
    image = np.full((120, 120, 3), 180, np.uint8)
    out_store = tmp_path / "kept.zarr"
    lpd.segment(model, image, tissue_threshold=None, device="cpu", out=out_store)
    assert lpd.export(out_store, formats=("tiff",))["tiff"] == tmp_path / "kept-labels.tiff"
    with lpd.segment(model, image, tissue_threshold=None, device="cpu") as seg:
        files = lpd.export(seg, tmp_path / "out", formats=("csv",))
        assert list(files) == ["csv"] and files["csv"].name.endswith(FORMATS["csv"].suffix)
        temp = seg.store.path
    assert not Path(temp).exists()  # the temporary store went with the with-block
    with pytest.raises(InputError, match="unknown export format"):
        lpd.export(out_store, formats=("png",))
