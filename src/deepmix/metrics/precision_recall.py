r"""Precision and recall of samples by k-nearest-neighbour manifolds (Kynkäänniemi et al. 2019).

Each set of points estimates its manifold as the union of balls around its members, the radius of
a member being the distance to its k-th nearest neighbour inside the same set:

.. math::
    r_k(x_i; X) = \lVert x_i - \mathrm{NN}_k(x_i; X \setminus \{x_i\}) \rVert, \qquad
    \mathrm{manifold}(X) = \textstyle\bigcup_i B(x_i, r_k(x_i; X)).

Precision is the fraction of generated samples inside the manifold of the real data, recall the
fraction of real points inside the manifold of the samples, and
:math:`F_1 = 2PR / (P + R + 10^{-8})` (the DRMM paper's Fig. 7 protocol: k = 3 on the raw data
vectors, no feature network).

Written here rather than taken from the ``prdc`` package because ``prdc`` forms the full
(N, M) distance matrices at once (20 000 x 20 000 doubles are 3.2 GB); this computes the same
figures in row chunks with ``torch.cdist``. Ball membership is strict (``d < r``), as in ``prdc``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["knn_radii", "precision_recall", "f1_score"]


def _as_rows(x: Any, what: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim < 2 or t.shape[0] == 0:
        raise InputError(f"{what} must have shape (N, D) with N >= 1, got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise InputError(f"{what} must be numbers, got dtype {t.dtype}")
    t = t.reshape(t.shape[0], -1).to(dtype=torch.float64, device="cpu")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contain NaN or infinite values")
    return t


def _chunks(n: int, size: int) -> range:
    return range(0, n, max(1, size))


def knn_radii(x: torch.Tensor, k: int, *, chunk_size: int = 2048) -> torch.Tensor:
    """Distance of each row of ``x`` (N, D) to its k-th nearest other row, shape (N,)."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k must be between 1 and N - 1 = {n - 1} for {n} points, got {k}")
    out = torch.empty(n, dtype=x.dtype)
    for i in _chunks(n, chunk_size):
        d = torch.cdist(x[i:i + chunk_size], x)
        # k + 1 smallest: the point itself (distance 0) comes first.
        out[i:i + chunk_size] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
             chunk_size: int) -> torch.Tensor:
    """Which ``points`` lie strictly inside at least one ball B(centres[j], radii[j])."""
    inside = torch.empty(points.shape[0], dtype=torch.bool)
    for i in _chunks(points.shape[0], chunk_size):
        d = torch.cdist(points[i:i + chunk_size], centres)
        inside[i:i + chunk_size] = (d < radii).any(dim=1)
    return inside


def f1_score(precision: float, recall: float) -> float:
    r""":math:`2PR / (P + R + 10^{-8})`."""
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def precision_recall(real: Any, samples: Any, *, k: int = 3,
                     chunk_size: int = 2048) -> dict[str, float]:
    """k-NN manifold precision, recall and F1 of ``samples`` against ``real`` (rows, or images
    flattened to rows), computed in float64 on row chunks of ``chunk_size``."""
    x = _as_rows(real, "real data")
    y = _as_rows(samples, "samples")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"real data and samples must have the same dimension, got "
                         f"{x.shape[1]} and {y.shape[1]}")
    precision = float(_covered(y, x, knn_radii(x, k, chunk_size=chunk_size),
                               chunk_size).double().mean())
    recall = float(_covered(x, y, knn_radii(y, k, chunk_size=chunk_size),
                            chunk_size).double().mean())
    return {"precision": precision, "recall": recall, "f1": f1_score(precision, recall), "k": k}
