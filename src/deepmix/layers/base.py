"""The layer protocol shared by all DCGMM layers.

A layer maps activities of shape (N, H, W, C) (NHWC) to (N, H', W', C') in *estimation* mode
(:meth:`Layer.forward`) and, in *sampling* mode, maps a control signal of the output's shape back
to one of the input's shape (:meth:`Layer.backwards`). Shapes are fixed when the model is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Layer", "Shape"]

Shape = tuple[int, int, int]


class Layer(nn.Module):
    """Base class: stores the (H, W, C) input and output shapes checked at build time."""

    #: one-letter code of the spec notation, e.g. ``"F"``
    code: str = "?"

    def __init__(self, input_shape: Shape) -> None:
        super().__init__()
        self.input_shape: Shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        self.output_shape: Shape = self.input_shape

    def backwards(self, control: torch.Tensor, *, generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Map a control signal of the output's shape to one of the input's shape (sampling)."""
        raise TypeError(f"{type(self).__name__} has no sampling (backwards) mode")

    def spec(self) -> str:
        """This layer in the spec notation, e.g. ``F(8,8,2,2)``."""
        raise TypeError(f"{type(self).__name__} has no spec notation")

    def extra_repr(self) -> str:
        return f"{self.spec()}: {self.input_shape} -> {self.output_shape}"
