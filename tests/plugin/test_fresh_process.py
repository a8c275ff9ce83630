"""The plugin as a user reaches it, in a fresh process with nothing of ours imported first.

In-process widget tests build widgets directly and import torch at collection, so they
cannot see two failures a user meets: napari injecting its viewer only into a parameter
typed ``napari.viewer.Viewer`` (the Plugins menu), and a crash when torch is first imported
after napari's window exists under software OpenGL (``napari_lpd/_triton.py``). Here a
subprocess (on pytest-xvfb's display, Mesa llvmpipe) opens napari first, then everything
through napari's own entry points: each widget contribution of the manifest (what
Plugins › LPD tissue segmentation › … does), each sample through the sample-data
contributions, a slide and our own exports through the reader.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lpd.data.sample import CMU_SLIDE

pytestmark = pytest.mark.gui

MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import napari
    viewer = napari.Viewer(show=False)  # the window (and its GL context) exists first
    assert "torch" not in sys.modules and "lpd" not in sys.modules, "imported too early"
    report = {"widgets": {}, "samples": {}, "opened": {}}
    for name in json.loads(sys.argv[1]):
        dock, widget = viewer.window.add_plugin_dock_widget("napari-lpd", name)
        report["widgets"][name] = type(widget).__name__
    for key in json.loads(sys.argv[2]):
        before = len(viewer.layers)
        viewer.open_sample("napari-lpd", key)
        report["samples"][key] = [
            (layer.name, type(layer).__name__) for layer in list(viewer.layers)[before:]]
    for path in json.loads(sys.argv[3]):
        layers = viewer.open(path, plugin="napari-lpd")
        report["opened"][path] = [
            (layer.name, type(layer).__name__, layer.ndim) for layer in layers]
    report["triton_blocked"] = sys.modules.get("triton", "absent") is None
    report["torch_loaded"] = "torch" in sys.modules
    viewer.close()
    print("REPORT " + json.dumps(report))
    """
)


def _manifest():
    npe2 = pytest.importorskip("npe2")
    return npe2.PluginManifest.from_file(MANIFEST)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[str]:
    """Our own exports of a small label map: the zarr store, the label TIFF."""
    from lpd.io.export import export_tiff
    from lpd.io.store_tools import store_from_labels

    out = tmp_path_factory.mktemp("exports")
    labels = np.zeros((200, 240), np.uint8)
    labels[10:90, 20:200] = 1
    labels[100:190, 30:120] = 3
    store = store_from_labels(labels, out / "result.zarr", scale=(0.5, 0.5),
                              units=("µm", "µm"))
    export_tiff(store, out / "result-labels.tiff")
    return [str(store.path), str(out / "result-labels.tiff")]


@pytest.fixture(scope="module")
def report(exports, tmp_path_factory) -> dict:
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        pytest.skip("needs a display (pytest-xvfb)")
    manifest = _manifest()
    widgets = [w.display_name for w in manifest.contributions.widgets]
    samples = [s.key for s in manifest.contributions.sample_data]
    paths = [str(CMU_SLIDE), *exports]
    env = {k: v for k, v in os.environ.items() if k != "NAPARI_LPD_ALLOW_TRITON"}
    env["LPD_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(widgets), json.dumps(samples),
         json.dumps(paths)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, (
        f"napari exited with {proc.returncode} (-11/139: segmentation fault)\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_every_widget_opens_from_the_plugins_menu(report) -> None:
    manifest = _manifest()
    expected = {w.display_name: w.command.rsplit(".", 1)[-1] for w in manifest.contributions.widgets}
    classes = {c.id.rsplit(".", 1)[-1]: c.python_name.rsplit(":", 1)[-1]
               for c in manifest.contributions.commands}
    assert report["widgets"] == {name: classes[cmd] for name, cmd in expected.items()}
    assert len(report["widgets"]) == 5


def test_compute_stack_loaded_after_the_window_without_crashing(report) -> None:
    # the widgets imported torch after napari's window existed, and napari survived
    assert report["torch_loaded"] and report["triton_blocked"]


def _own(layers: list) -> list:
    """Layers a sample or a file added, without those the docked widgets add in answer
    (the Tag regions widget gives each new image its ``LPD tags`` Shapes layer)."""
    return [layer for layer in layers if not layer[0].startswith("LPD tags")]


def test_samples_open_from_the_sample_menu(report) -> None:
    assert _own(report["samples"]["cmu_region"]) == [["CMU-1 region", "Image"]]
    assert _own(report["samples"]["nct_mosaic"]) == [
        ["NCT mosaic", "Image"], ["NCT mosaic ground truth", "Labels"]]
    assert _own(report["samples"]["held_apart_mosaic"]) == [
        ["Held-apart mosaic", "Image"], ["Held-apart mosaic ground truth", "Labels"]]


def test_slide_and_exports_open_through_the_reader(report, exports) -> None:
    opened = report["opened"]
    assert _own(opened[str(CMU_SLIDE)]) == [["cmu-1-small-region.svs", "Image", 2]]
    store, tiff = exports
    assert [kind for _, kind, _ in opened[store]] == ["Labels"]
    assert [kind for _, kind, _ in opened[tiff]] == ["Labels"]
