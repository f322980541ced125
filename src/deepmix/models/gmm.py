r"""The flat Gaussian mixture family: :class:`MixtureDensity`, a differentiable ``nn.Module``.

.. math:: p(x) = \sum_{k=1}^K \pi_k\, \mathcal N(x; \mu_k, \Sigma_k)

with full, diagonal or spherical covariances. It is what a flat-GMM run folder holds and what
``deepmix.load`` returns for one; gradient objectives (SGD-MLE, SM, SSM) train its parameters,
EM sets them in closed form (:meth:`MixtureDensity.set_moments`). The scikit-learn estimator
:class:`~deepmix.training.GaussianMixture` fits one by EM; :func:`kmeans` lives in
:mod:`deepmix.models.kmeans`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..utils.tensors import LOG_2PI as _LOG_2PI
from ..utils.tensors import as_matrix as _as_matrix
from .base import Model
from .kmeans import kmeans
from .registry import register_family

__all__ = ["MixtureDensity", "MixtureConfig", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "diag", "spherical")

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MixtureConfig:
    r"""Everything that rebuilds a :class:`MixtureDensity` (``config.json`` ``"model"``).

    Arguments:
        n_components: K.
        n_features: D.
        covariance_type: ``"full"``, ``"diag"`` or ``"spherical"``.
        parametrization: full covariances only: ``"covariance"`` (thesis:
            :math:`\Sigma = LL^T + 10^{-6} I`) or ``"precision"`` (:math:`\Sigma^{-1} = RR^T`).
        dtype: ``"float64"`` or ``"float32"``.
    """

    n_components: int = 8
    n_features: int = 2
    covariance_type: str = "full"
    parametrization: str = "covariance"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("n_components", "n_features"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"Unknown covariance type '{self.covariance_type}'; expected one "
                              f"of {', '.join(COVARIANCE_TYPES)}")
        if self.parametrization not in ("covariance", "precision"):
            raise ConfigError(f"Unknown parametrization '{self.parametrization}'; expected "
                              f"covariance or precision")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"Unknown dtype '{self.dtype}'; expected float64 or float32")


@register_family
class MixtureDensity(Model):
    r"""A differentiable Gaussian mixture for gradient objectives (SGD-MLE, SM, SSM).

    Parameters: logits (:math:`\pi = \mathrm{softmax}`), means, and per component either
    log-variances (``diag``) or, for ``full``, a lower-triangular matrix L with
    :math:`\Sigma = L L^T + 10^{-6} I` (``parametrization="covariance"``, the thesis' choice, init
    L = I) or :math:`\Sigma^{-1} = R R^T` with a softplus on R's diagonal
    (``parametrization="precision"``). Besides :meth:`log_prob` it has the closed-form
    score :math:`s = \nabla_x \log p` and Laplacian :math:`\mathrm{tr}\, \nabla_x^2 \log p`
    (:meth:`score_and_laplacian`) and Hessian quadratic forms :math:`v^T H v`
    (:meth:`hessian_quadratic`): with :math:`r_k` the responsibilities and
    :math:`g_k = -P_k (x - \mu_k)`,

    .. math:: s = \sum_k r_k g_k, \quad H = \sum_k r_k (g_k g_k^T - P_k) - s s^T,

    at the cost of :meth:`log_prob` itself (no second-order autograd).

    Arguments:
        n_components: K.
        n_features: D.
        covariance_type: ``"diag"`` or ``"full"``.
        generator: random generator for the initial means (N(0, 1)).
    """

    family = "gmm"
    config_class = MixtureConfig
    default_objective = "em"

    def __init__(self, n_components: int, n_features: int, covariance_type: str = "diag", *,
                 parametrization: str = "covariance", generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        names = {v: k for k, v in _DTYPES.items()}
        if dtype not in names:
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.config = MixtureConfig(n_components=int(n_components), n_features=int(n_features),
                                    covariance_type=covariance_type,
                                    parametrization=parametrization, dtype=names[dtype])
        K, D = int(n_components), int(n_features)
        self.covariance_type = covariance_type
        self.parametrization = parametrization
        self.logits = nn.Parameter(torch.zeros(K, dtype=dtype))
        self.means = nn.Parameter(torch.randn(K, D, generator=generator, dtype=dtype))
        if covariance_type == "diag":
            self.log_var = nn.Parameter(torch.zeros(K, D, dtype=dtype))
        elif covariance_type == "spherical":
            # One variance per component, stored (K, 1) so that it broadcasts over features.
            self.log_var = nn.Parameter(torch.zeros(K, 1, dtype=dtype))
        elif parametrization == "covariance":
            self.cov_factor = nn.Parameter(torch.eye(D, dtype=dtype).repeat(K, 1, 1))
        else:
            # softplus(raw) = 1 on the diagonal: unit precision at the start.
            raw = torch.zeros(K, D, D, dtype=dtype)
            raw.diagonal(dim1=-2, dim2=-1).fill_(math.log(math.e - 1.0))
            self.prec_factor = nn.Parameter(raw)

    @classmethod
    def from_config(cls, config: MixtureConfig) -> "MixtureDensity":
        return cls(config.n_components, config.n_features, config.covariance_type,
                   parametrization=config.parametrization, dtype=_DTYPES[config.dtype])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    def _log_var(self) -> torch.Tensor:
        """Per-feature log-variances (K, D) of a diag or spherical mixture."""
        return self.log_var.expand(self.means.shape)

    @property
    def weights(self) -> torch.Tensor:
        r""":math:`\pi` (K,)."""
        return torch.softmax(self.logits, 0)

    @property
    def covariances(self) -> torch.Tensor:
        """Covariances as scikit-learn stores them: (K, D, D) full, (K, D) diag, (K,) spherical."""
        if self.covariance_type == "diag":
            return torch.exp(self.log_var)
        if self.covariance_type == "spherical":
            return torch.exp(self.log_var[:, 0])
        R = self._precision_factor()
        A = torch.linalg.inv(R).transpose(-1, -2)           # A A^T = Sigma
        return A @ A.transpose(-1, -2)

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    def _precision_factor(self) -> torch.Tensor:
        """R with P = R R^T (lower triangular, positive diagonal)."""
        if self.parametrization == "covariance":
            L = torch.tril(self.cov_factor)
            eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
            C = torch.linalg.cholesky(L @ L.transpose(-1, -2) + 1e-6 * eye)     # Sigma = C C^T
            # P = C^{-T} C^{-1}; its factor R = C^{-T} is upper triangular, which the formulas
            # below accept (they only use P = R R^T and log|R|).
            return torch.linalg.solve_triangular(C, eye.expand_as(C), upper=False).transpose(-1, -2)
        raw = torch.tril(self.prec_factor, diagonal=-1)
        diag = torch.nn.functional.softplus(self.prec_factor.diagonal(dim1=-2, dim2=-1)) + 1e-6
        return raw + torch.diag_embed(diag)

    def _diag_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Diagonal case by matrix products: log joint a (N, K), precisions lam, lam * mu."""
        log_var = self._log_var()
        lam = torch.exp(-log_var)                                                 # (K, D)
        lam_mu = lam * self.means
        maha = (x * x) @ lam.T - 2.0 * x @ lam_mu.T + (lam_mu * self.means).sum(1)
        a = (torch.log_softmax(self.logits, 0) - 0.5 * log_var.sum(1)
             - 0.5 * (x.shape[1] * _LOG_2PI + maha))
        return a, lam, lam_mu

    def _components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Full case: log joint a (N, K), component scores g (N, K, D) and the precisions."""
        diff = x[:, None, :] - self.means[None]                                  # (N, K, D)
        R = self._precision_factor()                                              # P = R R^T
        y = torch.einsum("nkd,kde->nke", diff, R)                                 # diff^T R
        maha = (y * y).sum(-1)
        g = -torch.einsum("nke,kde->nkd", y, R)                                   # -P diff
        half_logdet = torch.log(R.diagonal(dim1=-2, dim2=-1).abs()).sum(-1)
        a = (torch.log_softmax(self.logits, 0) + half_logdet
             - 0.5 * (x.shape[1] * _LOG_2PI + maha))
        return a, g, R @ R.transpose(-1, -2)

    def check_input(self, x: Any) -> torch.Tensor:
        """``x`` as an (N, D) tensor of the model's dtype and device (errors name the problem)."""
        return self._check(x)

    def _check(self, x: Any) -> torch.Tensor:
        return _as_matrix(x, self.means.dtype, self.means.device, n_features=self.n_features)

    def log_prob(self, x: Any) -> torch.Tensor:
        """:math:`\\log p(x)` in nats, (N,); differentiable in x and the parameters."""
        x = self._check(x)
        a = self._diag_terms(x)[0] if self.covariance_type != "full" else self._components(x)[0]
        return torch.logsumexp(a, 1)

    def forward(self, x: Any) -> torch.Tensor:
        return self.log_prob(x)

    def score_and_laplacian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form :math:`s(x)` (N, D) and :math:`\\mathrm{tr} H(x)` (N,)."""
        if self.covariance_type != "full":
            a, lam, lam_mu = self._diag_terms(x)
            r = torch.softmax(a, 1)
            s = r @ lam_mu - x * (r @ lam)                         # sum_k r_k (-lam_k (x - mu_k))
            lam2 = lam * lam
            g2 = (x * x) @ lam2.T - 2.0 * x @ (lam2 * self.means).T \
                + (lam2 * self.means * self.means).sum(1)          # ||g_k||^2, (N, K)
            lap = (r * (g2 - lam.sum(1))).sum(1) - (s * s).sum(1)
            return s, lap
        a, g, prec = self._components(x)
        r = torch.softmax(a, 1)
        s = torch.einsum("nk,nkd->nd", r, g)
        tr_prec = prec.diagonal(dim1=-2, dim2=-1).sum(-1)
        lap = (r * ((g * g).sum(-1) - tr_prec)).sum(1) - (s * s).sum(1)
        return s, lap

    def hessian_quadratic(self, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form :math:`v^T H(x) v` for slices v (M, N, D); returns ((M, N), s (N, D))."""
        if self.covariance_type != "full":
            a, lam, lam_mu = self._diag_terms(x)
            r = torch.softmax(a, 1)
            s = r @ lam_mu - x * (r @ lam)
            vg = v @ lam_mu.T - (v * x) @ lam.T                    # v . g_k, (M, N, K)
            vpv = (v * v) @ lam.T
        else:
            a, g, prec = self._components(x)
            r = torch.softmax(a, 1)
            s = torch.einsum("nk,nkd->nd", r, g)
            vg = torch.einsum("mnd,nkd->mnk", v, g)
            vpv = torch.einsum("mnd,kde,mne->mnk", v, prec, v)
        vs = (v * s).sum(-1)
        return (r * (vg * vg - vpv)).sum(-1) - vs * vs, s

    @torch.no_grad()
    def initialize(self, x: Any, init: str = "kmeans", *,
                   generator: torch.Generator | None = None) -> "MixtureDensity":
        r"""The thesis' initialisation from data x (N, D); returns ``self``.

        ``"kmeans"``: :math:`\pi` uniform, means = k-means centres (k-means++ seeding), unit
        covariances. ``"random"``: means = K distinct random rows of x, weights
        :math:`w_k \sim U(0, 1)` normalised, unit covariances. Covariances are reset to the
        identity in both cases (spec §6.1), whatever the parametrisation.
        """
        x = self._check(x)
        K = self.logits.shape[0]
        if init not in ("kmeans", "random"):
            raise ConfigError(f"Unknown init '{init}'; expected kmeans or random")
        if x.shape[0] < K:
            raise InputError(f"Expected n_samples >= n_components but got n_components = {K}, "
                             f"n_samples = {x.shape[0]}")
        if init == "kmeans":
            centres, _ = kmeans(x, K, generator=generator)
            self.logits.zero_()
        else:
            centres = x[torch.randperm(x.shape[0], generator=generator)[:K].to(x.device)]
            w = torch.rand(K, generator=generator, dtype=self.logits.dtype)
            self.logits.copy_(torch.log(w / w.sum()).to(self.logits.device))
        self.means.copy_(centres)
        D = self.n_features
        if self.covariance_type != "full":
            self.log_var.zero_()
        elif self.parametrization == "covariance":
            self.cov_factor.copy_(torch.eye(D, dtype=x.dtype, device=x.device).expand(K, D, D))
        else:
            self.prec_factor.zero_()
            self.prec_factor.diagonal(dim1=-2, dim2=-1).fill_(math.log(math.e - 1.0))
        return self

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               condition: Any = None) -> torch.Tensor:
        r"""Draw n points (n, D): a component :math:`k \sim \pi`, then
        :math:`x = \mu_k + A_k \varepsilon` with :math:`A_k A_k^T = \Sigma_k`,
        :math:`\varepsilon \sim N(0, I)`."""
        if condition is not None:
            raise InputError("a flat GMM samples unconditionally (condition=None); to complete "
                             "rows from a mask use deepmix.inference.flat_gmm_inpaint")
        n = self._check_n(n)
        dtype, device = self.means.dtype, self.means.device
        gdev = generator.device if generator is not None else torch.device("cpu")
        labels = torch.multinomial(torch.softmax(self.logits, 0).to(gdev), int(n),
                                   replacement=True, generator=generator).to(device)
        eps = torch.randn(int(n), self.n_features, generator=generator, dtype=dtype,
                          device=gdev).to(device)
        if self.covariance_type != "full":
            return self.means[labels] + eps * torch.exp(0.5 * self._log_var()[labels])
        R = self._precision_factor()                        # P = R R^T, so Sigma = R^-T R^-1
        A = torch.linalg.inv(R).transpose(-1, -2)           # A A^T = Sigma
        return self.means[labels] + (A[labels] @ eps.unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def complete(self, x: Any, mask: Any, *, method: str = "mean",
                 generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Fill the missing entries (``mask`` False) of every row of x (N, D) from
        :math:`p(x_m \mid x_o) = \sum_k p(k \mid x_o)\, \mathcal N(x_m; \mu_{k,m|o},
        \Sigma_{k,m|o})` with :math:`\mu_{k,m|o} = \mu_{k,m} + \Sigma_{k,mo}\Sigma_{k,oo}^{-1}
        (x_o - \mu_{k,o})`; ``method="mean"`` gives :math:`E[x_m \mid x_o]`, ``"sample"`` one
        draw. Observed entries are returned unchanged; rows sharing a mask are done together.
        """
        if method not in ("mean", "sample"):
            raise ConfigError(f"Unknown completion method '{method}'; expected 'mean' or "
                              f"'sample'")
        x, m = self._completion_input(x, mask, self._check)
        out = x.clone()
        patterns, which = torch.unique(m, dim=0, return_inverse=True)
        cov = self.covariances.detach()
        if self.covariance_type == "spherical":
            cov = cov[:, None].expand_as(self.means)
        log_w = torch.log_softmax(self.logits.detach(), 0)
        mu = self.means.detach()
        for p, obs in enumerate(patterns):
            rows = (which == p).nonzero().flatten()
            o, u = obs, ~obs
            if not bool(u.any()):
                continue
            xo = x[rows][:, o]                                                  # (R, |o|)
            diff = xo[:, None, :] - mu[None][:, :, o]                           # (R, K, |o|)
            if self.covariance_type == "full":
                L = torch.linalg.cholesky(cov[:, o][:, :, o])                   # (K, |o|, |o|)
                z = torch.linalg.solve_triangular(L[None], diff[..., None], upper=False)[..., 0]
                log_n = (-0.5 * (z * z).sum(-1) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1))
                         .sum(-1) - 0.5 * int(o.sum()) * _LOG_2PI)
                A = torch.linalg.solve_triangular(L, cov[:, o][:, :, u], upper=False)  # L^-1 S_ou
                cond_mean = mu[None][:, :, u] + torch.einsum("kou,rko->rku", A, z)
                cond_cov = cov[:, u][:, :, u] - A.transpose(-1, -2) @ A
            else:
                var = cov[:, o]
                log_n = -0.5 * ((diff * diff) / var[None] + torch.log(var)[None]
                                + _LOG_2PI).sum(-1)
                cond_mean = mu[None][:, :, u].expand(len(rows), -1, -1)
                cond_cov = None
            post = torch.softmax(log_w[None] + log_n, 1)                        # (R, K)
            if method == "mean":
                fill = torch.einsum("rk,rku->ru", post, cond_mean)
            else:
                gdev = generator.device if generator is not None else torch.device("cpu")
                k = torch.multinomial(post.to(gdev), 1, generator=generator).to(x.device)[:, 0]
                eps = torch.randn(len(rows), int(u.sum()), generator=generator, dtype=x.dtype,
                                  device=gdev).to(x.device)
                mean_k = cond_mean[torch.arange(len(rows)), k]
                if cond_cov is None:
                    fill = mean_k + eps * cov[:, u][k].sqrt()
                else:
                    C = torch.linalg.cholesky(cond_cov)[k]
                    fill = mean_k + (C @ eps[..., None])[..., 0]
            block = out[rows]
            block[:, u] = fill
            out[rows] = block
        return out

    @torch.no_grad()
    def set_moments(self, weights: torch.Tensor, means: torch.Tensor,
                    covariances: torch.Tensor) -> "MixtureDensity":
        r"""Set the parameters from :math:`(\pi, \mu, \Sigma)` as scikit-learn stores them
        ((K,), (K, D), and (K, D, D) / (K, D) / (K,) by covariance type); returns ``self``."""
        dtype = self.means.dtype
        K, D = self.means.shape
        self.logits.copy_(torch.log(weights).to(dtype))
        self.means.copy_(means.to(dtype))
        cov = covariances
        if self.covariance_type == "full":
            info = torch.linalg.cholesky_ex(cov)[1]
            if bool((info != 0).any()):
                raise InputError(f"Fitting the mixture failed: component(s) "
                                 f"{(info != 0).nonzero().flatten().tolist()[:5]} have an "
                                 f"ill-defined covariance (too few distinct points); use fewer "
                                 f"components, a larger reg_covar or a diag covariance")
        elif not bool((cov > 0).all()):
            raise InputError("Fitting the mixture failed: a component has zero variance (too "
                             "few distinct points); use fewer components or a larger reg_covar")
        if self.covariance_type == "diag":
            self.log_var.copy_(torch.log(cov).to(dtype))
        elif self.covariance_type == "spherical":
            self.log_var.copy_(torch.log(cov).reshape(K, 1).to(dtype))
        elif self.parametrization == "covariance":
            eye = torch.eye(D, dtype=cov.dtype, device=cov.device)
            # The model adds 1e-6 I itself; a component that EM shrank to (near) zero
            # covariance has no factor of Sigma - 1e-6 I, and keeps the 1e-6 extra instead.
            L, info = torch.linalg.cholesky_ex(cov - 1e-6 * eye)
            bad = info != 0
            if bool(bad.any()):
                L[bad] = torch.linalg.cholesky(cov[bad])
            self.cov_factor.copy_(L.to(dtype))
        else:
            R = torch.linalg.cholesky(torch.linalg.inv(cov)).to(dtype)
            d = R.diagonal(dim1=-2, dim2=-1)
            raw = torch.tril(R, -1) + torch.diag_embed(torch.log(torch.expm1(d - 1e-6)))
            self.prec_factor.copy_(raw)
        return self

    @classmethod
    def from_mixture(cls, gm: Any, dtype: torch.dtype = torch.float32,
                     parametrization: str = "covariance") -> "MixtureDensity":
        """The density of a fitted :class:`GaussianMixture` estimator (any covariance type)."""
        gm._check_fitted()
        K, D = gm.means_.shape
        m = cls(K, D, gm.covariance_type, parametrization=parametrization, dtype=dtype)
        return m.set_moments(gm.weights_, gm.means_, gm.covariances_)
