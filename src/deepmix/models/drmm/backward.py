r"""Backward sampling of a flat DRMM (spec drmm §6, paper Sec. 3.7).

After a sampling-mode forward pass over a batch of copies of one condition, the last layer's
output is replaced by its batch average: continuous residuals 0 (mask 0), categorical streams
:math:`\log \mathrm{mean}_{batch}\,\mathrm{softmax}(x)` broadcast to the batch. Then, last layer
first, each layer's choice is drawn from its incoming latent log-probabilities plus an
encoder-decoder skip term and its input is reconstructed, :math:`X = R + \hat X(h)`; the
reconstructed latent streams of the earlier layers are those layers' incoming log-probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .layer import Stream

__all__ = ["backward_sample", "batch_log_mean"]


def batch_log_mean(logits: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \frac1n \sum_i \mathrm{softmax}(x_i)` (K,) of logits (n, K)."""
    return torch.logsumexp(torch.log_softmax(logits, 1), 0) - math.log(logits.shape[0])


def backward_sample(model: Any, passed: Any, *, generator: torch.Generator | None,
                    temperature: float, truncation: float | None, skip: float,
                    skip_mode: str) -> torch.Tensor:
    """The packed (n, W) samples of the backward pass after forward pass ``passed``."""
    n = passed.choices[0].shape[0]
    top = model.layers[-1]
    specs = top.specs + [None]               # the output adds the last layer's own latent
    streams = []
    for spec, s in zip(specs, passed.last):
        if spec is not None and spec.kind == "continuous":
            streams.append(Stream(torch.zeros_like(s.value), torch.zeros_like(s.mask)))
        else:
            categories = spec.categories if spec is not None else top.n_components
            v = s.value.reshape(n, -1, categories)
            avg = torch.logsumexp(torch.log_softmax(v, -1), 0) - math.log(n)
            streams.append(Stream(avg.reshape(1, -1).expand(n, -1).clone(), s.mask))
    for l in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[l]
        bwd = torch.log_softmax(streams[-1].value, 1)            # incoming latent log-probs
        a = skip if passed.informed[l] else 0.0
        if a:
            sk = batch_log_mean(passed.logits[l]).expand(n, -1)
            if skip_mode == "additive":
                bwd = bwd + a * sk
            else:
                bwd = (1.0 - a) * bwd + a * sk
        h = model._pick(bwd, temperature, truncation, generator)
        streams = layer.inverse(streams, h)
    return model.pack(streams)
