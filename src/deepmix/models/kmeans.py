"""Lloyd's k-means with greedy k-means++ seeding, in PyTorch (initialises the flat GMMs)."""

from __future__ import annotations

import math

import torch

from ..utils.blas import fast_matmul
from ..utils.tensors import row_chunks as _chunks

__all__ = ["kmeans"]

_TRACE: list[int] | None = None   # rows scored per Lloyd iteration, when a list (benchmarks)


@torch.no_grad()
def kmeans(X: torch.Tensor, k: int, *, n_iter: int = 300, tol: float = 1e-4,
           generator: torch.Generator | None = None, chunk: int = 8192,
           plus_plus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Lloyd's k-means with greedy k-means++ seeding; returns (centres (k, D), labels (N,)).

    scikit-learn's ``KMeans(k, n_init=1)`` in meaning: seeding draws ``2 + log k`` candidates
    per new centre and keeps the one that lowers the potential most (greedy k-means++); Lloyd
    stops when the centres move (in total squared norm) at most ``tol`` times the mean
    per-feature variance of X, or when no label changes. Distances are
    :math:`\|x\|^2 - 2 x c^T + \|c\|^2` by matrix products; Lloyd keeps Hamerly's distance
    bounds, so an iteration scores only the rows whose label may change (the labels of plain
    Lloyd, to rounding), and the per-cluster sums are kept in float64 and updated with the rows
    whose label changed only. X may be a strided view
    (e.g. the first columns of a wider matrix); k-means is shift-invariant, so centred data
    give the centred centres.
    """
    N, D = X.shape
    with fast_matmul(N * D * k):      # its distance products: oneDNN where exact (utils.blas)
        return _lloyd(X, k, n_iter, tol, generator, chunk, plus_plus)


def _lloyd(X: torch.Tensor, k: int, n_iter: int, tol: float, generator: torch.Generator | None,
           chunk: int, plus_plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kmeans` itself."""
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

    gathered: list[torch.Tensor | None] = [None]

    def nearest_two(rows: torch.Tensor | slice, C: torch.Tensor, c2: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Labels, nearest and second-nearest distance (float64, widened by the rounding of
        the expanded square) of some rows, by one product per chunk."""
        if isinstance(rows, slice):
            xs, x2s = X[rows], x2[rows]
        else:
            # Gathered into one buffer kept across iterations: a fresh (n, D) tensor per
            # iteration costs its page faults on top of the copy.
            if gathered[0] is None or gathered[0].shape[0] < rows.numel():
                gathered[0] = torch.empty(rows.numel(), D, dtype=X.dtype, device=X.device)
            xs = torch.index_select(X, 0, rows, out=gathered[0][: rows.numel()])
            x2s = x2[rows]
        n = xs.shape[0]
        lab = torch.empty(n, dtype=torch.long, device=X.device)
        up = torch.empty(n, dtype=torch.float64, device=X.device)
        low = torch.full((n,), math.inf, dtype=torch.float64, device=X.device)
        Ct = C.T.contiguous()
        for r in _chunks(n, block(k)):
            d2 = torch.addmm(c2, xs[r], Ct, alpha=-2.0).add_(x2s[r, None])
            # |d2 error| <~ 4 eps (|x|^2 + |c|^2); sqrt of it bounds the error of the distance.
            slack = (8.0 * torch.finfo(X.dtype).eps * (x2s[r] + float(c2.max()))).sqrt()
            best, lab[r] = d2.min(1)
            if k > 1:
                # The second nearest as a min with the nearest masked: ~4x faster than topk.
                second = d2.scatter_(1, lab[r, None], math.inf).min(1).values
                low[r] = second.clamp_min(0.0).double().sqrt() - slack
            up[r] = best.clamp_min(0.0).double().sqrt() + slack
        return lab, up, low

    # Draws happen where the generator lives: a CPU generator picks the same seeds on any device.
    gdev = generator.device if generator is not None else X.device
    if plus_plus:
        trials = 2 + int(math.log(k)) if k > 1 else 1
        first = int(torch.randint(N, (1,), generator=generator, device=gdev))
        centres = [X[first]]
        closest = sqdist(X[first:first + 1])[:, 0]
        for _ in range(1, k):
            # float64 running sums (scikit-learn's stable_cumsum): a float32 cumsum over many
            # rows drifts below the total and sends the top draws to the last row.
            cum = closest.cumsum(0, dtype=torch.float64)
            u = torch.rand(trials, generator=generator, device=gdev,
                           dtype=torch.float64).to(X.device) * cum[-1]
            cand = torch.searchsorted(cum, u).clamp_max(N - 1)
            d_cand = torch.minimum(closest[:, None], sqdist(X[cand]))   # (N, trials)
            best = int(d_cand.sum(0).argmin())
            centres.append(X[cand[best]])
            closest = d_cand[:, best].contiguous()
        C = torch.stack(centres)
    else:
        C = X[torch.randperm(N, generator=generator, device=gdev)[:k].to(X.device)].clone()
    # scikit-learn's tolerance: tol times the mean of the (biased) per-feature variances.
    # (the mean of E[x_d^2] - E[x_d]^2 over d, from the row norms: one pass less than var)
    # (a float32 view summed in float32 then widened: summing it with dtype=float64 took
    # 10x longer, and torch's cascade sum keeps float32's relative accuracy for a tolerance)
    mean = X.sum(0).double() / N
    threshold = tol * float((x2.sum(dtype=torch.float64) / N - (mean * mean).sum()) / D)
    # Lloyd with Hamerly's bounds (exact: the labels of plain Lloyd, to rounding): u bounds
    # the distance to the own centre from above, l the distance to any other from below;
    # after the centres move by delta, a row with u + delta_own < l - max other delta keeps
    # its label, and only the others are scored again (late iterations: a few percent).
    labels, up, low = nearest_two(slice(None), C, (C * C).sum(1))
    acc = torch.float64
    sums = torch.zeros(k, D, dtype=acc, device=X.device)
    for r in _chunks(N, chunk):
        sums.index_add_(0, labels[r], X[r].to(acc))
    counts = torch.bincount(labels, minlength=k).to(acc)
    for _ in range(n_iter):
        new = (sums / counts.clamp_min(1.0)[:, None]).to(X.dtype)
        empty = counts == 0
        new[empty] = C[empty]  # an empty cluster keeps its centre
        delta = ((new.to(acc) - C.to(acc)) ** 2).sum(1)
        shift = float(delta.sum())
        C = new
        delta = delta.sqrt()
        if k > 1:
            top = delta.topk(2)
            other = torch.where(torch.arange(k, device=X.device) == top.indices[0],
                                top.values[1], top.values[0])   # max over the other centres
        else:
            other = torch.zeros_like(delta)
        up += delta[labels]
        low -= other[labels]
        cand = (up >= low).nonzero().flatten()
        if _TRACE is not None:
            _TRACE.append(int(cand.numel()))
        moved = cand[:0]
        if cand.numel():
            if cand.numel() > N // 2:  # most rows: score all, without gathering them first
                cand = torch.arange(N, device=X.device)
                lab, u, l = nearest_two(slice(None), C, (C * C).sum(1))
            else:
                lab, u, l = nearest_two(cand, C, (C * C).sum(1))
            up[cand], low[cand] = u, l
            change = lab != labels[cand]
            moved, old = cand[change], labels[cand[change]]
            labels[moved] = lab[change]
        if shift <= threshold or moved.numel() == 0:
            break
        # Only the rows that changed cluster move the sums: late iterations touch few rows.
        rows = X[moved].to(acc)
        new_lab = labels[moved]
        sums.index_add_(0, new_lab, rows).index_add_(0, old, rows, alpha=-1.0)
        ones = torch.ones_like(moved, dtype=acc)
        counts.index_add_(0, new_lab, ones).index_add_(0, old, ones, alpha=-1.0)
    return C, labels
