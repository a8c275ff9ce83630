"""A PBIP-style fixed prototype bank: spherical (cosine) k-means on backbone features of
single-class crops of a tile folder, k clusters per class.

PBIP clusters image embeddings of single-class crops and keeps the centroids fixed. Here the
embedding of a crop is its global-average-pooled feature at each of the model's scales; the
scales are clustered *jointly* (the concatenation of the per-scale unit vectors), so cluster
j is one group of crops and its prototype at scale s is the normalised mean of those crops'
scale-s features. The centroids come from the ImageNet-pretrained backbone before training
and are installed into a ``BankHead`` (head="bank"), which never trains them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lpd.data.datasets import to_tensor
from lpd.data.mosaic import TileFolder
from lpd.errors import InputError
from lpd.model.head import BankHead
from lpd.model.lpd_model import LPDModel
from lpd.wsi.images import read_rgb


def spherical_kmeans(
    x: torch.Tensor, k: int, iters: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with cosine similarity on the rows of ``x`` (N, D).

    k-means++ seeding on cosine distance, then Lloyd iterations (assign by the largest
    cosine, centroid = normalised mean). An empty cluster is re-seeded with the point
    farthest from its centroid. Returns unit centroids (k, D) and assignments (N,)."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, D) matrix, got {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k = {k} clusters need 1 <= k <= {x.shape[0]} points")
    x = F.normalize(x.double(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centres = [x[first]]
    dist = 1 - x @ x[first]
    for _ in range(1, k):
        weights = dist.clamp_min(0) ** 2
        if float(weights.sum()) <= 0:  # all remaining points coincide with a centre
            idx = int(torch.randint(x.shape[0], (1,), generator=gen))
        else:
            idx = int(torch.multinomial(weights, 1, generator=gen))
        centres.append(x[idx])
        dist = torch.minimum(dist, 1 - x @ x[idx])
    c = torch.stack(centres)
    assign = torch.full((x.shape[0],), -1, dtype=torch.long)
    for _ in range(iters):
        sims = x @ c.T
        new = sims.argmax(dim=1)
        for j in range(k):
            if not bool((new == j).any()):  # re-seed: the worst-served point
                worst = int(sims.max(dim=1).values.argmin())
                new[worst] = j
                sims[worst] = float("inf")  # not taken twice
        if torch.equal(new, assign):
            break
        assign = new
        c = F.normalize(torch.zeros_like(c).index_add_(0, assign, x), dim=1)
    return c.float(), assign


def single_class_crops(
    folder: TileFolder, crops_per_class: int, size: int, seed: int = 0
) -> dict[str, list[np.ndarray]]:
    """``crops_per_class`` random square crops (side ``min(size, tile side)``), randomly
    flipped / rotated, from the tiles of each class."""
    rng = np.random.default_rng([seed, 7])
    out: dict[str, list[np.ndarray]] = {}
    for name in folder.class_names:
        tiles = [read_rgb(p, min_size=8) for p in folder.class_paths(name)]
        crops = []
        for i in range(crops_per_class):
            tile = tiles[i % len(tiles)]  # every tile gets its share
            side = min(size, *tile.shape[:2])
            y = int(rng.integers(tile.shape[0] - side + 1))
            x = int(rng.integers(tile.shape[1] - side + 1))
            crop = np.rot90(tile[y : y + side, x : x + side], int(rng.integers(4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(np.ascontiguousarray(crop))
        out[name] = crops
    return out


@torch.no_grad()
def crop_embeddings(
    model: LPDModel, crops: Sequence[np.ndarray], batch_size: int = 16
) -> list[torch.Tensor]:
    """Per scale, the global-average-pooled backbone features of each crop: (N, D_s)."""
    mean, std = model.normalisation()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_scale: list[list[torch.Tensor]] = []
    try:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(crops):  # crops of one size batch together
            by_shape.setdefault(c.shape, []).append(i)
        order: list[int] = []
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                images = torch.stack([to_tensor(crops[i], mean, std) for i in chunk])
                feats = model.backbone(images.to(device))
                pooled = [f.float().mean(dim=(2, 3)).cpu() for f in feats]
                if not per_scale:
                    per_scale = [[] for _ in pooled]
                for s, p in enumerate(pooled):
                    per_scale[s].append(p)
                order.extend(chunk)
        inverse = torch.argsort(torch.tensor(order))
        return [torch.cat(parts)[inverse] for parts in per_scale]
    finally:
        model.train(was_training)


def build_bank(
    model: LPDModel,
    folder: TileFolder,
    crops_per_class: int = 64,
    seed: int = 0,
    iters: int = 50,
) -> list[torch.Tensor]:
    """Per-scale prototypes (C*k, D_s), class-major rows, from joint spherical k-means of
    each class's crop embeddings with the model's current backbone."""
    k = model.config.prototypes_per_class
    if crops_per_class < k:
        raise ValueError(f"{crops_per_class} crops per class cannot make {k} clusters")
    crops = single_class_crops(folder, crops_per_class, model.config.input_size, seed)
    banks: list[list[torch.Tensor]] | None = None
    for c, name in enumerate(folder.class_names):
        if not crops.get(name):
            raise InputError(folder.root / name, "no tiles to build prototypes from")
        per_scale = [F.normalize(e, dim=1) for e in crop_embeddings(model, crops[name])]
        joint = torch.cat(per_scale, dim=1) / len(per_scale) ** 0.5
        _, assign = spherical_kmeans(joint, k, iters, seed=seed * 1000 + c)
        if banks is None:
            banks = [[] for _ in per_scale]
        for s, e in enumerate(per_scale):
            sums = torch.zeros(k, e.shape[1]).index_add_(0, assign, e)
            banks[s].append(F.normalize(sums, dim=1))
    assert banks is not None
    return [torch.cat(rows) for rows in banks]


def install_bank(model: LPDModel, folder: TileFolder, crops_per_class: int = 64,
                 seed: int = 0) -> list[torch.Tensor]:
    """Build the bank from ``folder`` with ``model``'s backbone and put it in its BankHead."""
    if not isinstance(model.head, BankHead):
        raise ValueError(f"install_bank needs a model with head='bank', not {model.config.head!r}")
    banks = build_bank(model, folder, crops_per_class, seed)
    model.head.set_bank(banks)
    return banks


def init_prototypes_kmeans(model: LPDModel, folder: TileFolder, crops_per_class: int = 64,
                           seed: int = 0, steps: int = 300, lr: float = 1e-2) -> float:
    """Start LPD's learnable prototypes at k-means centroids of the backbone's features.

    The centroids are per scale (``build_bank``); LPD's prototypes live in one latent bank
    ``P`` projected to every scale by an MLP, so ``P`` and the projections are fitted (Adam,
    ``steps`` steps) to make ``proj_s(P)`` point at the scale-s centroids (cosine), then
    training goes on as usual from there.

    Parameters
    ----------
    model : LPDModel
        With ``head="prototype"``; its backbone (usually ImageNet-initialised) embeds crops.
    folder : TileFolder
        Single-class tiles of every class.
    crops_per_class, seed : int
        Crops per class (at least k) and their seed.
    steps : int
        Fitting steps.
    lr : float
        Adam learning rate of the fit.

    Returns
    -------
    float
        Mean cosine between ``proj_s(P)`` and the centroids after the fit (1 = exact).

    Raises
    ------
    ValueError
        A model without a ``PrototypeHead``.
    """
    from lpd.model.head import PrototypeHead

    head = model.head
    if not isinstance(head, PrototypeHead):
        raise ValueError(f"k-means initialisation needs head='prototype', not "
                         f"{model.config.head!r}")
    banks = [b.to(head.prototypes.device) for b in build_bank(model, folder, crops_per_class,
                                                             seed)]
    params = [head.prototypes, *head.projections.parameters()]
    with torch.enable_grad():
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.prototypes.copy_(torch.randn(head.prototypes.shape, generator=generator))
        optimiser = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            optimiser.zero_grad()
            sims = [F.cosine_similarity(p, b, dim=1).mean()
                    for p, b in zip(head.projected(), banks, strict=True)]
            loss = -torch.stack(sims).mean()
            loss.backward()
            optimiser.step()
    return float(-loss.detach())
