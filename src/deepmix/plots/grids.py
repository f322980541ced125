"""Image grids written as PNG (atomically)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_path

__all__ = ["image_grid", "save_grid"]


def image_grid(images: torch.Tensor | np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one (rows*(H+pad), cols*(W+pad), C) array."""
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    n, H, W, C = a.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = math.ceil(n / ncol)
    grid = np.ones((nrow * (H + pad) + pad, ncol * (W + pad) + pad, C), dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, ncol)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[y:y + H, x:x + W] = a[k]
    return np.clip(grid, 0.0, 1.0)


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, ncol: int | None = None,
              scale: int = 3) -> Path:
    """Write a PNG grid of ``images``; each pixel becomes a ``scale`` x ``scale`` block."""
    import matplotlib.image as mpimg  # imsave needs no backend: the user's is left alone

    grid = image_grid(images, ncol)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    if grid.shape[2] == 1:
        grid = np.repeat(grid, 3, axis=2)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        mpimg.imsave(str(tmp), grid, format="png")
    return path
