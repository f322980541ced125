"""Folding for the deep GMM: a permutation of pixels (log-det 0).

An image (H, W, C) becomes (H/r, W/r, r*r*C) "feature maps", stored as (P, Cb) with P = (H/r)(W/r)
positions in row-major grid order and the patch vector ordered row-in-patch, column-in-patch,
channel, channel fastest (the order of :class:`deepmix.layers.folding.Folding` with
``F(r, r, r, r)``, which a test checks).
"""

from __future__ import annotations

import torch

from ...errors import SpecError

__all__ = ["fold", "unfold"]


def fold(images: torch.Tensor, r: int) -> torch.Tensor:
    """(N, H, W, C) -> (N, (H/r)(W/r), r*r*C); H and W must be multiples of r."""
    N, H, W, C = images.shape
    if H % r or W % r:
        raise SpecError(f"fold r={r} does not tile {H}x{W} images (H and W must be multiples "
                        f"of r)")
    t = images.reshape(N, H // r, r, W // r, r, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(N, (H // r) * (W // r), r * r * C)


def unfold(h: torch.Tensor, r: int, size: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`fold`: (N, P, r*r*C) -> (N, H, W, C) for ``size`` = (H, W)."""
    N, P, Cb = h.shape
    H, W = size
    C = Cb // (r * r)
    t = h.reshape(N, H // r, W // r, r, r, C).permute(0, 1, 3, 2, 4, 5)
    return t.reshape(N, H, W, C)
