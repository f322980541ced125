"""Toroidal annealing of the max-component loss and the sigma controller (Gepperth & Pfülb).

Components sit on a :math:`\\sqrt K \\times \\sqrt K` torus (a :math:`1 \\times K` ring when K is not a
perfect square). The annealed loss of a sample is

.. math:: \\ell_\\sigma(x) = \\max_k \\sum_j g_{kj}(\\sigma)\\, s_j(x) - \\tfrac D2 \\log 2\\pi,
   \\qquad g_{kj} \\propto \\exp\\bigl(-\\delta_{kj}^2 / 2\\sigma^2\\bigr),\\ \\textstyle\\sum_j g_{kj} = 1,

with :math:`\\delta_{kj}` the toroidal grid distance. As :math:`\\sigma \\to 0`, :math:`g \\to I` and the
loss becomes the plain max-component log-likelihood.

The matrix :math:`g(\\sigma)` and its helpers live in :mod:`deepmix.layers.annealing` (the GMM layer
needs them) and are re-exported here; this module adds the training-time :class:`SigmaController`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# The annealing matrix itself is a layer-level concept (the GMM layer uses it); re-exported here.
from ..layers.annealing import (WEIGHT_FLOOR, annealing_matrix, grid_shape, initial_sigma,
                                toroidal_distances)

__all__ = ["grid_shape", "toroidal_distances", "annealing_matrix", "initial_sigma", "SigmaController",
           "WEIGHT_FLOOR"]


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
