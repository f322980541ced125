"""Small tensor helpers shared by the models: input checks, row chunks, constants."""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import InputError

__all__ = ["LOG_2PI", "all_finite", "as_matrix", "row_chunks"]

#: :math:`\log 2\pi`, the constant of every Gaussian log-density.
LOG_2PI = math.log(2.0 * math.pi)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite.

    A finite sum proves it in one reduction pass without the (N, D) boolean mask of
    ``isfinite(x).all()``: on a data set that mask is a fresh allocation as large as a quarter of
    the data, and first-touching it cost 0.46 s for 20 000 MNIST images on the 2-core VM (the sum:
    a few ms). Only a sum that overflowed or held a NaN needs the entry-wise look.
    """
    if not x.numel():
        return True
    if not x.is_floating_point() and not x.is_complex():
        return True
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def as_matrix(X: Any, dtype: torch.dtype, device: torch.device, what: str = "X",
               n_features: int | None = None) -> torch.Tensor:
    """``X`` as an (n_samples, n_features) tensor of ``dtype`` on ``device``; an
    :class:`InputError` names a wrong type, shape, dtype, width or non-finite values."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, torch.Tensor):
        raise InputError(f"{what} must be a numpy array or torch tensor, got {type(X).__name__}")
    if X.ndim != 2:
        raise InputError(f"{what} has shape {tuple(X.shape)}; expected (n_samples, n_features)")
    if not (X.is_floating_point() or X.dtype in (torch.uint8, torch.int16, torch.int32, torch.int64)):
        raise InputError(f"{what} has dtype {X.dtype}; expected numbers")
    if n_features is not None and X.shape[1] != n_features:
        raise InputError(f"{what} has {X.shape[1]} features; the model was fitted on {n_features}")
    X = X.to(device=device, dtype=dtype)
    if not all_finite(X):
        raise InputError(f"{what} contains NaN or infinite values")
    return X


def row_chunks(n: int, size: int) -> Iterable[slice]:
    """Slices of ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
