"""The Run click only starts the job: the running layer is added in a later event-loop
turn, and the model, the slide and the plan are the worker's, never the GUI thread's."""

from __future__ import annotations

import threading

import pytest
from helpers_segment import small_he, tiny_checkpoint, wait_for

import lpd.wsi.slide
import napari_lpd._segment_job as seg_job
from napari_lpd._layers import RUNNING
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")


def test_the_click_returns_before_the_layer_and_the_slide(make_napari_viewer, qtbot,
                                                          tmp_path, monkeypatch) -> None:
    from PIL import Image as PILImage

    path = tmp_path / "he.png"  # a file-backed image: the job opens the slide itself
    PILImage.fromarray(small_he()).save(path)
    viewer = make_napari_viewer()
    viewer.add_image(small_he(), name="HE", rgb=True, metadata={"lpd_path": str(path)})
    widget = SegmentWidget(viewer)
    widget.set_checkpoint(tiny_checkpoint(tmp_path))
    widget.scope_combo.setCurrentText("Whole image")
    gui = threading.get_ident()
    events: list[tuple[str, bool]] = []  # (what, on the GUI thread)

    def recording(what, fn):
        def call(*args, **kwargs):
            events.append((what, threading.get_ident() == gui))
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(lpd.wsi.slide, "open_slide",
                        recording("slide opened", lpd.wsi.slide.open_slide))
    monkeypatch.setattr(seg_job, "load_checkpoint",
                        recording("model loaded", seg_job.load_checkpoint))
    monkeypatch.setattr(seg_job, "plan_tiled", recording("planned", seg_job.plan_tiled))
    viewer.layers.events.inserted.connect(lambda event: events.append(
        (f"layer {event.value.name.endswith(RUNNING) and 'running' or 'other'} added",
         threading.get_ident() == gui)))
    handle = widget.run()
    events.append(("click returned", True))
    wait_for(qtbot, handle)
    assert handle.failed is None and widget.status.text().startswith("Done")
    assert events == [("click returned", True), ("layer running added", True),
                      ("model loaded", False), ("slide opened", False), ("planned", False)]
