r"""Gating networks of the deep GMM (paper section 3): the path prior becomes
:math:`\pi_c(x) = \prod_l g_l(h_l)[c_l]`, with :math:`g_l` a softmax network of layer l's
generation-side input :math:`h_l` (its output in the analysis direction).

[deepmix] architecture (the paper gives none): two 3x3 convolutions of ``hidden`` channels with
ReLU on the (Hg, Wg, Cb) grid, then a 1x1 convolution to the logits: m per position for an
unshared layer, n after global average pooling for a shared one. The output convolution starts
at zero, so an untrained gate is the uniform prior. Generation samples :math:`c_l` from
:math:`g_l(h_l)` on the way down, so the gated model stays normalised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Gate"]


class Gate(nn.Module):
    """The softmax network of one mixing layer."""

    def __init__(self, grid: tuple[int, int], channels: int, n_values: int, unshared: bool,
                 hidden: int = 64, dtype: torch.dtype = torch.float64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.unshared = unshared
        self.n_values = n_values
        self.conv1 = nn.Conv2d(channels, hidden, 3, padding=1, dtype=dtype)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, dtype=dtype)
        self.out = nn.Conv2d(hidden, n_values, 1, dtype=dtype)
        with torch.no_grad():
            # torch's default bound 1/sqrt(fan_in), drawn from the model's seed, so a config
            # rebuilds the same gates
            for conv in (self.conv1, self.conv2):
                bound = 1.0 / math.sqrt(conv.weight[0].numel())
                for p in (conv.weight, conv.bias):
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=dtype) * 2 * bound
                            - bound)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """Log-softmax of the logits: (N, P, n) for an unshared layer, (N, n) for a shared one."""
        N, P, Cb = h.shape
        img = h.reshape(N, *self.grid, Cb).permute(0, 3, 1, 2)
        z = self.out(F.relu(self.conv2(F.relu(self.conv1(img)))))       # (N, n, Hg, Wg)
        if self.unshared:
            return torch.log_softmax(z.flatten(2).transpose(1, 2), -1)
        return torch.log_softmax(z.mean((2, 3)), -1)

    def log_prob(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(N,) :math:`\\log g(h)[c]` summed over the layer's variables; c (N, n_vars)."""
        lp = self.log_probs(h)
        if self.unshared:
            return lp.gather(2, c[..., None]).squeeze(2).sum(1)
        return lp.gather(1, c[:, :1]).squeeze(1)

    def sample(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Choices (N, n_vars) drawn from :math:`g(h)`."""
        p = self.log_probs(h).exp()
        if generator is not None:
            p = p.to(generator.device)          # draw where the generator lives
        if self.unshared:
            N, P, n = p.shape
            c = torch.multinomial(p.reshape(N * P, n), 1, generator=generator).reshape(N, P)
        else:
            c = torch.multinomial(p, 1, generator=generator)
        return c.to(h.device)
