"""The accuracy benchmark (issue 5): train every configuration with the same backbone,
budget, data and thread count, several seeds each, and score it under both presence
protocols on (i) held-apart mosaics of the training tile folder (new crops and layouts)
and (ii) mosaics of a second tile folder (another centre or release).

``AccuracyBenchmark(settings).events()`` is a generator of progress events (it never
prints); ``report()`` is the JSON-able result so far, and ``write_outputs`` (in
``lpd.bench.report``) writes it with a markdown table and a PNG plot."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import lpd
from lpd._processes import ChildWatch
from lpd.bench import variants
from lpd.bench.accuracy_settings import (
    EVAL_SETS,
    TEST_SEED,
    AccuracySettings,
    BenchEvent,
    cpu_count,
    file_digest,
    quick_settings,
    shared_tiles,
)
from lpd.bench.sweep import sweep_inference
from lpd.config import ModelConfig, TrainConfig
from lpd.data.datasets import collate
from lpd.data.mosaic import TileFolder
from lpd.data.sources import HELD_APART_SEED, TRAIN_MOSAIC_SEED, mosaic_dataset
from lpd.errors import InputError
from lpd.evaluation import score
from lpd.io.checkpoint import save_checkpoint
from lpd.model import create_model
from lpd.model.lpd_model import LPDModel
from lpd.model.prototype_bank import build_bank, install_bank
from lpd.trainer import Trainer, seed_everything


class AccuracyBenchmark:
    def __init__(self, settings: AccuracySettings, out_dir: str | Path | None = None) -> None:
        self.settings = s = settings
        for name in s.configs:
            if name not in variants.VARIANTS:
                raise ValueError(f"unknown configuration {name!r}")
        if s.seeds < 1 or s.steps < 1:
            raise ValueError("seeds and steps must be >= 1")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.train_folder = TileFolder(s.train_tiles)
        self.test_folder = TileFolder(s.test_tiles)
        self.overlap = shared_tiles(self.train_folder, self.test_folder)
        if self.overlap and not s.allow_overlap:
            a, b = self.overlap[0]
            raise InputError(Path(b), f"the test folder shares {len(self.overlap)} tile(s) "
                             f"with the training folder (same contents as {a}); the test "
                             "score would not measure generalisation (allow_overlap to "
                             "run anyway)")
        self.runs: list[dict[str, Any]] = []
        self._eval_cache: dict[tuple, list[tuple[torch.Tensor, ...]]] = {}
        self._t0 = time.perf_counter()
        self._wall = 0.0
        self.complete = False

    # -- data ----------------------------------------------------------------------------
    def _model_config(self, variant: variants.Variant) -> ModelConfig:
        s = self.settings
        base = {"backbone": s.backbone, "prototypes_per_class": s.k, "input_size": s.size,
                "output_stride": s.output_stride,
                "microns_per_pixel": s.mpp if s.mpp is not None else s.train_tile_mpp,
                **s.model_extra, **variant.model}
        return ModelConfig.from_dict(base)

    def _train_config(self, variant: variants.Variant, seed: int) -> TrainConfig:
        s = self.settings
        base = {"steps": s.steps, "batch_size": s.batch_size, "lr": s.lr,
                "warmup_iters": s.warmup_iters, "seed": seed, "threads": s.run_threads,
                "num_workers": s.num_workers, "val_every": 0, "checkpoint_every": 0,
                **variant.train}
        return TrainConfig.from_dict(base)

    def eval_batches(self, config: ModelConfig, which: str) -> list[tuple[torch.Tensor, ...]]:
        """The evaluation set, built once per input normalisation and kept in memory, so
        every configuration and seed is scored on the very same pixels."""
        key = (which, config.input_size, config.mean, config.std, config.stain_normalisation)
        if key not in self._eval_cache:
            s = self.settings
            held = which == "held_apart"
            ds = mosaic_dataset(self.train_folder if held else self.test_folder, config,
                                s.eval_mosaics, HELD_APART_SEED if held else TEST_SEED,
                                tile_mpp=s.train_tile_mpp if held else s.test_tile_mpp)
            self._eval_cache[key] = _batches(ds, 16)
        return self._eval_cache[key]

    # -- the runs ------------------------------------------------------------------------
    def events(self) -> Iterator[BenchEvent]:
        """Train and score every (configuration, seed); yields progress as it goes."""
        s = self.settings
        # seed-major: a stopped benchmark still compares every configuration
        tasks = [(name, seed) for seed in range(s.seeds) for name in s.configs]
        if s.run_jobs > 1 and len(tasks) > 1:
            yield from self._parallel(tasks)
        else:
            if s.device == "cpu":
                torch.set_num_threads(s.run_threads)
            for name, seed in tasks:
                yield from self._run(variants.VARIANTS[name], seed)
        self.complete = True
        self._wall = time.perf_counter() - self._t0

    def _parallel(self, tasks: list[tuple[str, int]]) -> Iterator[BenchEvent]:
        """``run_jobs`` runs at a time in spawned processes (each builds its evaluation
        sets once and keeps them for its next runs); their progress comes back through a
        queue. Results are kept in task order, whatever order the runs finish in."""
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        s = self.settings
        context = mp.get_context("spawn")  # torch and fork do not mix
        out_dir = str(self.out_dir) if self.out_dir is not None else None
        watch = ChildWatch()
        with context.Manager() as manager:
            progress = manager.Queue()
            with ProcessPoolExecutor(s.run_jobs, mp_context=context) as pool:
                try:
                    yield from self._collect(pool, tasks, progress, out_dir)
                except BaseException:
                    # stopped (Ctrl-C, SIGTERM, a failed run): the pool's exit would wait
                    # for the runs in progress (minutes); end them now instead
                    pool.shutdown(wait=False, cancel_futures=True)
                    watch.stop_new()
                    raise

    def _collect(self, pool, tasks: list[tuple[str, int]], progress, out_dir: str | None
                 ) -> Iterator[BenchEvent]:
        """Submit the runs to ``pool``; yield their progress, then each finished run."""
        import queue as queue_module
        from concurrent.futures import FIRST_COMPLETED, wait

        pending = {pool.submit(_run_in_child, self.settings, out_dir, name, seed, progress):
                   (name, seed) for name, seed in tasks}
        order = {task: i for i, task in enumerate(tasks)}
        records: list[tuple[int, dict[str, Any]]] = []
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            while True:
                try:
                    yield progress.get_nowait()
                except queue_module.Empty:
                    break
            for future in finished:
                task = pending.pop(future)
                record, done = future.result()  # a failed run raises here
                records.append((order[task], record))
                self.runs = [r for _, r in sorted(records, key=lambda x: x[0])]
                self._wall = time.perf_counter() - self._t0
                yield done

    def _build(self, variant: variants.Variant, seed: int) -> LPDModel:
        s = self.settings
        config = self._model_config(variant)
        seed_everything(seed)  # same head init for every configuration of a seed
        model = create_model(config=config, pretrained=s.pretrained)
        if variant.bank == "projected":  # P lives in the joint (concatenated) feature space
            config = ModelConfig.from_dict({**config.to_dict(),
                                            "prototype_dim": sum(model.channels)})
            seed_everything(seed)
            model = create_model(config=config, pretrained=s.pretrained)
        return model.to(s.device)

    def _run(self, variant: variants.Variant, seed: int) -> Iterator[BenchEvent]:
        s = self.settings
        name = variant.name
        model = self._build(variant, seed)
        t_bank = time.perf_counter()
        if variant.bank == "fixed":
            yield BenchEvent(name, seed, "bank", message="k-means prototype bank")
            install_bank(model, self.train_folder, s.bank_crops, seed)
        elif variant.bank == "projected":
            yield BenchEvent(name, seed, "bank", message="k-means prototype bank")
            banks = build_bank(model, self.train_folder, s.bank_crops, seed)
            joint = torch.cat(banks, dim=1) / len(banks) ** 0.5
            with torch.no_grad():
                model.head.prototypes.copy_(joint.to(model.head.prototypes))
        bank_seconds = time.perf_counter() - t_bank
        tc = self._train_config(variant, seed)
        data = mosaic_dataset(self.train_folder, model.config, tc.steps * tc.batch_size,
                              TRAIN_MOSAIC_SEED + seed, augment=True, train=tc,
                              tile_mpp=s.train_tile_mpp)
        run_dir = self.out_dir / f"{name}-seed{seed}" if self.out_dir is not None else None
        trainer = Trainer(model, tc, data, None, run_dir, s.device)
        t0 = time.perf_counter()
        every = max(1, tc.steps // 20)
        last: dict[str, float] = {}
        for p in trainer.steps():
            last = p.losses
            if p.step % every == 0 or p.step == p.total:
                yield BenchEvent(name, seed, "train", p.step, p.total,
                                 f"loss {p.loss:.3f}, {p.elapsed / p.step:.2f} s/step")
        train_seconds = time.perf_counter() - t0
        yield BenchEvent(name, seed, "evaluate", message="scoring")
        t1 = time.perf_counter()
        scores: dict[str, Any] = {}
        guess: dict[str, Any] = {}
        sweep: dict[str, Any] = {}
        for which in EVAL_SETS:
            batches = self.eval_batches(model.config, which)
            result = score(model, batches, s.device).as_dict()
            guess[which] = result.pop("one_class_guess")
            scores[which] = result
            if name in s.inference_sweep:
                sweep[which] = sweep_inference(model, batches, s.device)
        eval_seconds = time.perf_counter() - t1
        if run_dir is not None:
            save_checkpoint(run_dir / "bench.safetensors", model, {"config": name, "seed": seed})
        record = {
            "config": name, "seed": seed, "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / max(tc.steps, 1),
            "bank_seconds": bank_seconds, "eval_seconds": eval_seconds,
            "final_losses": last, "model": model.config.to_dict(), "train": tc.to_dict(),
            "scores": scores, "one_class_guess": guess,
        }
        if sweep:
            record["inference_sweep"] = sweep
        self.runs.append(record)
        self._wall = time.perf_counter() - self._t0
        yield BenchEvent(name, seed, "done", tc.steps, tc.steps,
                         _headline(scores, train_seconds, eval_seconds))

    # -- the result ----------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        from lpd.bench.report import summarise

        s = self.settings
        return {
            "benchmark": "accuracy",
            "lpd_version": lpd.__version__,
            "complete": self.complete,
            "quick": s.quick,
            "settings": s.as_dict(),
            "budget": (f"{s.steps} steps of batch {s.batch_size} per run "
                       f"(warm-up {s.warmup_iters}), {s.seeds} seed(s), "
                       f"{s.size} px, {s.run_threads} torch thread(s) per run on "
                       f"{s.device}, {s.run_jobs} run(s) at a time"),
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "machine": platform.machine(), "cpu_count": cpu_count(),
                            "device": s.device, "threads": s.run_threads,
                            "jobs": s.run_jobs},
            "data": {
                "train_tiles": {"folder": str(s.train_tiles),
                                "tiles": {k: len(v) for k, v in self.train_folder.paths.items()}},
                "test_tiles": {"folder": str(s.test_tiles),
                               "tiles": {k: len(v) for k, v in self.test_folder.paths.items()}},
                "shared_tiles": self.overlap,
                "eval_sets": {
                    "held_apart": {"folder": str(s.train_tiles), "mosaics": s.eval_mosaics,
                                   "seed": HELD_APART_SEED},
                    "test": {"folder": str(s.test_tiles), "mosaics": s.eval_mosaics,
                             "seed": TEST_SEED},
                },
                "training_mosaics_per_run": s.steps * s.batch_size,
            },
            "configs": {n: variants.VARIANTS[n].as_dict() for n in s.configs},
            "wall_seconds": self._wall,
            "runs": self.runs,
            **summarise(self.runs, s.configs),
        }


_CHILD_BENCH: dict[str, AccuracyBenchmark] = {}  # per worker process: its eval sets


def _run_in_child(settings: AccuracySettings, out_dir: str | None, name: str, seed: int,
                  progress: Any) -> tuple[dict[str, Any], BenchEvent]:
    """One (configuration, seed) run in a worker process: progress events go to the
    queue; the record and the final "done" event come back as the result."""
    bench = _CHILD_BENCH.get("bench")
    if bench is None:
        if settings.device == "cpu":
            torch.set_num_threads(settings.run_threads)
        bench = _CHILD_BENCH["bench"] = AccuracyBenchmark(settings, out_dir)
    done = None
    for event in bench._run(variants.VARIANTS[name], seed):
        if event.phase == "done":
            done = event
        else:
            progress.put(event)
    assert done is not None
    return bench.runs[-1], done


def _batches(ds: Dataset, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    items = [ds[i] for i in range(len(ds))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def _headline(scores: dict[str, Any], train_s: float, eval_s: float) -> str:
    parts = [f"{w} mIoU pred/oracle {scores[w]['predicted']['mIoU']:.3f}/"
             f"{scores[w]['oracle']['mIoU']:.3f}" for w in EVAL_SETS]
    return "; ".join(parts) + f" (train {train_s:.0f} s, eval {eval_s:.0f} s)"


__all__ = ["EVAL_SETS", "TEST_SEED", "AccuracyBenchmark", "AccuracySettings", "BenchEvent",
           "file_digest", "quick_settings", "shared_tiles"]
