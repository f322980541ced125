r"""Leaf layers of an EinsumNetwork: one class per leaf family.

Every leaf region with replica r and scope S is a product of per-variable factors,
:math:`\log \ell_k(x) = \sum_{d\in S} \log f_{d,k,r}(x_d)`, and every factor factorises over the
C = ``num_dims`` channels of its variable. A leaf layer holds the factors of all
(variable d, replica r, component k, channel c), shape (D, R, K, C):

- :class:`GaussianLeaves`: :math:`f = \mathcal N(\mu, \sigma^2)` with unconstrained means and
  :math:`\sigma^2 = v_{\min} + (v_{\max} - v_{\min})\,\mathrm{sigmoid}(\rho)`;
- :class:`BinomialLeaves`: :math:`f = \mathrm{Binomial}(N, p)` on integer-valued pixels 0..N
  with :math:`p = \mathrm{sigmoid}(s\rho)`, :math:`s` = :data:`BINOMIAL_LOGIT_SCALE`; score
  matching treats x as continuous (digamma / trigamma derivatives), as in the thesis.

A leaf layer owns the *definition* of its parameters (names, shapes, transforms, initialisation,
EM update); the tensors themselves are registered on the :class:`~.network.EinsumNetwork` under
the names in :attr:`Leaves.parameter_names` (``mean``, ``var_raw``, ``prob_raw``: the state_dict
keys of saved circuits), and every method receives them as a mapping ``params``. So
``.to(device)``, ``.double()`` and ``load_state_dict`` need no leaf-specific code.

Fused evaluation (the EinsumNetworks trick): both families are exponential families,
:math:`\log f_{d,r,k}(x_d) = \sum_f T_f(x_d)\,\theta_{d,r,k,f}` with per-variable features T
(:meth:`Leaves.features`, the constant 1 and the base measure among them) and natural parameters
:math:`\theta` (:meth:`Leaves.natural`), so a leaf region's log-density is one dot product over its
scope and all leaf regions are one batched matmul (:class:`~.network.EinsumNetwork`); the EM
statistics are the gradients :math:`\partial L/\partial\theta = \sum_b q\,T(x_b)`
(:meth:`Leaves.natural_statistics`), so q (N, D, R, K) is never formed.

EM statistics of a batch, with :math:`q_{b,d,r,k} = \partial \log p(x_b) / \partial \log f_{d,k,r}(x_{b,d})`
the posterior responsibility of a factor: :math:`n = \sum_b q`, :math:`\sum_b q x` and (Gaussian)
:math:`\sum_b q x^2`; the M-step in expectation form is
:math:`\hat\phi = (\sum q x, \sum q x^2) / (n + 10^{-12})`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Mapping

import torch
from torch import nn

from ...errors import ConfigError, InputError

__all__ = ["Leaves", "GaussianLeaves", "BinomialLeaves", "LEAF_FAMILIES", "make_leaves",
           "BINOMIAL_LOGIT_SCALE", "BINOMIAL_EM_EPS", "VARIANCE_EPS", "EM_DENOMINATOR_EPS"]

_LOG_2PI = math.log(2.0 * math.pi)

#: Binomial leaves: :math:`p = \mathrm{sigmoid}(s\,\rho)` with this s (so that the raw parameter
#: :math:`\rho` moves at the pace of the weight logits under gradient training).
BINOMIAL_LOGIT_SCALE = 0.1
#: Binomial probabilities set by EM or data are kept in :math:`[\epsilon, 1 - \epsilon]`.
BINOMIAL_EM_EPS = 1e-6
#: Gaussian variances set by EM or data map to :math:`\mathrm{sigmoid}(\rho)` in
#: :math:`[\epsilon, 1 - \epsilon]` of the [min_var, max_var] range (finite logits).
VARIANCE_EPS = 1e-7
#: Added to the responsibility mass :math:`n` in the M-step (a factor no sample used).
EM_DENOMINATOR_EPS = 1e-12

Params = Mapping[str, torch.Tensor]


def _randn(shape: Iterable[int], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """N(0, 1) drawn in float64 on the CPU (the same numbers for every dtype), cast to dtype."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64).to(dtype)


def _uniform(shape: Iterable[int], generator: torch.Generator) -> torch.Tensor:
    """U(0.01, 0.99) in float64 on the CPU."""
    return 0.01 + 0.98 * torch.rand(tuple(shape), generator=generator, dtype=torch.float64)


class Leaves:
    r"""Base class of a leaf layer: factors :math:`f_{d,k,r}` of shape (D, R, K, C).

    Arguments:
        shape: ``(num_var, num_replicas, num_components, num_dims)``.

    Subclasses set :attr:`kind` (the ``leaf=`` name) and :attr:`parameter_names`, and implement
    the methods below; ``params`` is always the mapping name -> tensor of those parameters.
    """

    #: The ``leaf=`` name of the family.
    kind: ClassVar[str] = ""
    #: Names (and state_dict keys) of the parameters, each of shape :attr:`shape`.
    parameter_names: ClassVar[tuple[str, ...]] = ()
    #: Keys of the EM statistics of :meth:`em_statistics`.
    statistic_names: ClassVar[tuple[str, ...]] = ()
    #: Keyword arguments of the constructor besides ``shape`` (see :func:`make_leaves`).
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        self.shape = tuple(int(s) for s in shape)

    def create_parameters(self, dtype: torch.dtype) -> dict[str, nn.Parameter]:
        """Fresh (zero) parameters, to be registered on the network under these names."""
        return {name: nn.Parameter(torch.zeros(self.shape, dtype=dtype)) for name in self.parameter_names}

    def reference(self, params: Params) -> torch.Tensor:
        """A parameter whose device and dtype are the network's."""
        return params[self.parameter_names[0]]

    def extra_repr(self) -> str:
        return f"leaf={self.kind!r}"

    # -- to be implemented -------------------------------------------------------------------

    def reset(self, params: Params, init: str, generator: torch.Generator) -> None:
        """Initialise the parameters in place (``init`` "gradient" or "em")."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` if (observed, zero-filled) x is outside the support."""

    def log_density(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\log f_{d,r,k}(x_d)` (N, D, R, K), summed over the channels, from x (N, D, C)."""
        raise NotImplementedError

    def derivatives(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`g = \partial_x \log f` and :math:`h = \partial_x^2 \log f` per channel,
        both (N, D, R, K, C)."""
        raise NotImplementedError

    def em_statistics(self, q: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sufficient statistics of a batch from the responsibilities q (N, D, R, K)."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r"""Per-variable features :math:`T(x_d)` (N, D, F) of the exponential-family form."""
        raise NotImplementedError

    def natural(self, params: Params) -> torch.Tensor:
        r"""Natural parameters :math:`\theta` (D, R, K, F) with
        :math:`\log f_{d,r,k}(x_d) = \sum_f T_f(x_d)\,\theta_{d,r,k,f}` (differentiable in params)."""
        raise NotImplementedError

    def natural_statistics(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""The statistics of :meth:`em_statistics` from :math:`\partial L/\partial\theta =
        \sum_b q\,T(x_b)` (D, R, K, F)."""
        raise NotImplementedError

    def em_update(self, params: Params, stats: Mapping[str, torch.Tensor], stepsize: float) -> None:
        r"""M-step in place: :math:`\theta \leftarrow (1-s)\theta + s\hat\theta` in expectation form."""
        raise NotImplementedError

    def init_from_data(self, params: Params, pick: torch.Tensor, data: torch.Tensor,
                       generator: torch.Generator) -> None:
        """Data-driven initialisation from random rows ``pick`` (D, R, K, C) of ``data`` (N, D, C)."""
        raise NotImplementedError

    def draw(self, params: Params, var: torch.Tensor, rep: torch.Tensor, comp: torch.Tensor,
             mode: str, generator: torch.Generator | None) -> torch.Tensor:
        """Values (n, P, C) of the chosen factors ``(var[P], rep[P], comp[n, P])``: a sample
        (``mode="sample"``, random numbers drawn on the generator's device, CPU by default) or
        the factor's mode (``"mpe"``)."""
        raise NotImplementedError


class GaussianLeaves(Leaves):
    r"""Gaussian factors :math:`\mathcal N(x; \mu, \sigma^2)` per variable, replica, component and channel.

    .. math:: \log f = -\tfrac12\left(\log 2\pi + \log\sigma^2 + (x-\mu)^2/\sigma^2\right), \quad
              \sigma^2 = v_{\min} + (v_{\max} - v_{\min})\,\mathrm{sigmoid}(\rho).

    Parameters ``mean`` (:math:`\mu`) and ``var_raw`` (:math:`\rho`).

    Arguments:
        shape: (D, R, K, C).
        min_var, max_var: the variance bounds :math:`v_{\min} < v_{\max}`.
    """

    kind = "gaussian"
    parameter_names = ("mean", "var_raw")
    statistic_names = ("leaf_n", "leaf_x", "leaf_xx")
    option_names = ("min_var", "max_var")

    def __init__(self, shape: tuple[int, int, int, int], *, min_var: float = 1e-4,
                 max_var: float = 10.0) -> None:
        super().__init__(shape)
        if not 0 < min_var < max_var:
            raise ConfigError(f"Need 0 < min_var < max_var, got {min_var} and {max_var}")
        self.min_var, self.max_var = float(min_var), float(max_var)

    def extra_repr(self) -> str:
        return f"leaf='gaussian', min_var={self.min_var:g}, max_var={self.max_var:g}"

    def variance(self, params: Params) -> torch.Tensor:
        r""":math:`\sigma^2` (D, R, K, C)."""
        return self.min_var + (self.max_var - self.min_var) * torch.sigmoid(params["var_raw"])

    def set_variance(self, params: Params, var: torch.Tensor) -> None:
        r"""Set :math:`\rho` so that :math:`\sigma^2` = ``var`` (clipped into the bounds)."""
        frac = ((var.double() - self.min_var) / (self.max_var - self.min_var)).clamp(VARIANCE_EPS, 1 - VARIANCE_EPS)
        params["var_raw"].data.copy_(torch.logit(frac).to(params["var_raw"].dtype))

    def reset(self, params: Params, init: str, generator: torch.Generator) -> None:
        """Means ~ N(0, 1); ``"gradient"``: :math:`\\rho` ~ N(0, 1); ``"em"``: variances 1 (clipped)."""
        mean = params["mean"]
        mean.data.copy_(_randn(mean.shape, generator, mean.dtype))
        if init == "gradient":
            params["var_raw"].data.copy_(_randn(mean.shape, generator, mean.dtype))
        else:
            self.set_variance(params, torch.ones_like(mean))

    def log_density(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        var = self.variance(params)
        diff = x[:, :, None, None, :] - params["mean"]
        return (-0.5 * (_LOG_2PI + var.log() + diff * diff / var)).sum(-1)

    def derivatives(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`g = -(x - \mu)/\sigma^2`, :math:`h = -1/\sigma^2`."""
        xe = x[:, :, None, None, :]
        var = self.variance(params)
        return -(xe - params["mean"]) / var, (-1.0 / var).expand(x.shape[0], *var.shape)

    def em_statistics(self, q: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r""":math:`\sum_b q`, :math:`\sum_b q x`, :math:`\sum_b q x^2`."""
        return {"leaf_n": q.sum(0), "leaf_x": torch.einsum("ndrk,ndc->drkc", q, x),
                "leaf_xx": torch.einsum("ndrk,ndc->drkc", q, x * x)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`T = (x_c^2\ \text{for every channel } c,\ x_c,\ 1)`: F = 2C + 1."""
        return torch.cat([x * x, x, torch.ones_like(x[..., :1])], -1)

    def natural(self, params: Params) -> torch.Tensor:
        r""":math:`\theta = (-\tfrac{1}{2\sigma_c^2},\ \mu_c/\sigma_c^2,\
        -\tfrac12\sum_c(\log 2\pi + \log\sigma_c^2 + \mu_c^2/\sigma_c^2))`."""
        var, mu = self.variance(params), params["mean"]
        prec = 1.0 / var
        const = -0.5 * (_LOG_2PI + var.log() + mu * mu * prec).sum(-1, keepdim=True)
        return torch.cat([-0.5 * prec, mu * prec, const], -1)

    def natural_statistics(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        C = (grad.shape[-1] - 1) // 2
        return {"leaf_n": grad[..., 2 * C], "leaf_x": grad[..., C:2 * C], "leaf_xx": grad[..., :C]}

    def em_update(self, params: Params, stats: Mapping[str, torch.Tensor], stepsize: float) -> None:
        r""":math:`\mu \leftarrow (1-s)\mu + s\hat\mu`,
        :math:`E[x^2] \leftarrow (1-s)(\sigma^2 + \mu^2) + s\,\widehat{E[x^2]}`,
        :math:`\sigma^2 = E[x^2] - \mu^2` projected onto [min_var, max_var]."""
        s = stepsize
        denom = stats["leaf_n"][..., None] + EM_DENOMINATOR_EPS
        mu_hat, xx_hat = stats["leaf_x"] / denom, stats["leaf_xx"] / denom
        mu, var = params["mean"].detach(), self.variance(params).detach()
        mu_new = (1 - s) * mu + s * mu_hat
        xx_new = (1 - s) * (var + mu * mu) + s * xx_hat
        var_new = (xx_new - mu_new * mu_new).clamp(self.min_var, self.max_var)
        params["mean"].data.copy_(mu_new)
        self.set_variance(params, var_new)

    def init_from_data(self, params: Params, pick: torch.Tensor, data: torch.Tensor,
                       generator: torch.Generator) -> None:
        """Means = the picked rows plus 1% of the data's standard deviation as noise;
        variances = the per-variable data variance, clipped."""
        sd = data.std(0).clamp_min(1e-3)[:, None, None, :]
        noise = torch.randn(pick.shape, generator=generator, dtype=torch.float64).to(pick)
        params["mean"].data.copy_(pick + 0.01 * sd * noise)
        self.set_variance(params, (sd * sd).expand_as(pick).clamp(self.min_var, self.max_var))

    def draw(self, params: Params, var: torch.Tensor, rep: torch.Tensor, comp: torch.Tensor,
             mode: str, generator: torch.Generator | None) -> torch.Tensor:
        """:math:`\\mu + \\sigma\\varepsilon` (sample) or :math:`\\mu` (mode)."""
        mean = params["mean"]
        mu = mean[var[None], rep[None], comp]                                     # (n, P, C)
        if mode == "sample":
            gdev = generator.device if generator is not None else torch.device("cpu")
            sd = self.variance(params)[var[None], rep[None], comp].sqrt()
            eps = torch.randn(mu.shape, generator=generator, dtype=torch.float64,
                              device=gdev).to(device=mean.device, dtype=mean.dtype)
            mu = mu + sd * eps
        return mu


class BinomialLeaves(Leaves):
    r"""Binomial factors :math:`\mathrm{Binomial}(x; N, p)` on integer values 0..N.

    .. math:: \log f = \log\binom{N}{x} + x \log p + (N - x)\log(1 - p), \quad
              p = \mathrm{sigmoid}(s\rho),\ s = 0.1\ (:data:`BINOMIAL_LOGIT_SCALE`),

    with :math:`\log\binom{N}{x} = \log\Gamma(N+1) - \log\Gamma(x+1) - \log\Gamma(N-x+1)`, so the
    density is differentiable in a continuous x (score matching). Parameter ``prob_raw``
    (:math:`\rho`); EM and data keep p in [1e-6, 1 - 1e-6].

    Arguments:
        shape: (D, R, K, C).
        total_count: N (255 for raw 8-bit pixels).
    """

    kind = "binomial"
    parameter_names = ("prob_raw",)
    statistic_names = ("leaf_n", "leaf_x")
    option_names = ("total_count",)

    def __init__(self, shape: tuple[int, int, int, int], *, total_count: int = 255) -> None:
        super().__init__(shape)
        if isinstance(total_count, bool) or int(total_count) != total_count or total_count < 1:
            raise ConfigError(f"total_count must be a positive integer, got {total_count}")
        self.total_count = int(total_count)

    def extra_repr(self) -> str:
        return f"leaf='binomial', total_count={self.total_count}"

    def probability(self, params: Params) -> torch.Tensor:
        r""":math:`p = \mathrm{sigmoid}(s\rho)` (D, R, K, C)."""
        return torch.sigmoid(BINOMIAL_LOGIT_SCALE * params["prob_raw"])

    def set_probability(self, params: Params, prob: torch.Tensor) -> None:
        r"""Set :math:`\rho = \mathrm{logit}(p) / s` with p clipped to [1e-6, 1 - 1e-6]."""
        raw = params["prob_raw"]
        logit = torch.logit(prob.double().clamp(BINOMIAL_EM_EPS, 1 - BINOMIAL_EM_EPS))
        raw.data.copy_(((1.0 / BINOMIAL_LOGIT_SCALE) * logit).to(raw.dtype))

    def reset(self, params: Params, init: str, generator: torch.Generator) -> None:
        """``"gradient"``: :math:`\\rho` ~ N(0, 1); ``"em"``: p ~ U(0.01, 0.99)."""
        raw = params["prob_raw"]
        if init == "gradient":
            raw.data.copy_(_randn(raw.shape, generator, raw.dtype))
        else:
            self.set_probability(params, _uniform(raw.shape, generator))

    def check_input(self, x: torch.Tensor) -> None:
        if x.numel():
            lo, hi = float(x.detach().min()), float(x.detach().max())
            if lo < 0 or hi > self.total_count:
                raise InputError(f"Binomial leaves need values in [0, {self.total_count}], got [{lo:g}, {hi:g}]")

    def log_density(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        n, xe = self.total_count, x[:, :, None, None, :]
        log_binom = math.lgamma(n + 1) - torch.lgamma(xe + 1) - torch.lgamma(n - xe + 1)
        z = BINOMIAL_LOGIT_SCALE * params["prob_raw"]
        return (log_binom + xe * nn.functional.logsigmoid(z) + (n - xe) * nn.functional.logsigmoid(-z)).sum(-1)

    def derivatives(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`g = \psi(N - x + 1) - \psi(x + 1) + s\rho`,
        :math:`h = -\psi_1(x + 1) - \psi_1(N - x + 1)` (digamma :math:`\psi`, trigamma :math:`\psi_1`)."""
        xe = x[:, :, None, None, :]
        n, z = self.total_count, BINOMIAL_LOGIT_SCALE * params["prob_raw"]
        g = torch.digamma(n - xe + 1) - torch.digamma(xe + 1) + z
        h = -torch.polygamma(1, xe + 1) - torch.polygamma(1, n - xe + 1)
        return g, h.expand_as(g)

    def em_statistics(self, q: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r""":math:`\sum_b q`, :math:`\sum_b q x`."""
        return {"leaf_n": q.sum(0), "leaf_x": torch.einsum("ndrk,ndc->drkc", q, x)}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`T = (x_c,\ 1,\ \sum_c \log\binom{N}{x_c})`: F = C + 2."""
        n = self.total_count
        log_binom = (math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)).sum(-1, keepdim=True)
        return torch.cat([x, torch.ones_like(x[..., :1]), log_binom], -1)

    def natural(self, params: Params) -> torch.Tensor:
        r""":math:`\theta = (\operatorname{logit} p_c,\ N\sum_c \log(1 - p_c),\ 1)`; with
        :math:`p = \mathrm{sigmoid}(z)`: :math:`\operatorname{logit} p = z`, :math:`\log(1-p) = \log\mathrm{sigmoid}(-z)`."""
        z = BINOMIAL_LOGIT_SCALE * params["prob_raw"]
        const = self.total_count * nn.functional.logsigmoid(-z).sum(-1, keepdim=True)
        return torch.cat([z, const, torch.ones_like(const)], -1)

    def natural_statistics(self, grad: torch.Tensor) -> dict[str, torch.Tensor]:
        C = grad.shape[-1] - 2
        return {"leaf_n": grad[..., C], "leaf_x": grad[..., :C]}

    def em_update(self, params: Params, stats: Mapping[str, torch.Tensor], stepsize: float) -> None:
        r"""In the expectation parameter :math:`E[x] = Np` the stepwise update is linear in p:
        :math:`p \leftarrow (1-s)p + s\,\sum q x / (N \sum q)`."""
        s = stepsize
        denom = stats["leaf_n"][..., None] + EM_DENOMINATOR_EPS
        p = (1 - s) * self.probability(params).detach() + s * stats["leaf_x"] / denom / self.total_count
        self.set_probability(params, p)

    def init_from_data(self, params: Params, pick: torch.Tensor, data: torch.Tensor,
                       generator: torch.Generator) -> None:
        """p = (value + 0.5) / (N + 1) of the picked rows."""
        self.set_probability(params, (pick.double() + 0.5) / (self.total_count + 1.0))

    def draw(self, params: Params, var: torch.Tensor, rep: torch.Tensor, comp: torch.Tensor,
             mode: str, generator: torch.Generator | None) -> torch.Tensor:
        r"""A Binomial draw (sample) or the mode :math:`\min(\lfloor (N+1)p \rfloor, N)`."""
        raw = params["prob_raw"]
        dev, dt = raw.device, raw.dtype
        p = self.probability(params)[var[None], rep[None], comp].double()         # (n, P, C)
        count = torch.full_like(p, float(self.total_count))
        if mode == "sample":
            gdev = generator.device if generator is not None else torch.device("cpu")
            return torch.binomial(count.to(gdev), p.to(gdev), generator=generator).to(device=dev, dtype=dt)
        return torch.floor((count + 1) * p).clamp_max(self.total_count).to(dt)


#: ``leaf=`` name -> leaf class.
LEAF_FAMILIES: dict[str, type[Leaves]] = {cls.kind: cls for cls in (GaussianLeaves, BinomialLeaves)}


def make_leaves(kind: str, shape: tuple[int, int, int, int], **options: Any) -> Leaves:
    """The leaf layer ``kind`` of ``shape``; of ``options`` it takes those its class names in
    :attr:`Leaves.option_names` (``min_var`` means nothing to Binomial leaves)."""
    cls = LEAF_FAMILIES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"Unknown leaf '{kind}'; expected {' or '.join(repr(k) for k in LEAF_FAMILIES)}")
    return cls(shape, **{k: v for k, v in options.items() if k in cls.option_names})
