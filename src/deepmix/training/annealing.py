"""Toroidal annealing of the max-component loss and the sigma controller (Gepperth & Pfülb).

Components sit on a :math:`\\sqrt K \\times \\sqrt K` torus (a :math:`1 \\times K` ring when K is not a
perfect square). The annealed loss of a sample is

.. math:: \\ell_\\sigma(x) = \\max_k \\sum_j g_{kj}(\\sigma)\\, s_j(x) - \\tfrac D2 \\log 2\\pi,
   \\qquad g_{kj} \\propto \\exp\\bigl(-\\delta_{kj}^2 / 2\\sigma^2\\bigr),\\ \\textstyle\\sum_j g_{kj} = 1,

with :math:`\\delta_{kj}` the toroidal grid distance. As :math:`\\sigma \\to 0`, :math:`g \\to I` and the
loss becomes the plain max-component log-likelihood.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["grid_shape", "toroidal_distances", "annealing_matrix", "initial_sigma", "SigmaController",
           "WEIGHT_FLOOR"]


def grid_shape(K: int) -> tuple[int, int]:
    """The component grid: square when K is a perfect square, else a 1 x K ring."""
    n = math.isqrt(K)
    return (n, n) if n * n == K else (1, K)


def toroidal_distances(K: int) -> torch.Tensor:
    """Squared toroidal grid distances :math:`\\delta_{kj}^2` between the K components (float64)."""
    rows, cols = grid_shape(K)
    idx = torch.arange(K)
    y, x = idx // cols, idx % cols
    dy = (y[:, None] - y[None, :]).abs()
    dx = (x[:, None] - x[None, :]).abs()
    dy = torch.minimum(dy, rows - dy)
    dx = torch.minimum(dx, cols - dx)
    return (dy * dy + dx * dx).to(torch.float64)


#: Weights of g below this are set to exactly 0. On their way to 0 as sigma shrinks they would
#: pass through the denormal floats, and every product with a denormal is many times slower on a
#: CPU: steps took 6-7x longer at K=25/49 (sigma 0.15) and 15x for an independent K=121 layer
#: (sigma 0.35; ``benchmarks/step_time.py``). The loss changes by less than 1e-30 of a score.
WEIGHT_FLOOR = 1e-30


def annealing_matrix(K: int, sigma: float, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Row-stochastic K x K matrix :math:`g_{kj}(\\sigma)`; tends to the identity as sigma -> 0.

    Weights below :data:`WEIGHT_FLOOR` are exact zeros (no denormal floats in any dtype).
    """
    d2 = toroidal_distances(K)
    logits = -d2 / (2.0 * max(float(sigma), 1e-12) ** 2)
    g = torch.softmax(logits, dim=1)  # exact row normalisation, no underflow to 0/0
    g = torch.where(g < WEIGHT_FLOOR, torch.zeros_like(g), g)
    return (g / g.sum(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def initial_sigma(K: int) -> float:
    """Reference start value :math:`\\sigma_0 = \\sqrt{2K}/4`."""
    return math.sqrt(2.0 * K) / 4.0


@dataclass
class SigmaController:
    """Reference sigma schedule, driven by the mean loss over windows of ``window`` steps.

    The first window's mean is the baseline :math:`l_0`. At the end of each later window, with
    ``ratio = (mean_now - mean_prev) / (mean_prev - l0)``, sigma is multiplied by ``decay`` when
    ``low < ratio < high`` (the loss has stopped improving), never going below ``sigma_min``.
    A zero denominator (no progress since the baseline) leaves sigma unchanged.
    """

    sigma: float
    sigma_min: float = 0.01
    decay: float = 0.9
    window: int = 100
    low: float = -0.1
    high: float = 0.05
    l0: float | None = None
    prev: float | None = None

    def update_window(self, window_sum: float, n: int) -> bool:
        """Feed one finished window (sum of ``n`` step losses). Returns True when sigma changed."""
        mean = window_sum / max(n, 1)
        if self.l0 is None:
            self.l0 = self.prev = mean
            return False
        changed = False
        denom = self.prev - self.l0
        if denom != 0.0 and math.isfinite(denom):
            ratio = (mean - self.prev) / denom
            if self.low < ratio < self.high and self.sigma > self.sigma_min:
                self.sigma = max(self.sigma * self.decay, self.sigma_min)
                changed = True
        self.prev = mean
        return changed

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "SigmaController":
        return cls(**state)
