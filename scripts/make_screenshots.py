"""Screenshots of the plugin for the README's user guide, from the real sample data.

    xvfb-run -a python scripts/make_screenshots.py [--out docs/images] [--quick]

Model: the shipped default model (``lpd.default_model``), or ``--checkpoint``. Images: the
bundled CMU-1 slide region (Aperio SVS) and a mosaic of the default model's held-apart tiles
with its ground truth. Besides the README's pictures it shoots the Segment widget's legend,
the tag widget with tagged regions, and two kept results (whole image, current view) side
by side. Tags go to a temporary data folder (``LPD_DATA_DIR``), not the user's."""

from __future__ import annotations

import argparse
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


def newest_result(viewer, image_name: str):
    """The latest finished result layer of an image (results are kept side by side)."""
    from napari_lpd._layers import RUNNING, labels_name

    return [layer for layer in viewer.layers if layer.name.startswith(labels_name(image_name))
            and not layer.name.endswith(RUNNING)][-1]


def grab(widget, path: Path) -> None:
    """A picture of one dock widget as it is drawn."""
    settle(None, 0.3)
    widget.grab().save(str(path))
    print(f"wrote {path}", flush=True)


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
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint instead")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["LPD_DATA_DIR"] = tempfile.mkdtemp(prefix="lpd-screenshots-")  # tags
    from lpd.default_model import default_checkpoint_path

    ckpt = args.checkpoint or default_checkpoint_path()
    print(f"Model: {ckpt}", flush=True)

    import napari

    from lpd.data.sample import CMU_SLIDE
    from napari_lpd._reader import read_path
    from napari_lpd._sample_data import held_apart_mosaic_layers
    from napari_lpd._segment_job import runs_dir
    from napari_lpd.widgets.export import ExportWidget
    from napari_lpd.widgets.prototypes import PrototypeWidget, grid_of
    from napari_lpd.widgets.segment import SegmentWidget
    from napari_lpd.widgets.tags import TagAnnotatorWidget

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
    grab(segment.legend, args.out / "legend.png")
    whole = newest_result(viewer, image.name)

    # 2b. a second, kept result: the current view, beside the whole image's
    camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera
    camera.center = (0, 1500 * image.scale[0], 1100 * image.scale[1])
    camera.zoom = camera.zoom * 3
    segment.scope_combo.setCurrentText("Current view")
    segment.prototypes_check.setChecked(False)
    wait(segment.run())
    view = newest_result(viewer, image.name)
    grid = grid_of(viewer)
    others = [layer for layer in viewer.layers if layer not in (image, whole, view)]
    for layer in others:
        layer.visible = False
    image2 = viewer.add_image(image.data, **{k: v for k, v in meta.items() if k != "name"},
                              name="CMU-1 region ")
    viewer.layers.move(viewer.layers.index(image2), viewer.layers.index(view))
    grid.stride, grid.shape = 2, (1, 2)  # image + whole-image result | image + view result
    grid.enabled = True
    viewer.reset_view()
    shoot(viewer, args.out / "kept_results.png", canvas_only=True)
    grid.enabled = False
    viewer.layers.remove(image2)
    viewer.layers.remove(view)
    for layer in others:
        layer.visible = True
    segment.scope_combo.setCurrentText("Whole image")
    segment.prototypes_check.setChecked(True)
    viewer.reset_view()

    # 3. prototype heatmap over the image (additive), explorer docked
    protos = PrototypeWidget(viewer)
    viewer.window.add_dock_widget(protos, name="Prototype explorer", area="right",
                                  tabify=True)
    protos.class_combo.setCurrentText("TUM")
    protos.slider.setValue(1)
    protos.show_check.setChecked(True)
    whole.visible = False
    shoot(viewer, args.out / "prototypes.png")
    # 4. dominant prototype map
    wait(protos.show_dominant())
    shoot(viewer, args.out / "dominant.png")
    grab(protos, args.out / "dominant_legend.png")
    viewer.layers.remove(viewer.layers[-1])
    whole.visible = True
    # 5. side by side: image | labels | heatmap, one camera
    protos.side_button.setChecked(True)
    viewer.reset_view()
    shoot(viewer, args.out / "side_by_side.png", canvas_only=True)
    protos.side_button.setChecked(False)
    protos.show_check.setChecked(False)  # removes the heatmap

    # 5b. the tag widget: three tagged regions on the slide
    tags = TagAnnotatorWidget(viewer)
    viewer.window.add_dock_widget(tags, name="Tag regions", area="right", tabify=True)
    tags.set_image(image)
    whole.visible = False
    for (x, y, w, h), classes in (((1150, 2350, 300, 250), ("STR",)),
                                  ((1000, 1250, 260, 220), ("STR", "LYM")),
                                  ((1200, 1700, 250, 200), ("STR",))):  # data px
        tags.shapes.selected_data = set()  # the boxes set the next region's classes
        for name, box in tags.class_boxes.items():
            box.setChecked(name in classes)
        tags.shapes.add_rectangles([[[y, x], [y, x + w], [y + h, x + w], [y + h, x]]])
    tags.shapes.selected_data = {1}
    viewer.reset_view()
    shoot(viewer, args.out / "tags.png")
    viewer.layers.remove(tags.shapes)
    whole.visible = True

    # 6. the held-apart mosaic: prediction next to the ground truth
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    for data, meta, kind in held_apart_mosaic_layers():
        getattr(viewer, f"add_{kind}")(data, **meta)
    segment.image_combo.setCurrentText("Held-apart mosaic")
    segment.scope_combo.setCurrentText("Whole image")
    wait(segment.run())
    truth = viewer.layers["Held-apart mosaic ground truth"]
    prediction = newest_result(viewer, "Held-apart mosaic")
    truth.visible = True
    truth.opacity = prediction.opacity = 1.0  # alone in their grid cells: full colour
    grid.stride, grid.shape = 1, (1, 3)  # mosaic | ground truth | prediction
    grid.enabled = True
    viewer.reset_view()
    shoot(viewer, args.out / "mosaic_vs_truth.png", canvas_only=True)
    grid.enabled = False
    truth.opacity = prediction.opacity = 0.6
    viewer.reset_view()

    # 7. export widget after an export
    export = ExportWidget(viewer)
    viewer.window.add_dock_widget(export, name="Export", area="right", tabify=True)
    export.layer_combo.setCurrentText(prediction.name)
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
