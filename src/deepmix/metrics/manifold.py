r"""Precision, recall and F1 of samples against data by k-nearest-neighbour manifolds
(Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative
models"), on raw vectors as the DRMM paper's Fig. 7 uses them (k = 3).

Each set's manifold is the union of balls around its points with radius the distance to the
point's k-th nearest neighbour in the same set. With :math:`f(x, S) = 1` when x lies in some
ball of S (:math:`\|x - s\| \le r_k(s)`),

.. math:: P = \frac1{|G|}\sum_{g \in G} f(g, R), \quad
          R = \frac1{|R|}\sum_{r \in R} f(r, G), \quad F_1 = \frac{2PR}{P + R + 10^{-8}}

for generated samples G and real data R. Distances are Euclidean, in row batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["knn_radii", "manifold_precision_recall", "constraint_satisfaction"]


def _rows(x: Any, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not torch.is_tensor(t):
        raise InputError(f"{what} must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim != 2 or t.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty (n, d) array, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise InputError(f"{what} has dtype {t.dtype}; expected real numbers")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contains NaN or infinite values")
    return t


def knn_radii(x: Any, k: int = 3, *, row_batch: int = 2048) -> torch.Tensor:
    """Distance of every row of x (n, d) to its k-th nearest other row, (n,)."""
    x = _rows(x, "x")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < x.shape[0]:
        raise InputError(f"k must be an integer in 1..{x.shape[0] - 1}, got {k!r}")
    out = []
    for s in range(0, x.shape[0], row_batch):
        d = torch.cdist(x[s:s + row_batch], x)
        # the point itself is at distance 0: the (k+1)-th smallest is the k-th neighbour
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
            row_batch: int) -> torch.Tensor:
    hits = []
    for s in range(0, points.shape[0], row_batch):
        hits.append((torch.cdist(points[s:s + row_batch], centres) <= radii).any(1))
    return torch.cat(hits)


def manifold_precision_recall(samples: Any, data: Any, *, k: int = 3,
                              row_batch: int = 2048) -> dict[str, float]:
    """``{"precision", "recall", "f1"}`` of samples (n, d) against data (m, d)."""
    g, r = _rows(samples, "samples"), _rows(data, "data")
    if g.shape[1] != r.shape[1]:
        raise InputError(f"samples have {g.shape[1]} columns, data {r.shape[1]}")
    p = float(_inside(g, r, knn_radii(r, k, row_batch=row_batch), row_batch).double().mean())
    q = float(_inside(r, g, knn_radii(g, k, row_batch=row_batch), row_batch).double().mean())
    return {"precision": p, "recall": q, "f1": 2 * p * q / (p + q + 1e-8)}


def constraint_satisfaction(x: Any, a: Any, b: float = 0.0) -> float:
    """Fraction of rows of x (n, d) with :math:`a \\cdot x + b > 0`."""
    x = _rows(x, "x")
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a, dtype=torch.float64)
    if a.shape != (x.shape[1],):
        raise InputError(f"a has shape {tuple(a.shape)}; expected ({x.shape[1]},)")
    return float((x @ a + float(b) > 0).double().mean())
