"""Commands that start processes end them when they are stopped (SIGTERM, or SIGINT as
Ctrl-C sends it): after the signal no descendant of the command is left within 10 s.
Each test starts the real command in a fresh process, waits until its workers exist,
signals it, and looks for every process of its tree with psutil."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers_processes import alive

from lpd.data.pyramid import write_synthetic_pyramid


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_and_check(args: list[str], workers: int, sig: int, tmp_path: Path) -> int:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "log.txt").open("w")
    # SIGINT back to its default in the child: a test run started as a background job of a
    # non-interactive shell inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt (seen in a clean-clone CI run started with `&`)
    proc = subprocess.Popen([sys.executable, "-m", "lpd.cli.main", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while len(_tree(proc.pid)) < workers:
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        time.sleep(3)  # the workers are busy now (importing, reading, training)
        seen = _tree(proc.pid)
        assert len(seen) >= workers
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        left = alive(seen + _tree(proc.pid))
        while left and time.monotonic() - t0 < 10:
            time.sleep(0.2)
            left = alive(left)
        assert not left, f"left running: {[(p.pid, p.cmdline()[:3]) for p in left]}"
        return code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in alive(_tree(proc.pid)):
            p.kill()
        log.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_bench_accuracy_leaves_no_training_worker(tmp_path, sig) -> None:
    # --steps 2000: the runs cannot end before the signal, whatever the machine's speed
    args = ["bench", "accuracy", "--quick", "--steps", "2000", "--jobs", "2", "--threads",
            "1", "--no-pretrained", "--json", str(tmp_path / "acc.json")]
    code = _stop_and_check(args, 3, sig, tmp_path)  # a queue manager and two runs
    assert "wall time" not in (tmp_path / "log.txt").read_text()  # stopped, not finished
    assert code == (143 if sig == signal.SIGTERM else 130)
    assert "terminated" in (tmp_path / "log.txt").read_text() or sig == signal.SIGINT


def test_batch_leaves_no_cluster_process(tmp_path, tiny_checkpoint) -> None:
    ckpt = tiny_checkpoint
    slide = write_synthetic_pyramid(tmp_path / "a.tiff", (2048, 2048), tile=256, seed=1,
                                    mpp=0.5)
    args = ["batch", str(slide), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt),
            "--workers", "2"]
    code = _stop_and_check(args, 2, signal.SIGTERM, tmp_path)
    assert code == 143
