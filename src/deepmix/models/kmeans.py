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

    scikit-learn's ``KMeans(k, n_init=1)`` in meaning: seeding draws ``2 + log k`` candidates
    per new centre and keeps the one that lowers the potential most (greedy k-means++); Lloyd
    stops when the centres move (in total squared norm) at most ``tol`` times the mean
    per-feature variance of X, or when no label changes. Distances are
    :math:`\|x\|^2 - 2 x c^T + \|c\|^2` by matrix products (the assignment drops the constant
    :math:`\|x\|^2`); the per-cluster sums are kept in float64 and updated with the rows whose
    label changed only, so a late iteration costs one matrix product. X may be a strided view
    (e.g. the first columns of a wider matrix); k-means is shift-invariant, so centred data
    give the centred centres.
    """
    N, D = X.shape
    x2 = (X * X).sum(1)

    def block(m: int) -> int:
        # Row chunks bound the (rows, m) output; for the few candidates of a seeding step that
        # bound is loose, and one thin matrix product is 3-4x faster than many (the product is
        # memory-bound: each call streams X once).
        return max(chunk, (1 << 24) // max(1, m))

    def sqdist(C: torch.Tensor) -> torch.Tensor:
        Ct, c2 = C.T.contiguous(), (C * C).sum(1)[None]
        return torch.cat([torch.addmm(x2[r, None] + c2, X[r], Ct, alpha=-2.0).clamp_min_(0.0)
                          for r in _chunks(N, block(C.shape[0]))])

    labels = torch.empty(N, dtype=torch.long, device=X.device)
    scores = torch.empty(min(N, block(k)), k, dtype=X.dtype, device=X.device)

    def assign(C: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # argmin_c ||c||^2 - 2 x.c: the same winner as the full distance, one product less.
        Ct, c2 = C.T.contiguous(), (C * C).sum(1)
        for r in _chunks(N, scores.shape[0]):
            s = scores[: r.stop - r.start]
            torch.addmm(c2, X[r], Ct, alpha=-2.0, out=s)
            torch.argmin(s, 1, out=out[r])
        return out

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
    # scikit-learn's tolerance: tol times the mean of the (biased) per-feature variances.
    threshold = tol * float(X.var(0, unbiased=False).mean())
    assign(C, labels)
    acc = torch.float64
    sums = torch.zeros(k, D, dtype=acc, device=X.device)
    for r in _chunks(N, chunk):
        sums.index_add_(0, labels[r], X[r].to(acc))
    counts = torch.bincount(labels, minlength=k).to(acc)
    fresh = torch.empty_like(labels)
    for _ in range(n_iter):
        new = (sums / counts.clamp_min(1.0)[:, None]).to(X.dtype)
        empty = counts == 0
        new[empty] = C[empty]  # an empty cluster keeps its centre
        shift = float(((new - C) ** 2).sum())
        C = new
        assign(C, fresh)
        moved = (fresh != labels).nonzero().flatten()
        labels, fresh = fresh, labels
        if shift <= threshold or moved.numel() == 0:
            break
        # Only the rows that changed cluster move the sums: late iterations touch few rows.
        rows = X[moved].to(acc)
        sums.index_add_(0, labels[moved], rows).index_add_(0, fresh[moved], rows, alpha=-1.0)
        counts.index_add_(0, labels[moved], torch.ones_like(moved, dtype=acc))
        counts.index_add_(0, fresh[moved], torch.ones_like(moved, dtype=acc), alpha=-1.0)
    return C, labels
