r"""The indices that judge a clustering, on arrays: points (or images) and their cluster ids.

The cluster ids of a DCGMM come from :func:`deepmix.inference.clustering.cluster_ids` (the top
GMM layer's most responsible component); this module only measures a given clustering.

Indices, computed on the pixel vectors :math:`x_n \in \mathbb R^D` of the images:

- Dunn index (Dunn 1973), higher is better:
  :math:`\mathrm{DI} = \min_{i \ne j} \delta(C_i, C_j) / \max_k \Delta(C_k)` with the smallest
  distance between members of two clusters :math:`\delta(C_i, C_j) = \min_{x \in C_i, y \in C_j}
  \lVert x - y\rVert` and the cluster diameter :math:`\Delta(C_k) = \max_{x, y \in C_k}
  \lVert x - y \rVert`.
- Davies-Bouldin score (Davies & Bouldin 1979), lower is better:
  :math:`\mathrm{DB} = \frac1K \sum_i \max_{j \ne i} (S_i + S_j) / \lVert c_i - c_j \rVert` with
  :math:`S_i` the mean distance of cluster i's members to its centroid :math:`c_i`
  (scikit-learn's ``davies_bouldin_score``).
- Against true labels, where given: purity :math:`\frac1N \sum_k \max_y |C_k \cap Y_y|`, the
  adjusted Rand index and the normalised mutual information (scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["dunn_index", "davies_bouldin", "purity", "clustering_report"]


def _as_points(x: Any, what: str = "points") -> torch.Tensor:
    """(N, ...) numbers -> (N, D) float64 tensor; images are flattened to pixel vectors."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim < 2:
        raise InputError(f"{what} must have shape (N, D) or (N, H, W[, C]), got {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.uint8, torch.int32, torch.int64)):
        raise InputError(f"{what} must be numbers, got dtype {t.dtype}")
    t = t.reshape(t.shape[0], -1).to(dtype=torch.float64, device="cpu")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise InputError(f"{what} contain NaN or infinite values")
    return t


def _as_labels(labels: Any, n: int, what: str = "cluster ids") -> torch.Tensor:
    y = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        raise InputError(f"{what} must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{what} must have shape ({n},) to match the points, got {tuple(y.shape)}")
    return y.long()


def dunn_index(x: Any, labels: Any, *, chunk_size: int | None = None,
               max_bytes: int = 64 * 2**20, exact: bool = False) -> float:
    r"""Dunn index :math:`\min_{i\ne j}\delta(C_i,C_j) / \max_k \Delta(C_k)` of a clustering.

    Exact over all pairs, computed with ``torch.cdist`` on row chunks of the (N, N) distance
    matrix, so memory stays at ``chunk_size * N`` doubles (by default chosen to fit
    ``max_bytes``) while the work is O(N^2 D).

    Arguments:
        x: points (N, D), or images (N, H, W[, C]) flattened to pixel vectors.
        labels: cluster id of each point (N,), integers; at least two distinct clusters.
        chunk_size: rows of the distance matrix per step (default from ``max_bytes``).
        max_bytes: memory budget of one chunk when ``chunk_size`` is not given.
        exact: compute each distance directly instead of by the (much faster) matrix-product
            identity :math:`\lVert x\rVert^2 + \lVert y\rVert^2 - 2x^\top y`, which in float64
            is off by about 1e-8 relative, and more for nearly coincident points.

    Returns ``inf`` when every cluster is a single point or made of identical points (all
    diameters 0) and the clusters are apart.
    """
    pts = _as_points(x)
    N = pts.shape[0]
    y = _as_labels(labels, N)
    if N < 2 or int(torch.unique(y).numel()) < 2:
        raise InputError(f"the Dunn index needs at least two clusters, got "
                         f"{int(torch.unique(y).numel())}")
    if chunk_size is None:
        chunk_size = max(1, int(max_bytes) // (8 * max(N, 1) * 3))  # distances + 2 masks
    elif int(chunk_size) < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist_if_necessary"
    inter = torch.tensor(float("inf"), dtype=torch.float64)
    intra = torch.tensor(0.0, dtype=torch.float64)
    for start in range(0, N, int(chunk_size)):
        rows = pts[start:start + chunk_size]
        d = torch.cdist(rows, pts, compute_mode=mode).clamp_min_(0.0)
        same = y[start:start + chunk_size, None] == y[None, :]
        if bool(same.any()):
            intra = torch.maximum(intra, d.masked_fill(~same, 0.0).max())
        if bool((~same).any()):
            inter = torch.minimum(inter, d.masked_fill(same, float("inf")).min())
    if float(intra) == 0.0:
        return float("inf") if float(inter) > 0 else float("nan")
    return float(inter / intra)


def davies_bouldin(x: Any, labels: Any) -> float:
    """Davies-Bouldin score (lower is better) of a clustering of points (N, D) or images
    (flattened), by scikit-learn's ``davies_bouldin_score``."""
    from sklearn.metrics import davies_bouldin_score

    pts = _as_points(x)
    y = _as_labels(labels, pts.shape[0])
    k = int(torch.unique(y).numel())
    if k < 2 or k >= pts.shape[0]:
        raise InputError(f"the Davies-Bouldin score needs 2 <= clusters < points, got {k} "
                         f"clusters for {pts.shape[0]} points")
    return float(davies_bouldin_score(pts.numpy(), y.numpy()))


def purity(labels_true: Any, clusters: Any) -> float:
    r"""Purity :math:`\frac1N\sum_k \max_y |C_k \cap Y_y|`: the accuracy when every cluster is
    named by its most frequent true label (1 is perfect; it rewards many small clusters)."""
    y = _as_labels(labels_true, len(labels_true), "true labels")
    c = _as_labels(clusters, y.shape[0])
    if y.numel() == 0:
        raise InputError("purity needs at least one point")
    # Contingency table via unique pairs: rows = clusters, columns = true labels.
    _, c_idx = torch.unique(c, return_inverse=True)
    _, y_idx = torch.unique(y, return_inverse=True)
    table = torch.zeros(int(c_idx.max()) + 1, int(y_idx.max()) + 1, dtype=torch.long)
    table.index_put_((c_idx, y_idx), torch.ones_like(c_idx), accumulate=True)
    return float(table.max(1).values.sum()) / y.numel()


def clustering_report(x: Any, clusters: Any, labels: Any = None, *,
                      max_points_dunn: int | None = None, seed: int = 0) -> dict[str, Any]:
    """All indices of a clustering ``clusters`` of points / images ``x`` in one dict.

    Keys: ``n``, ``n_clusters``, ``cluster_sizes``, ``dunn``, ``davies_bouldin`` and, with true
    ``labels``, ``purity``, ``adjusted_rand``, ``nmi``. ``max_points_dunn`` computes the Dunn
    index on a random subset of that size (seeded), since it costs O(N^2 D); the subset size is
    reported as ``dunn_points``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    pts = _as_points(x)
    c = _as_labels(clusters, pts.shape[0])
    ids, sizes = torch.unique(c, return_counts=True)
    out: dict[str, Any] = {"n": int(pts.shape[0]), "n_clusters": int(ids.numel()),
                           "cluster_sizes": {int(i): int(s) for i, s in zip(ids, sizes)}}
    if ids.numel() >= 2:
        sub = torch.arange(pts.shape[0])
        if max_points_dunn is not None and pts.shape[0] > max_points_dunn:
            gen = torch.Generator().manual_seed(int(seed))
            sub = torch.randperm(pts.shape[0], generator=gen)[:int(max_points_dunn)]
        out["dunn_points"] = int(sub.numel())
        try:
            out["dunn"] = dunn_index(pts[sub], c[sub])
        except InputError:  # the subset may hold a single cluster
            out["dunn"] = None
        out["davies_bouldin"] = davies_bouldin(pts, c) if ids.numel() < pts.shape[0] else None
    else:
        out["dunn"] = out["davies_bouldin"] = None
    if labels is not None:
        y = _as_labels(labels, pts.shape[0], "true labels")
        out["purity"] = purity(y, c)
        out["adjusted_rand"] = float(adjusted_rand_score(y.numpy(), c.numpy()))
        out["nmi"] = float(normalized_mutual_info_score(y.numpy(), c.numpy()))
    return out
