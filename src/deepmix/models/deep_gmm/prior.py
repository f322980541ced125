r"""[deepmix] The factorised path prior of the deep GMM (spec section 1's option):

.. math:: \log\pi_c = \sum_l \sum_{v \in \text{vars}(l)} \log\pi_{l,v}[c_{l,v}],
          \qquad \pi_{l,v} = \mathrm{softmax}(\theta_{l,v}),

one categorical per discrete variable: a shared layer has one, an unshared layer one per
position (so each position has its own usage of the common bank). The logits are parameters
(a gradient objective such as ``mle`` learns them); hard EM sets them in closed form to the
smoothed usage frequencies of the E step's paths,
:math:`\pi_{l,v}[j] = (n_{l,v,j} + \alpha) / (N + n_l \alpha)` (:meth:`set_from_counts`).
Layers with one value have a (n_vars, 1) table whose log-probability is 0.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FactorisedPrior"]


class FactorisedPrior(nn.Module):
    """Per-variable categorical weights of every layer (uniform at construction)."""

    def __init__(self, shapes: list[tuple[int, int]], dtype: torch.dtype = torch.float64) -> None:
        """``shapes``: (n_vars, n_values) of every layer, data side first."""
        super().__init__()
        self.logits = nn.ParameterList(
            [nn.Parameter(torch.zeros(v, n, dtype=dtype)) for v, n in shapes])

    def log_weights(self, i: int) -> torch.Tensor:
        r"""(n_vars, n_values) :math:`\log\pi_{i,v}` of layer i."""
        return torch.log_softmax(self.logits[i], -1)

    def log_prob(self, i: int, c: torch.Tensor) -> torch.Tensor:
        """(N,) :math:`\\sum_v \\log\\pi_{i,v}[c_v]` of layer i's choices c (N, n_vars)."""
        lw = self.log_weights(i)
        return lw.gather(1, c.T).sum(0)

    def sample(self, i: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """(n, n_vars) choices of layer i drawn from its weights."""
        p = self.log_weights(i).detach().exp()
        if generator is not None:
            p = p.to(generator.device)          # draw where the generator lives
        c = torch.multinomial(p, n, replacement=True, generator=generator)   # (n_vars, n)
        return c.T.to(self.logits[i].device)

    @torch.no_grad()
    def set_from_counts(self, counts: list[torch.Tensor], smoothing: float) -> None:
        r"""The closed-form M step: :math:`\theta = \log(n + \alpha)` (normalised), counts
        (n_vars, n_values) per layer."""
        for theta, n in zip(self.logits, counts):
            w = n.to(theta) + smoothing
            theta.copy_(torch.log(w / w.sum(-1, keepdim=True)))
