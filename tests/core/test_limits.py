"""Limits: out-of-memory on the device halves the batch once, then says so clearly;
memory stays bounded on a huge (100k x 100k) slide."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lpd.data.synthetic import synthetic_tissue
from lpd.errors import LPDError
from lpd.infer.tiled import predict_tiled, run_tiled

predict = functools.partial(predict_tiled, device="cpu", tissue_threshold=None, halo=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_tissue(128, 3, background=False)[0]  # 2 x 2 windows of 96


@pytest.fixture(scope="module")
def reference(small_model, image):
    return run_tiled(predict(small_model, image, batch_size=4))


@pytest.fixture(scope="module")
def small_model(new_tiny_model):
    return new_tiny_model()


class FailingForward:
    """Raises ``error`` on the first ``fail`` calls with more than ``over`` images."""

    def __init__(self, model, error: Exception, fail: int = 1, over: int = 0) -> None:
        self.model, self.error, self.fail, self.over = model, error, fail, over
        self.sizes: list[int] = []
        self._forward = model.forward

    def __enter__(self) -> FailingForward:
        def forward(x):
            self.sizes.append(int(x.shape[0]))
            if self.fail and x.shape[0] > self.over:
                self.fail -= 1
                raise self.error
            return self._forward(x)

        self.model.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward


def _oom_errors() -> list[Exception]:
    errors: list[Exception] = [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
    ]
    if hasattr(torch, "OutOfMemoryError"):
        errors.append(torch.OutOfMemoryError("out of memory"))
    return errors


@pytest.mark.parametrize("error", _oom_errors(), ids=lambda e: type(e).__name__)
def test_oom_halves_the_batch_once_and_gives_the_same_result(small_model, image, reference,
                                                            error) -> None:
    with FailingForward(small_model, error) as fake:
        result = run_tiled(predict(small_model, image, batch_size=4))
    assert fake.sizes[0] == 4 and fake.sizes[1] == 2  # failed at 4, retried at 2
    assert max(fake.sizes[1:]) <= 2  # stays halved for the rest of the run
    assert result.forward_passes == reference.forward_passes
    assert np.array_equal(result.labels, reference.labels)


def test_oom_twice_is_a_clear_error(small_model, image, tmp_path) -> None:
    error = torch.cuda.OutOfMemoryError("CUDA out of memory")
    with FailingForward(small_model, error, fail=2), pytest.raises(LPDError) as info:
        run_tiled(predict(small_model, image, batch_size=4, store=tmp_path / "o.zarr"))
    message = str(info.value)
    assert "out of memory" in message and "2 image(s)" in message and "batch size" in message
    from lpd.io.store import OutputStore
    assert not OutputStore.open(tmp_path / "o.zarr").complete


def test_other_runtime_errors_are_not_swallowed(small_model, image) -> None:
    with FailingForward(small_model, RuntimeError("shape mismatch")) as fake, \
            pytest.raises(RuntimeError, match="shape mismatch"):
        run_tiled(predict(small_model, image, batch_size=4))
    assert fake.sizes == [4]


HUGE = textwrap.dedent("""
    import resource, sys, torch
    from lpd.data.pyramid import write_synthetic_pyramid
    from lpd.wsi.slide import open_slide
    from lpd.infer.tiled import predict_tiled, run_tiled
    from lpd.model import create_model
    torch.set_num_threads(1)
    path = write_synthetic_pyramid(sys.argv[1], content="constant")
    slide = open_slide(path)
    assert slide.shape == (100_000, 100_000), slide.shape
    level = len(slide.levels) - 1
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = create_model("resnet18", prototypes_per_class=2, input_size=96).eval()
    res = run_tiled(predict_tiled(model, slide, level=level, store=sys.argv[2], halo=16,
                                  device="cpu", tissue_threshold=None, batch_size=4))
    assert res.store.complete
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("LEVEL", level, slide.levels[level].shape, "PASSES", res.forward_passes,
          "PEAK_KB", peak, "BEFORE_KB", before)
""")


@pytest.mark.slow
def test_huge_slide_memory_is_bounded(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", HUGE, str(tmp_path / "huge.tif"),
                           str(tmp_path / "huge.zarr")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LEVEL"))
    print(line)
    peak_kb = int(line.split("PEAK_KB")[1].split()[0])
    assert peak_kb < 2 * 1024 * 1024, line  # < 2 GiB peak RSS
