"""Max-pooling layer P(ky, kx, sy, sx): CNN max-pooling over windows, no padding.

Out-of-range cells are never read: windows that would leave the input are dropped (floor), so the
output is (1 + (H - ky)//sy, 1 + (W - kx)//sx, C). Backwards (sampling) up-samples the control
signal: *dense* writes each value to every cell of its window (averaging where windows overlap),
*sparse* writes it to one random cell per window. Cells no window covers copy their nearest
covered neighbour.
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
        self.output_shape = (1 + (H - self.ky) // self.sy, 1 + (W - self.kx) // self.sx, C)
        Ho, Wo, _ = self.output_shape
        self._covered = ((Ho - 1) * self.sy + self.ky, (Wo - 1) * self.sx + self.kx)
        ones = torch.ones(1, self.ky * self.kx, Ho * Wo)
        counts = F.fold(ones, self._covered, (self.ky, self.kx), stride=(self.sy, self.sx))
        self.register_buffer("_inv_counts", 1.0 / counts.clamp_min(1.0), persistent=False)

    def spec(self) -> str:
        return f"P({self.ky},{self.kx},{self.sy},{self.sx})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(x.permute(0, 3, 1, 2), (self.ky, self.kx), (self.sy, self.sx))
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
        ph, pw = H - self._covered[0], W - self._covered[1]
        if ph or pw:
            img = F.pad(img, (0, pw, 0, ph), mode="replicate")
        return img.reshape(N, C, H, W).permute(0, 2, 3, 1).contiguous()
