"""``lpd predict`` and ``lpd export`` end to end on a generated pyramid and a tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lpd.cli import predict_cmd
from lpd.cli.main import main
from lpd.data.pyramid import write_synthetic_pyramid
from lpd.io import store as store_module
from lpd.io.store import OutputStore


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_checkpoint, small_slide) -> dict[str, Path]:
    """A tiny model (input 128, halo 32: output tiles of 64 px) and two generated slides
    (``small_slide``: 384 x 448 px at 0.5 µm/px)."""
    root = tmp_path_factory.mktemp("predict")
    nompp = write_synthetic_pyramid(root / "nompp.tiff", (256, 256), tile=128, seed=1, mpp=None)
    return {"ckpt": tiny_checkpoint, "slide": small_slide, "nompp": nompp}


def predict(files, slide: str, out: Path, *extra: str) -> int:
    return main(["predict", str(files[slide]), "--checkpoint", str(files["ckpt"]), "--out",
                 str(out), "--device", "cpu", "--batch-size", "4", *extra])


def test_predict_then_export_all_three(files, tmp_path, capsys) -> None:
    out = tmp_path / "res.zarr"
    assert predict(files, "slide", out) == 0
    text = capsys.readouterr().out
    assert f"store: {out} (complete" in text and "0.5 µm/px" in text
    assert "tiles: 42 in all" in text  # 384 x 448 px in tiles of 64: 6 x 7
    assert "passes/s" in text and f"lpd export {out}" in text
    store = OutputStore.open(out)
    assert store.complete and store.shape == (384, 448)
    # how the slide was read, recorded when the store is made (an interrupted one has it too)
    assert store.meta["info"]["reader"] == {"backend": "tifffile", "vendor": "tiff",
                                            "bounds": None}
    labels = store.labels[...]
    assert labels.max() <= 4 and (labels > 0).mean() > 0.5  # seed 1: tissue almost everywhere

    assert main(["export", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TUM" in printed and "% tissue" in printed
    tiff, geo, table = (tmp_path / "res-labels.tiff", tmp_path / "res.geojson",
                        tmp_path / "res-areas.csv")
    with tifffile.TiffFile(tiff) as tif:
        assert np.array_equal(tif.pages[0].asarray(), labels)
        assert json.loads(tif.pages[0].description)["classes"][1]["name"] == "TUM"
    fc = json.loads(geo.read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    for feat in fc["features"]:
        # QuPath's built-in classes by default (issue 16); --class-names lpd keeps ours
        assert feat["properties"]["classification"]["name"] in (
            "Tumor", "Stroma", "Immune cells", "Necrosis")
        xy = np.array(feat["geometry"]["coordinates"][0])
        assert xy[:, 0].min() >= -1 and xy[:, 0].max() <= 449  # level-0 px of the slide
        assert xy[:, 1].min() >= -1 and xy[:, 1].max() <= 385
    rows = list(csv.DictReader(table.open()))
    assert [r["class"] for r in rows] == ["background", "TUM", "STR", "LYM", "NEC"]
    assert sum(int(r["pixels"]) for r in rows) == 384 * 448
    assert abs(sum(float(r["percent_tissue"]) for r in rows[1:]) - 100) < 1e-3
    assert all(r["area_um2"] for r in rows)


def test_region_prototypes_and_chosen_exports(files, tmp_path, capsys) -> None:
    out = tmp_path / "r.zarr"
    assert predict(files, "slide", out, "--region", "64", "128", "200", "150",
                   "--prototypes", "--threads", "1") == 0
    store = OutputStore.open(out)
    assert store.shape == (150, 200) and store.offset == (64.0, 128.0)
    assert store.prototypes is not None and store.prototypes.dtype == np.float16
    capsys.readouterr()
    assert main(["export", str(out), "--csv", str(tmp_path / "only.csv")]) == 0
    assert (tmp_path / "only.csv").is_file() and not (tmp_path / "r.geojson").exists()
    assert main(["export", str(out), "--out-dir", str(tmp_path / "x")]) == 0
    assert {p.name for p in (tmp_path / "x").iterdir()} == {
        "r-labels.tiff", "r.geojson", "r-areas.csv"}
    fc = json.loads((tmp_path / "x" / "r.geojson").read_text())
    xy = np.concatenate([np.array(f["geometry"]["coordinates"][0]) for f in fc["features"]])
    assert xy[:, 0].min() >= 63 and xy[:, 1].min() >= 127  # offset by the region


def test_unknown_mpp_is_flagged(files, tmp_path, capsys) -> None:
    out = tmp_path / "n.zarr"
    assert predict(files, "nompp", out) == 0
    assert "no microns per pixel" in capsys.readouterr().err
    assert main(["export", str(out)]) == 0
    assert "microns per pixel unknown" in capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "n-areas.csv").open()))
    assert all(r["area_um2"] == "" and "unknown" in r["note"] for r in rows)


class InterruptingBar:
    """Stands in for the tqdm bar: Ctrl-C once 60 % of the tiles are done."""

    def __init__(self, total: int, *args, **kwargs) -> None:
        self.total, self.n = total, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, k: int) -> None:
        self.n += k
        if self.n > 0.6 * self.total:
            raise KeyboardInterrupt

    def set_description(self, *args, **kwargs) -> None:
        pass


def test_ctrl_c_leaves_an_incomplete_store_that_resumes(files, tmp_path, capsys,
                                                        monkeypatch) -> None:
    out = tmp_path / "w.zarr"
    monkeypatch.setattr(store_module, "TARGET_CHUNK", 128)  # chunks of 2 x 2 tiles: 3 x 4
    with monkeypatch.context() as m:
        m.setattr(predict_cmd, "progress_bar", InterruptingBar)
        assert predict(files, "slide", out) == 130
    err = capsys.readouterr().err
    assert "INCOMPLETE" in err and "again to resume" in err and "--allow-incomplete" in err
    store = OutputStore.open(out)
    assert not store.complete and 0 < store.finished().sum() < store.finished().size
    assert main(["export", str(out)]) == 2
    err = capsys.readouterr().err
    assert "w.zarr" in err and "incomplete" in err and "--allow-incomplete" in err
    assert main(["export", str(out), "--allow-incomplete", "--csv",
                 str(tmp_path / "part.csv")]) == 0
    assert "INCOMPLETE" in capsys.readouterr().out
    assert predict(files, "slide", out) == 0
    text = capsys.readouterr().out
    resumed = int(text.split("skipped as background, ")[1].split(" already done")[0])
    assert resumed > 0 and "(complete" in text
    assert OutputStore.open(out).complete


def test_default_checkpoint_trains_with_progress(files, tmp_path, capsys, monkeypatch) -> None:
    import lpd.default_model as dm

    class P:
        def __init__(self, step: int) -> None:
            self.step, self.total = step, 2

    def fake_default(on_progress=None, **kwargs):
        for step in (1, 2):
            on_progress(P(step))
        return files["ckpt"]

    monkeypatch.setattr(dm, "default_checkpoint", fake_default)
    out = tmp_path / "d.zarr"
    code = main(["predict", str(files["nompp"]), "--out", str(out), "--device", "cpu"])
    assert code == 0
    assert "training the default model" in capsys.readouterr().err


def test_errors_name_the_file(files, tmp_path, capsys) -> None:
    assert predict(files, "slide", tmp_path / "a.zarr", "--region", "5000", "0", "9", "9") == 2
    assert "slide.tiff" in capsys.readouterr().err
    missing = tmp_path / "missing.svs"
    assert main(["predict", str(missing), "--checkpoint", str(files["ckpt"]), "--out",
                 str(tmp_path / "b.zarr")]) == 2
    err = capsys.readouterr().err
    assert "missing.svs" in err and "Traceback" not in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert main(["predict", str(files["slide"]), "--checkpoint", str(bad), "--out",
                 str(tmp_path / "c.zarr")]) == 2
    assert "bad.safetensors" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing.zarr")]) == 2
    assert "nothing.zarr" in capsys.readouterr().err
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "x.txt").write_text("hi")
    assert predict(files, "slide", folder) == 2
    assert "plain" in capsys.readouterr().err and (folder / "x.txt").exists()


def test_a_bad_slide_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch) -> None:
    """The input is checked first: no checkpoint is read (nor the default model trained)."""
    bad = tmp_path / "notes #1.svs"
    bad.write_bytes(b"not a slide at all")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the slide was checked")

    monkeypatch.setattr(predict_cmd, "checkpoint_for_cli", no_model)
    code = main(["predict", str(bad), "--out", str(tmp_path / "o.zarr"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "error" in err


def test_export_hint_is_shell_quoted(files, tmp_path, capsys) -> None:
    import shlex

    out = tmp_path / "case #7 (left).zarr"
    assert predict(files, "slide", out, "--region", "0", "0", "64", "64") == 0
    hint = next(ln for ln in capsys.readouterr().out.splitlines() if "export with" in ln)
    command = hint.split(": ", 1)[1]
    assert shlex.split(command) == ["lpd", "export", str(out)]


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom lpd.cli.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120).stdout
    assert "usage: lpd" in out and "TORCH False" in out
