"""What every run of the accuracy benchmark (``lpd.bench.accuracy``) shares: its settings
(``AccuracySettings``, the ``--quick`` preset), its progress event and the checks of its
tile folders (identical tiles in both)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpd.bench import variants
from lpd.config import DEFAULT_BACKBONE
from lpd.data.mosaic import TileFolder
from lpd.data.sources import HELD_APART_SEED

EVAL_SETS = ("held_apart", "test")
# Both evaluation sets use the stream `lpd evaluate` uses by default, so a number here can
# be reproduced with `lpd evaluate FOLDER --checkpoint ...`.
TEST_SEED = HELD_APART_SEED


@dataclass
class AccuracySettings:
    """What every configuration shares. ``warmup=None``: one sixth of the steps (the
    paper's ratio, 3000 of 18738)."""

    train_tiles: Path
    test_tiles: Path
    configs: tuple[str, ...] = variants.DEFAULT_CONFIGS
    seeds: int = 3
    steps: int = 600
    batch_size: int = 8
    input_size: int | None = None  # None: 224 on a GPU, 128 on the CPU (see ``size``)
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    k: int = 10
    lr: float = 5e-5
    warmup: int | None = None
    threads: int | None = None  # torch threads per run; None: 1 on the CPU, 2 on a GPU
    jobs: int | None = None  # runs at a time, each in its own process; None: see run_jobs
    eval_mosaics: int = 64
    output_stride: int | None = None  # the default model's choice (stride 32: half the cost)
    # microns per pixel of the tiles; with both given, tiles are resampled to ``mpp`` (the
    # model's), which defaults to the training tiles'
    train_tile_mpp: float | None = None
    test_tile_mpp: float | None = None
    mpp: float | None = None
    bank_crops: int = 64  # single-class crops per class for the k-means bank
    inference_sweep: tuple[str, ...] = ("e_div",)  # configs whose inference settings we sweep
    device: str = "cpu"
    num_workers: int = 0
    allow_overlap: bool = False
    quick: bool = False
    model_extra: dict[str, Any] = field(default_factory=dict)  # e.g. prototype_dim for tests

    @property
    def size(self) -> int:
        """Patch side: 128 px on the CPU keeps the full default run near 90 minutes on two
        cores (a 224 px step costs ~3.7x more); GPUs use the paper's 224 px."""
        if self.input_size is not None:
            return self.input_size
        return 128 if str(self.device) == "cpu" else 224

    @property
    def run_threads(self) -> int:
        """Torch threads of each run. On the CPU one: lite0 at 128 px gains only 11 % from
        a second thread (0.55 -> 0.49 s/step, measured), so two single-thread runs side by
        side do 1.8x the work of one two-thread run."""
        if self.threads is not None:
            return self.threads
        return 1 if str(self.device) == "cpu" else 2

    @property
    def run_jobs(self) -> int:
        """Runs at a time: on the CPU, one per ``run_threads`` cores; on a GPU one."""
        if self.jobs is not None:
            return max(1, self.jobs)
        if str(self.device) != "cpu":
            return 1
        return max(1, (cpu_count() or 1) // self.run_threads)

    @property
    def warmup_iters(self) -> int:
        return self.steps // 6 if self.warmup is None else self.warmup

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(train_tiles=str(self.train_tiles), test_tiles=str(self.test_tiles),
                 warmup_iters=self.warmup_iters, input_size=self.size,
                 threads=self.run_threads, jobs=self.run_jobs)
        return d


def quick_settings(settings: AccuracySettings) -> AccuracySettings:
    """The ``--quick`` preset: four configurations, one seed, 30 steps of batch 4 at 128 px,
    16 evaluation mosaics per set, no inference sweep (a smoke run of the machinery, not a
    measurement: about 2 minutes on two shared cores)."""
    return dataclasses.replace(
        settings, configs=variants.QUICK_CONFIGS, seeds=1, steps=30, batch_size=4,
        input_size=128, eval_mosaics=16, bank_crops=16, inference_sweep=(), quick=True,
    )


@dataclass
class BenchEvent:
    config: str
    seed: int
    phase: str  # "bank", "train", "evaluate", "done"
    step: int = 0
    total: int = 0
    message: str = ""


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shared_tiles(first: TileFolder, second: TileFolder) -> list[tuple[str, str]]:
    """Pairs of files (first, second) with identical contents in the two folders."""
    digests = {file_digest(p): p for paths in first.paths.values() for p in paths}
    return [(str(digests[d]), str(p)) for paths in second.paths.values() for p in paths
            if (d := file_digest(p)) in digests]


def cpu_count() -> int | None:
    """CPUs this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

