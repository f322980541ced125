r"""Log-likelihood units: nats per image to bits per dimension on the 8-bit pixel scale.

For pixels :math:`v \in \{0..L-1\}` dequantised and mapped affinely onto an interval of width
``data_range`` (the deep GMM paper: :math:`x = (v+u)/128 - 1`, width 2), a density :math:`p(x)`
has :math:`\log_2 p(v) = \log_2 p(x) + D \log_2(\text{range}/L)`, so

.. math:: \text{bits/dim} = \log_2 L - \log_2(\text{range}) - \frac{LL}{D \ln 2}

(7 - LL/(D ln 2) for L = 256 on [-1, 1); 8 - LL/(D ln 2) on [0, 1)). Arrays and numbers only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["bits_per_dim", "nats_per_dim"]


def bits_per_dim(log_likelihood: Any, dims: int, *, levels: int = 256,
                 data_range: float = 2.0) -> Any:
    """Bits per dimension of ``log_likelihood`` (nats per image; a number or an array)."""
    ll = np.asarray(log_likelihood, dtype=np.float64)
    out = math.log2(levels) - math.log2(data_range) - ll / (dims * math.log(2.0))
    return float(out) if out.ndim == 0 else out


def nats_per_dim(log_likelihood: Any, dims: int) -> Any:
    """LL / D."""
    out = np.asarray(log_likelihood, dtype=np.float64) / dims
    return float(out) if out.ndim == 0 else out
