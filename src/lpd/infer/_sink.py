"""Where tiled inference puts its tiles (memory or an ``OutputStore``), resume checks, and
prototype-cell bookkeeping. A store is written by ``StoreWriter``'s thread, so compressing
and writing a chunk never stalls the loop."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path

import numpy as np
import torch

from lpd.errors import InputError, StoreMismatch
from lpd.infer._plan import TilePlan
from lpd.io.store import OutputStore
from lpd.tiling import AxisGrid, cell_count, cell_range, cell_start


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
            u0, v0 = cell_start(y0, self.stride), cell_start(x0, self.stride)
            self.prototypes[:, u0 : u0 + protos.shape[1], v0 : v0 + protos.shape[2]] = protos


class StoreWriter:
    """Hands tiles to an ``OutputStore`` in a background thread, in the order given.

    ``finished()`` is the store's chunks marked finished on disk as of the last write done
    here (it may lag behind the tiles handed over: a caller deciding what to keep for a
    resume keeps more). Marks are deferred (``OutputStore.put_tile``'s ``defer_mark``: a row
    of chunks in one write). ``flush()`` waits until every tile handed over is in the store
    and its chunks marked; an error of the thread is raised by the next ``put_tile`` or
    ``flush``. Tiles' arrays must not change once handed over."""

    def __init__(self, store: OutputStore, depth: int = 1024) -> None:
        self.store = store
        self._finished = store.finished().copy()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lpd-store-writer", daemon=True)
        self._thread.start()

    def put_tile(self, i: int, j: int, labels: np.ndarray | None,
                 protos: np.ndarray | None) -> None:
        self.put_tiles([(i, j, labels, protos)])

    def put_tiles(self, tiles: list[tuple]) -> None:
        """Hand over tiles ``(i, j, labels, protos)`` in one queue item (fewer wake-ups of
        the thread than one per tile)."""
        self._raise()
        self._queue.put(tiles)

    def finished(self) -> np.ndarray:
        return self._finished

    def flush(self) -> None:
        self._queue.join()
        self._write_marks()
        self._raise()

    def close(self, tiles: list[tuple] = ()) -> None:
        """Write what was handed over (and ``tiles``) and mark its chunks, then end the
        thread (errors are raised)."""
        if self._thread.is_alive():
            if tiles:
                self._queue.put(list(tiles))
            self._queue.join()
            self._write_marks()
            self._queue.put(None)
            self._thread.join()
        self._raise()

    def _write_marks(self) -> None:
        """The deferred marks (the thread is idle: the queue is joined). Chunks whose data
        was written are marked even after an error of the thread."""
        try:
            self.store.write_marks()
        except BaseException as exc:  # raised with the thread's errors
            self._error = self._error or exc
        self._finished |= self.store.finished()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                for i, j, labels, protos in item:
                    if self._error is not None:  # after an error: drain, write nothing more
                        break
                    if self.store.put_tile(i, j, labels, protos, defer_mark=True):
                        self._finished |= self.store.finished()  # what is marked on disk
            except BaseException as exc:  # raised in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()


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
        raise StoreMismatch(opened.path, diff)
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


# -- resume without recomputation ------------------------------------------------------
RESUME_STATE = "resume-state.npz"


def save_resume_state(store: OutputStore, blender, cells: dict) -> None:
    """What an interrupted run had computed and a resume would otherwise compute again:
    the blending band (weighted class-map sums and weights of the rows still needed by
    unfinished chunks, per fused scale), the windows in it, and their prototype cells.
    Written atomically beside the store's arrays; removed when the store completes."""
    import io

    from lpd._atomic import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {
        "computed": np.array(sorted(blender.computed), np.int64).reshape(-1, 2),
        "grid": np.array(blender.grid, np.int64),
    }
    for k, acc in enumerate(blender.acc):
        arrays[f"base{k}"] = np.array(acc.base, np.int64)
        arrays[f"band{k}"] = acc.buf.detach().cpu().numpy()
    for (r, c), cell in cells.items():
        arrays[f"cells_{r}_{c}"] = cell
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(store.path / RESUME_STATE, buf.getvalue())


def load_resume_state(store: OutputStore, blender, cells: dict) -> set[tuple[int, int]]:
    """Restore ``save_resume_state``'s band into ``blender`` (and prototype cells into
    ``cells``); returns the windows that need no forward pass again. A missing, damaged
    or mismatched state restores nothing (the resume then recomputes neighbours)."""
    path = store.path / RESUME_STATE
    if not path.is_file():
        return set()
    try:
        with np.load(path) as data:
            if not np.array_equal(data["grid"], np.array(blender.grid, np.int64)):
                return set()
            bands = [(int(data[f"base{k}"]), data[f"band{k}"]) for k in range(len(blender.acc))]
            computed = {(int(r), int(c)) for r, c in data["computed"]}
            restored = {tuple(int(v) for v in key.split("_")[1:]): data[key]
                        for key in data.files if key.startswith("cells_")}
    except (OSError, ValueError, KeyError):
        return set()
    for acc, (_, band) in zip(blender.acc, bands, strict=True):
        if band.shape[0] != acc.buf.shape[0] or band.shape[2] != acc.buf.shape[2]:
            return set()
    for acc, (base, band) in zip(blender.acc, bands, strict=True):
        acc.base = base
        acc.buf = torch.as_tensor(band, device=acc.buf.device)
    blender.computed |= computed
    cells.update(restored)
    return computed


def drop_resume_state(store: OutputStore) -> None:
    (store.path / RESUME_STATE).unlink(missing_ok=True)
