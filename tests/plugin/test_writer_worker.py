"""Saving from napari's File menu: the writer returns at once and writes in a worker (the
GUI keeps processing events), the file is the same as a synchronous save, and a failed or
cancelled save leaves nothing at the target (an older file there stays as it was)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import QTimer

from napari_lpd import _writer

GATE_TIMEOUT_S = 10  # without the worker the writer would block the GUI this long


def labels_map() -> np.ndarray:
    labels = np.zeros((700, 900), np.uint8)
    labels[10:300, 20:450] = 1
    labels[320:650, 30:420] = 3
    labels[330:600, 460:890] = 2
    return labels


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(labels_map(), name="painted", scale=(0.5, 0.5), units=("µm", "µm"))
    return viewer


@pytest.fixture
def gate(monkeypatch):
    """The writer's TIFF export waits until ``gate.set()`` (the file is being written)."""
    gate = threading.Event()
    real = _writer.export_tiff

    def gated(store, path):
        gate.wait(GATE_TIMEOUT_S)
        return real(store, path)

    monkeypatch.setattr(_writer, "export_tiff", gated)
    return gate


def save_from_event_loop(qtbot, viewer, path) -> tuple[list[str], float]:
    """``viewer.layers.save`` called from inside the event loop, as a menu action is."""
    out: list = []

    def save() -> None:
        start = time.perf_counter()
        saved = viewer.layers.save(str(path), selected=True, plugin="napari-lpd")
        out.extend([saved, time.perf_counter() - start])

    QTimer.singleShot(0, save)
    qtbot.waitUntil(lambda: bool(out), timeout=3 * GATE_TIMEOUT_S * 1000)
    return out[0], out[1]


def wait_for_jobs(qtbot) -> None:
    qtbot.waitUntil(lambda: not _writer.JOBS, timeout=60_000)
    qtbot.wait(50)


def test_menu_save_returns_at_once_and_writes_the_same_file(viewer, gate, qtbot,
                                                            tmp_path) -> None:
    reference = tmp_path / "sync.tif"
    gate.set()
    assert viewer.layers.save(str(reference), selected=True, plugin="napari-lpd") == [
        str(reference)]  # from code, outside the event loop: written before returning
    assert reference.is_file() and not _writer.JOBS
    gate.clear()

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    target = tmp_path / "menu.tif"
    saved, seconds = save_from_event_loop(qtbot, viewer, target)
    assert saved == [str(target)] and seconds < GATE_TIMEOUT_S / 2
    assert len(_writer.JOBS) == 1 and not target.exists()  # still being written
    before = len(ticks)
    qtbot.wait(300)
    assert len(ticks) - before >= 5  # the GUI thread keeps processing events meanwhile
    assert not target.exists()  # only a temp file beside it so far
    gate.set()
    wait_for_jobs(qtbot)
    timer.stop()
    assert target.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["menu.tif", "sync.tif"]


@pytest.mark.parametrize("end", ["fails", "cancelled"])
def test_a_failed_or_cancelled_save_leaves_no_file(viewer, gate, qtbot, tmp_path,
                                                   monkeypatch, end) -> None:
    target = tmp_path / "labels.tif"
    target.write_bytes(b"the older file")
    if end == "fails":
        def half_then_fail(store, path):
            path.write_bytes(b"II*\0half a TIFF")
            raise OSError(28, "No space left on device", str(path))

        monkeypatch.setattr(_writer, "export_tiff", half_then_fail)
    errors: list[str] = []

    def record(n) -> None:
        if n.severity >= NotificationSeverity.ERROR:
            errors.append(str(n.message))

    notification_manager.notification_ready.connect(record)
    try:
        assert save_from_event_loop(qtbot, viewer, target)[0] == [str(target)]
        if end == "cancelled":
            _writer.JOBS[0].cancel()
        gate.set()
        wait_for_jobs(qtbot)
    finally:
        notification_manager.notification_ready.disconnect(record)
    assert target.read_bytes() == b"the older file"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]  # no temp file left
    if end == "fails":
        assert len(errors) == 1 and errors[0].startswith(
            "Saving labels.tif failed: OSError: No space left on device — ")
    else:
        assert errors == []
