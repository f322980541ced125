r"""Per-layer evaluation of a DCGMM: annealed loss and true log-likelihood.

For every GMM layer L and sample n, with :math:`P_L` positions of input dimension :math:`D_L`:

- ``log_likelihood``: the position mean :math:`\frac1{P_L}\sum_{hw}\log p_L(a_{n,hw})` in nats
  (the papers' per-sample score, used for outlier detection);
- ``log_likelihood_sum``: :math:`\sum_{hw}\log p_L(a_{n,hw})`, a normalised log-density of the
  image when the layer sees non-overlapping pixel patches;
- ``annealed_loss``: the training objective :math:`\ell_\sigma` at the layer's final sigma;
- ``bits_per_dim`` (layers that see pixels only):
  :math:`-\overline{\log p}/(D_L \ln 2) + \log_2(\text{levels})`, the usual figure for images
  dequantised to [0, 1] (on non-dequantised data it is indicative only, since the continuous
  density of a discrete pixel value is not a probability).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..layers import Folding, GMM

__all__ = ["evaluate", "evaluate_density", "layer_sees_pixels"]


def layer_sees_pixels(model: Any, gmm_number: int) -> bool:
    """True when only Folding layers lie between the image and GMM layer ``gmm_number``."""
    idx = model.gmm_indices[gmm_number]
    return all(isinstance(layer, Folding) for layer in model.layers[:idx])


@torch.no_grad()
def evaluate(model: Any, images: Any, *, batch_size: int = 500, levels: int = 256,
             per_position: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """Evaluate every GMM layer on ``images``; returns (summary dict, per-sample tensors).

    The per-sample dict maps ``"layer{L}/log_likelihood"``, ``"layer{L}/log_likelihood_sum"``,
    ``"layer{L}/annealed_loss"`` to (N,) tensors and, with ``per_position``,
    ``"layer{L}/log_likelihood_per_position"`` and ``"layer{L}/annealed_loss_per_position"`` to
    (N, H, W) tensors.
    """
    x = model.check_images(images)
    N = x.shape[0]
    gmms = [(L, i, model.layers[i]) for L, i in enumerate(model.gmm_indices)]
    per: dict[str, list[torch.Tensor]] = {}
    for start in range(0, N, batch_size):
        h = x[start:start + batch_size]
        for i, layer in enumerate(model.layers[: max(model.gmm_indices) + 1]):
            if isinstance(layer, GMM):
                L = model.gmm_indices.index(i)
                ll = layer.log_likelihood(h)
                an = layer.annealed_loss(h)
                per.setdefault(f"layer{L}/log_likelihood", []).append(ll.flatten(1).mean(1))
                per.setdefault(f"layer{L}/log_likelihood_sum", []).append(ll.flatten(1).sum(1))
                per.setdefault(f"layer{L}/annealed_loss", []).append(an.flatten(1).mean(1))
                if per_position:
                    per.setdefault(f"layer{L}/log_likelihood_per_position", []).append(ll)
                    per.setdefault(f"layer{L}/annealed_loss_per_position", []).append(an)
            h = layer(h)
    out = {k: torch.cat(v).cpu() for k, v in per.items()}
    layers = []
    for L, i, layer in gmms:
        ll = out[f"layer{L}/log_likelihood"]
        H, W, D = layer.input_shape
        row = {
            "layer": L, "index": i, "spec": layer.spec(), "positions": H * W, "dims": D,
            "sigma": float(layer.sigma),
            "log_likelihood": float(ll.mean()),
            "log_likelihood_std": float(ll.std()) if N > 1 else 0.0,
            "log_likelihood_sum": float(out[f"layer{L}/log_likelihood_sum"].mean()),
            "annealed_loss": float(out[f"layer{L}/annealed_loss"].mean()),
        }
        if layer_sees_pixels(model, L):
            row["bits_per_dim"] = -row["log_likelihood"] / (D * math.log(2.0)) + math.log2(levels)
        layers.append(row)
    summary = {"n": N, "spec": model.spec(), "layers": layers}
    if model._first_layer_is_density():
        summary["log_prob"] = layers[0]["log_likelihood_sum"]
    return summary, out


@torch.no_grad()
def evaluate_density(model: Any, x: torch.Tensor, *, batch_size: int = 500,
                     levels: int = 256) -> tuple[dict, dict[str, torch.Tensor]]:
    r"""Held-out log-likelihood of any family with a true ``log_prob``; returns (summary, per).

    ``summary``: ``n``, ``log_prob`` (mean :math:`\log p(x)` in nats per sample),
    ``log_prob_std``, ``dims`` and ``bits_per_dim`` :math:`-\overline{\log p}/(D\ln 2) +
    \log_2(\text{levels})` (for data dequantised to [0, 1]); ``per``: ``{"log_prob": (N,)}``.
    """
    if x.shape[0] == 0:
        from ..errors import InputError

        raise InputError("no samples to evaluate")
    ll = torch.cat([model.log_prob(x[i:i + batch_size]).detach().cpu()
                    for i in range(0, x.shape[0], batch_size)]).double()
    D = int(x[0].numel())
    mean = float(ll.mean())
    summary = {"n": int(x.shape[0]), "family": model.family, "log_prob": mean,
               "log_prob_std": float(ll.std()) if len(ll) > 1 else 0.0, "dims": D,
               "bits_per_dim": -mean / (D * math.log(2.0)) + math.log2(levels)}
    return summary, {"log_prob": ll}
