"""Shared test set-up for tests/core and tests/plugin: environment, and the tiny model,
checkpoint and slide that many tests need (built once per session)."""

import copy
import os
from collections.abc import Callable
from pathlib import Path

import pytest

# huggingface_hub reads this once, at import time: set it before any test imports timm.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP reads this when torch loads it: passive waiting keeps two torch threads from
# collapsing when the two cores are shared (with Xvfb, napari's threads, subprocesses).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The tiny model: resnet18 (random weights, no download), 2 prototypes per class, input
# 96 px (halo 16: output tiles of 64 px), no training magnification, eval mode; seed 1.
TINY_MODEL = {"backbone": "resnet18", "prototypes_per_class": 2, "input_size": 96}
TINY_MODEL_SEED = 1
# The tiny checkpoint: resnet18, 2 prototypes per class, input 128 (halo 32: output tiles
# of 64 px), trained magnification 0.5 µm/px, as the generated slides; seed 0.
TINY_CHECKPOINT = {"backbone": "resnet18", "prototypes_per_class": 2, "input_size": 128,
                   "microns_per_pixel": 0.5}
TINY_CHECKPOINT_SEED = 0
# The small slide: a generated 384 x 448 px pyramidal JPEG TIFF, 128 px tiles, 0.5 µm/px
# (``lpd.data.pyramid.write_synthetic_pyramid``, seed 1: tissue almost everywhere).
SMALL_SLIDE = {"size": (384, 448), "tile": 128, "seed": 1, "mpp": 0.5}


def _seeded_model(spec: dict, seed: int):
    """``create_model(**spec)`` from ``torch.manual_seed(seed)``, leaving the global RNG
    as it was (so a fixture's use never changes another test's random numbers)."""
    import torch

    from lpd.model import create_model

    spec = dict(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(spec.pop("backbone"), **spec)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): tests that check results, where two OpenMP threads on busy
    shared cores are many times slower than one (docs/architecture.md, Threads)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def new_tiny_model() -> Callable[[], object]:
    """A function returning a fresh copy of the tiny model (see ``TINY_MODEL``): for a
    module-scoped fixture that needs one (it cannot use the function-scoped ``tiny_model``).
    The model is built once; each call deep-copies it, so changes never leak."""
    base = _seeded_model(TINY_MODEL, TINY_MODEL_SEED).eval()
    return lambda: copy.deepcopy(base)


@pytest.fixture
def tiny_model(new_tiny_model):
    """The tiny model (``TINY_MODEL``), a fresh copy per test: a test may change it."""
    return new_tiny_model()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path of the tiny checkpoint (``TINY_CHECKPOINT``), written once per session.
    Shared: read it, never change it or write beside it (copy it to ``tmp_path`` first)."""
    from lpd.io.checkpoint import save_checkpoint

    model = _seeded_model(TINY_CHECKPOINT, TINY_CHECKPOINT_SEED)
    return save_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "tiny.safetensors",
                           model)


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory) -> Path:
    """Path of the small slide (``SMALL_SLIDE``), written once per session. Shared: read
    it, never change it or write beside it (copy it to ``tmp_path`` first)."""
    from lpd.data.pyramid import write_synthetic_pyramid

    return write_synthetic_pyramid(tmp_path_factory.mktemp("small-slide") / "slide.tiff",
                                   **SMALL_SLIDE)


@pytest.fixture
def quiet_tifffile():
    """tifffile's logger silenced for a test: broken files make it log warnings, and the
    assertions are on our errors."""
    import logging

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
