"""Folding layer F(fy, fx, sy, sx): gather image patches into channel vectors.

Maps (N, H, W, C) to (N, 1 + (H - fy)/sy, 1 + (W - fx)/sx, fy*fx*C) with no padding. The patch
vector is ordered patch-row, patch-column, channel (channel fastest), like the reference.
Backwards (sampling) scatters each position's vector onto its patch and divides every pixel by the
number of patches that cover it (*overlap averaging*), so folding then unfolding an image whose
patches cover it is the identity (exactly for tiling patches, up to float rounding where they
overlap).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import SpecError
from .base import Layer, Shape

__all__ = ["Folding"]


class Folding(Layer):
    """F(fy, fx, sy, sx): patches of fy x fx with strides sy, sx.

    Arguments:
        input_shape: (H, W, C) of the input activities.
        fy, fx: patch height and width.
        sy, sx: strides.
    """

    code = "F"

    def __init__(self, input_shape: Shape, fy: int, fx: int, sy: int, sx: int) -> None:
        super().__init__(input_shape)
        H, W, C = self.input_shape
        self.fy, self.fx, self.sy, self.sx = int(fy), int(fx), int(sy), int(sx)
        if min(self.fy, self.fx, self.sy, self.sx) < 1:
            raise SpecError(f"{self.spec()}: patch sizes and strides must be >= 1")
        if self.fy > H or self.fx > W:
            raise SpecError(f"{self.spec()}: patch {self.fy}x{self.fx} is larger than its input "
                            f"{H}x{W}")
        if (H - self.fy) % self.sy or (W - self.fx) % self.sx:
            raise SpecError(f"{self.spec()}: patches do not tile the {H}x{W} input "
                            f"((H - fy) and (W - fx) must be multiples of the strides)")
        self.output_shape = (1 + (H - self.fy) // self.sy, 1 + (W - self.fx) // self.sx,
                             self.fy * self.fx * C)
        # The whole input as one patch (F(H,W,1,1)) is a pure reshape: no copy, no fold.
        self._is_reshape = self.fy == H and self.fx == W
        if not self._is_reshape:
            ones = torch.ones(1, C * self.fy * self.fx, self.output_shape[0] * self.output_shape[1])
            counts = F.fold(ones, (H, W), (self.fy, self.fx), stride=(self.sy, self.sx))
            # Pixels no patch covers (only possible when strides exceed patch sizes) stay 0.
            self.register_buffer("_inv_counts", 1.0 / counts.clamp_min(1.0), persistent=False)

    def spec(self) -> str:
        return f"F({self.fy},{self.fx},{self.sy},{self.sx})"

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """A view of all patches, (N, Ho, Wo, fy, fx*C) or (N, Ho, Wo, fy, fx, C); no copy."""
        N = x.shape[0]
        Ho, Wo, _ = self.output_shape
        C = self.input_shape[2]
        if (x.is_contiguous() and tuple(x.shape[1:]) == tuple(self.input_shape)
                and not (x.requires_grad and torch.is_grad_enabled())):
            # In NHWC one patch row (fx pixels, all channels) is one contiguous run, so the copy
            # that materialises the patches moves runs of fx*C floats instead of single ones
            # (2-3x faster than copying the 6-d unfold view). Only for the layer's own input
            # shape (as_strided would read a wrong one without complaint), and not under
            # autograd: as_strided's backward over overlapping windows is slow, unfold's is not.
            sN, sH, sW, _ = x.stride()
            return x.as_strided((N, Ho, Wo, self.fy, self.fx * C),
                                (sN, self.sy * sH, self.sx * sW, sH, 1), x.storage_offset())
        # (N, H, W, C) -> strided view (N, Ho, Wo, C, fy, fx) -> (N, Ho, Wo, fy, fx, C)
        patches = x.unfold(1, self.fy, self.sy).unfold(2, self.fx, self.sx)
        return patches.permute(0, 1, 2, 4, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        Ho, Wo, Co = self.output_shape
        if self._is_reshape:
            return x.reshape(N, 1, 1, Co)
        return self._patches(x).reshape(N, Ho, Wo, Co)

    def forward_design(self, x: torch.Tensor) -> torch.Tensor:
        """The GMM design matrix :math:`[p, p^2]` of all patches p, (N*H'*W', 2*D), in one buffer.

        Writing the patches straight into the left half saves the GMM layer above a copy and a
        concatenation of the largest tensor of a training step.
        """
        N = x.shape[0]
        Ho, Wo, Co = self.output_shape
        Z = torch.empty(N * Ho * Wo, 2 * Co, dtype=x.dtype, device=x.device)
        left = Z[:, :Co]
        if self._is_reshape:
            left.copy_(x.reshape(N, Co))
        else:
            patches = self._patches(x)
            left.view(patches.shape).copy_(patches)
        torch.mul(left, left, out=Z[:, Co:])
        return Z

    def backwards(self, control: torch.Tensor, *, generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Overlap averaging: scatter patch vectors back and divide by the cover count."""
        N = control.shape[0]
        H, W, C = self.input_shape
        if self._is_reshape:
            return control.reshape(N, H, W, C)
        Ho, Wo, _ = self.output_shape
        cols = control.reshape(N, Ho * Wo, self.fy, self.fx, C).permute(0, 4, 2, 3, 1)
        cols = cols.reshape(N, C * self.fy * self.fx, Ho * Wo)
        img = F.fold(cols, (H, W), (self.fy, self.fx), stride=(self.sy, self.sx))
        img = img * self._inv_counts
        return img.permute(0, 2, 3, 1).contiguous()
