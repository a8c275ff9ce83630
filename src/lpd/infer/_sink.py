"""Where tiled inference puts its tiles (memory or an ``OutputStore``), resume checks, and
prototype-cell bookkeeping."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

from lpd.errors import InputError
from lpd.infer._blend import AxisGrid
from lpd.infer._plan import TilePlan
from lpd.io.store import OutputStore


class MemorySink:
    """Labels (and prototype cells) kept in memory: for views and small regions."""

    def __init__(self, plan: TilePlan, prototypes: int | None, stride: float) -> None:
        h, w = plan.shape
        self.tile = plan.tile
        self.labels = np.zeros((h, w), np.uint8)
        self.stride = stride
        self.prototypes = (np.zeros((prototypes, cell_count(h, stride), cell_count(w, stride)),
                                    np.float16) if prototypes else None)

    def needed_tiles(self, grid: tuple[int, int]) -> np.ndarray:
        return np.ones(grid, bool)

    def put_tile(self, i: int, j: int, labels: np.ndarray | None,
                 protos: np.ndarray | None) -> None:
        y0, x0 = i * self.tile, j * self.tile
        if labels is not None:
            self.labels[y0 : y0 + labels.shape[0], x0 : x0 + labels.shape[1]] = labels
        if protos is not None and self.prototypes is not None:
            u0 = math.ceil(y0 / self.stride - 0.5)
            v0 = math.ceil(x0 / self.stride - 0.5)
            self.prototypes[:, u0 : u0 + protos.shape[1], v0 : v0 + protos.shape[2]] = protos


def open_sink(
    store: OutputStore | str | Path | None,
    model: torch.nn.Module,
    plan: TilePlan,
    prototypes: bool,
    count: int,
    stride: float,
    resume: bool,
    settings: dict,
    chunk: int | None = None,
) -> MemorySink | OutputStore:
    """The sink for a run: memory (no store), a new store, or a store to resume (same
    fingerprint: geometry, model config and weights, settings; else InputError)."""
    if store is None:
        return MemorySink(plan, count if prototypes else None, stride)
    fingerprint = {
        "shape": list(plan.shape), "tile": plan.tile, "halo": plan.halo,
        "input_size": plan.input_size, "level": plan.level, "resize": plan.resize,
        "scale": plan.scale, "offset": list(plan.offset), "prototypes": bool(prototypes),
        "model": _jsonable(model.config.to_dict()), "weights": weights_digest(model),
        **_jsonable(settings),
    }
    if isinstance(store, OutputStore):
        opened = store
    else:
        path = Path(store)
        opened = None
        if path.exists() and resume and OutputStore.is_store(path):
            opened = OutputStore.open(path, mode="r+")
            if not opened.is_whole():  # interrupted while being created: start again
                opened = None
        elif path.exists() and not OutputStore.is_store(path):
            raise InputError(path, "exists and is not an lpd prediction store")
        if opened is None:
            cfg = model.config
            names = [f"{c}-{i + 1}" for c in cfg.class_names for i in range(model.k)]
            return OutputStore.create(
                path, shape=plan.shape, tile=plan.tile, class_names=cfg.class_names,
                class_colours=cfg.class_colours, mpp=plan.mpp, scale=plan.scale,
                offset=plan.offset, prototypes=count if prototypes else None,
                prototype_stride=stride, prototype_names=names, fingerprint=fingerprint,
                info=plan.info(), chunk=chunk, overwrite=True,
            )
    stored = opened.meta.get("fingerprint", {})
    if stored != fingerprint:
        diff = sorted(k for k in set(stored) | set(fingerprint)
                      if stored.get(k) != fingerprint.get(k))
        raise InputError(opened.path, "holds a prediction made with other settings "
                         f"(differs in: {', '.join(diff)}); pass resume=False to replace it")
    return opened


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of the weights, so a rerun never resumes another model's store."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value):
    return json.loads(json.dumps(value))


def window_cells(protos: torch.Tensor, gy: AxisGrid, gx: AxisGrid, r: int, c: int,
                  stride: int) -> np.ndarray:
    """Prototype cells (P, h, w) of the tiles of window (r, c), nearest cell of its map."""
    ys = _cell_index(gy, gy.window_tiles[r], gy.starts[r], stride, protos.shape[-2])
    xs = _cell_index(gx, gx.window_tiles[c], gx.starts[c], stride, protos.shape[-1])
    return protos[:, ys][:, :, xs].to(torch.float16).cpu().numpy()


def _cell_index(grid: AxisGrid, tiles: list[int], start: int, stride: int, n: int) -> list[int]:
    u0 = cell_range(grid.tile_span(tiles[0]), stride)[0]
    u1 = cell_range(grid.tile_span(tiles[-1]), stride)[1]
    return [int(np.clip(round(u - start / stride), 0, n - 1)) for u in range(u0, u1)]


def tile_cells(protos: np.ndarray | None, gy: AxisGrid, gx: AxisGrid, i: int, j: int,
                win, stride: int) -> np.ndarray | None:
    if protos is None:
        return None
    base_u = cell_range(gy.tile_span(gy.window_tiles[win.r][0]), stride)[0]
    base_v = cell_range(gx.tile_span(gx.window_tiles[win.c][0]), stride)[0]
    u0, u1 = cell_range(gy.tile_span(i), stride)
    v0, v1 = cell_range(gx.tile_span(j), stride)
    return protos[:, u0 - base_u : u1 - base_u, v0 - base_v : v1 - base_v]


def cell_range(span: tuple[int, int], stride: float) -> tuple[int, int]:
    """Cells (of a map at ``stride`` px) whose centres lie in the pixel span."""
    return math.ceil(span[0] / stride - 0.5), math.ceil(span[1] / stride - 0.5)


def cell_count(length: int, stride: float) -> int:
    return max(1, math.ceil(length / stride - 0.5))
