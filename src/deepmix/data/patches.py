r"""Random square patches of images as flat vectors: the "MNIST patches" data set of the DRMM
paper's Fig. 7 (its patch size and count are not stated; deepmix's choice is documented in
``docs/drmm.md``).

A patch of size s at (row, column) ``(r, c)`` is ``images[i, r:r+s, c:c+s, :]`` flattened in
(row, column, channel) order; image, row and column are drawn uniformly. ``min_ink`` > 0 keeps
only patches with at least that many non-zero values: on digit images about one in seven of the
uniformly drawn 8 x 8 MNIST patches are blank, one point mass that a k-NN precision / recall would
measure with radius 0.
"""

from __future__ import annotations

import torch

from ..errors import DataError

__all__ = ["image_patches"]


def image_patches(images: torch.Tensor, n: int, size: int, *, seed: int | None = None,
                  generator: torch.Generator | None = None, min_ink: int = 0) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` patches (n, size * size * C) of ``images``
    (N, H, W[, C]), in the images' dtype; draws in rounds until ``n`` pass ``min_ink``."""
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"image_patches needs images (N, H, W[, C]) with N >= 1, got shape "
                        f"{tuple(images.shape)}")
    N, H, W, C = images.shape
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= min(H, W):
        raise DataError(f"patch size must be an integer in [1, {min(H, W)}], got {size!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"the number of patches must be an integer >= 0, got {n!r}")
    if not 0 <= min_ink <= size * size * C:
        raise DataError(f"min_ink must be in [0, {size * size * C}], got {min_ink!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(
        0 if seed is None else seed)
    offsets = torch.arange(size)
    out: list[torch.Tensor] = []
    have, rounds = 0, 0
    while have < n:
        m = max(2 * (n - have), 256)
        i = torch.randint(N, (m,), generator=gen)
        r = torch.randint(H - size + 1, (m,), generator=gen)
        c = torch.randint(W - size + 1, (m,), generator=gen)
        rows = (r[:, None] + offsets)[:, :, None]                       # (m, s, 1)
        cols = (c[:, None] + offsets)[:, None, :]                       # (m, 1, s)
        p = images[i[:, None, None], rows, cols].reshape(m, -1)         # (m, s*s*C)
        if min_ink:
            p = p[(p != 0).sum(1) >= min_ink]
        out.append(p)
        have += p.shape[0]
        rounds += 1
        if rounds > 100 and have == 0:
            raise DataError(f"no {size} x {size} patch has {min_ink} non-zero values")
    return torch.cat(out)[:n]
