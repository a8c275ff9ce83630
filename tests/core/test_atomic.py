"""Atomic writes: all or nothing, the usual permissions, and no temp files left behind by
killed writers once the file is written again."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lpd._atomic import atomic_open, atomic_write_text, remove_stale_temps


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this id now (reuse within the test: unlikely)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "tags.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("disk gone")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.json"]


@pytest.mark.skipif(os.name != "posix", reason="process probing: POSIX")
def test_temps_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "tags.json"
    atomic_write_text(target, "v1")
    dead = tmp_path / f".tags.json.{_dead_pid()}-abc123.tmp"
    live = tmp_path / f".tags.json.{os.getpid()}-def456.tmp"  # a writer at work right now
    other = tmp_path / f".notes.json.{_dead_pid()}-abc123.tmp"  # another file's
    for p in (dead, live, other):
        p.write_text("partial")
    atomic_write_text(target, "v2")
    assert target.read_text() == "v2"
    assert not dead.exists() and live.exists() and other.exists()
    assert remove_stale_temps(tmp_path / "notes.json") == [other]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    atomic_write_text(target, "a,b\n")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
