r"""Linear classifier layer C(S) or C(S, n): softmax regression on flattened activities.

Logits :math:`a = \hat A W^T + b` with :math:`\hat A \in \mathbb R^{N \times HWC}` the flattened
activities of the layer below; with ``extra_shapes`` (the ``n - 1`` next-highest GMM layers of
C(S, n), as in the papers' best classifier) their flattened outputs are concatenated to it. Trained by
cross-entropy on labels with its input detached (no gradient reaches the GMM layers). For
class-conditional sampling the map is approximately inverted:
:math:`T_{below} = (t - b) W`, with t the log of a smoothed one-hot target (``on`` on the class, the
rest spread evenly), shifted per sample so that its minimum is 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

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

    def __init__(self, input_shape: Shape, S: int,
                 extra_shapes: Sequence[Shape] = ()) -> None:
        super().__init__(input_shape)
        self.S = int(S)
        if self.S < 2:
            raise SpecError(f"{self.spec()}: a classifier needs at least 2 classes")
        self.extra_shapes = [tuple(int(v) for v in sh) for sh in extra_shapes]
        sizes = [math.prod(self.input_shape)] + [math.prod(sh) for sh in self.extra_shapes]
        self.sizes = sizes
        self.linear = nn.Linear(sum(sizes), self.S)
        # Zero start: softmax regression is convex, and a zero start keeps runs reproducible.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.output_shape = (1, 1, self.S)

    def spec(self) -> str:
        n = 1 + len(getattr(self, "extra_shapes", ()))
        return f"C({self.S})" if n == 1 else f"C({self.S},{n})"

    def _flat(self, x: torch.Tensor, extras: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(extras) != len(self.extra_shapes):
            raise InputError(f"{self.spec()} takes {len(self.extra_shapes)} extra inputs, "
                             f"got {len(extras)}")
        parts = [x.reshape(x.shape[0], -1)] + [e.reshape(e.shape[0], -1) for e in extras]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, extras: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Logits, (N, 1, 1, S)."""
        return self.linear(self._flat(x, extras)).view(-1, 1, 1, self.S)

    def loss(self, x: torch.Tensor, labels: torch.Tensor,
             extras: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Mean softmax cross-entropy of the logits of (detached) inputs against ``labels``."""
        logits = self(x.detach(), [e.detach() for e in extras])
        return F.cross_entropy(logits.view(-1, self.S), labels)

    @torch.no_grad()
    def backwards(self, control: torch.Tensor, *, generator: torch.Generator | None = None,
                  on: float = 0.95, **options: Any) -> torch.Tensor:
        """Control signal for the layer below from class labels ``control`` (N,) (int64).

        With extra inputs only the part for the layer below is returned; see
        :meth:`backwards_all` for every part.
        """
        return self.backwards_all(control, on=on)[0]

    @torch.no_grad()
    def backwards_all(self, labels: torch.Tensor, *, on: float = 0.95) -> list[torch.Tensor]:
        """Control signals for the layer below and for each extra input, in that order."""
        labels = labels.long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.S):
            raise InputError(f"class labels must lie in 0..{self.S - 1}")
        off = (1.0 - on) / (self.S - 1)
        t = torch.full((labels.shape[0], self.S), math.log(off), device=self.linear.weight.device)
        t.scatter_(1, labels.unsqueeze(1), math.log(on))
        t = t - t.min(dim=1, keepdim=True).values
        flat = (t - self.linear.bias) @ self.linear.weight
        parts = torch.split(flat, self.sizes, dim=1)
        shapes = [self.input_shape] + self.extra_shapes
        return [p.reshape(-1, *sh) for p, sh in zip(parts, shapes)]
