r"""Linear classifier layer C(S) or C(S, n): softmax regression on flattened activities.

Logits :math:`a = \hat A W^T + b` with :math:`\hat A \in \mathbb R^{N \times HWC}` the flattened
activities of the layer below; with ``extra_shapes`` (the ``n - 1`` next-highest GMM layers of
C(S, n), as in the papers' best classifier) their flattened outputs are concatenated to it. Trained by
cross-entropy on labels with its input detached (no gradient reaches the GMM layers). For
class-conditional sampling the map is approximately inverted:
:math:`T_{below} = (t - b) W`, with t the log of a smoothed one-hot target (``on`` on the class, the
rest spread evenly), shifted per sample so that its minimum is 0.

*Tempered features* (``temperature`` T > 1, a deepmix option): each position's responsibility
vector r is replaced by

.. math:: \tilde r_k = \frac{r_k^{1/T}}{\sum_j r_j^{1/T}} = \mathrm{softmax}_k(s_k / T),

the posterior of the same GMM at temperature T (s: its log-scores). Trained GMM responsibilities
are nearly one-hot (a vector quantisation of the patches); tempering keeps the runner-up
components visible to the linear map, which raises test accuracy (see
``benchmarks/reproduce/classification.py``). T = 1 is the papers' classifier. The GMM layers are
untouched either way. Tempering needs responsibility vectors, so with T != 1 every input of the
classifier must be a GMM layer's output (no Folding/Pooling between the top GMM and C). The
features are computed from the stored responsibilities, in which values below
``RESPONSIBILITY_FLOOR`` (1e-18) are exact zeros; those enter as 1e-30, so the features equal
softmax(s / T) except on components whose responsibility is below the floor.
For class-conditional sampling the inverted signal lives in tempered-feature space; it is mapped
back per position by :math:`c \mapsto \mathrm{softmax}(T \log c)` (the inverse of tempering up to
normalisation) before the GMM layers below use it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, SpecError
from .base import Layer, Shape

__all__ = ["Classifier", "check_temperature"]

_TINY = 1e-30


def check_temperature(temperature: Any) -> float:
    """``temperature`` as a float, or a :class:`~deepmix.errors.SpecError` unless finite and > 0."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise SpecError(f"classifier temperature must be a number, got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise SpecError(f"classifier temperature must be finite and > 0, got {temperature!r}")
    return t


class Classifier(Layer):
    """C(S): S classes from the (H, W, C) activities of the layer below.

    Arguments:
        input_shape: (H, W, C) of the input activities.
        S: number of classes.
        extra_shapes: shapes of the extra inputs of C(S, n).
        temperature: T of the tempered features (1: plain responsibilities).
    """

    code = "C"

    def __init__(self, input_shape: Shape, S: int,
                 extra_shapes: Sequence[Shape] = (), temperature: float = 1.0) -> None:
        super().__init__(input_shape)
        self.temperature = check_temperature(temperature)
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
        parts = [self._temper(x)] + [self._temper(e) for e in extras]
        parts = [p.reshape(p.shape[0], -1) for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _temper(self, r: torch.Tensor) -> torch.Tensor:
        """:math:`\\mathrm{softmax}(\\log r / T)` over the channel axis (identity at T = 1)."""
        if self.temperature == 1.0:
            return r
        # Floored responsibilities are exact zeros: log(0) would give NaN for an all-zero vector.
        return torch.softmax(r.clamp_min(_TINY).log() / self.temperature, dim=-1)

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
        out = [p.reshape(-1, *sh) for p, sh in zip(parts, shapes)]
        if self.temperature != 1.0:
            # Undo the tempering r -> r^(1/T): raise to the power T, normalised per position in
            # log space (no overflow); the clip matches the GMM layers' own clip of signals.
            out = [torch.softmax(self.temperature * o.clamp_min(1e-6).log(), dim=-1) for o in out]
        return out
