"""Shared fixtures of the plugin tests."""

import pytest
import torch


@pytest.fixture
def isolated_one_thread(tmp_path, monkeypatch):
    """A fresh lpd cache per test (no run resumes another's store) and one torch thread:
    2 threads on 2 busy cores collapse (docs/architecture.md, Threads)."""
    monkeypatch.setenv("LPD_CACHE_DIR", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def records():
    """The napari notifications shown while the test runs (what a user sees of an error)."""
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)
