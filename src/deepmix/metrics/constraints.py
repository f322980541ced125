r"""How often samples satisfy a linear inequality :math:`a \cdot x + b > 0` (DRMM's constrained
sampling is judged by this rate)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .precision_recall import as_rows

__all__ = ["constraint_satisfaction"]


def constraint_satisfaction(x: Any, a: Any, b: float = 0.0) -> float:
    r"""Fraction of rows of ``x`` (n, d) with :math:`a \cdot x + b > 0`."""
    x = as_rows(x, "samples")
    a = torch.as_tensor(a.detach().cpu() if torch.is_tensor(a) else np.asarray(a),
                        dtype=torch.float64)
    if a.shape != (x.shape[1],):
        raise InputError(f"a has shape {tuple(a.shape)}; expected ({x.shape[1]},)")
    return float((x @ a + float(b) > 0).double().mean())
