r"""The scikit-learn estimator of the flat GMM family, fitted by EM in PyTorch.

.. math:: p(x) = \sum_{k=1}^K \pi_k\, \mathcal N(x; \mu_k, \Sigma_k), \qquad
   \log p(x) = \operatorname{logsumexp}_k \bigl(\log\pi_k + \log\mathcal N(x;\mu_k,\Sigma_k)\bigr),

with covariance types ``full``, ``diag`` and ``spherical``. EM follows scikit-learn's
``GaussianMixture`` (same defaults: ``reg_covar`` 1e-6, ``tol`` 1e-3 on the change of the mean
log-likelihood, ``max_iter`` 100, k-means initialisation), with the E-step as matrix products on
[x, x^2] for diagonal and spherical models, and the sufficient statistics accumulated over row
chunks, so data larger than a batch (and, with a loader, than memory) are fitted exactly.
Parameters convert to and from :class:`sklearn.mixture.GaussianMixture`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin

from ..errors import ConfigError, InputError
from ..utils.tensors import LOG_2PI as _LOG_2PI
from ..utils.tensors import as_matrix as _as_matrix
from ..utils.tensors import row_chunks as _chunks
from .gmm import COVARIANCE_TYPES, MixtureDensity
from .kmeans import kmeans

__all__ = ["GaussianMixture", "INIT_METHODS"]

INIT_METHODS = ("kmeans", "k-means++", "random")


class GaussianMixture(DensityMixin, BaseEstimator):
    r"""Gaussian mixture fitted by EM, with scikit-learn's estimator API.

    Arguments:
        n_components: K.
        covariance_type: ``"full"``, ``"diag"`` or ``"spherical"``.
        tol: EM stops when the mean log-likelihood changes less than this.
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations at most.
        n_init: EM runs from different initialisations; the best lower bound is kept.
        init_params: ``"kmeans"`` (k-means centres, hard responsibilities), ``"k-means++"``
            (the k-means++ seeds only), or ``"random"`` (K random data points as means, random
            normalised weights, the data's (co)variance for every component).
        random_state: seed of the initialisation.
        dtype: ``torch.float64`` (default, as scikit-learn) or ``torch.float32`` (faster).
        device: torch device.
        batch_size: rows per chunk of the E-step and the sufficient statistics.
        em: ``"batch"`` (classical EM over all rows, exact) or ``"stepwise"`` (stepwise EM over
            minibatches of ``stepwise_batch`` rows, ``max_iter`` epochs; see :meth:`partial_fit`).
        stepwise_batch: rows per stepwise-EM update.
        step_decay: stepwise EM step size :math:`\eta_t = (t + 2)^{-\alpha}`, alpha in (0.5, 1].
        verbose: print the lower bound at every iteration.
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "diag",
                 tol: float = 1e-3, reg_covar: float = 1e-6, max_iter: int = 100,
                 n_init: int = 1, init_params: str = "kmeans", random_state: int | None = None,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 batch_size: int = 8192, em: str = "batch", stepwise_batch: int = 1000,
                 step_decay: float = 0.7, verbose: bool = False) -> None:
        # scikit-learn's contract: every argument is stored unchanged under its own name, so
        # get_params/set_params, clone and GridSearchCV work; checks run here and again in fit.
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol, self.reg_covar, self.max_iter, self.n_init = tol, reg_covar, max_iter, n_init
        self.init_params, self.random_state = init_params, random_state
        self.dtype, self.device = dtype, device
        self.batch_size, self.em, self.stepwise_batch = batch_size, em, stepwise_batch
        self.step_decay, self.verbose = step_decay, verbose
        self._check_params()
        self._running: tuple[torch.Tensor, ...] | None = None
        self._steps = 0
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf
        self.history_: list[float] = []
        self.seconds_: list[float] = []
        self.weights_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.covariances_: torch.Tensor | None = None

    def _check_params(self) -> None:
        """Validate the constructor arguments (scikit-learn: checked at the door)."""
        if self.em not in ("batch", "stepwise"):
            raise ConfigError(f"Unknown EM mode '{self.em}'; expected batch or stepwise")
        if not 0.5 < self.step_decay <= 1.0:
            raise ConfigError(f"step_decay must lie in (0.5, 1], got {self.step_decay}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"Unknown covariance type '{self.covariance_type}'; expected one "
                              f"of {', '.join(COVARIANCE_TYPES)}")
        if self.init_params not in INIT_METHODS:
            raise ConfigError(f"Unknown init_params '{self.init_params}'; expected one of "
                              f"{', '.join(INIT_METHODS)}")
        for name in ("n_components", "max_iter", "n_init", "batch_size", "stepwise_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not (self.reg_covar >= 0 and self.tol >= 0):
            raise ConfigError(f"reg_covar and tol must be >= 0, got {self.reg_covar} and "
                              f"{self.tol}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")

    @property
    def _device(self) -> torch.device:
        # Resolved once per device value: the E-step asks for it in every row chunk.
        cached = getattr(self, "_device_cache", None)
        if cached is None or cached[0] != self.device:
            from ..utils.device import resolve_device

            cached = (self.device, resolve_device(self.device))
            self._device_cache = cached
        return cached[1]

    @property
    def model_(self) -> MixtureDensity:
        r"""The fitted density as the family's ``nn.Module`` (every parameter registered:
        ``state_dict()``, ``.to()``, safetensors and ``deepmix.load`` see it)."""
        self._check_fitted()
        key = (id(self.weights_), id(self.means_), id(self.covariances_))
        if getattr(self, "_model_key", None) != key:
            # Full covariances in the precision parametrisation: exact for any fitted Sigma
            # (the covariance one adds 1e-6 I, which a collapsed component cannot give back).
            param = "precision" if self.covariance_type == "full" else "covariance"
            m = MixtureDensity(self.n_components, self.means_.shape[1], self.covariance_type,
                               parametrization=param, dtype=self.dtype)
            self._model = m.to(self._device).set_moments(self.weights_, self.means_,
                                                         self.covariances_)
            self._model_key = key
        return self._model

    @classmethod
    def from_model(cls, model: MixtureDensity, **options: Any) -> "GaussianMixture":
        """A fitted estimator holding the parameters of a :class:`MixtureDensity` (e.g. from
        ``deepmix.load``); ``options`` are constructor arguments (fitting options)."""
        if not isinstance(model, MixtureDensity):
            raise InputError(f"from_model needs a MixtureDensity (a flat-GMM run), got "
                             f"{type(model).__name__}")
        options.setdefault("dtype", model.means.dtype)
        options.setdefault("device", model.means.device)
        gm = cls(model.n_components, covariance_type=model.covariance_type, **options)
        with torch.no_grad():
            as_t = lambda t: t.detach().to(dtype=gm.dtype, device=gm._device).clone()  # noqa: E731
            gm.weights_, gm.means_ = as_t(model.weights), as_t(model.means)
            gm.covariances_ = as_t(model.covariances)
        return gm

    # --------------------------------------------------------------------------- parameters
    @property
    def n_features_in_(self) -> int:
        self._check_fitted()
        return int(self.means_.shape[1])  # type: ignore[union-attr]

    def _check_fitted(self) -> None:
        if self.means_ is None:
            raise InputError("this GaussianMixture is not fitted yet: call fit first")

    def _n_parameters(self) -> int:
        K, D = self.means_.shape  # type: ignore[union-attr]
        cov = {"full": K * D * (D + 1) // 2, "diag": K * D, "spherical": K}[self.covariance_type]
        return int(cov + K * D + K - 1)

    def _precision_terms(self) -> dict[str, torch.Tensor]:
        """What the E-step needs: precision (Cholesky) factors and log-determinants."""
        cov = self.covariances_
        if self.covariance_type == "full":
            L, info = torch.linalg.cholesky_ex(cov)                              # Sigma = L L^T
            if bool((info != 0).any()):
                # scikit-learn's advice, in its words: the data do not support K full Gaussians.
                raise InputError(f"Fitting the mixture failed: component(s) "
                                 f"{(info != 0).nonzero().flatten().tolist()[:5]} have an "
                                 f"ill-defined empirical covariance (too few distinct points); "
                                 f"use fewer components, increase reg_covar (now "
                                 f"{self.reg_covar:g}) or a diag covariance")
            eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
            prec_chol = torch.linalg.solve_triangular(L, eye, upper=False).transpose(-1, -2)
            log_det = -2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # log|P|
            return {"prec_chol": prec_chol, "half_log_det_prec": 0.5 * log_det}
        prec = 1.0 / cov                                  # (K, D) or (K,)
        if self.covariance_type == "diag":
            half = 0.5 * torch.log(prec).sum(-1)
        else:
            half = 0.5 * self.means_.shape[1] * torch.log(prec)  # type: ignore[union-attr]
        return {"prec": prec, "half_log_det_prec": half}

    def _estimate_weighted_log_prob(self, X: torch.Tensor, terms: dict,
                                    XX: torch.Tensor | None = None) -> torch.Tensor:
        r""":math:`\log\pi_k + \log\mathcal N(x; \mu_k, \Sigma_k)`, (N, K).

        ``XX`` may hold x^2 precomputed (diag) or its row sums (spherical).
        """
        mu = self.means_
        D = X.shape[1]
        if self.covariance_type == "diag":
            P = terms["prec"]
            XX = X * X if XX is None else XX
            maha = torch.addmm((P * mu * mu).sum(1), XX, P.T)
            maha = torch.addmm(maha, X, (P * mu).T, alpha=-2.0)
        elif self.covariance_type == "spherical":
            p = terms["prec"]
            x2 = (X * X).sum(1) if XX is None else XX
            maha = torch.addmm((mu * mu).sum(1) + x2[:, None], X, mu.T, alpha=-2.0) * p
        else:
            U = terms["prec_chol"]                                               # (K, D, D)
            maha = torch.stack([(((X - mu[k]) @ U[k]) ** 2).sum(1)
                                for k in range(mu.shape[0])], dim=1)
        maha = maha.clamp_min(0.0)  # the expanded square may dip below 0 by rounding
        return (torch.log(self.weights_) + terms["half_log_det_prec"]
                - 0.5 * (D * _LOG_2PI + maha))

    def _squares(self, X: torch.Tensor) -> torch.Tensor | None:
        """x^2 (diag) or its row sums (spherical), computed once per fit."""
        if self.covariance_type == "diag":
            return X * X
        if self.covariance_type == "spherical":
            return (X * X).sum(1)
        return None

    # ---------------------------------------------------------------------------------- EM
    def _statistics(self, X: torch.Tensor, resp: torch.Tensor, XX: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sufficient statistics (sum r, sum r x, sum r x^2 or r x x^T), over row chunks."""
        N, D = X.shape
        K = self.n_components
        nk = resp.sum(0)
        sx = torch.zeros(K, D, dtype=self.dtype, device=self._device)
        full = self.covariance_type == "full"
        sxx = torch.zeros((K, D, D) if full else (K, D) if self.covariance_type == "diag" else (K,),
                          dtype=self.dtype, device=self._device)
        for rows in _chunks(N, self.batch_size):
            x, r = X[rows], resp[rows]
            sx.addmm_(r.T, x)
            if full:
                for k in range(K):
                    sxx[k].addmm_((x * r[:, k:k + 1]).T, x)
            elif self.covariance_type == "diag":
                sxx.addmm_(r.T, XX[rows])
            else:
                sxx.add_(r.T @ XX[rows])
        return nk, sx, sxx

    def _set_from_statistics(self, nk: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor) -> None:
        """Closed-form M-step: parameters from (possibly averaged) sufficient statistics."""
        D = sx.shape[1]
        nk = nk + 10.0 * torch.finfo(self.dtype).eps
        means = sx / nk[:, None]
        if self.covariance_type == "full":
            cov = sxx / nk[:, None, None] - means[:, :, None] * means[:, None, :]
            cov = 0.5 * (cov + cov.transpose(-1, -2))
            cov = cov + self.reg_covar * torch.eye(D, dtype=self.dtype, device=self._device)
        elif self.covariance_type == "diag":
            cov = (sxx / nk[:, None] - means * means).clamp_min(0.0) + self.reg_covar
        else:
            cov = (sxx / nk - (means * means).sum(1)).clamp_min(0.0) / D + self.reg_covar
        self.weights_ = nk / nk.sum()
        self.means_ = means
        self.covariances_ = cov

    def _m_step(self, X: torch.Tensor, resp: torch.Tensor, XX: torch.Tensor | None) -> None:
        """Closed-form M-step from sufficient statistics accumulated over row chunks."""
        self._set_from_statistics(*self._statistics(X, resp, XX))

    def _e_step(self, X: torch.Tensor, XX: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Mean log-likelihood of X and the responsibilities (N, K), in row chunks."""
        terms = self._precision_terms()
        total = torch.zeros((), dtype=self.dtype, device=self._device)
        resp = torch.empty(X.shape[0], self.n_components, dtype=self.dtype, device=self._device)
        for rows in _chunks(X.shape[0], self.batch_size):
            lp = self._estimate_weighted_log_prob(X[rows], terms,
                                                  None if XX is None else XX[rows])
            norm = torch.logsumexp(lp, 1, keepdim=True)
            total += norm.sum()
            torch.exp(lp - norm, out=resp[rows])
        return float(total) / X.shape[0], resp

    def _initialize(self, X: torch.Tensor, XX: torch.Tensor | None, gen: torch.Generator) -> None:
        N, D = X.shape
        K = self.n_components
        if self.init_params in ("kmeans", "k-means++"):
            # Only an initialisation: float32 halves its cost at no visible loss.
            X32 = X.to(torch.float32)
            _, labels = kmeans(X32, K, generator=gen, chunk=self.batch_size,
                               n_iter=300 if self.init_params == "kmeans" else 0)
            onehot = torch.nn.functional.one_hot(labels, K).to(self.dtype)
            self._m_step(X, onehot, XX)
            return
        idx = torch.randperm(N, generator=gen)[:K].to(X.device)
        w = torch.rand(K, generator=gen, dtype=self.dtype).to(X.device) + 1e-3
        mean = X.mean(0)
        if self.covariance_type == "full":
            Xc = X - mean
            cov = (Xc.T @ Xc) / N + self.reg_covar * torch.eye(D, dtype=self.dtype, device=X.device)
            cov = cov.expand(K, D, D).clone()
        else:
            var = X.var(0, unbiased=False) + self.reg_covar
            cov = var.expand(K, D).clone() if self.covariance_type == "diag" else \
                var.mean().expand(K).clone()
        self.weights_, self.means_, self.covariances_ = w / w.sum(), X[idx].clone(), cov

    @torch.no_grad()
    def fit(self, X: Any, y: Any = None, *,
            callback: Callable[[int, float, "GaussianMixture"], None] | None = None
            ) -> "GaussianMixture":
        """Fit by EM (``n_init`` runs, the best lower bound kept); returns ``self``.

        ``callback(iteration, mean_train_ll, self)`` runs after the initialisation (iteration 0)
        and after every EM iteration, with the model holding the parameters whose mean training
        log-likelihood is ``mean_train_ll``: run folders log per-iteration metrics through it.
        ``seconds_`` holds the cumulative fit time at every entry of ``history_`` (callback time
        excluded), for curves of likelihood against wall time.
        """
        import time

        self._check_params()
        X = _as_matrix(X, self.dtype, self._device)
        N = X.shape[0]
        if N < self.n_components:
            raise InputError(f"Expected n_samples >= n_components but got n_components = "
                             f"{self.n_components}, n_samples = {N}")
        # A CPU generator: the same random_state gives the same fit on every device.
        gen = torch.Generator()
        gen.manual_seed(int(self.random_state) if self.random_state is not None
                        else int(torch.seed() % 2**63))
        XX = self._squares(X)
        best: tuple | None = None
        for _ in range(self.n_init):
            start, paused = time.perf_counter(), 0.0
            self._initialize(X, XX, gen)
            self._running, self._steps = None, 0
            history: list[float] = []
            seconds: list[float] = []
            converged = False
            lower, resp = self._e_step(X, XX)
            history.append(lower)
            seconds.append(time.perf_counter() - start)
            if callback is not None:
                t = time.perf_counter()
                callback(0, lower, self)
                paused += time.perf_counter() - t
            n_iter = 0
            for n_iter in range(1, self.max_iter + 1):
                if self.em == "batch":
                    self._m_step(X, resp, XX)
                else:
                    order = torch.randperm(N, generator=gen).to(self._device)
                    for rows in _chunks(N, self.stepwise_batch):
                        idx = order[rows]
                        self._stepwise_update(X[idx], None if XX is None else XX[idx])
                new_lower, resp = self._e_step(X, XX)
                history.append(new_lower)
                seconds.append(time.perf_counter() - start - paused)
                if callback is not None:
                    t = time.perf_counter()
                    callback(n_iter, new_lower, self)
                    paused += time.perf_counter() - t
                if self.verbose:
                    print(f"EM iteration {n_iter}: mean log-likelihood {new_lower:.6f}")
                change, lower = new_lower - lower, new_lower
                if abs(change) < self.tol:
                    converged = True
                    break
            if best is None or lower > best[0]:
                best = (lower, self.weights_, self.means_, self.covariances_, converged, n_iter,
                        history, seconds)
        assert best is not None
        (self.lower_bound_, self.weights_, self.means_, self.covariances_, self.converged_,
         self.n_iter_, self.history_, self.seconds_) = best
        if not self.converged_:
            import warnings

            warnings.warn(f"EM did not converge in {self.max_iter} iterations (last change "
                          f"above tol={self.tol}); raise max_iter or tol", RuntimeWarning)
        return self

    def _stepwise_update(self, X: torch.Tensor, XX: torch.Tensor | None) -> float:
        """One stepwise-EM step on a minibatch; returns its mean log-likelihood before it."""
        lower, resp = self._e_step(X, XX)
        B = float(X.shape[0])
        batch_stats = tuple(t / B for t in self._statistics(X, resp, XX))
        if self._running is None:
            self._running = batch_stats
        else:
            eta = (self._steps + 2) ** (-self.step_decay)
            self._running = tuple((1.0 - eta) * old + eta * new
                                  for old, new in zip(self._running, batch_stats))
        self._steps += 1
        self._set_from_statistics(*self._running)
        return lower

    @torch.no_grad()
    def partial_fit(self, X: Any, y: Any = None) -> "GaussianMixture":
        r"""One stepwise-EM update (Liang & Klein, 2009) on the minibatch ``X``.

        The running sufficient statistics move towards the batch's by
        :math:`\eta_t = (t + 2)^{-\alpha}` (``step_decay``), then the M-step runs; call it over
        the batches of a loader to fit data that do not fit in memory. The first call initialises
        the model from its batch (``init_params``), which needs at least K rows.
        """
        X = _as_matrix(X, self.dtype, self._device,
                       n_features=None if self.means_ is None else self.n_features_in_)
        XX = self._squares(X)
        if self.means_ is None:
            if X.shape[0] < self.n_components:
                raise InputError(f"Expected n_samples >= n_components in the first batch but got "
                                 f"n_components = {self.n_components}, n_samples = {X.shape[0]}")
            gen = torch.Generator()
            gen.manual_seed(int(self.random_state) if self.random_state is not None
                            else int(torch.seed() % 2**63))
            self._initialize(X, XX, gen)
            self._running, self._steps = None, 0
        self.lower_bound_ = self._stepwise_update(X, XX)
        self.n_iter_ += 1
        return self

    # ------------------------------------------------------------------------------- scores
    @torch.no_grad()
    def log_prob(self, X: Any) -> torch.Tensor:
        """Log-density of every row in nats, (N,) tensor."""
        self._check_fitted()
        X = _as_matrix(X, self.dtype, self._device, n_features=self.n_features_in_)
        terms = self._precision_terms()
        return torch.cat([torch.logsumexp(self._estimate_weighted_log_prob(X[r], terms), 1)
                          for r in _chunks(X.shape[0], self.batch_size)]) if X.shape[0] else \
            torch.zeros(0, dtype=self.dtype, device=self._device)

    def score_samples(self, X: Any) -> np.ndarray:
        """Log-density of every row (numpy), as scikit-learn."""
        return self.log_prob(X).cpu().numpy()

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-density per row."""
        return float(self.log_prob(X).mean())

    @torch.no_grad()
    def predict_proba(self, X: Any) -> np.ndarray:
        """Responsibilities (N, K)."""
        self._check_fitted()
        X = _as_matrix(X, self.dtype, self._device, n_features=self.n_features_in_)
        terms = self._precision_terms()
        return torch.softmax(self._estimate_weighted_log_prob(X, terms), 1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Most responsible component of every row."""
        return self.predict_proba(X).argmax(1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion (lower is better)."""
        n = _as_matrix(X, self.dtype, self._device).shape[0]
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion (lower is better)."""
        n = _as_matrix(X, self.dtype, self._device).shape[0]
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()

    @torch.no_grad()
    def sample(self, n_samples: int = 1, *, generator: torch.Generator | None = None,
               seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n_samples`` points; returns (X (n, D), component labels (n,)).

        Draws happen where ``generator`` lives (default: a CPU generator seeded by ``seed``, so
        a seed gives the same points on every device).
        """
        self._check_fitted()
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        gdev = generator.device
        labels = torch.multinomial(self.weights_.to(gdev), n_samples, replacement=True,
                                   generator=generator).to(self._device)
        eps = torch.randn(n_samples, self.means_.shape[1], generator=generator,
                          device=gdev, dtype=self.dtype).to(self._device)
        mu = self.means_[labels]
        if self.covariance_type == "full":
            L = torch.linalg.cholesky(self.covariances_)[labels]
            X = mu + (L @ eps.unsqueeze(-1)).squeeze(-1)
        elif self.covariance_type == "diag":
            X = mu + eps * self.covariances_[labels].sqrt()
        else:
            X = mu + eps * self.covariances_[labels].sqrt()[:, None]
        return X, labels

    # ------------------------------------------------------------------------ scikit-learn
    def to_sklearn(self):
        """An equivalent fitted :class:`sklearn.mixture.GaussianMixture`."""
        from sklearn.mixture import GaussianMixture as SkGMM

        self._check_fitted()
        sk = SkGMM(n_components=self.n_components, covariance_type=self.covariance_type,
                   tol=self.tol, reg_covar=self.reg_covar, max_iter=self.max_iter)
        sk.weights_ = self.weights_.cpu().double().numpy()
        sk.means_ = self.means_.cpu().double().numpy()
        sk.covariances_ = self.covariances_.cpu().double().numpy()
        if self.covariance_type == "full":
            sk.precisions_cholesky_ = self._precision_terms()["prec_chol"].cpu().double().numpy()
            sk.precisions_ = np.einsum("kij,klj->kil", sk.precisions_cholesky_,
                                       sk.precisions_cholesky_)
        else:
            sk.precisions_cholesky_ = 1.0 / np.sqrt(sk.covariances_)
            sk.precisions_ = 1.0 / sk.covariances_
        sk.converged_, sk.n_iter_, sk.lower_bound_ = self.converged_, self.n_iter_, self.lower_bound_
        sk.n_features_in_ = sk.means_.shape[1]
        return sk

    @classmethod
    def from_sklearn(cls, sk, **options: Any) -> "GaussianMixture":
        """A deepmix GaussianMixture with the parameters of a fitted scikit-learn one."""
        if getattr(sk, "means_", None) is None:
            raise InputError("the scikit-learn GaussianMixture is not fitted")
        if sk.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"Unknown covariance type '{sk.covariance_type}' (tied is not "
                              f"supported); expected one of {', '.join(COVARIANCE_TYPES)}")
        gm = cls(sk.n_components, covariance_type=sk.covariance_type, tol=sk.tol,
                 reg_covar=sk.reg_covar, max_iter=sk.max_iter, **options)
        as_t = lambda a: torch.as_tensor(np.asarray(a), dtype=gm.dtype, device=gm.device)  # noqa: E731
        gm.weights_, gm.means_, gm.covariances_ = as_t(sk.weights_), as_t(sk.means_), as_t(sk.covariances_)
        gm.converged_ = bool(getattr(sk, "converged_", False))
        gm.n_iter_ = int(getattr(sk, "n_iter_", 0))
        return gm
