"""The rolling band of blended class maps (``RowAccumulator``): sums of weighted maps and
of weights on one cell grid, for the rows windows still need; windows' maps are added one
by one, or several at once when their cells do not overlap (``disjoint_groups``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class RowAccumulator:
    """Sum of weighted maps and of weights on a cell grid, for a rolling band of rows."""

    def __init__(self, channels: int, width: int, device: torch.device) -> None:
        self.buf = torch.zeros((channels + 1, 0, width), device=device)
        self.base = 0  # grid row of buf row 0

    def add_terms(self, y: int, x: int, terms: torch.Tensor) -> None:
        """Add one window's terms at cell (y, x): ``terms`` (C + 1, n, n) holds its
        weighted maps ``values * weights``, then ``weights``."""
        end = y + terms.shape[-2]
        self._cover(y, end)
        self.buf[:, y - self.base : end - self.base, x : x + terms.shape[-1]] += terms

    def _cover(self, y: int, end: int) -> None:
        """Grow the band to hold rows [y, end) (y must not have been released)."""
        if y < self.base:
            raise RuntimeError(f"row {y} was already released (band starts at {self.base})")
        missing = end - (self.base + self.buf.shape[1])
        if missing > 0:
            extra = self.buf.new_zeros((self.buf.shape[0], missing, self.buf.shape[2]))
            self.buf = torch.cat([self.buf, extra], dim=1)

    def add_disjoint(self, ys: list[int], xs: list[int], values: torch.Tensor,
                     weights: torch.Tensor) -> None:
        """``add`` for windows whose cells do not overlap, in one operation: ``ys``, ``xs``
        their first cells, ``values`` (B, C, n, n), ``weights`` (B, n, n). Each cell
        receives one addition, so the result does not depend on the order (GPU atomics);
        nothing is read back from the device."""
        n = values.shape[-1]
        self._cover(min(ys), max(ys) + n)
        width, device = self.buf.shape[2], self.buf.device
        first = torch.as_tensor([(y - self.base) * width + x for y, x in zip(ys, xs, strict=True)],
                                device=device)
        off = torch.arange(n, device=device)
        cells = (off[:, None] * width + off[None, :]).reshape(-1)  # (n * n,) within a window
        flat = (first[:, None] + cells[None, :]).reshape(-1)
        src = torch.cat([values * weights[:, None], weights[:, None]], dim=1)  # (B, C+1, n, n)
        channels = self.buf.shape[0]
        view = self.buf.view(channels, -1)
        view.index_add_(1, flat, src.permute(1, 0, 2, 3).reshape(channels, -1))

    def release_before(self, row: int) -> None:
        drop = min(max(row - self.base, 0), self.buf.shape[1])
        if drop:
            self.buf = self.buf[:, drop:].clone()  # clone frees the dropped rows
            self.base += drop

    def raw(self, y0: int, y1: int, x0: int, x1: int, rows: int, cols: int) -> torch.Tensor:
        """Sums and weights (C + 1, ...) over cells [y0-1, y1+1) x [x0-1, x1+1): one margin
        cell for interpolation; margin cells outside the grid (rows x cols) or the band
        come back with weight 0 (``blend`` then clamps)."""
        b = self.base
        ya, yb = max(y0 - 1, 0, b), min(y1 + 1, rows, b + self.buf.shape[1])
        xa, xb = max(x0 - 1, 0), min(x1 + 1, cols)
        if (ya, yb, xa, xb) == (y0 - 1, y1 + 1, x0 - 1, x1 + 1):
            return self.buf[:, ya - b : yb - b, xa:xb]
        out = self.buf.new_zeros((self.buf.shape[0], y1 - y0 + 2, x1 - x0 + 2))
        out[:, ya - y0 + 1 : yb - y0 + 1, xa - x0 + 1 : xb - x0 + 1] = self.buf[
            :, ya - b : yb - b, xa:xb
        ]
        return out


def disjoint_groups(windows: Sequence[tuple[int, int]],
                    extent: Callable[[int, int], tuple[int, int, int, int]]) -> list[list[int]]:
    """Positions of ``windows`` in groups whose pixel ``extent(r, c)`` boxes (y0, y1, x0,
    x1) do not overlap, each window in the first group it fits (deterministic)."""
    groups: list[list[int]] = []
    boxes: list[list[tuple[int, int, int, int]]] = []
    for b, (r, c) in enumerate(windows):
        y0, y1, x0, x1 = extent(r, c)
        for members, taken in zip(groups, boxes, strict=True):
            if all(y1 <= a0 or a1 <= y0 or x1 <= b0 or b1 <= x0 for a0, a1, b0, b1 in taken):
                members.append(b)
                taken.append((y0, y1, x0, x1))
                break
        else:
            groups.append([b])
            boxes.append([(y0, y1, x0, x1)])
    return groups
