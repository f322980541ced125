r"""Backward sampling of a DRMM (spec drmm §6, paper Sec. 3.7).

After a sampling-mode forward pass over a batch of copies of one condition, the last layer's
output is replaced by its batch average: the latent streams by
:math:`\log \mathrm{mean}_{batch}\,\mathrm{softmax}(x)` broadcast to the batch, the data
residuals by zeros (categorical data: uniform), masks 0. Then, last layer
first, each layer's choice is drawn from its incoming latent log-probabilities plus an
encoder-decoder skip term and its input is reconstructed, :math:`X = R + \hat X(h)`; the
reconstructed latent streams of the earlier layers are those layers' incoming log-probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .layer import Stream

__all__ = ["backward_sample", "backward_pass", "group_log_mean"]


def group_log_mean(logits: torch.Tensor, groups: int, categories: int | None = None
                   ) -> torch.Tensor:
    r""":math:`\log \mathrm{mean}\,\mathrm{softmax}` over the rows of each of ``groups``
    consecutive row groups (per block of ``categories``), broadcast back to (n, W)."""
    n, w = logits.shape
    m = categories or w
    lp = torch.log_softmax(logits.reshape(groups, n // groups, w // m, m), -1)
    avg = torch.logsumexp(lp, 1, keepdim=True) - math.log(n // groups)
    return avg.expand(-1, n // groups, -1, -1).reshape(n, w)


def backward_pass(model: Any, streams: list[Stream], skips: list[torch.Tensor | None], *,
                  generator: torch.Generator | None, temperature: float,
                  truncation: float | None, skip: float, skip_mode: str) -> list[Stream]:
    """Invert the layers of ``model`` from the last layer's output ``streams``; ``skips[l]``
    is layer l's skip term (n, K) (None or rows of zeros weight: no skip)."""
    for l in range(len(model.layers) - 1, -1, -1):
        bwd = torch.log_softmax(streams[-1].value, 1)            # incoming latent log-probs
        sk = skips[l]
        if sk is not None and skip:
            a = skip * sk[1][:, None]                            # 0 on uninformed rows
            if skip_mode == "additive":
                bwd = bwd + a * sk[0]
            else:
                bwd = (1.0 - a) * bwd + a * sk[0]
        h = model._pick(bwd, temperature, truncation, generator)
        streams = model.layers[l].inverse(streams, h)
    return streams


def backward_sample(model: Any, passed: Any, *, generator: torch.Generator | None,
                    temperature: float, truncation: float | None, skip: float,
                    skip_mode: str, groups: int = 1) -> list[Stream]:
    """The reconstructed data streams of the backward pass after forward pass ``passed``,
    batch-averaging within each of ``groups`` consecutive groups of rows (copies of one
    condition)."""
    top = model.layers[-1]
    specs = top.specs + [None]               # the output adds the last layer's own latent
    streams = []
    for spec, mod, s in zip(specs, list(top.streams) + [None], passed.last):
        if spec is not None and not spec.latent:
            # data residuals come back as zeros (categorical: uniform), masks 0
            zero = mod.zero_residual(s.value.shape[0])
            streams.append(Stream(zero, torch.zeros_like(zero)))
        else:
            categories = spec.categories if spec is not None else top.n_components
            streams.append(Stream(group_log_mean(s.value, groups, categories), s.mask))
    skips = [(group_log_mean(m, groups), inf.to(m.dtype))
             for m, inf in zip(passed.logits, passed.informed)]
    return backward_pass(model, streams, skips, generator=generator, temperature=temperature,
                         truncation=truncation, skip=skip, skip_mode=skip_mode)
