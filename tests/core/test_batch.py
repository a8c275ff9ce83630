"""``lpd.batch`` / ``lpd batch`` on a dask LocalCluster of 2 workers: good slides finish and
export, a truncated one is reported by name without stopping the others, reruns skip.

The fast tests run the cluster's 2 workers as threads (``processes=False``): the same
scheduler, futures and failure paths as worker processes, without spawning two interpreters
that import torch (measured here: 27 s each on the 2 loaded cores). The default, worker
processes, is tested by a ``slow`` test of the CLI."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from lpd.batch import BatchOptions, BatchTask, parse_task, read_task_file, run_batch
from lpd.cli.main import main
from lpd.data.pyramid import write_synthetic_pyramid
from lpd.errors import InputError
from lpd.io.store import OutputStore


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batch")
    ckpt = tiny_checkpoint
    a = write_synthetic_pyramid(root / "a.tiff", (256, 320), tile=128, seed=1, mpp=0.5)
    b = write_synthetic_pyramid(root / "b.tiff", (320, 256), tile=128, seed=7, mpp=0.5)
    whole = write_synthetic_pyramid(root / "broken.tiff", (256, 256), tile=128, seed=1)
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])  # truncated
    return {"ckpt": ckpt, "a": a, "b": b, "broken": whole}


def test_parse_tasks(tmp_path) -> None:
    assert parse_task("x/s.svs") == BatchTask(Path("x/s.svs"))
    t = parse_task("x/s.svs@10,20,300,400")
    assert t.region == (10, 20, 300, 400) and t.name == "s_x10_y20_w300_h400"
    assert parse_task("x/me@lab.svs").slide == Path("x/me@lab.svs")  # '@' in a file name
    with pytest.raises(InputError, match="empty"):
        parse_task("s.svs@0,0,0,5")
    listing = tmp_path / "tasks.txt"
    listing.write_text("# slides\na.svs\n\n/abs/b.svs@1,2,3,4  # a region\n")
    assert read_task_file(listing) == [BatchTask(tmp_path / "a.svs"),
                                       BatchTask(Path("/abs/b.svs"), (1, 2, 3, 4))]


def test_batch_on_two_workers_reports_failures_and_resumes(inputs, tmp_path) -> None:
    out = tmp_path / "out"
    seen: list[dict] = []
    tasks = [inputs["a"], inputs["broken"], inputs["b"]]
    kwargs = dict(workers=2, processes=False, options=BatchOptions(batch_size=4))
    report = run_batch(tasks, out, inputs["ckpt"], on_status=seen.append, **kwargs)
    assert report.finished and report.counts == {"done": 2, "skipped": 0, "failed": 1,
                                                 "pending": 0}
    assert sorted(r["name"] for r in seen) == ["a", "b", "broken"]
    failed = report.failed[0]
    assert failed["name"] == "broken" and failed["error"]["type"] == "InputError"
    assert failed["attempts"] == 1 and report.retries == 0  # bad input is not retried
    assert "broken.tiff" in failed["error"]["message"]
    assert "truncated" in failed["error"]["message"]
    for name in ("a", "b"):
        store = OutputStore.open(out / f"{name}.zarr")
        assert store.complete
        for suffix in ("-labels.tiff", ".geojson", "-areas.csv"):
            assert (out / f"{name}{suffix}").stat().st_size > 0
    done = {t["name"]: t for t in report.tasks}
    assert done["a"]["passes"] > 0 and done["a"]["tiles"] == 20  # 256 x 320 in tiles of 64
    # windows per busy second, per worker (workers as threads here: names "0" and "1")
    assert sum(w["windows"] for w in report.workers.values()) == done["a"]["passes"] + \
        done["b"]["passes"]
    assert all(w["windows_per_s"] > 0 for w in report.workers.values() if w["windows"])
    saved = json.loads((out / "batch-report.json").read_text())
    assert saved["counts"]["failed"] == 1 and saved["finished"]
    assert [t["name"] for t in saved["tasks"]] == ["a", "broken", "b"]  # input order

    # an interrupted store (here: complete flag cleared) resumes; finished ones are skipped
    partial = OutputStore.open(out / "b.zarr", mode="r+")
    partial.meta["complete"] = False
    partial.group.attrs["lpd"] = partial.meta
    again = run_batch(tasks, out, inputs["ckpt"], **kwargs)
    status = {t["name"]: t["status"] for t in again.tasks}
    assert status == {"a": "skipped", "b": "done", "broken": "failed"}
    resumed = next(t for t in again.tasks if t["name"] == "b")
    assert resumed["passes"] == 0  # every chunk was finished: nothing recomputed
    assert OutputStore.open(out / "b.zarr").complete


def test_batch_refuses_clashing_names(inputs, tmp_path) -> None:
    with pytest.raises(InputError, match="same output name"):
        run_batch([inputs["a"], tmp_path / "a.tiff"], tmp_path / "o", inputs["ckpt"])


@pytest.fixture
def threaded(monkeypatch):
    import lpd.batch

    monkeypatch.setattr(lpd.batch, "run_batch",
                        functools.partial(lpd.batch.run_batch, processes=False))


def test_cli_batch_regions(inputs, tmp_path, capsys, threaded) -> None:
    cli_run(inputs, tmp_path, capsys)


@pytest.mark.slow
def test_cli_batch_on_worker_processes(inputs, tmp_path, capsys) -> None:
    cli_run(inputs, tmp_path, capsys)


def cli_run(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    spec = f"{inputs['a']}@0,64,128,192"
    code = main(["batch", spec, str(inputs["broken"]), "--out", str(out), "--checkpoint",
                 str(inputs["ckpt"]), "--workers", "2", "--batch-size", "4"])
    assert code == 1  # one task failed
    text = capsys.readouterr().out
    assert "a_x0_y64_w128_h192: done" in text
    assert "broken: FAILED InputError" in text and "broken.tiff" in text
    assert "1 done, 0 skipped (already complete), 1 failed" in text
    store = OutputStore.open(out / "a_x0_y64_w128_h192.zarr")
    assert store.complete and store.shape == (192, 128) and store.offset == (0.0, 64.0)


def test_batch_on_a_running_scheduler(inputs, tmp_path) -> None:
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        report = run_batch([f"{inputs['b']}@0,0,128,128"], tmp_path, inputs["ckpt"],
                           scheduler=cluster.scheduler_address)
    assert report.scheduler == f"scheduler {cluster.scheduler_address}"
    assert report.counts["done"] == 1
    assert (tmp_path / "b_x0_y0_w128_h128-areas.csv").is_file()


def _start(name: str, submission: int, worker: str, pid: int) -> dict:
    return {"name": name, "submission": submission, "stage": "start", "worker_name": worker,
            "address": f"tcp://w{worker}", "pid": pid}


def _tiles(name: str, submission: int, done: int, windows: int, elapsed: float) -> dict:
    return {"name": name, "submission": submission, "stage": "tiles", "done": done,
            "total": 10, "windows": windows, "elapsed": elapsed}


def _done(name: str, worker: str, pid: int, windows: int, busy: float) -> dict:
    return {"name": name, "status": "done", "worker": worker, "pid": pid, "passes": windows,
            "busy_s": busy}


def test_attempts_count_starts_not_submissions() -> None:
    from lpd.batch_report import AttemptLog, BatchReport

    log = AttemptLog(["a", "b", "c"], retries=1)
    # a: started on worker 0, lost at 4/10 tiles, retried on worker 1: 2 attempts, 1 retry
    assert log.submit("a") == 1
    log.event(_start("a", 1, "0", 11))
    log.event(_tiles("a", 1, 4, 5, 2.0))
    assert log.lost("a") == "retry"
    assert log.submit("a") == 2
    log.event(_tiles("a", 1, 6, 7, 3.0))  # late news of the lost attempt: ignored
    log.event(_start("a", 2, "1", 12))
    a = log.finish("a", _done("a", "1", 12, 6, 1.5))
    assert (a["attempts"], a["retries"], a["windows"], a["busy_s"]) == (2, 1, 11, 3.5)
    assert [h["outcome"] for h in a["history"]] == ["worker died", "done"]
    assert a["history"][0]["tiles_done"] == 4 and a["history"][0]["pid"] == 11
    # b: queued on the worker that died, never started: submitted again, not an attempt
    log.submit("b")
    assert log.lost("b") == "requeue"
    log.submit("b")
    log.event(_start("b", 2, "1", 12))
    b = log.finish("b", _done("b", "1", 12, 3, 1.0))
    assert (b["attempts"], b["retries"]) == (1, 0)
    # c: a scheduler rerunning it by itself (its own allowed-failures): each start counts;
    # the start past 1 + retries is to be cancelled, and no retry is left after a loss
    log.submit("c")
    assert log.event(_start("c", 1, "0", 11)) is False
    assert log.event(_start("c", 1, "1", 12)) is False
    assert log.event(_start("c", 1, "0", 13)) is True
    assert log.lost("c") == "failed"
    c = log.finish("c", {"name": "c", "status": "failed", "error": {"type": "WorkerLost"}})
    assert [h["outcome"] for h in c["history"]] == ["worker died"] * 3

    report = BatchReport("o", "k", "s", "now", seconds=10.0, retries_allowed=1,
                         tasks=[a, b, c])
    report.update_throughput()
    assert report.retries == 1 + 0 + 2
    assert report.workers["1"]["windows"] == 9 and report.workers["1"]["slides"] == 2
    assert report.workers["1"]["windows_per_s"] == pytest.approx(9 / 2.5)
    assert report.workers["0"]["attempts"] == 3  # a's first, c's first and third
    assert report.throughput["windows"] == 11 + 3
    assert report.throughput["windows_per_s"] == pytest.approx(1.4)
