r"""Training objectives for density models that expose ``log_prob(x)``.

Each is a loss to *minimise*, averaged over the batch:

- ``"mle"`` (SGD maximum likelihood): :math:`-\log p(x)`.
- ``"sm"`` (exact score matching): :math:`J(x) = \mathrm{tr}\,\nabla_x^2 \log p(x)
  + \tfrac12 \|\nabla_x \log p(x)\|^2`, equal to the Fisher divergence up to a constant.
- ``"ssm"`` (sliced score matching, variance-reduced by default):
  :math:`v^T H(x) v + \tfrac12 \|s(x)\|^2` (or :math:`+\tfrac12 (v^T s)^2` without variance
  reduction) for ``n_slices`` random directions v, Gaussian or Rademacher.

Models with closed forms (:class:`deepmix.models.gmm.MixtureDensity`: ``score_and_laplacian``,
``hessian_quadratic``) use them, at the cost of one likelihood pass; any other model goes through
autograd (``method="autograd"`` forces that route: D + 1 backward passes for SM, two for SSM).
EM is not a loss: it is an :class:`~deepmix.training.objectives.EMObjective`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ...errors import ConfigError

__all__ = ["OBJECTIVES", "get_objective", "nll", "score_matching", "sliced_score_matching"]


def nll(model: Any, x: torch.Tensor, **_: Any) -> torch.Tensor:
    """Mean negative log-likelihood."""
    return -model.log_prob(x).mean()


def _autograd_score(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    s = torch.autograd.grad(model.log_prob(x).sum(), x, create_graph=True)[0]
    return x, s


def score_matching(model: Any, x: torch.Tensor, *, method: str = "auto", **_: Any) -> torch.Tensor:
    """Mean exact score-matching loss :math:`\\mathrm{tr} H + \\tfrac12 \\|s\\|^2`."""
    if method not in ("auto", "closed_form", "autograd"):
        raise ConfigError(f"Unknown score-matching method '{method}'")
    if method != "autograd" and hasattr(model, "score_and_laplacian"):
        s, lap = model.score_and_laplacian(x)
        return (lap + 0.5 * (s * s).sum(1)).mean()
    if method == "closed_form":
        raise ConfigError(f"{type(model).__name__} has no closed-form score; use method='autograd'")
    xg, s = _autograd_score(model, x)
    lap = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for d in range(x.shape[1]):
        lap = lap + torch.autograd.grad(s[:, d].sum(), xg, create_graph=True)[0][:, d]
    return (lap + 0.5 * (s * s).sum(1)).mean()


def _slices(x: torch.Tensor, n_slices: int, projection: str,
            generator: torch.Generator | None) -> torch.Tensor:
    shape = (n_slices, *x.shape)
    if projection == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    if projection == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return bits.to(x.dtype) * 2.0 - 1.0
    raise ConfigError(f"Unknown projection '{projection}'; expected gaussian or rademacher")


def sliced_score_matching(model: Any, x: torch.Tensor, *, n_slices: int = 1,
                          projection: str = "gaussian", variance_reduced: bool = True,
                          generator: torch.Generator | None = None, method: str = "auto",
                          **_: Any) -> torch.Tensor:
    """Mean sliced score-matching loss over points and ``n_slices`` directions."""
    if n_slices < 1:
        raise ConfigError(f"n_slices must be >= 1, got {n_slices}")
    v = _slices(x, n_slices, projection, generator)                               # (M, N, D)
    if method != "autograd" and hasattr(model, "hessian_quadratic"):
        vhv, s = model.hessian_quadratic(x, v)
    else:
        if method not in ("auto", "autograd"):
            raise ConfigError(f"Unknown sliced score-matching method '{method}'")
        xg, s = _autograd_score(model, x)
        vhv = torch.stack([(torch.autograd.grad((s * v[m]).sum(), xg, create_graph=True)[0]
                            * v[m]).sum(1) for m in range(n_slices)])
    second = 0.5 * (s * s).sum(1) if variance_reduced else 0.5 * ((v * s).sum(-1) ** 2)
    return (vhv + second).mean()


OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {
    "mle": nll, "sgd": nll, "sm": score_matching, "ssm": sliced_score_matching,
}


def get_objective(name: str) -> Callable[..., torch.Tensor]:
    """The loss function of an objective name (``mle``/``sgd``, ``sm``, ``ssm``)."""
    try:
        return OBJECTIVES[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"Unknown objective '{name}'; expected one of "
                          f"{', '.join(OBJECTIVES)} (EM: objective 'em')") from None
