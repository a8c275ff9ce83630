"""run_in_worker: the job runs below the GUI thread's CPU priority, one progress bar per job
(created at the start, renamed per stage), values delivered in order."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from helpers_segment import wait_for

from napari_lpd import _workers
from napari_lpd._priority import BACKGROUND_NICE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice: Linux")
def test_job_threads_run_at_background_priority(make_napari_viewer, qtbot) -> None:
    make_napari_viewer()
    seen: list[int] = []
    returned: list[int] = []

    def job():
        # what a job's own helper thread (torch's OpenMP team, lpd's reader) inherits
        child: list[int] = []
        t = threading.Thread(target=lambda: child.append(
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        t.start()
        t.join()
        yield os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return child[0]

    handle = _workers.run_in_worker(job, description="test", on_yield=seen.extend,
                                    on_return=returned.append)
    wait_for(qtbot, handle)
    gui = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [max(gui, BACKGROUND_NICE)]
    assert returned == seen  # threads the job starts inherit it
    assert gui < BACKGROUND_NICE  # the GUI thread itself is untouched


def test_one_progress_bar_per_job_renamed_per_stage(make_napari_viewer, qtbot,
                                                    monkeypatch) -> None:
    make_napari_viewer()
    created: list[str] = []
    renamed: list[str] = []
    moved: list[int] = []  # the bar's value events (the activity dock's bar follows them)
    real_progress = _workers.progress

    def recording(**kwargs):
        created.append(kwargs["desc"])
        bar = real_progress(**kwargs)
        bar.events.description.connect(lambda event: renamed.append(event.value))
        bar.events.value.connect(lambda event: moved.append(event.value))
        return bar

    monkeypatch.setattr(_workers, "progress", recording)
    monkeypatch.setattr(_workers, "UPDATE_INTERVAL_S", 0.0)  # every value is an update

    def job():
        yield from ("a", "a", "b", "c")
        # the result after the bar has shown the last stage (bar steps still queued when
        # the result arrives are dropped: the bar goes a turn later)
        for _ in range(1000):
            if moved and moved[-1] == 2:
                break
            time.sleep(0.01)

    values: list[str] = []
    handle = _workers.run_in_worker(job, description="job", total=lambda v: 3,
                                    done=lambda v: ord(v) - ord("a"), describe=lambda v: f"stage {v}",
                                    on_yield=values.extend)
    assert created == ["job"]  # at the start, before any value
    wait_for(qtbot, handle)
    assert values == ["a", "a", "b", "c"]
    assert created == ["job"] and renamed == ["stage a", "stage b", "stage c"]
    # the bar itself moves, not only its "n/total" text (issue: it stayed at 0 %)
    assert moved[-1] == 2 and moved == sorted(moved)
    assert handle.bar is None  # closed at the end


def test_error_messages_put_the_reason_before_the_file(monkeypatch) -> None:
    from lpd.errors import CheckpointError, InputError
    from napari_lpd import _notify

    folder = "/very/long/path/to/the/slides/of/a/study"
    shown: list[str] = []
    monkeypatch.setattr(_notify, "show_error", shown.append)
    _notify.notify_error(InputError(f"{folder}/case 7.svs", "file is truncated"), "Reading")
    assert shown == [f"Reading failed: file is truncated — case 7.svs ({folder})"]
    message = _notify.error_message(CheckpointError(f"{folder}/m.safetensors", "NaN weights"))
    assert message.startswith("NaN weights — ") and message.endswith(f"m.safetensors ({folder})")
    missing = FileNotFoundError(2, "No such file or directory", f"{folder}/gone.svs")
    assert _notify.error_message(missing) == (
        f"FileNotFoundError: No such file or directory — gone.svs ({folder})")
    assert _notify.error_message(InputError(None, "choose an image")) == "choose an image"
    assert _notify.error_message(ValueError("bad")) == "ValueError: bad"


def test_quick_start_sets_up_after_the_call_and_before_the_job(make_napari_viewer, qtbot,
                                                               monkeypatch) -> None:
    """``quick_start`` (the Run click): the call returns first; then the GUI set-up, then the
    progress bar, then the job itself (never beside the set-up: both would want the GIL)."""
    make_napari_viewer()
    order: list[str] = []
    real_progress = _workers.progress

    def recording(**kwargs):
        order.append("bar")
        return real_progress(**kwargs)

    monkeypatch.setattr(_workers, "progress", recording)

    def job():
        order.append("job")
        yield 1

    handle = _workers.run_in_worker(job, description="job", total=lambda v: 1,
                                    done=lambda v: v, on_start=lambda: order.append("set-up"),
                                    on_yield=lambda values: order.append("value"),
                                    quick_start=True)
    order.append("returned")
    wait_for(qtbot, handle)
    assert order == ["returned", "set-up", "bar", "job", "value"]
    assert handle.bar is None and not handle.cancelled


def test_quick_start_cancelled_at_once_ends_without_set_up(make_napari_viewer, qtbot) -> None:
    make_napari_viewer()
    order: list[str] = []
    finished: list[object] = []

    def job():
        order.append("job")
        yield 1

    handle = _workers.run_in_worker(job, description="job", total=lambda v: 1,
                                    done=lambda v: v, on_start=lambda: order.append("set-up"),
                                    on_finish=finished.append, quick_start=True)
    handle.cancel()
    wait_for(qtbot, handle)
    assert order == [] and finished == [handle] and handle.bar is None


def test_the_result_the_bar_and_the_end_come_in_separate_turns(make_napari_viewer, qtbot
                                                               ) -> None:
    """Each step that changes the window gets its own event-loop turn (a window repaint
    between them, each repaint being one stall under software GL): a 0 ms timer set in
    ``on_return`` fires before ``on_finish``; no bar is left, none is made after the end."""
    from qtpy.QtCore import QTimer

    make_napari_viewer()
    order: list[str] = []

    def on_return(value):
        order.append("result")
        QTimer.singleShot(0, lambda: order.append("next turn"))

    def job():
        yield 1
        return 2

    handle = _workers.run_in_worker(job, description="job", total=lambda v: 2,
                                    done=lambda v: v, on_return=on_return,
                                    on_finish=lambda h: order.append("finish"))
    wait_for(qtbot, handle)
    assert order == ["result", "next turn", "finish"]
    qtbot.wait(3 * _workers.TURN_MS)  # a bar update queued before the end makes no bar
    assert handle.bar is None and not handle.running


def test_screen_changes_queued_in_one_turn_run_in_turns_of_their_own(make_napari_viewer,
                                                                     qtbot) -> None:
    """``RunHandle.later``: steps asked for in the same turn (the bar's new stage, the live
    layer's new data) each get an event-loop turn of their own, in order: a 0 ms timer set
    in a step fires before the next step."""
    from qtpy.QtCore import QTimer

    make_napari_viewer()
    order: list[str] = []

    def step(name):
        def run():
            order.append(name)
            QTimer.singleShot(0, lambda: order.append(f"after {name}"))
        return run

    def job():
        yield 1

    handle = _workers.run_in_worker(job, description="job", start=False)
    for name in ("a", "b", "c"):
        handle.later(step(name))
    qtbot.waitUntil(lambda: len(order) == 6)
    assert order == ["a", "after a", "b", "after b", "c", "after c"]
    handle.worker.start()
    wait_for(qtbot, handle)
