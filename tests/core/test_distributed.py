"""Distributed data parallel training: two CPU processes (gloo) launched by torch's own
``torchrun``, a few steps through ``Trainer``; both ranks must end with identical weights
that differ from the start, see disjoint shards of the data, and only rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lpd import distributed

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import numpy as np
    import torch
    from torch.utils.data import Dataset
    from lpd.config import TrainConfig
    from lpd.data.datasets import tags_from_labels, to_tensor
    from lpd.data.synthetic import synthetic_tissue
    from lpd.model import create_model
    from lpd.trainer import Trainer

    class Logged(Dataset):
        def __init__(self, n):
            self.items = [synthetic_tissue(64, seed=i) for i in range(n)]
            self.seen = []
        def __len__(self):
            return len(self.items)
        def __getitem__(self, i):
            self.seen.append(int(i))
            rgb, labels = self.items[i]
            return to_tensor(rgb), torch.from_numpy(tags_from_labels(labels)), None

    out = Path(sys.argv[1])
    head = sys.argv[2]
    torch.manual_seed(0)
    model = create_model("resnet18", head=head, prototypes_per_class=2, prototype_dim=16,
                         input_size=64)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = Logged(8)
    cfg = TrainConfig(steps=4, batch_size=2, warmup_iters=2, lr=1e-2, seed=0, threads=1)
    trainer = Trainer(model, cfg, data, None, out / "run", "cpu")
    list(trainer.steps())
    rank = trainer.dist.rank
    torch.save({"params": {k: v.detach() for k, v in model.named_parameters()},
                "start": start, "world": trainer.dist.world_size, "seen": data.seen,
                "history": trainer.history}, out / f"rank{rank}.pt")
''')


def _torchrun(tmp_path: Path, head: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(script), str(tmp_path), head]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("head", ["prototype"])
def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path, head: str) -> None:
    r0, r1 = _torchrun(tmp_path, head)
    assert r0["world"] == r1["world"] == 2
    changed = 0
    for name, p0 in r0["params"].items():
        assert torch.equal(p0, r1["params"][name]), f"{name} differs between ranks"
        changed += not torch.equal(p0, r0["start"][name])
    assert changed > len(r0["params"]) // 2  # training moved (most of) the weights
    # the diversity loss ran after warm-up, through DDP
    assert "div" in r0["history"][-1] and "div" not in r0["history"][0]
    # each rank saw its own shard of the data in the first epoch (8 items, 2 per step)
    first0, first1 = set(r0["seen"][:4]), set(r1["seen"][:4])
    assert first0.isdisjoint(first1) and first0 | first1 == set(range(8))
    # only rank 0 wrote the checkpoint and the history
    assert (tmp_path / "run" / "last.safetensors").is_file()
    assert (tmp_path / "run" / "history.json").is_file()


def test_single_process_is_not_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = distributed.setup("cpu")
    assert not ctx.enabled and ctx.is_main and device == torch.device("cpu")
    assert distributed.is_main_process()
    distributed.barrier()  # a no-op outside a process group
