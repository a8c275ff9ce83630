"""Bad input in the widgets and the reader: a napari notification naming the file and the
problem (``notification_manager`` records), never an unhandled exception."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from helpers_segment import tiny_checkpoint, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from napari.utils.notifications import NotificationSeverity
from safetensors.torch import load_file, save_file

from lpd.data.sample import CMU_SLIDE
from lpd.errors import InputError
from napari_lpd.widgets.export import safe_name
from napari_lpd.widgets.segment import SegmentWidget

pytestmark = pytest.mark.usefixtures("isolated_one_thread")



def _broken(kind: str, tmp_path):
    good = tiny_checkpoint(tmp_path / "good")
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "nan":
        from safetensors import safe_open
        with safe_open(str(good), framework="pt") as fh:
            meta = fh.metadata()
        state = load_file(str(good))
        key = next(k for k, v in state.items() if v.is_floating_point())
        state[key].view(-1)[0] = float("nan")
        save_file(state, str(path), metadata=meta)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["truncated", "nan", "pickle", "empty"])
def test_broken_checkpoint_in_the_segment_widget(make_napari_viewer, qtbot, tmp_path, records,
                                                 kind) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.full((96, 96, 3), 128, np.uint8), name="HE", rgb=True)
    widget = SegmentWidget(viewer)
    path = _broken(kind, tmp_path)
    widget.set_checkpoint(path)
    widget.scope_combo.setCurrentText("Whole image")
    handle = widget.run()
    if handle is not None:  # refused in the worker (weights checked when loaded)
        wait_for(qtbot, handle)
    qtbot.waitUntil(lambda: any(path.name in str(n.message) for n in records), timeout=30_000)
    errors = [n for n in records if n.severity >= NotificationSeverity.ERROR]
    assert errors and all(getattr(n, "exception", None) is None for n in errors)
    message = next(str(n.message) for n in errors if path.name in str(n.message))
    assert "failed" in message and len(message) > len(str(path)) + 10
    assert [layer.name for layer in viewer.layers] == ["HE"]


def test_truncated_slide_via_the_reader_names_the_file(make_napari_viewer, tmp_path,
                                                       records) -> None:
    viewer = make_napari_viewer()
    path = tmp_path / "cut.svs"
    path.write_bytes(CMU_SLIDE.read_bytes()[:20_000])
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(good)
    assert viewer.open(str(path), plugin="napari-lpd") == []  # no exception reaches napari
    errors = [n for n in records if n.severity >= NotificationSeverity.ERROR]
    assert len(errors) == 1 and getattr(errors[0], "exception", None) is None  # no traceback
    message = str(errors[0].message)  # the reason first: a toast cut short still says it
    assert message.startswith("Could not open: ") and "truncated" in message
    assert message.endswith(f" — cut.svs ({tmp_path})")
    assert len(viewer.layers) == 0
    # several files at once: the bad one is reported, the good one still opens
    viewer.open([str(path), str(good)], plugin="napari-lpd", stack=False)
    assert [layer.name for layer in viewer.layers] == ["good.png"]
    assert sum("cut.svs" in str(n.message) for n in records) == 2
    # the Python API still raises, naming the file
    from napari_lpd._reader import read_path

    with pytest.raises(InputError, match="cut.svs"):
        read_path(path)


@settings(max_examples=100, deadline=None)
@given(name=st.text(max_size=40) | st.sampled_from(["../../x", "/etc/passwd", "..", "a\x00b"]))
def test_export_layer_names_make_plain_file_names(name) -> None:
    stem = safe_name(name)
    assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem
    assert not stem.startswith(".") and stem not in ("..", ".")
