"""run_in_worker: the job runs below the GUI thread's CPU priority, one progress bar per job
(created at the start, renamed per stage), values delivered in order."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from helpers_segment import wait_for

from napari_lpd import _workers


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
    assert seen == [max(gui, _workers.BACKGROUND_NICE)]
    assert returned == seen  # threads the job starts inherit it
    assert gui < _workers.BACKGROUND_NICE  # the GUI thread itself is untouched


def test_one_progress_bar_per_job_renamed_per_stage(make_napari_viewer, qtbot,
                                                    monkeypatch) -> None:
    make_napari_viewer()
    created: list[str] = []
    renamed: list[str] = []
    real_progress = _workers.progress

    def recording(**kwargs):
        created.append(kwargs["desc"])
        bar = real_progress(**kwargs)
        bar.events.description.connect(lambda event: renamed.append(event.value))
        return bar

    monkeypatch.setattr(_workers, "progress", recording)
    monkeypatch.setattr(_workers, "UPDATE_INTERVAL_S", 0.0)  # every value is an update

    def job():
        yield from ("a", "a", "b", "c")

    values: list[str] = []
    handle = _workers.run_in_worker(job, description="job", total=lambda v: 3,
                                    done=lambda v: 1, describe=lambda v: f"stage {v}",
                                    on_yield=values.extend)
    assert created == ["job"]  # at the start, before any value
    wait_for(qtbot, handle)
    assert values == ["a", "a", "b", "c"]
    assert created == ["job"] and renamed == ["stage a", "stage b", "stage c"]
    assert handle.bar is None  # closed at the end
