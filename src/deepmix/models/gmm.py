r"""Flat Gaussian mixture models with scikit-learn's vocabulary, fitted by EM in PyTorch.

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
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from dataclasses import dataclass

from ..errors import ConfigError, InputError
from .base import Model
from .registry import register_family

__all__ = ["GaussianMixture", "MixtureDensity", "MixtureConfig", "kmeans"]

COVARIANCE_TYPES = ("full", "diag", "spherical")
INIT_METHODS = ("kmeans", "k-means++", "random")
_LOG_2PI = math.log(2.0 * math.pi)


def _as_matrix(X: Any, dtype: torch.dtype, device: torch.device, what: str = "X",
               n_features: int | None = None) -> torch.Tensor:
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
    if X.numel() and not bool(torch.isfinite(X).all()):
        raise InputError(f"{what} contains NaN or infinite values")
    return X


def _chunks(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@torch.no_grad()
def kmeans(X: torch.Tensor, k: int, *, n_iter: int = 300, tol: float = 1e-4,
           generator: torch.Generator | None = None, chunk: int = 8192,
           plus_plus: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Lloyd's k-means with greedy k-means++ seeding; returns (centres (k, D), labels (N,)).

    Seeding draws ``2 + log k`` candidates per new centre and keeps the one that lowers the
    potential most (scikit-learn's greedy k-means++). Distances are
    :math:`\|x\|^2 - 2 x c^T + \|c\|^2` in row chunks, the centre update is one matrix
    product with the one-hot assignments, and Lloyd stops when the centres move (in squared
    norm) less than ``tol`` times the mean data variance, as scikit-learn does.
    """
    N, D = X.shape
    x2 = (X * X).sum(1)

    def sqdist(C: torch.Tensor) -> torch.Tensor:
        # Row chunks bound the (rows, k) output; for the few candidates of a seeding step that
        # bound is loose, and one thin matrix product is 3-4x faster than many (the product is
        # memory-bound: each call streams X once).
        rows = max(chunk, (1 << 24) // max(1, C.shape[0]))
        Ct, c2 = C.T.contiguous(), (C * C).sum(1)[None]
        return torch.cat([torch.addmm(x2[r, None] + c2, X[r], Ct, alpha=-2.0).clamp_min_(0.0)
                          for r in _chunks(N, rows)])

    # Draws happen where the generator lives: a CPU generator picks the same seeds on any device.
    gdev = generator.device if generator is not None else X.device
    if plus_plus:
        trials = 2 + int(math.log(k)) if k > 1 else 1
        first = int(torch.randint(N, (1,), generator=generator, device=gdev))
        centres = [X[first]]
        closest = sqdist(X[first:first + 1])[:, 0]
        for _ in range(1, k):
            total = closest.sum()
            u = torch.rand(trials, generator=generator, device=gdev, dtype=X.dtype).to(X.device) * total
            cand = torch.searchsorted(closest.cumsum(0), u).clamp_max(N - 1)
            d_cand = torch.minimum(closest[:, None], sqdist(X[cand]))   # (N, trials)
            best = int(d_cand.sum(0).argmin())
            centres.append(X[cand[best]])
            closest = d_cand[:, best].contiguous()
        C = torch.stack(centres)
    else:
        C = X[torch.randperm(N, generator=generator, device=gdev)[:k].to(X.device)].clone()
    threshold = tol * float(X.var(0).mean())
    labels = sqdist(C).argmin(1)
    for _ in range(n_iter):
        # Per-cluster sums by index_add (O(N D)), not a one-hot matrix product (O(N K D)):
        # at K = 100 on MNIST the product cost as much as the distances themselves.
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        new = torch.zeros_like(C).index_add_(0, labels, X) / counts.clamp_min(1.0)[:, None]
        empty = counts == 0
        new[empty] = C[empty]  # an empty cluster keeps its centre
        shift = float(((new - C) ** 2).sum())
        C = new
        labels = sqdist(C).argmin(1)
        if shift <= threshold:
            break
    return C, labels


class GaussianMixture(nn.Module):
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
        super().__init__()
        if em not in ("batch", "stepwise"):
            raise ConfigError(f"Unknown EM mode '{em}'; expected batch or stepwise")
        if not 0.5 < step_decay <= 1.0:
            raise ConfigError(f"step_decay must lie in (0.5, 1], got {step_decay}")
        if stepwise_batch < 1:
            raise ConfigError(f"stepwise_batch must be >= 1, got {stepwise_batch}")
        self.em, self.stepwise_batch, self.step_decay = em, int(stepwise_batch), float(step_decay)
        self._running: tuple[torch.Tensor, ...] | None = None
        self._steps = 0
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"Unknown covariance type '{covariance_type}'; expected one of "
                              f"{', '.join(COVARIANCE_TYPES)}")
        if init_params not in INIT_METHODS:
            raise ConfigError(f"Unknown init_params '{init_params}'; expected one of "
                              f"{', '.join(INIT_METHODS)}")
        if int(n_components) < 1:
            raise ConfigError(f"n_components must be >= 1, got {n_components}")
        if max_iter < 1 or n_init < 1 or batch_size < 1:
            raise ConfigError("max_iter, n_init and batch_size must be >= 1")
        if reg_covar < 0 or tol < 0:
            raise ConfigError("reg_covar and tol must be >= 0")
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        from ..utils.device import resolve_device

        self.n_components = int(n_components)
        self.covariance_type = covariance_type
        self.tol, self.reg_covar, self.max_iter, self.n_init = tol, reg_covar, max_iter, n_init
        self.init_params, self.random_state = init_params, random_state
        self.dtype, self.device = dtype, resolve_device(device)
        self.batch_size, self.verbose = int(batch_size), verbose
        self.converged_ = False
        self.n_iter_ = 0
        self.lower_bound_ = -math.inf
        self.history_: list[float] = []
        self.seconds_: list[float] = []
        self.weights_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.covariances_: torch.Tensor | None = None

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
            L = torch.linalg.cholesky(cov)                                        # Sigma = L L^T
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
        sx = torch.zeros(K, D, dtype=self.dtype, device=self.device)
        full = self.covariance_type == "full"
        sxx = torch.zeros((K, D, D) if full else (K, D) if self.covariance_type == "diag" else (K,),
                          dtype=self.dtype, device=self.device)
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
            cov = cov + self.reg_covar * torch.eye(D, dtype=self.dtype, device=self.device)
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
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        resp = torch.empty(X.shape[0], self.n_components, dtype=self.dtype, device=self.device)
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

        X = _as_matrix(X, self.dtype, self.device)
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
                    order = torch.randperm(N, generator=gen).to(self.device)
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
        X = _as_matrix(X, self.dtype, self.device,
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
        X = _as_matrix(X, self.dtype, self.device, n_features=self.n_features_in_)
        terms = self._precision_terms()
        return torch.cat([torch.logsumexp(self._estimate_weighted_log_prob(X[r], terms), 1)
                          for r in _chunks(X.shape[0], self.batch_size)]) if X.shape[0] else \
            torch.zeros(0, dtype=self.dtype, device=self.device)

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
        X = _as_matrix(X, self.dtype, self.device, n_features=self.n_features_in_)
        terms = self._precision_terms()
        return torch.softmax(self._estimate_weighted_log_prob(X, terms), 1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Most responsible component of every row."""
        return self.predict_proba(X).argmax(1)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion (lower is better)."""
        n = _as_matrix(X, self.dtype, self.device).shape[0]
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion (lower is better)."""
        n = _as_matrix(X, self.dtype, self.device).shape[0]
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
                                   generator=generator).to(self.device)
        eps = torch.randn(n_samples, self.means_.shape[1], generator=generator,
                          device=gdev, dtype=self.dtype).to(self.device)
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
    def set_moments(self, weights: torch.Tensor, means: torch.Tensor,
                    covariances: torch.Tensor) -> "MixtureDensity":
        r"""Set the parameters from :math:`(\pi, \mu, \Sigma)` as scikit-learn stores them
        ((K,), (K, D), and (K, D, D) / (K, D) / (K,) by covariance type); returns ``self``."""
        dtype = self.means.dtype
        K, D = self.means.shape
        self.logits.copy_(torch.log(weights).to(dtype))
        self.means.copy_(means.to(dtype))
        cov = covariances
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
