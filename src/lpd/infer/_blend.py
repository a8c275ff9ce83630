"""Blending of overlapping windows' class maps, and the per-tile step after it.

``patch.score_maps`` is each fused scale's class map (``LPDOutput.cams``, one cell per
``stride`` px) upsampled bilinearly to the input. Windows start on multiples of the coarsest
stride, so all windows' cells fall on one global grid per scale; blending happens on that
grid: ``G = sum_w omega_w * cams_w / sum_w omega_w``, kept in a rolling band of rows
(``RowAccumulator``), so memory does not grow with the slide. The blended score maps are the
bilinear upsampling of ``G`` on the global grid (pixel ``p`` at cell coordinate
``(p + 0.5) / stride - 0.5``, clamped at the region border), exactly what ``score_maps``
does for a single pass over a region whose size is a multiple of the stride.

Window weights ``omega`` are separable ``sin^2`` ramps, evaluated at cell centres, over the
``2 * halo`` px at each window edge that lies inside the region (neighbours overlap by
``2 * halo``, so two ramps sum to 1), flat at edges on the region border (a single pass sees
the same zero padding there), and never below ``lpd.tiling.WEIGHT_FLOOR``
(``AxisGrid.cell_weights``).

The per-tile step (``labels_from_scores``) runs per window on its blended maps clipped to the
region; only the part of its own tile(s) is computed, with the window-wide statistics (min,
max, presence) taken over the whole window, so the labels equal ``labels_from_scores`` on the
window, cropped (a test checks it).

Batches: a batch's maps are added window by window in grid order on the CPU (the same sums,
bit for bit, whatever the batches; the products ``omega * cams`` made for the batch at
once), in groups of windows whose cells do not overlap on a GPU (``index_add_``: a few
operations per batch, deterministic). Windows of one geometry are finalised together:
their crops of the band stacked, then (``CHUNK_WINDOWS`` at a time on the CPU, so that the
planes stay in the cache) each scale upsampled into a reused buffer and added into the
fused sum at once, and the labels made from it (``lpd.infer._labels``: numpy on the CPU,
tensor operations on a GPU); only the uint8 labels come back to the host."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lpd.infer._band import RowAccumulator, disjoint_groups
from lpd.infer._labels import add_scale, fusion_terms, labels_of_fused
from lpd.infer.patch import predicted_presence
from lpd.tiling import AxisGrid

#: Windows whose planes are made together on the CPU: 4 x (C, 160, 160) float32 planes, in
#: two buffers, stay in a core's L2 cache (measured on the bench slide's real maps: 0.76 ms
#: per window against 0.85 for whole groups of 8 and 0.87 one by one; the same labels).
CHUNK_WINDOWS = 4


def blend(raw: torch.Tensor) -> torch.Tensor:
    """``G = sums / weights`` of stacked ``RowAccumulator.raw`` crops (B, C + 1, h, w); a
    margin cell no window covered repeats the nearest inner cell (clamping, as
    ``F.interpolate`` does at a border). Inner cells are always covered (own window)."""
    num, den = raw[:, :-1], raw[:, -1:]
    quotient = num / den.clamp_min(1e-12)
    if raw.device.type == "cpu" and den.amin().item() > 0:  # every cell covered (no read
        return quotient  # back from a GPU): the same values without the clamping
    inner = num[:, :, 1:-1, 1:-1] / den[:, :, 1:-1, 1:-1]
    clamp = F.pad(inner, (1, 1, 1, 1), mode="replicate")
    return torch.where(den > 0, quotient, clamp)


def local_interpolation(cells: int, stride: int, start: int, length: int) -> torch.Tensor:
    """(length, cells + 2): bilinear weights of pixels [start, start + length) of a window
    over its cells with one margin cell each side (align_corners=False, scale ``stride``)."""
    n = cells + 2
    eye = torch.eye(n, dtype=torch.float64)[None]
    up = F.interpolate(eye, scale_factor=float(stride), mode="linear", align_corners=False)[0]
    return up.T[stride + start : stride + start + length].contiguous()


def extreme_samples(cells: int, stride: int, length: int) -> list[int]:
    """Pixels [0, length) of a window where a bilinear upsampling (``local_interpolation``)
    can reach its minimum or maximum: the first and last pixel between two cell centres.
    The upsampled map is linear between cell centres along each axis, so the extremes over
    all pixels are among these (and min/max over them equal those over the full map)."""
    pos = (np.arange(length) + 0.5) / stride - 0.5
    piece = np.floor(pos).astype(np.int64)
    first = np.flatnonzero(np.diff(piece, prepend=piece[0] - 1))
    last = np.flatnonzero(np.diff(piece, append=piece[-1] + 1))
    return sorted(set(first.tolist()) | set(last.tolist()))


@dataclass
class WindowLabels:
    """Finalised window: labels (and blended scores) over the span of its tiles."""

    r: int
    c: int
    y0: int  # output px of the span's corner
    x0: int
    labels: np.ndarray  # (h, w) uint8
    scores: np.ndarray | None  # (S, C, h, w) float32 when kept


class ScoreBlender:
    """Accumulates windows' class maps and finalises windows' labels."""

    def __init__(
        self,
        gy: AxisGrid,
        gx: AxisGrid,
        strides: Sequence[int],
        cells: Sequence[int],
        channels: int,
        device: torch.device,
        fusion_weights: Sequence[float],
        background_power: float,
        presence_threshold: float,
        presence: torch.Tensor | None = None,
        keep_scores: bool = False,
        ordered: bool | None = None,
    ) -> None:
        self.gy, self.gx = gy, gx
        # ordered: windows' maps added one by one in grid order (the CPU: bit for bit the
        # same sums whatever the batches); else in groups of disjoint windows (GPU)
        self.ordered = device.type != "cuda" if ordered is None else ordered
        self.strides, self.cells = list(strides), list(cells)
        self.device = device
        self.fusion_weights = tuple(fusion_weights)
        self.background_power = background_power
        self.presence_threshold = presence_threshold
        self.presence = None if presence is None else presence.to(device).bool()[None]
        self.keep_scores = keep_scores
        # cell grids start at the first window (which may lie before the region)
        self.oy, self.ox = -min(gy.starts[0], 0), -min(gx.starts[0], 0)
        ends_y = gy.starts[-1] + gy.size + self.oy
        ends_x = gx.starts[-1] + gx.size + self.ox
        self.grid = [(-(-ends_y // s), -(-ends_x // s)) for s in self.strides]
        self.acc = [RowAccumulator(channels, g[1], device) for g in self.grid]
        self.computed: set[tuple[int, int]] = set()
        self._weights: dict[tuple, torch.Tensor] = {}
        self._interp: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}
        self._work: dict[tuple, torch.Tensor] = {}

    def add_batch(self, windows: Sequence[tuple[int, int]], cams: Sequence[torch.Tensor]) -> None:
        """Class maps of a batch of windows ``(r, c)``, one (B, C, n_s, n_s) per fused scale:
        one by one in order (``ordered``), or per scale in a few operations, one per group
        of windows whose cells do not overlap (``disjoint_groups``)."""
        if self.ordered:  # per scale: the products at once, then the sums window by window
            for k, (acc, m) in enumerate(zip(self.acc, cams, strict=True)):
                s = self.strides[k]
                weights = torch.stack([self._weight(k, r, c) for r, c in windows])[:, None]
                terms = torch.cat([m.float() * weights, weights], dim=1)  # (B, C + 1, n, n)
                for b, (r, c) in enumerate(windows):
                    acc.add_terms(self._cy(r, s), self._cx(c, s), terms[b])
            self.computed.update(windows)
            return
        for members in disjoint_groups(windows, self._extent):
            pick = torch.as_tensor(members, device=self.device)
            rc = [windows[b] for b in members]
            for k, (acc, m) in enumerate(zip(self.acc, cams, strict=True)):
                s = self.strides[k]
                weights = torch.stack([self._weight(k, r, c) for r, c in rc])
                acc.add_disjoint([self._cy(r, s) for r, _ in rc], [self._cx(c, s) for _, c in rc],
                                 m.index_select(0, pick).float(), weights)
        self.computed.update(windows)

    def _extent(self, r: int, c: int) -> tuple[int, int, int, int]:
        """Window (r, c)'s pixels (y0, y1, x0, x1) on the cell grids' origin."""
        y0, x0 = self.gy.starts[r] + self.oy, self.gx.starts[c] + self.ox
        return y0, y0 + self.gy.size, x0, x0 + self.gx.size

    def _cy(self, r: int, stride: int) -> int:
        """Cell row (at ``stride``) of window row ``r``'s first cell."""
        return (self.gy.starts[r] + self.oy) // stride

    def _cx(self, c: int, stride: int) -> int:
        return (self.gx.starts[c] + self.ox) // stride

    def _weight(self, k: int, r: int, c: int) -> torch.Tensor:
        gy, gx = self.gy, self.gx
        key = (k, *gy.edges(r), *gx.edges(c))
        if key not in self._weights:
            s, n = self.strides[k], self.cells[k]
            wy = gy.cell_weights(r, s, n)
            wx = gx.cell_weights(c, s, n)
            self._weights[key] = torch.as_tensor(np.outer(wy, wx), dtype=torch.float32,
                                                 device=self.device)
        return self._weights[key]

    def release_before(self, r: int) -> None:
        """Forget grid rows no window from row ``r`` on can need."""
        for acc, s in zip(self.acc, self.strides, strict=True):
            acc.release_before(self._cy(r, s) - 1)
        self.computed = {k for k in self.computed if k[0] >= r}

    def _matrix(self, k: int, start: int, length: int) -> torch.Tensor:
        key = (k, start, length)
        if key not in self._interp:
            m = local_interpolation(self.cells[k], self.strides[k], start, length)
            self._interp[key] = m.to(torch.float32).to(self.device)
        return self._interp[key]

    def finalise(self, windows: Sequence[tuple[int, int]]) -> list[WindowLabels]:
        """Labels of the given windows (all their neighbours must have been added),
        batched over windows of the same geometry: one set of tensor operations per
        group on the blender's device; uint8 labels come back."""
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for r, c in windows:
            groups.setdefault(self._geometry(r, c), []).append((r, c))
        out: list[WindowLabels] = []
        for geometry, members in groups.items():
            _, _, py0, _, px0, _ = geometry
            labels, kept = self._finalise_group(geometry, members)
            for b, (r, c) in enumerate(members):
                out.append(WindowLabels(r, c, self.gy.starts[r] + py0, self.gx.starts[c] + px0,
                                        labels[b], None if kept is None else kept[b]))
        return out

    def _finalise_group(self, geometry: tuple[int, ...], members: list[tuple[int, int]]
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (B, ph, pw) uint8 (and scores (B, S, C, ph, pw) when kept) of windows of
        one geometry. The blended cells of every scale first (and from them the windows'
        min, max and presence), then the scales one by one: each upsampled into a reused
        buffer and added into the fused sum at once (``_labels.add_scale``)."""
        vh, vw, py0, py1, px0, px1 = geometry
        count, channels = len(members), self.acc[0].buf.shape[0] - 1
        grids, los, his, means = [], [], [], None
        for k, acc in enumerate(self.acc):
            s, n = self.strides[k], self.cells[k]
            g = blend(torch.stack([  # (B, C, n + 2, n + 2); views of the band, one copy
                acc.raw(self._cy(r, s), self._cy(r, s) + n, self._cx(c, s), self._cx(c, s) + n,
                        *self.grid[k]) for r, c in members]))
            ey, ex, my, mx = self._sampling(k, vh, vw)
            samples = (ey @ g @ ex.T).flatten(2)
            los.append(samples.amin(dim=2))  # the values of min(dim=2), without indices
            his.append(samples.amax(dim=2))
            if k == len(self.acc) - 1:  # presence: mean of the deepest map over the window
                means = (my @ g @ mx[:, None])[..., 0]
            grids.append(g)
        presence = self.presence
        if presence is None:
            presence = predicted_presence(means[:, None, :, None, None], self.presence_threshold)
        else:
            presence = presence.expand(count, -1)
        scale, offset = fusion_terms(torch.stack(los, 1), torch.stack(his, 1), presence,
                                     self.fusion_weights)
        kept = (np.empty((count, len(self.acc), channels, py1 - py0, px1 - px0), np.float32)
                if self.keep_scores else None)
        step = max(1, CHUNK_WINDOWS) if self.device.type == "cpu" else count
        labels = np.empty((count, py1 - py0, px1 - px0), np.uint8)
        for b0 in range(0, count, step):  # a few windows at a time: their planes stay cached
            b1 = min(count, b0 + step)
            labels[b0:b1] = self._planes(geometry, [g[b0:b1] for g in grids], scale[b0:b1],
                                         offset[b0:b1], None if kept is None else kept[b0:b1])
        return labels, kept

    def _planes(self, geometry: tuple[int, ...], grids: list[torch.Tensor],
                scale: torch.Tensor, offset: torch.Tensor, kept: np.ndarray | None
                ) -> np.ndarray:
        """Labels (b, ph, pw) of windows of one geometry from their blended cells ``grids``
        (per scale (b, C, n + 2, n + 2)) and fusion terms: each scale upsampled into a
        reused buffer and added into the fused sum at once (``_labels.add_scale``); the
        upsampled maps copied into ``kept`` (b, S, C, ph, pw) when given."""
        vh, vw, py0, py1, px0, px1 = geometry
        shape = (*grids[0].shape[:2], py1 - py0, px1 - px0)
        fused = self._buffer(("fused", *shape))
        for k, g in enumerate(grids):
            plane = fused if k == 0 else self._buffer(("plane", *shape))
            rows = self._buffer(("rows", *shape[:3], g.shape[-1]))
            torch.matmul(self._matrix(k, 0, vh)[py0:py1], g, out=rows)
            torch.matmul(rows, self._matrix(k, 0, vw)[px0:px1].T, out=plane)
            if kept is not None:
                kept[:, k] = plane.cpu().numpy()
            add_scale(fused, plane, scale[:, k], k == 0)
        labels = labels_of_fused(fused, offset, self.background_power,
                                 self._buffer(("best", shape[0], *shape[2:])))
        return labels.cpu().numpy()

    def _buffer(self, key: tuple) -> torch.Tensor:
        """A float32 work tensor of shape ``key[1:]``, reused from call to call."""
        if key not in self._work:
            if len(self._work) > 24:  # border geometries come and go
                self._work.clear()
            self._work[key] = torch.empty(key[1:], dtype=torch.float32, device=self.device)
        return self._work[key]

    def _sampling(self, k: int, vh: int, vw: int) -> tuple[torch.Tensor, ...]:
        """Rows of the interpolation matrices at the extreme samples (``extreme_samples``),
        and the matrices' means over pixels, of a window of ``vh`` x ``vw`` px at scale k."""
        key = ("sampling", k, vh, vw)
        if key not in self._interp:
            ay, ax = self._matrix(k, 0, vh), self._matrix(k, 0, vw)
            ey, ex = (torch.as_tensor(extreme_samples(self.cells[k], self.strides[k], n),
                                      device=self.device) for n in (vh, vw))
            self._interp[key] = (ay[ey], ax[ex], ay.mean(dim=0), ax.mean(dim=0))
        return self._interp[key]

    def _geometry(self, r: int, c: int) -> tuple[int, ...]:
        y0, y1 = self.gy.valid_span(r)
        x0, x1 = self.gx.valid_span(c)
        ty = self.gy.window_tiles[r]
        tx = self.gx.window_tiles[c]
        py0, py1 = self.gy.tile_span(ty[0])[0] - y0, self.gy.tile_span(ty[-1])[1] - y0
        px0, px1 = self.gx.tile_span(tx[0])[0] - x0, self.gx.tile_span(tx[-1])[1] - x0
        return (y1 - y0, x1 - x0, py0, py1, px0, px1)

    def scores(self, r: int, c: int) -> torch.Tensor:
        """Blended score maps of window (r, c) over its valid span: (S, C, vh, vw)."""
        vh = self.gy.valid_span(r)[1] - self.gy.valid_span(r)[0]
        vw = self.gx.valid_span(c)[1] - self.gx.valid_span(c)[0]
        maps = []
        for k, acc in enumerate(self.acc):
            s, n = self.strides[k], self.cells[k]
            cy, cx = self._cy(r, s), self._cx(c, s)
            g = blend(acc.raw(cy, cy + n, cx, cx + n, *self.grid[k])[None])[0]
            maps.append(self._matrix(k, 0, vh) @ g @ self._matrix(k, 0, vw).T)
        return torch.stack(maps)
