r"""3x3 patches with stride 2 and TensorFlow "SAME" padding, and their overlap-averaging
inverse (spec drmm §7, §9).

An (N, H, W, C) grid gives ``ceil(H/2) x ceil(W/2)`` patches of 9C values in (row, column,
channel) order, so each pixel's C channels stay one contiguous block (a categorical pixel of M
categories stays one M-block). Padded entries carry mask 0; SAME puts the extra padding row and
column at the bottom/right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["same_padding", "extract_patches", "fold_patches"]

KERNEL, STRIDE = 3, 2


def same_padding(size: int) -> tuple[int, int, int]:
    """(pad before, pad after, output size) of TF SAME for kernel 3, stride 2."""
    out = -(-size // STRIDE)
    total = max((out - 1) * STRIDE + KERNEL - size, 0)
    return total // 2, total - total // 2, out


def _pad(x: torch.Tensor, value: float) -> torch.Tensor:
    """(N, C, H, W) padded as SAME."""
    top, bottom, _ = same_padding(x.shape[2])
    left, right, _ = same_padding(x.shape[3])
    return F.pad(x, (left, right, top, bottom), value=value)


def extract_patches(x: torch.Tensor, mask: torch.Tensor, pad_value: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N * P, 9C) of grid x (N, H, W, C) and their masks (padding: mask 0, value
    ``pad_value``); rows are position-major per image (P = ceil(H/2) ceil(W/2))."""
    N, H, W, C = x.shape

    def cut(t: torch.Tensor, value: float) -> torch.Tensor:
        cols = F.unfold(_pad(t.permute(0, 3, 1, 2), value), KERNEL, stride=STRIDE)  # (N, C*9, P)
        P = cols.shape[-1]
        return cols.reshape(N, C, KERNEL * KERNEL, P).permute(0, 3, 2, 1).reshape(N * P, -1)

    return cut(x, pad_value), cut(mask, 0.0)


def fold_patches(patches: torch.Tensor, n: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The (n, H, W, C) grid whose entries are the averages of the patch entries covering
    them (the inverse of :func:`extract_patches` for consistent patches)."""
    H, W, C = shape
    top, bottom, Ho = same_padding(H)
    left, right, Wo = same_padding(W)
    P = Ho * Wo
    cols = patches.reshape(n, P, KERNEL * KERNEL, C).permute(0, 3, 2, 1).reshape(n, C * 9, P)
    size = (H + top + bottom, W + left + right)
    total = F.fold(cols, size, KERNEL, stride=STRIDE)
    count = F.fold(torch.ones_like(cols), size, KERNEL, stride=STRIDE)
    grid = (total / count)[:, :, top:top + H, left:left + W]
    return grid.permute(0, 2, 3, 1)
