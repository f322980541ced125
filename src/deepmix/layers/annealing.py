"""Toroidal annealing of the max-component loss (Gepperth & Pfülb): the annealing matrix g(sigma).

Components sit on a :math:`\\sqrt K \\times \\sqrt K` torus (a :math:`1 \\times K` ring when K is not a
perfect square). The annealed loss of a sample is

.. math:: \\ell_\\sigma(x) = \\max_k \\sum_j g_{kj}(\\sigma)\\, s_j(x) - \\tfrac D2 \\log 2\\pi,
   \\qquad g_{kj} \\propto \\exp\\bigl(-\\delta_{kj}^2 / 2\\sigma^2\\bigr),\\ \\textstyle\\sum_j g_{kj} = 1,

with :math:`\\delta_{kj}` the toroidal grid distance. As :math:`\\sigma \\to 0`, :math:`g \\to I` and the
loss becomes the plain max-component log-likelihood.

The GMM layer (:mod:`deepmix.layers.gmm`) uses these; the sigma schedule that drives them during
training, :class:`~deepmix.training.annealing.SigmaController`, lives in
:mod:`deepmix.training.annealing`, which re-exports everything here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["grid_shape", "toroidal_distances", "annealing_matrix", "initial_sigma", "WEIGHT_FLOOR"]


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
