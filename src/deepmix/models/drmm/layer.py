r"""One RMM layer of a DRMM (spec drmm §2): K components over a tuple of streams.

Log-membership of input X in component k (paper Eq. 2, log domain):

.. math:: m_k(X) = \log w_k + \sum_{s\ \mathrm{data}} t_{ks}(X) + \rho \sum_{l\ \mathrm{latent}}
          t_{kl}(X)

with :math:`t` the stream terms of :mod:`.components`. The layer's output is the residual of
every input stream plus a new categorical latent stream
:math:`\log((1-\epsilon)\,\mathrm{onehot}(h) + \epsilon/K)`, :math:`\epsilon = 10^{-8}`, mask 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .components import CategoricalComponents, ContinuousComponents, StreamComponents

__all__ = ["StreamSpec", "Stream", "RMMLayer", "LATENT_EPS"]

#: The floor of the latent one-hot (spec §2).
LATENT_EPS = 1e-8


@dataclass(frozen=True)
class StreamSpec:
    """One stream: ``kind`` ``"continuous"`` (``width`` variables) or ``"categorical"``
    (``blocks`` packed blocks of ``categories``); ``latent`` for streams that earlier layers of
    the same DRMM appended (their terms are weighted by rho)."""

    kind: str
    width: int
    categories: int = 0
    blocks: int = 1
    latent: bool = False


class Stream(NamedTuple):
    """A stream's value (N, W) and mask (N, W)."""

    value: torch.Tensor
    mask: torch.Tensor


class RMMLayer(nn.Module):
    """K components, weights w = softmax(logits), one parameter module per input stream."""

    def __init__(self, n_components: int, specs: list[StreamSpec], *, sigma: str = "scalar",
                 positions: int = 1, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.n_components = n_components
        self.specs = list(specs)
        # positions > 1: one weight vector per patch position (rows are position-major
        # (images, positions), as the patch hierarchy folds them; spec §7)
        self.positions = positions
        shape = (n_components,) if positions == 1 else (positions, n_components)
        self.logits = nn.Parameter(torch.zeros(shape, dtype=dtype))
        mods: list[StreamComponents] = []
        for s in self.specs:
            if s.kind == "continuous":
                mods.append(ContinuousComponents(n_components, s.width, sigma, dtype=dtype))
            else:
                mods.append(CategoricalComponents(n_components, s.categories, s.blocks,
                                                  dtype=dtype))
        self.streams = nn.ModuleList(mods)

    def log_weights(self) -> torch.Tensor:
        r""":math:`\log w` (K,), or (positions, K) with per-position weights."""
        return torch.log_softmax(self.logits, -1)

    def row_log_weights(self, n: int) -> torch.Tensor:
        r""":math:`\log w` broadcastable to n rows: (K,) or (n, K)."""
        lw = self.log_weights()
        if self.positions == 1:
            return lw
        return lw.repeat(n // self.positions, 1)

    def terms(self, inputs: list[Stream]) -> tuple[torch.Tensor, torch.Tensor]:
        """(data terms, latent terms), each (N, K); no log w, no rho."""
        data: torch.Tensor | None = None
        latent: torch.Tensor | None = None
        for spec, mod, s in zip(self.specs, self.streams, inputs):
            t = mod.log_terms(s.value, s.mask)
            if spec.latent:
                latent = t if latent is None else latent + t
            else:
                data = t if data is None else data + t
        if data is None or latent is None:
            zeros = self.logits.new_zeros(inputs[0].value.shape[0], self.n_components)
            data = zeros if data is None else data
            latent = zeros if latent is None else latent
        return data, latent

    def membership(self, inputs: list[Stream], rho: float = 1.0) -> torch.Tensor:
        """:math:`m` (N, K) with log w and rho on the latent streams."""
        data, latent = self.terms(inputs)
        return self.row_log_weights(data.shape[0]) + data + rho * latent

    def latent_stream(self, h: torch.Tensor) -> Stream:
        K = self.n_components
        value = self.logits.new_full((h.shape[0], K), math.log(LATENT_EPS / K))
        value.scatter_(1, h[:, None], math.log(1.0 - LATENT_EPS + LATENT_EPS / K))
        return Stream(value, torch.ones_like(value))

    def advance(self, inputs: list[Stream], h: torch.Tensor) -> list[Stream]:
        """The layer's output for components h (N,): residuals (masks kept) + the latent."""
        out = [Stream(mod.residual(s.value, h), s.mask) for mod, s in zip(self.streams, inputs)]
        return out + [self.latent_stream(h)]

    def inverse(self, outputs: list[Stream], h: torch.Tensor) -> list[Stream]:
        """The layer's input from its output (the latent stream is dropped)."""
        return [Stream(mod.inverse(s.value, h), s.mask)
                for mod, s in zip(self.streams, outputs[:len(self.streams)])]

    @torch.no_grad()
    def initialize(self, inputs: list[Stream], generator: torch.Generator | None) -> None:
        """Data-dependent initialisation on this layer's input (spec §4): w logits 0."""
        self.logits.zero_()
        for mod, s in zip(self.streams, inputs):
            mod.initialize(s.value, generator)
