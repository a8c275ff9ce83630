"""Screenshots of the plugin for the README's user guide, from the real sample data.

    xvfb-run -a python scripts/make_screenshots.py [--out docs/images] [--quick]

Model: the default model when it is cached (``lpd.default_model``); otherwise it is
trained first (its fixed recipe, a few minutes on CPU) and cached, as the plugin does on
first use. ``--quick`` trains a shorter recipe instead (80 steps, cached under its own
name) when the default is not cached: quicker, rougher maps. The script prints which model
it used. Images: the bundled CMU-1 slide region (Aperio SVS) and a mosaic of real NCT-CRC-HE
tiles with its ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (1500, 950)


def wait(handle, timeout: float = 3600.0) -> None:
    """Run the Qt event loop until a RunHandle is done."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    t0 = time.monotonic()
    while handle.running:
        app.processEvents()
        time.sleep(0.01)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the job did not finish in time")
    app.processEvents()
    if handle.failed is not None:
        raise RuntimeError(f"job failed: {handle.failed}")


def settle(viewer, seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.instance().processEvents()
        time.sleep(0.02)


def checkpoint(quick: bool) -> tuple[Path, str]:
    from lpd.default_model import DEFAULT_RUN, default_checkpoint_path, is_cached
    from lpd.default_model import train_default_model as train

    if is_cached():
        return default_checkpoint_path(), "the cached default model"
    run = DEFAULT_RUN
    label = "the default model (trained now, then cached)"
    if quick:
        run = dataclasses.replace(DEFAULT_RUN, train=dataclasses.replace(
            DEFAULT_RUN.train, steps=80, warmup_iters=30))
        label = "a quick-trained model (default recipe, 80 steps)"
        if is_cached(run):
            return default_checkpoint_path(run), label
    print(f"Training {label} ...", flush=True)
    gen = train(run)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return Path(stop.value), label
        if p.step % 20 == 0:
            print(f"  step {p.step}/{p.total} loss {p.loss:.3f}", flush=True)


def shoot(viewer, path: Path, canvas_only: bool = False) -> None:
    """Save a screenshot; a canvas-only one is cropped to what differs from the canvas
    background (grid views leave wide empty margins)."""
    import numpy as np
    from PIL import Image

    settle(viewer)
    shot = viewer.screenshot(canvas_only=canvas_only, flash=False)
    if canvas_only:
        rgb = shot[..., :3].astype(int)
        content = np.abs(rgb - rgb[0, 0]).sum(axis=-1) > 12
        rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
        if rows.size and cols.size:
            pad = 12
            shot = shot[max(rows[0] - pad, 0) : rows[-1] + pad + 1,
                        max(cols[0] - pad, 0) : cols[-1] + pad + 1]
    Image.fromarray(np.ascontiguousarray(shot)).save(path)
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--quick", action="store_true", help="quick model if none is cached")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt, label = (args.checkpoint, "the given checkpoint") if args.checkpoint else \
        checkpoint(args.quick)
    print(f"Model: {label}: {ckpt}", flush=True)

    import napari

    from lpd.data.sample import CMU_SLIDE
    from lpd.default_model import default_checkpoint_path
    from napari_lpd._layers import labels_name
    from napari_lpd._reader import read_path
    from napari_lpd._sample_data import nct_mosaic_layers
    from napari_lpd.widgets._segment_job import runs_dir
    from napari_lpd.widgets.export import ExportWidget
    from napari_lpd.widgets.prototypes import PrototypeWidget, grid_of
    from napari_lpd.widgets.segment import SegmentWidget

    before = set(runs_dir().glob("*.zarr")) if runs_dir().is_dir() else set()
    viewer = napari.Viewer(show=True, title="napari-lpd")
    viewer.window.resize(*SIZE)
    [(data, meta, _)] = read_path(CMU_SLIDE)
    meta["name"] = "CMU-1 region"
    image = viewer.add_image(data, **meta)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment", area="right")
    segment.set_checkpoint(None if ckpt == default_checkpoint_path() else ckpt)
    segment.scope_combo.setCurrentText("Whole image")
    segment.prototypes_check.setChecked(True)
    viewer.reset_view()

    # 1. live tiles while a whole-image run goes (shot at about half way)
    handle = segment.run()
    t0 = time.monotonic()
    while handle.running and time.monotonic() - t0 < 600:
        settle(viewer, 0.2)
        bar = handle.bar
        if bar is not None and bar.desc == "LPD segmentation" and bar.n >= 0.45 * bar.total:
            break
    if handle.running:
        shoot(viewer, args.out / "segment_running.png")
    wait(handle)
    # 2. the finished result with its legend
    shoot(viewer, args.out / "segment.png")

    # 3. prototype heatmap over the image (additive), explorer docked
    protos = PrototypeWidget(viewer)
    viewer.window.add_dock_widget(protos, name="Prototype explorer", area="right",
                                  tabify=True)
    protos.class_combo.setCurrentText("TUM")
    protos.slider.setValue(1)
    protos.show_check.setChecked(True)
    viewer.layers[labels_name(image.name)].visible = False
    shoot(viewer, args.out / "prototypes.png")
    # 4. dominant prototype map
    wait(protos.show_dominant())
    shoot(viewer, args.out / "dominant.png")
    viewer.layers.remove(viewer.layers[-1])
    viewer.layers[labels_name(image.name)].visible = True
    # 5. side by side: image | labels | heatmap, one camera
    protos.side_button.setChecked(True)
    viewer.theme = "light"  # NEC's near-black is invisible on the dark canvas
    viewer.reset_view()
    shoot(viewer, args.out / "side_by_side.png", canvas_only=True)
    viewer.theme = "dark"
    protos.side_button.setChecked(False)
    protos.show_check.setChecked(False)  # removes the heatmap

    # 6. the NCT mosaic: prediction next to the ground truth
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    for data, meta, kind in nct_mosaic_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    segment.image_combo.setCurrentText("NCT mosaic")
    wait(segment.run())
    truth = viewer.layers["NCT mosaic ground truth"]
    prediction = viewer.layers[labels_name("NCT mosaic")]
    truth.visible = True
    truth.opacity = prediction.opacity = 1.0  # alone in their grid cells: full colour
    grid = grid_of(viewer)
    grid.stride, grid.shape = 1, (1, 3)  # mosaic | ground truth | prediction
    grid.enabled = True
    viewer.theme = "light"
    viewer.reset_view()
    shoot(viewer, args.out / "mosaic_vs_truth.png", canvas_only=True)
    viewer.theme = "dark"
    grid.enabled = False
    truth.opacity = prediction.opacity = 0.6
    viewer.reset_view()

    # 7. export widget after an export
    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export", area="right", tabify=True)
    export.layer_combo.setCurrentText(labels_name("NCT mosaic"))
    export.folder_edit.setText(tempfile.mkdtemp(prefix="lpd-export-"))
    truth.visible = False
    wait(export.export())
    shoot(viewer, args.out / "export.png")
    shutil.rmtree(export.folder_edit.text(), ignore_errors=True)
    viewer.close()
    for store in set(runs_dir().glob("*.zarr")) - before:  # this script's runs only
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
