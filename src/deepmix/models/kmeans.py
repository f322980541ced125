"""Lloyd's k-means with greedy k-means++ seeding, in PyTorch (initialises the flat GMMs)."""

from __future__ import annotations

import math

import torch

from ..utils.tensors import row_chunks as _chunks

__all__ = ["kmeans"]


@torch.no_grad()
def kmeans(X: torch.Tensor, k: int, *, n_iter: int = 300, tol: float = 1e-4,
           generator: torch.Generator | None = None, chunk: int = 8192,
           plus_plus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Lloyd's k-means with greedy k-means++ seeding; returns (centres (k, D), labels (N,)).

    Seeding draws ``2 + log k`` candidates per new centre and keeps the one that lowers the
    potential most (scikit-learn's greedy k-means++). Distances are
    :math:`\|x\|^2 - 2 x c^T + \|c\|^2` in row chunks, the centre update is one matrix
    product with the one-hot assignments, and Lloyd stops when the centres move (in squared
    norm) less than ``tol`` times the mean data variance, as scikit-learn does.
    """
    N, D = X.shape
    x2 = (X * X).sum(1)

    def sqdist(C: torch.Tensor) -> torch.Tensor:
        # Row chunks bound the (rows, k) output; for the few candidates of a seeding step that
        # bound is loose, and one thin matrix product is 3-4x faster than many (the product is
        # memory-bound: each call streams X once).
        rows = max(chunk, (1 << 24) // max(1, C.shape[0]))
        Ct, c2 = C.T.contiguous(), (C * C).sum(1)[None]
        return torch.cat([torch.addmm(x2[r, None] + c2, X[r], Ct, alpha=-2.0).clamp_min_(0.0)
                          for r in _chunks(N, rows)])

    # Draws happen where the generator lives: a CPU generator picks the same seeds on any device.
    gdev = generator.device if generator is not None else X.device
    if plus_plus:
        trials = 2 + int(math.log(k)) if k > 1 else 1
        first = int(torch.randint(N, (1,), generator=generator, device=gdev))
        centres = [X[first]]
        closest = sqdist(X[first:first + 1])[:, 0]
        for _ in range(1, k):
            total = closest.sum()
            u = torch.rand(trials, generator=generator, device=gdev, dtype=X.dtype).to(X.device) * total
            cand = torch.searchsorted(closest.cumsum(0), u).clamp_max(N - 1)
            d_cand = torch.minimum(closest[:, None], sqdist(X[cand]))   # (N, trials)
            best = int(d_cand.sum(0).argmin())
            centres.append(X[cand[best]])
            closest = d_cand[:, best].contiguous()
        C = torch.stack(centres)
    else:
        C = X[torch.randperm(N, generator=generator, device=gdev)[:k].to(X.device)].clone()
    threshold = tol * float(X.var(0).mean())
    labels = sqdist(C).argmin(1)
    for _ in range(n_iter):
        # Per-cluster sums by index_add (O(N D)), not a one-hot matrix product (O(N K D)):
        # at K = 100 on MNIST the product cost as much as the distances themselves.
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        new = torch.zeros_like(C).index_add_(0, labels, X) / counts.clamp_min(1.0)[:, None]
        empty = counts == 0
        new[empty] = C[empty]  # an empty cluster keeps its centre
        shift = float(((new - C) ** 2).sum())
        C = new
        labels = sqdist(C).argmin(1)
        if shift <= threshold:
            break
    return C, labels
