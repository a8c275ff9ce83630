"""The background reader of tiled inference (``WindowReader``).

One thread assembles the windows of the next batches while the model computes the
current one (a queue of ``ahead`` batches); the pixels come from blocks of the output grid
(``_blocks.BlockCache``) read by a pool of ``threads`` decoding threads, a few windows
ahead, so that each file tile is decoded about once even though windows overlap. dask is
computed synchronously in those threads (never in dask's own pool). A batch's computed
windows are written into one ``(n, size, size, 3)`` uint8 tensor, in pinned memory when
the model is on a GPU (so the copy there can overlap the work). Where the tissue is judged
on the pixels (no low-resolution view), a window whose tiles are all background is
dropped from the batch (no pixels) and its tiles' flags are reported."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lpd.infer._blocks import BlockCache
from lpd.wsi.region import RegionSource
from lpd.wsi.tissue import DEFAULT_SATURATION, tissue_fraction

Box = tuple[int, int, int, int]


@dataclass
class WindowItem:
    """One window of a batch: its index, its row in the batch's pixels (None when all its
    tiles were found to be background) and, when checked here, which of its tiles are
    background."""

    index: int
    row: int | None
    tiles_background: tuple[bool, ...] | None = None

    @property
    def computed(self) -> bool:
        return self.row is not None


@dataclass
class WindowBatch:
    """Windows in grid order, and the pixels of those to compute: ``pixels[item.row]``."""

    items: list[WindowItem]
    pixels: torch.Tensor  # (n, size, size, 3) uint8, n = computed windows (pinned on GPU)


_END = object()


class WindowReader:
    """Reads batches of windows in a background thread, ``ahead`` batches ahead.

    ``windows``: the window indices to read, in order; ``window_box(i)`` gives a window's
    output-pixel box ``(y0, y1, x0, x1)``; ``tile_boxes(i)`` the boxes of its output tiles,
    for the tissue check when ``check_tissue(i)`` is true. A batch holds ``batch_size``
    windows to compute, with any windows found to be background on the way."""

    def __init__(
        self,
        source: RegionSource,
        windows: Sequence[int],
        window_box: Callable[[int], Box],
        tile_boxes: Callable[[int], list[Box]],
        check_tissue: Callable[[int], bool],
        batch_size: int,
        tissue_min_fraction: float,
        saturation: float = DEFAULT_SATURATION,
        *,
        threads: int = 1,
        phase: tuple[int, int] = (0, 0),
        pin_memory: bool = False,
        ahead: int = 1,
    ) -> None:
        self._windows = [int(i) for i in windows]
        self._window_box = window_box
        self._tile_boxes = tile_boxes
        self._check_tissue = check_tissue
        self._batch_size = batch_size
        self._min_fraction = tissue_min_fraction
        self._saturation = saturation
        self._pin = pin_memory
        self._blocks = BlockCache(source, threads, phase)
        self._lookahead = max(2 * batch_size, 4 * threads)  # windows whose blocks are read
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lpd-window-reader", daemon=True)

    def start(self) -> WindowReader:
        self._thread.start()
        return self

    def batches(self) -> Iterator[WindowBatch]:
        """Batches in order; re-raises an error of the reader thread here."""
        while True:
            got = self._queue.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread: it ends after the window in progress; reads in progress end."""
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a pending put
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
            timeout -= 0.05
            if timeout <= 0:
                break
        self._blocks.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._read_batches():
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _new_pixels(self, size: tuple[int, int]) -> torch.Tensor:
        return torch.empty((self._batch_size, *size, 3), dtype=torch.uint8,
                           pin_memory=self._pin)

    def _read_batches(self) -> Iterator[WindowBatch]:
        """Batches of ``batch_size`` windows to compute (and the background ones met)."""
        items: list[WindowItem] = []
        pixels: torch.Tensor | None = None
        rows = 0
        ahead = 0  # windows whose blocks were asked for
        for n, index in enumerate(self._windows):
            if self._stop.is_set():
                return
            while ahead < min(n + self._lookahead, len(self._windows)):
                self._blocks.prefetch([self._window_box(self._windows[ahead])])
                ahead += 1
            box = self._window_box(index)
            if pixels is None:
                pixels = self._new_pixels((box[1] - box[0], box[3] - box[2]))
            out = self._blocks.window(box, pixels[rows].numpy())
            flags = self._tissue_flags(index, box, out)
            if flags is not None and all(flags):
                items.append(WindowItem(index, None, flags))
            else:
                items.append(WindowItem(index, rows, flags))
                rows += 1
            if rows == self._batch_size:
                yield WindowBatch(items, pixels)
                items, pixels, rows = [], None, 0
                self._blocks.release_above(box[0])
        if items and pixels is not None:  # pixels are made with a batch's first window
            yield WindowBatch(items, pixels[:rows])

    def _tissue_flags(self, index: int, box: Box, pixels: np.ndarray
                      ) -> tuple[bool, ...] | None:
        """Which tiles of window ``index`` are background, judged on its pixels (None when
        its tiles' tissue is known already)."""
        if not self._check_tissue(index):
            return None
        wy0, _, wx0, _ = box
        return tuple(
            tissue_fraction(pixels[ty0 - wy0 : ty1 - wy0, tx0 - wx0 : tx1 - wx0],
                            self._saturation) < self._min_fraction
            for ty0, ty1, tx0, tx1 in self._tile_boxes(index)
        )
