r"""Held-out evaluation of a deep GMM: the lower bound (best path found), the approximate upper
bound UB* = LB + log #paths, and the exact :math:`\log p(x)` where it is tractable, all in nats
per image, with bits per dimension for data dequantised onto [0, 1] (``levels`` values)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError, NoDensityError

__all__ = ["evaluate_deep_gmm"]


@torch.no_grad()
def evaluate_deep_gmm(model: Any, x: torch.Tensor, *, batch_size: int = 500, levels: int = 256,
                      generator: torch.Generator | None = None
                      ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(summary, per-sample values) with keys ``lower_bound``, ``upper_bound_approx`` and,
    where tractable, ``log_prob`` (the summary's ``log_prob`` then is the exact value, else
    the lower bound, with ``exact`` False)."""
    if x.shape[0] == 0:
        raise InputError("no samples to evaluate")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    lb = torch.cat([model.log_prob_lower_bound(x[i:i + batch_size], generator=gen).cpu()
                    for i in range(0, x.shape[0], batch_size)]).double()
    per = {"lower_bound": lb, "upper_bound_approx": lb + model.log_n_paths}
    try:
        per["log_prob"] = torch.cat([model.log_prob(x[i:i + batch_size]).cpu()
                                     for i in range(0, x.shape[0], batch_size)]).double()
    except NoDensityError:
        pass
    D = int(x[0].numel())

    def bpd(v: float) -> float:
        return -v / (D * math.log(2.0)) + math.log2(levels)

    summary: dict[str, Any] = {"n": int(x.shape[0]), "family": model.family, "dims": D,
                               "log_n_paths": model.log_n_paths, "exact": "log_prob" in per}
    for key, v in per.items():
        summary[key] = float(v.mean())
        summary[f"{key}_bits_per_dim"] = bpd(float(v.mean()))
    best = per.get("log_prob", lb)
    summary.update(log_prob=float(best.mean()),
                   log_prob_std=float(best.std()) if len(best) > 1 else 0.0,
                   bits_per_dim=bpd(float(best.mean())))
    return summary, per
