"""Max-pooling layer P(ky, kx, sy, sx): CNN max-pooling over windows, no padding.

Like the reference, a last partial window is kept where the input does not divide evenly
(output (1 + ceil((H - ky)/sy), 1 + ceil((W - kx)/sx), C)), so that the papers' architectures C
and G fit 28x28 images; unlike the reference, a partial window takes the max over its in-range
cells only (the reference reads pixel (0, 0) for the missing ones). Backwards (sampling)
up-samples the control signal: *dense* writes each value to every cell of its window (averaging
where windows overlap), *sparse* writes it to one random cell per window.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .base import Layer, Shape

__all__ = ["Pooling"]


class Pooling(Layer):
    """P(ky, kx, sy, sx): max over ky x kx windows with strides sy, sx.

    Arguments:
        input_shape: (H, W, C) of the input activities.
        ky, kx: window height and width.
        sy, sx: strides.
    """

    code = "P"

    def __init__(self, input_shape: Shape, ky: int, kx: int, sy: int, sx: int) -> None:
        super().__init__(input_shape)
        H, W, C = self.input_shape
        self.ky, self.kx, self.sy, self.sx = int(ky), int(kx), int(sy), int(sx)
        if min(self.ky, self.kx, self.sy, self.sx) < 1:
            raise SpecError(f"{self.spec()}: window sizes and strides must be >= 1")
        if self.ky > H or self.kx > W:
            raise SpecError(f"{self.spec()}: window {self.ky}x{self.kx} is larger than its input "
                            f"{H}x{W}")
        self.output_shape = (1 + -(-(H - self.ky) // self.sy), 1 + -(-(W - self.kx) // self.sx), C)
        Ho, Wo, _ = self.output_shape
        # The windows span this (possibly larger than the input) area; backwards crops it.
        self._covered = ((Ho - 1) * self.sy + self.ky, (Wo - 1) * self.sx + self.kx)
        ones = torch.ones(1, self.ky * self.kx, Ho * Wo)
        counts = F.fold(ones, self._covered, (self.ky, self.kx), stride=(self.sy, self.sx))
        self.register_buffer("_inv_counts", 1.0 / counts.clamp_min(1.0), persistent=False)

    def spec(self) -> str:
        return f"P({self.ky},{self.kx},{self.sy},{self.sx})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(x.permute(0, 3, 1, 2), (self.ky, self.kx), (self.sy, self.sx),
                         ceil_mode=True)
        return y.permute(0, 2, 3, 1).contiguous()

    def backwards(self, control: torch.Tensor, *, generator: torch.Generator | None = None,
                  mode: str = "dense", **options: Any) -> torch.Tensor:
        """Up-sample ``control`` (N, H', W', C) to (N, H, W, C); ``mode`` is dense or sparse."""
        N, Ho, Wo, C = control.shape
        H, W, _ = self.input_shape
        k = self.ky * self.kx
        vals = control.permute(0, 3, 1, 2).reshape(N * C, 1, Ho * Wo)
        if mode == "dense":
            cols = vals.expand(N * C, k, Ho * Wo)
        elif mode == "sparse":
            pick = torch.randint(0, k, (N * C, 1, Ho * Wo), generator=generator,
                                 device=control.device)
            mask = torch.arange(k, device=control.device).view(1, k, 1) == pick
            cols = vals * mask.to(vals.dtype)
        else:
            raise ValueError(f"Unknown pooling backwards mode '{mode}' (dense or sparse).")
        img = F.fold(cols, self._covered, (self.ky, self.kx), stride=(self.sy, self.sx))
        if mode == "dense":
            img = img * self._inv_counts
        img = img[:, :, :H, :W]
        ph, pw = H - img.shape[2], W - img.shape[3]
        if ph > 0 or pw > 0:  # strides larger than windows leave cells no window covers
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        return img.reshape(N, C, H, W).permute(0, 2, 3, 1).contiguous()
