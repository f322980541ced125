"""Masks for in-painting: named masks of observed pixels, mask validation and corruption.

A mask is boolean with True = *observed*. :func:`make_mask` builds the named masks of
:data:`MASKS` (the papers' Fig. 8 hides the right half), :func:`as_observed` validates a mask and
broadcasts it to a batch of images, and :func:`corrupt` fills hidden pixels with noise, a
checkerboard or a constant: test inputs for in-painting with an unknown mask
(:func:`deepmix.inference.inpaint_unknown`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["MASKS", "CORRUPTIONS", "make_mask", "as_observed", "corrupt"]

#: Named masks of :func:`make_mask` (True = observed).
MASKS = ("right-half", "left-half", "top-half", "bottom-half", "center", "random")
#: Fillings of hidden pixels by :func:`corrupt`.
CORRUPTIONS = ("noise", "checkerboard", "constant")


def make_mask(name: str, shape: tuple[int, int], *, fraction: float = 0.5,
              seed: int = 0) -> np.ndarray:
    """A named (H, W) boolean mask of *observed* pixels.

    ``right-half`` hides the right half (the papers' Fig. 8), likewise ``left-half``,
    ``top-half``, ``bottom-half``; ``center`` hides a centred square of ``fraction`` of the side;
    ``random`` hides each pixel with probability ``fraction``.
    """
    H, W = int(shape[0]), int(shape[1])
    obs = np.ones((H, W), dtype=bool)
    if name == "right-half":
        obs[:, W // 2:] = False
    elif name == "left-half":
        obs[:, : W - W // 2] = False
    elif name == "top-half":
        obs[: H - H // 2] = False
    elif name == "bottom-half":
        obs[H // 2:] = False
    elif name == "center":
        if not 0 < fraction < 1:
            raise InputError(f"center mask fraction must lie in (0, 1), got {fraction}")
        h, w = max(1, round(H * fraction)), max(1, round(W * fraction))
        y0, x0 = (H - h) // 2, (W - w) // 2
        obs[y0:y0 + h, x0:x0 + w] = False
    elif name == "random":
        if not 0 < fraction < 1:
            raise InputError(f"random mask fraction must lie in (0, 1), got {fraction}")
        obs = np.random.default_rng(seed).random((H, W)) >= fraction
    else:
        raise InputError(f"unknown mask '{name}': known masks are {', '.join(MASKS)}")
    return obs


def as_observed(observed: Any, images: torch.Tensor) -> torch.Tensor:
    """Validate a boolean mask of observed pixels and broadcast it to ``images`` (N, H, W, C).

    Accepted shapes: (H, W), (H, W, C), (N, H, W) or (N, H, W, C); values must be boolean or 0/1.
    """
    N, H, W, C = images.shape
    try:
        m = torch.as_tensor(np.ascontiguousarray(
            observed.cpu() if torch.is_tensor(observed) else observed))
    except (TypeError, ValueError):
        raise InputError(f"mask must be a boolean array, got {type(observed).__name__}") from None
    if m.dtype != torch.bool:
        if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            raise InputError("mask must be boolean (True = observed) or contain only 0 and 1")
        m = m != 0
    shape = tuple(m.shape)
    if shape == (H, W):
        m = m.view(1, H, W, 1)
    elif shape == (H, W, C) and C > 1:
        m = m.view(1, H, W, C)
    elif shape == (N, H, W):
        m = m.view(N, H, W, 1)
    elif shape == (N, H, W, 1):
        m = m.view(N, H, W, 1)
    elif shape == (N, H, W, C) or shape == (1, H, W, C) or shape == (H, W, 1):
        m = m.reshape(-1, H, W, C) if shape != (H, W, 1) else m.view(1, H, W, 1)
    else:
        raise InputError(f"mask of shape {shape} does not fit images {tuple(images.shape)}: "
                         f"expected (H, W)=({H}, {W}), (N, H, W) or (N, H, W, C)")
    return m.to(images.device).expand(N, H, W, C)


def corrupt(images: torch.Tensor, hidden: torch.Tensor, kind: str = "noise", *,
            seed: int = 0) -> torch.Tensor:
    """``images`` (N, H, W, C) with the ``hidden`` pixels (boolean, same shape) replaced by
    uniform noise, a checkerboard or the constant 1: test inputs for unknown-mask in-painting."""
    hidden = ~as_observed(~torch.as_tensor(np.ascontiguousarray(
        hidden.cpu() if torch.is_tensor(hidden) else hidden)).bool(), images)
    if kind == "noise":
        gen = torch.Generator().manual_seed(int(seed))
        fill = torch.rand(images.shape, generator=gen).to(images)
    elif kind == "checkerboard":
        H, W = images.shape[1:3]
        board = (torch.arange(H)[:, None] + torch.arange(W)[None]) % 2
        fill = board.to(images).view(1, H, W, 1).expand_as(images)
    elif kind == "constant":
        fill = torch.ones_like(images)
    else:
        raise InputError(f"unknown corruption '{kind}': noise, checkerboard or constant")
    return torch.where(hidden, fill, images)
