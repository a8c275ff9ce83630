"""The plugin session (one per viewer, the widgets' only link) and the declared layer
metadata."""

from __future__ import annotations

import pytest

from napari_lpd._metadata import LayerMeta
from napari_lpd._session import Session

pytestmark = pytest.mark.gui


def test_one_session_per_viewer(make_napari_viewer) -> None:
    first, second = make_napari_viewer(), make_napari_viewer()
    assert Session.of(first) is Session.of(first)
    assert Session.of(first) is not Session.of(second)
    assert Session.of(second).viewer is second


def test_a_new_checkpoint_reaches_the_segment_widget_through_the_session(
        make_napari_viewer, qtbot) -> None:
    from napari_lpd.widgets.segment import CHECKPOINT_FILE, SegmentWidget

    viewer, other = make_napari_viewer(), make_napari_viewer()
    segment, elsewhere = SegmentWidget(viewer), SegmentWidget(other)
    qtbot.addWidget(segment)
    qtbot.addWidget(elsewhere)
    session = Session.of(viewer)
    assert session.segmenter() is segment and Session.of(other).segmenter() is elsewhere
    session.checkpoint_changed.emit("/models/tuned.safetensors")
    assert segment.model_combo.currentText() == CHECKPOINT_FILE
    assert segment.checkpoint_edit.text() == "/models/tuned.safetensors"
    assert elsewhere.checkpoint_edit.text() == ""  # another viewer's widgets are not told


def test_layer_meta_keys_and_round_trip() -> None:
    meta = LayerMeta(store="/runs/a.zarr", complete=False, k=2, checkpoint="/m.safetensors")
    as_dict = meta.to_metadata()
    assert as_dict == {"lpd_store": "/runs/a.zarr", "lpd_complete": False, "lpd_k": 2,
                       "lpd_checkpoint": "/m.safetensors"}  # None fields are left out
    assert LayerMeta.from_metadata({**as_dict, "other": 1}) == meta
    assert LayerMeta.from_layer(object()) == LayerMeta()
