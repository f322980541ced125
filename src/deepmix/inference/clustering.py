r"""Clustering with a DCGMM: the cluster id of each image.

Cluster ids (Gepperth & Pfülb, "Image modeling with deep convolutional GMMs", Sec. V-D): the
component of the top GMM layer that is most responsible for an image. When the top GMM has
several positions (:math:`H W > 1`) the responsibilities :math:`\gamma_{hwk}` are averaged over
positions first, :math:`c(x) = \arg\max_k \frac1{HW}\sum_{hw}\gamma_{hwk}(x)` (a soft vote: a
component that explains most of the image wins; with one position it is the plain argmax).

The indices that judge the result (Dunn, Davies-Bouldin, purity, ARI, NMI) work on arrays and
live in :mod:`deepmix.metrics.clustering`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError

__all__ = ["cluster_ids"]


@torch.no_grad()
def cluster_ids(model: Any, x: Any, *, batch_size: int = 500) -> torch.Tensor:
    r"""Cluster id of each image, (N,): :math:`\arg\max_k` of the top GMM layer's
    responsibilities, averaged over its positions (see the module docstring). Works whether or
    not a classifier sits above the top GMM."""
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    images = model.check_images(x)
    top = max(model.gmm_indices)
    out = []
    for start in range(0, images.shape[0], int(batch_size)):
        h = images[start:start + batch_size]
        for layer in model.layers[:top + 1]:
            h = layer(h)
        out.append(h.flatten(1, 2).mean(1).argmax(1).cpu())  # (n, H*W, K) -> mean -> argmax
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
