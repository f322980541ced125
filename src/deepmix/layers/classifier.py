r"""Linear classifier layer C(S): softmax regression on the flattened activities below.

Logits :math:`a = \hat A W^T + b` with :math:`\hat A \in \mathbb R^{N \times HWC}`. Trained by
cross-entropy on labels with its input detached (no gradient reaches the GMM layers). For
class-conditional sampling the map is approximately inverted:
:math:`T_{below} = (t - b) W`, with t the log of a smoothed one-hot target (``on`` on the class, the
rest spread evenly), shifted per sample so that its minimum is 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, SpecError
from .base import Layer, Shape

__all__ = ["Classifier"]


class Classifier(Layer):
    """C(S): S classes from the (H, W, C) activities of the layer below.

    Arguments:
        input_shape: (H, W, C) of the input activities.
        S: number of classes.
    """

    code = "C"

    def __init__(self, input_shape: Shape, S: int) -> None:
        super().__init__(input_shape)
        self.S = int(S)
        if self.S < 2:
            raise SpecError(f"{self.spec()}: a classifier needs at least 2 classes")
        H, W, C = self.input_shape
        self.linear = nn.Linear(H * W * C, self.S)
        # Zero start: softmax regression is convex, and a zero start keeps runs reproducible.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.output_shape = (1, 1, self.S)

    def spec(self) -> str:
        return f"C({self.S})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (N, 1, 1, S)."""
        return self.linear(x.reshape(x.shape[0], -1)).view(-1, 1, 1, self.S)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean softmax cross-entropy of the logits of (detached) ``x`` against ``labels``."""
        return F.cross_entropy(self(x.detach()).view(-1, self.S), labels)

    @torch.no_grad()
    def backwards(self, control: torch.Tensor, *, generator: torch.Generator | None = None,
                  on: float = 0.95, **options: Any) -> torch.Tensor:
        """Control signal for the layer below from class labels ``control`` (N,) (int64)."""
        labels = control.long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.S):
            raise InputError(f"class labels must lie in 0..{self.S - 1}")
        off = (1.0 - on) / (self.S - 1)
        t = torch.full((labels.shape[0], self.S), math.log(off), device=self.linear.weight.device)
        t.scatter_(1, labels.unsqueeze(1), math.log(on))
        t = t - t.min(dim=1, keepdim=True).values
        below = (t - self.linear.bias) @ self.linear.weight
        return below.reshape(-1, *self.input_shape)
