"""The one background reader thread of tiled inference (``WindowReader``).

It reads the windows of the next batch while the model computes the current one: one
thread, one batch ahead (a queue of one), dask read synchronously in this thread (never in
dask's own pool, which would compete with torch for the cores). Pixels come through
``lpd.wsi.region.RegionSource`` (the output grid seen on a pyramid level)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lpd.wsi.region import RegionSource
from lpd.wsi.tissue import DEFAULT_SATURATION, tissue_fraction


@dataclass
class WindowItem:
    """One window of a batch: its index, its pixels (None when all its tiles were found to
    be background) and, when checked here, which of its tiles are background."""

    index: int
    pixels: np.ndarray | None
    tiles_background: tuple[bool, ...] | None = None


_END = object()


class WindowReader:
    """Reads batches of windows in one background thread, one batch ahead.

    ``segments`` yields lists of window indices that are read with one bounding-box read
    (neighbours in one row of the grid). ``window_box(i)`` gives a window's output-pixel box
    ``(y0, y1, x0, x1)``; ``tile_boxes(i)`` the boxes of its output tiles, for the tissue
    check when ``check_tissue(i)`` is true. A batch holds ``batch_size`` windows to compute,
    with any windows found to be background on the way."""

    def __init__(
        self,
        source: RegionSource,
        segments: Iterator[Sequence[int]],
        window_box: Callable[[int], tuple[int, int, int, int]],
        tile_boxes: Callable[[int], list[tuple[int, int, int, int]]],
        check_tissue: Callable[[int], bool],
        batch_size: int,
        tissue_min_fraction: float,
        saturation: float = DEFAULT_SATURATION,
    ) -> None:
        self._source = source
        self._segments = segments
        self._window_box = window_box
        self._tile_boxes = tile_boxes
        self._check_tissue = check_tissue
        self._batch_size = batch_size
        self._min_fraction = tissue_min_fraction
        self._saturation = saturation
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lpd-window-reader", daemon=True)

    def start(self) -> WindowReader:
        self._thread.start()
        return self

    def batches(self) -> Iterator[list[WindowItem]]:
        """Batches in order; re-raises an error of the reader thread here."""
        while True:
            got = self._queue.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread: it ends after the read in progress (at most one batch)."""
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
            pending: list[WindowItem] = []
            computed = 0
            for segment in self._segments:
                if self._stop.is_set():
                    return
                for item in self._read_segment(segment):
                    pending.append(item)
                    if item.pixels is not None:
                        computed += 1
                    if computed == self._batch_size:
                        if not self._put(pending):
                            return
                        pending, computed = [], 0
            if pending and not self._put(pending):
                return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _read_segment(self, segment: Sequence[int]) -> list[WindowItem]:
        boxes = [self._window_box(i) for i in segment]
        y0 = min(b[0] for b in boxes)
        y1 = max(b[1] for b in boxes)
        x0 = min(b[2] for b in boxes)
        x1 = max(b[3] for b in boxes)
        block = self._source.read(y0, y1, x0, x1)
        items = []
        for index, (wy0, wy1, wx0, wx1) in zip(segment, boxes, strict=True):
            pixels = block[wy0 - y0 : wy1 - y0, wx0 - x0 : wx1 - x0]
            flags = None
            if self._check_tissue(index):
                flags = tuple(
                    tissue_fraction(pixels[ty0 - wy0 : ty1 - wy0, tx0 - wx0 : tx1 - wx0],
                                    self._saturation) < self._min_fraction
                    for ty0, ty1, tx0, tx1 in self._tile_boxes(index)
                )
                if all(flags):
                    items.append(WindowItem(index, None, flags))
                    continue
            items.append(WindowItem(index, np.ascontiguousarray(pixels), flags))
        return items
