r"""The scikit-learn estimator of the flat GMM family, fitted by EM on the one training loop.

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
import warnings
from typing import Any, Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin

from ..errors import ConfigError, InputError
from ..models.gmm import COVARIANCE_TYPES, MixtureDensity
from ..utils.tensors import as_matrix as _as_matrix
from ..utils.tensors import row_chunks as _chunks
from .gmm_em import INIT_METHODS, MixtureEM
from .loop import FitConfig, fit
from .objectives import GaussianMixtureEM, GaussianMixtureStepwiseEM

__all__ = ["GaussianMixture"]

class GaussianMixture(MixtureEM, DensityMixin, BaseEstimator):
    r"""Gaussian mixture fitted by EM, with scikit-learn's estimator API.

    Arguments:
        n_components: K.
        covariance_type: ``"full"``, ``"diag"`` or ``"spherical"``.
        tol: EM stops when the mean log-likelihood changes less than this.
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations at most.
        n_init: EM runs from different initialisations; the best lower bound is kept.
        init_params: ``"kmeans"`` (k-means centres, hard responsibilities), ``"k-means++"``
            (the k-means++ seeds only), ``"random"`` (K random data points as means, random
            normalised weights, the data's (co)variance for every component), or
            ``"sklearn-kmeans"`` (scikit-learn's ``KMeans(K, n_init=1, random_state)`` labels,
            as scikit-learn's GaussianMixture starts: with ``n_init=1`` the fit is then
            scikit-learn's for the same ``random_state``, to float rounding; slower than
            ``"kmeans"`` and CPU-only in its k-means).
        random_state: seed of the initialisation.
        dtype: ``torch.float64`` (default, as scikit-learn) or ``torch.float32``: the
            parameters, the scores, and every sum over rows during the fit.
        compute_dtype: dtype of EM's matrix products for ``diag`` and ``spherical`` mixtures
            (the E-step's log-densities and the M-step's statistics, fused on [x, x^2]):
            ``"auto"`` (default: float32 when the data have at least 2^22 entries of
            [x, x^2], where it makes EM about twice as fast, and its rounding of the
            per-sample log-likelihood, checked on 2048 rows under the initial parameters,
            stays below 1e-3 nats; else ``dtype``),
            ``torch.float32`` or ``torch.float64``. The log-sum-exp, the responsibilities'
            normalisation and the sums stay in ``dtype``, and the data are centred first, so
            float32 products change the fit by float32 rounding only
            (:mod:`deepmix.training.gmm_em`). ``full`` computes in ``dtype``.
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
                 dtype: torch.dtype = torch.float64, compute_dtype: str | torch.dtype = "auto",
                 device: str | torch.device = "cpu", batch_size: int = 8192, em: str = "batch",
                 stepwise_batch: int = 1000, step_decay: float = 0.7,
                 verbose: bool = False) -> None:
        # scikit-learn's contract: every argument is stored unchanged under its own name, so
        # get_params/set_params, clone and GridSearchCV work; checks run here and again in fit.
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol, self.reg_covar, self.max_iter, self.n_init = tol, reg_covar, max_iter, n_init
        self.init_params, self.random_state = init_params, random_state
        self.dtype, self.compute_dtype, self.device = dtype, compute_dtype, device
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
        if self._compute_name() is None:
            raise ConfigError(f"compute_dtype must be 'auto', torch.float32 or torch.float64, "
                              f"got {self.compute_dtype!r}")

    def _compute_name(self) -> str | None:
        """``compute_dtype`` as the EM objective's option (None if it is not one)."""
        names = {torch.float32: "float32", torch.float64: "float64", "auto": "auto",
                 "float32": "float32", "float64": "float64"}
        try:
            return names.get(self.compute_dtype)
        except TypeError:  # unhashable
            return None

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

    @torch.no_grad()
    def fit(self, X: Any, y: Any = None, *,
            callback: Callable[[int, float, "GaussianMixture"], None] | None = None
            ) -> "GaussianMixture":
        """Fit by EM on :func:`deepmix.training.fit` (``n_init`` runs, the best kept); returns
        ``self``.

        Iteration i is one E-step over all rows under the parameters of iteration i - 1 and the
        M-step; EM stops when the mean log-likelihood of two E-steps in a row changes by less
        than ``tol`` (scikit-learn's rule and bookkeeping: ``lower_bound_`` is the last E-step's
        mean log-likelihood, ``n_iter_`` the number of M-steps). ``history_`` and ``seconds_``
        hold every E-step's mean log-likelihood and the cumulative fit time at it.
        ``callback(iteration, mean_train_ll, self)`` runs after the initialisation (iteration 0)
        and after every iteration with the model holding that iteration's parameters and their
        mean training log-likelihood (an extra pass over the data per iteration, excluded from
        ``seconds_``).
        """
        self._check_params()
        X = _as_matrix(X, self.dtype, self._device)
        N, D = X.shape
        if N < self.n_components:
            raise InputError(f"Expected n_samples >= n_components but got n_components = "
                             f"{self.n_components}, n_samples = {N}")
        base = (int(self.random_state) if self.random_state is not None
                else int(torch.seed() % 2**31))
        best: tuple | None = None
        for run in range(self.n_init):
            # Full covariances in the precision parametrisation: exact for any fitted Sigma.
            model = MixtureDensity(self.n_components, D, self.covariance_type,
                                   parametrization="precision" if self.covariance_type == "full"
                                   else "covariance", dtype=self.dtype)
            options = {"init": self.init_params, "reg_covar": self.reg_covar,
                       "compute_dtype": self._compute_name()}
            if self.em == "batch":
                objective = GaussianMixtureEM(options)
                batch = self.batch_size
            else:
                objective = GaussianMixtureStepwiseEM({**options, "step_decay": self.step_decay})
                batch = self.stepwise_batch
            lls: list[float] = []

            def converged(rows: list[dict], lls: list[float] = lls) -> bool:
                if "loss" in rows[-1]:
                    lls.append(-rows[-1]["loss"])
                    if self.verbose:
                        print(f"EM iteration {rows[-1]['epoch']}: mean log-likelihood of the "
                              f"E-step {lls[-1]:.6f}")
                return len(lls) >= 2 and abs(lls[-1] - lls[-2]) < self.tol

            evaluate = None
            if callback is not None:
                def evaluate(m: MixtureDensity) -> dict[str, float]:
                    self._set_moments_from(m)
                    return {"train_ll": float(m.log_prob(X).mean())}

            rows = fit(model, X, objective,
                       config=FitConfig(epochs=self.max_iter, batch_size=batch,
                                        seed=base + run, device=str(X.device)),
                       evaluate=evaluate, until=converged,
                       callback=None if callback is None else
                       (lambda r: callback(r["epoch"], r["train_ll"], self)))
            history = lls
            seconds = [r["seconds"] for r in rows[1:]]
            done = len(lls) >= 2 and abs(lls[-1] - lls[-2]) < self.tol
            lower = lls[-1] if lls else -math.inf
            if best is None or lower > best[0]:
                best = (lower, model, done, rows[-1]["epoch"], history, seconds)
        assert best is not None
        lower, model, done, n_iter, history, seconds = best
        self._set_moments_from(model)
        self.lower_bound_, self.converged_, self.n_iter_ = lower, done, int(n_iter)
        self.history_, self.seconds_ = history, seconds
        self._running, self._steps = None, 0
        if not self.converged_:
            warnings.warn(f"EM did not converge in {self.max_iter} iterations (last change "
                          f"above tol={self.tol}); raise max_iter or tol", RuntimeWarning)
        return self

    def _set_moments_from(self, model: MixtureDensity) -> None:
        with torch.no_grad():
            self.weights_ = model.weights.detach().clone()
            self.means_ = model.means.detach().clone()
            self.covariances_ = model.covariances.detach().clone()

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
        XX = self.squares(X)
        if self.means_ is None:
            if X.shape[0] < self.n_components:
                raise InputError(f"Expected n_samples >= n_components in the first batch but got "
                                 f"n_components = {self.n_components}, n_samples = {X.shape[0]}")
            gen = torch.Generator()
            gen.manual_seed(int(self.random_state) if self.random_state is not None
                            else int(torch.seed() % 2**63))
            self.initialize(X, XX, gen)
            self._running, self._steps = None, 0
        self.lower_bound_ = self.stepwise_update(X, XX)
        self.n_iter_ += 1
        return self

    # ------------------------------------------------------------------------------- scores
    @torch.no_grad()
    def log_prob(self, X: Any) -> torch.Tensor:
        """Log-density of every row in nats, (N,) tensor."""
        self._check_fitted()
        X = _as_matrix(X, self.dtype, self._device, n_features=self.n_features_in_)
        terms = self.precision_terms()
        return torch.cat([torch.logsumexp(self.weighted_log_prob(X[r], terms), 1)
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
        terms = self.precision_terms()
        return torch.softmax(self.weighted_log_prob(X, terms), 1).cpu().numpy()

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
            sk.precisions_cholesky_ = self.precision_terms()["prec_chol"].cpu().double().numpy()
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
