"""The running layer: only the painted part of its texture is uploaded again, and its
editing overlays are built when a tool is first picked (not in the turn after Run)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_lpd._live_labels import EDIT_OVERLAYS, LiveLabels


def _running(viewer, qtbot, shape=(320, 480)) -> LiveLabels:
    image = viewer.add_image(np.zeros((*shape, 3), np.uint8), rgb=True, name="slide")
    live = LiveLabels(viewer)
    live.open(image)
    live.start(image, SimpleNamespace(shape=shape, scale=1.0, offset=(0, 0)))
    # the transform at once, the preview as data one turn later (a repaint each)
    assert live.layer.data.shape == (1, 1)
    qtbot.waitUntil(lambda: live.layer.data is live.preview.data)
    return live


def test_a_repaint_uploads_only_the_tiles_painted_since_the_last(make_napari_viewer, qtbot
                                                                 ) -> None:
    viewer = make_napari_viewer()
    live = _running(viewer, qtbot)
    layer = live.layer
    uploads: list[tuple[list[int], np.ndarray]] = []
    layer.events.labels_update.connect(
        lambda event: uploads.append((list(event.offset), np.array(event.data))))
    a = np.full((160, 160), 2, np.uint8)
    b = np.full((160, 160), 3, np.uint8)
    live.paint([(0, 160, a), (0, 320, b)])
    live.repaint()
    assert len(uploads) == 1
    offset, data = uploads[0]
    assert offset == [0, 160] and data.shape == (160, 320)  # the two tiles' box, no more
    assert (data[:, :160] == 2).all() and (data[:, 160:] == 3).all()
    live.repaint()  # nothing new: nothing uploaded
    assert len(uploads) == 1
    live.paint([(160, 0, b)])
    live.repaint()
    assert uploads[1][0] == [160, 0] and uploads[1][1].shape == (160, 160)
    # what the canvas shows is the layer's data: the painted labels, nothing else
    assert np.array_equal(layer._slice.image.view, layer.data)
    assert layer.data[:160, 160:320].tolist() == a.tolist()
    assert layer.data[160:, 160:].max() == 0


def test_running_layer_builds_its_editing_overlays_at_the_first_tool(make_napari_viewer,
                                                                     qtbot) -> None:
    viewer = make_napari_viewer()
    live = _running(viewer, qtbot)
    layer = live.layer
    canvas = viewer.window._qt_viewer.canvas
    overlays = [layer._overlays[key] for key in EDIT_OVERLAYS]
    built = canvas._layer_overlay_to_visual.get(layer, {})
    assert not any(overlay.visible for overlay in overlays)
    assert not any(overlay in built for overlay in overlays)  # not built at the add
    layer.mode = "paint"
    built = canvas._layer_overlay_to_visual[layer]
    assert all(overlay.visible and overlay in built for overlay in overlays)
    # the brush paints as on any Labels layer
    layer.selected_label = 4
    layer.paint((10, 10), 4)
    assert layer.data[10, 10] == 4


def test_a_result_before_the_preview_was_shown_replaces_the_placeholder(make_napari_viewer
                                                                        ) -> None:
    """A run that ends within the turn after its plan (a tiny image, a fast GPU): the
    result is the layer's data, and the late preview hand-over changes nothing."""
    from napari_lpd._live_labels import Preview

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((32, 48, 3), np.uint8), rgb=True, name="slide")
    live = LiveLabels(viewer)
    live.open(image)
    live.start(image, SimpleNamespace(shape=(32, 48), scale=1.0, offset=(0, 0)))
    layer, preview = live.layer, live.preview
    assert isinstance(preview, Preview) and layer.data.shape == (1, 1)
    result = np.full((32, 48), 3, np.uint8)
    layer.data = result  # what ``finish`` does when the preview is not the layer's data
    live.layer = live.preview = None
    live._show(layer, preview)  # the late hand-over: the run has moved on
    assert layer.data is result


def test_the_layer_list_hears_nothing_of_the_running_layers_updates(make_napari_viewer,
                                                                    qtbot) -> None:
    """Neither the running layer's new transform nor a repaint of painted tiles reaches
    the layer list (whose Qt model repaints the list for any event of any layer); the
    canvas still gets the texture update."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((320, 480, 3), np.uint8), rgb=True, name="slide")
    live = LiveLabels(viewer)
    live.open(image)
    heard: list[str] = []
    viewer.layers.events.connect(lambda event: heard.append(event.type))
    live.start(image, SimpleNamespace(shape=(320, 480), scale=2.0, offset=(0, 0)))
    assert tuple(live.layer.scale) == (2.0, 2.0) and heard == []
    qtbot.waitUntil(lambda: live.layer.data is live.preview.data)
    heard.clear()
    uploads: list[object] = []
    live.layer.events.labels_update.connect(uploads.append)
    live.paint([(0, 0, np.full((160, 160), 2, np.uint8))])
    live.repaint()
    assert len(uploads) == 1 and heard == []
    live.layer.name = "renamed"  # outside those changes the layer list hears as usual
    assert "name" in heard
