r"""The EM arithmetic of flat Gaussian mixtures, on the moments scikit-learn stores.

.. math:: r_{nk} = \frac{\pi_k \mathcal N(x_n; \mu_k, \Sigma_k)}{\sum_j \pi_j
   \mathcal N(x_n; \mu_j, \Sigma_j)}, \quad N_k = \sum_n r_{nk}, \quad
   \mu_k = \frac{1}{N_k}\sum_n r_{nk} x_n, \quad
   \Sigma_k = \frac{1}{N_k}\sum_n r_{nk} x_n x_n^T - \mu_k\mu_k^T + \epsilon I

with scikit-learn's initialisations. Hand-written rather than scikit-learn's own, which runs in
NumPy on one thread: this one runs on any torch device.

Diagonal and spherical mixtures take the *fused* path (:class:`FusedRows`): the data, shifted by
c (:meth:`MixtureEM.precision_weighted_shift` of the initial parameters), become one design matrix :math:`z = [x - c, (x - c)^2]` (spherical:
:math:`[x - c, \|x - c\|^2]`) built once per fit, and

.. math:: \log \pi_k \mathcal N(x; \mu_k, \Sigma_k) = z\, w_k + b_k, \quad
   w_k = [P_k (\mu_k - c), -\tfrac12 P_k], \quad
   b_k = \log\pi_k + \tfrac12 \log|P_k| - \tfrac D2 \log 2\pi
   - \tfrac12 (\mu_k - c)^T P_k (\mu_k - c),

so an EM iteration is two matrix products per row chunk: the log-joint :math:`z W` and the
statistics :math:`r^T z` (every moment the M-step needs). The products may run in float32
(``compute_dtype``) while the parameters, :math:`b`, the log-sum-exp, the responsibilities'
normalisation and the sums over chunks stay in the parameters' dtype (float64 by default): the
shift by c keeps the entries of z small, so the float32 products lose no more than float32
rounding of the per-sample log-densities and of the centred moments. The full covariance type
and the reference functions (:meth:`MixtureEM.weighted_log_prob`, :meth:`MixtureEM.statistics`)
compute in the parameters' dtype.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from sklearn.cluster import KMeans

from ..errors import InputError
from ..models.kmeans import kmeans
from ..utils.blas import fast_matmul
from ..utils.tensors import LOG_2PI as _LOG_2PI
from ..utils.tensors import row_chunks as _chunks

__all__ = ["MixtureEM", "FusedRows", "INIT_METHODS", "COMPUTE_DTYPES", "resolve_compute_dtype",
           "AUTO_ROUNDING_BUDGET"]

INIT_METHODS = ("kmeans", "k-means++", "random", "sklearn-kmeans")

#: Accepted ``compute_dtype`` values; "auto" is float32 for diag / spherical mixtures on data of
#: at least :data:`AUTO_FLOAT32_ENTRIES` design-matrix entries whose float32 rounding stays
#: within :data:`AUTO_ROUNDING_BUDGET`, else the parameters' dtype.
COMPUTE_DTYPES = ("auto", "float32", "float64")

#: Below this many entries of z an EM iteration takes milliseconds in float64 anyway, and
#: float64 keeps EM's monotone likelihood exact to rounding on small problems.
AUTO_FLOAT32_ENTRIES = 1 << 22

#: "auto" keeps float32 products only if, under the initial parameters, they change the
#: per-sample log-likelihood of a sample of rows by less than this (nats, mean absolute); e.g.
#: ~1e-4 on dequantised MNIST at K = 25 and 100.
AUTO_ROUNDING_BUDGET = 1e-3

_COMPUTE = {"float32": torch.float32, "float64": torch.float64}


#: Bytes of the per-chunk temporaries of :meth:`MixtureEM.fused_rows` (below glibc's 32 MB
#: mmap ceiling, so freed chunks are reused instead of faulted in again).
_TEMP_BYTES = 8 << 20


def _flush_below(dtype: torch.dtype) -> float:
    """Entries of z and W smaller than this are set to 0. A denormal product inside a matrix
    product runs ~50x slower on x86 (microcode assists): with |z|, |W| >= tiny^0.4 and
    responsibilities >= exp(_cut) / K, every product is a normal number for K <= 10^4."""
    return torch.finfo(dtype).tiny ** 0.4


def _cut(dtype: torch.dtype) -> float:
    """Log-joints more than this far below a row's best are responsibilities of exactly 0."""
    return 0.45 * math.log(torch.finfo(dtype).tiny)


def resolve_compute_dtype(compute_dtype: str | torch.dtype | None, dtype: torch.dtype,
                          covariance_type: str, n_rows: int, n_features: int) -> torch.dtype:
    """The dtype of EM's matrix products: ``compute_dtype`` itself, or for ``"auto"`` / None
    float32 where it pays and accuracy allows (diag / spherical, large data), else ``dtype``."""
    if isinstance(compute_dtype, torch.dtype):
        return compute_dtype
    if compute_dtype in _COMPUTE:
        return _COMPUTE[compute_dtype]
    if covariance_type == "full":
        return dtype
    width = 2 * n_features if covariance_type == "diag" else n_features + 1
    return torch.float32 if n_rows * width >= AUTO_FLOAT32_ENTRIES else dtype


class FusedRows:
    """The fused design matrix z (rows, F) of some rows and the shift c (D,) it was built with.

    ``z = [x - c, (x - c)^2]`` (diag, F = 2D) or ``[x - c, ||x - c||^2]`` (spherical, F = D + 1)
    in the compute dtype; ``rows[i]`` indexes rows (a slice or an index tensor).
    """

    def __init__(self, z: torch.Tensor, shift: torch.Tensor) -> None:
        self.z, self.shift = z, shift

    def __getitem__(self, rows: slice | torch.Tensor) -> "FusedRows":
        return FusedRows(self.z[rows], self.shift)

    @property
    def centred(self) -> torch.Tensor:
        """x - c (rows, D), a strided view of z."""
        return self.z[:, : self.shift.shape[0]]


class MixtureEM:
    r"""The EM arithmetic of a flat GMM on its moments :math:`(\pi, \mu, \Sigma)`
    (``weights_``, ``means_``, ``covariances_``, stored as scikit-learn does): initialisation,
    E-step (weighted log-densities and responsibilities), sufficient statistics over row
    chunks, the closed-form M-step, and stepwise EM's running statistics.

    The estimator :class:`GaussianMixture` and the loop's EM objectives
    (:mod:`deepmix.training.objectives.em`) share it, so there is one implementation.
    """

    def __init__(self, n_components: int, covariance_type: str, *, reg_covar: float = 1e-6,
                 init_params: str = "kmeans", dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", batch_size: int = 8192,
                 step_decay: float = 0.7) -> None:
        self.n_components, self.covariance_type = n_components, covariance_type
        self.reg_covar, self.init_params, self.dtype, self.device = (reg_covar, init_params,
                                                                     dtype, device)
        self.batch_size, self.step_decay = batch_size, step_decay
        self.weights_: torch.Tensor | None = None
        self.means_: torch.Tensor | None = None
        self.covariances_: torch.Tensor | None = None
        self._running: tuple[torch.Tensor, ...] | None = None
        self._steps = 0

    @property
    def _device(self) -> torch.device:
        # Resolved once per device value: the E-step asks for it in every row chunk.
        cached = getattr(self, "_device_cache", None)
        if cached is None or cached[0] != self.device:
            from ..utils.device import resolve_device

            cached = (self.device, resolve_device(self.device))
            self._device_cache = cached
        return cached[1]

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

    def precision_terms(self) -> dict[str, torch.Tensor]:
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

    def weighted_log_prob(self, X: torch.Tensor, terms: dict,
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

    def squares(self, X: torch.Tensor) -> torch.Tensor | None:
        """x^2 (diag) or its row sums (spherical), computed once per fit."""
        if self.covariance_type == "diag":
            return X * X
        if self.covariance_type == "spherical":
            return (X * X).sum(1)
        return None

    # ---------------------------------------------------------------------------- fused path
    @property
    def fused(self) -> bool:
        """Whether this covariance type takes the fused [x, x^2] path (diag, spherical)."""
        return self.covariance_type in ("diag", "spherical")

    def fused_rows(self, X: torch.Tensor, compute_dtype: torch.dtype | None = None,
                   shift: torch.Tensor | None = None, out: FusedRows | None = None) -> FusedRows:
        """The fused design matrix of X (once per fit) with shift c (default: the data mean),
        built in row chunks so that no (N, D) temporary of X's dtype is made; ``compute_dtype``
        defaults to X's; ``out`` (a design matrix of X) is rebuilt in place."""
        N, D = X.shape
        cdt = out.z.dtype if out is not None else compute_dtype or X.dtype
        if shift is None:
            shift = X.mean(0, dtype=torch.float64)
        shift = shift.to(X.dtype)
        width = 2 * D if self.covariance_type == "diag" else D + 1
        z = out.z if out is not None else torch.empty(N, width, dtype=cdt, device=X.device)
        # Chunks small enough that the allocator reuses their temporaries: a fresh block above
        # glibc's mmap limit (32 MB) is new pages every time, and first-touch page faults made
        # this loop ~5x slower than its arithmetic (2.7 s of a 5 s MNIST fit on a VM here).
        size = max(1, min(self.batch_size, _TEMP_BYTES // (width * max(X.element_size(), 4))))
        xbuf = torch.empty(min(size, N), D, dtype=X.dtype, device=X.device)
        abuf = torch.empty(min(size, N), width, dtype=cdt, device=X.device)
        mask = torch.empty(min(size, N), width, dtype=torch.bool, device=X.device)
        tiny = _flush_below(cdt)
        for rows in _chunks(N, size):
            n = rows.stop - rows.start
            xc = torch.sub(X[rows], shift, out=xbuf[:n])
            z[rows, :D] = xc
            if self.covariance_type == "diag":
                torch.mul(xc, xc, out=xc)
                z[rows, D:] = xc
            else:
                z[rows, D] = (xc * xc).sum(1)
            block = z[rows]
            torch.lt(torch.abs(block, out=abuf[:n]), tiny, out=mask[:n])
            block.masked_fill_(mask[:n], 0.0)
        if out is not None:
            out.shift = shift
            return out
        return FusedRows(z, shift)

    def precision_weighted_shift(self) -> torch.Tensor:
        r"""The shift that keeps the float32 products accurate:
        :math:`c = \sum_k \pi_k P_k \mu_k / \sum_k \pi_k P_k` per feature.

        The rounding of :math:`z w_k + b_k` grows with :math:`P_k (\mu_k - c)^2`, largest
        where a component is nearly constant (large precision) far from c; this c sits where
        the precise components are (the background of images, say). On dequantised MNIST it
        makes the float32 E-step and M-step ~100x closer to float64 than the data mean does.
        """
        prec = 1.0 / self.covariances_
        if self.covariance_type == "spherical":
            prec = prec[:, None].expand_as(self.means_)
        wp = self.weights_[:, None] * prec
        return (wp * self.means_).sum(0) / wp.sum(0)

    def rounding_error(self, X: torch.Tensor, shift: torch.Tensor, compute_dtype: torch.dtype,
                       n_rows: int = 2048) -> float:
        """Mean absolute change of log p(x) that a design matrix in ``compute_dtype`` (around
        ``shift``) makes against X's dtype, on ``n_rows`` evenly spaced rows of X under the
        current parameters (built here from X, so every rank of a run, whatever rows it
        holds, decides alike)."""
        idx = torch.linspace(0, X.shape[0] - 1, min(n_rows, X.shape[0]),
                             device=X.device).long()
        ll = []
        for dtype in (compute_dtype, X.dtype):
            part = self.fused_rows(X[idx], dtype, shift=shift)
            W, b = self.fused_terms(part.shift, part.z.dtype)
            ll.append(torch.logsumexp(torch.add(part.z @ W, b), 1))
        return float((ll[0] - ll[1]).abs().mean())

    def hard_statistics(self, X: torch.Tensor, labels: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`statistics` for one-hot responsibilities (k-means labels), by per-cluster
        sums in the parameters' dtype over row chunks (O(N D), exact to that dtype)."""
        N, D = X.shape
        K = self.n_components
        nk = torch.bincount(labels, minlength=K).to(self.dtype)
        sx = torch.zeros(K, D, dtype=self.dtype, device=X.device)
        full = self.covariance_type == "full"
        sxx = torch.zeros((K, D, D) if full else (K, D) if self.covariance_type == "diag"
                          else (K,), dtype=self.dtype, device=X.device)
        for rows in _chunks(N, self.batch_size):
            x, lab = X[rows].to(self.dtype), labels[rows]
            sx.index_add_(0, lab, x)
            if full:
                onehot = torch.nn.functional.one_hot(lab, K).to(self.dtype)
                for k in range(K):
                    sxx[k].addmm_((x * onehot[:, k:k + 1]).T, x)
            elif self.covariance_type == "diag":
                sxx.index_add_(0, lab, x * x)
            else:
                sxx.index_add_(0, lab, (x * x).sum(1))
        return nk, sx, sxx

    def fused_terms(self, shift: torch.Tensor, compute_dtype: torch.dtype) -> tuple[torch.Tensor,
                                                                                 torch.Tensor]:
        r"""W (F, K) in the compute dtype and b (K,) in the parameters' dtype, with
        :math:`\log\pi_k \mathcal N(x; \mu_k, \Sigma_k) = z w_k + b_k` (module docstring)."""
        D = self.means_.shape[1]  # type: ignore[union-attr]
        m = self.means_ - shift                                   # (K, D) centred means
        prec = 1.0 / self.covariances_                            # (K, D) or (K,)
        if self.covariance_type == "diag":
            W = torch.cat([(prec * m).T, -0.5 * prec.T])
            b = 0.5 * torch.log(prec).sum(1) - 0.5 * (prec * m * m).sum(1)
        else:
            W = torch.cat([(prec[:, None] * m).T, -0.5 * prec[None]])
            b = 0.5 * D * torch.log(prec) - 0.5 * prec * (m * m).sum(1)
        b = b + torch.log(self.weights_) - 0.5 * D * _LOG_2PI
        W = W.to(compute_dtype).contiguous()
        return W.masked_fill_(W.abs() < _flush_below(compute_dtype), 0.0), b

    def fused_statistics(self, rows: FusedRows, terms: tuple[torch.Tensor, torch.Tensor]
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """E-step and sufficient statistics of some rows: (sum of log p(x), (nk, sx, sxx)).

        Two matrix products on z in the compute dtype; the log-sum-exp, the responsibilities
        and every sum over rows in the parameters' dtype. The statistics are those of
        :meth:`statistics` (uncentred).
        """
        z = rows.z
        W, b = terms
        # Both products are large float32 ones: oneDNN where it is exact (utils.blas).
        with fast_matmul(z.shape[0] * z.shape[1] * W.shape[1]):
            lp = torch.add(z @ W, b)          # (rows, K) in the parameters' dtype
            top = lp.amax(1, keepdim=True)
            lp -= top
            # Responsibilities below exp(cut) (4e-18 in float32) are 0, so that no product of
            # the statistics is a denormal number (see _flush_below).
            torch.nn.functional.threshold_(lp, _cut(z.dtype), -math.inf).exp_()
            mass = lp.sum(1, keepdim=True)
            lp /= mass                        # responsibilities, in place
            total = top.sum() + mass.log_().sum()
            resp = lp
            nk = resp.sum(0)
            S = (resp.to(z.dtype).T @ z).to(self.dtype)   # (K, F): every moment in one product
        return total, self._uncentre(nk, S, rows.shift)

    def _uncentre(self, nk: torch.Tensor, S: torch.Tensor, c: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Centred moments :math:`\sum r (x - c)`, :math:`\sum r (x - c)^2` to the raw ones
        :math:`\sum r x`, :math:`\sum r x^2` (exact up to the parameters' dtype)."""
        D = c.shape[0]
        s1 = S[:, :D]
        sx = s1 + nk[:, None] * c
        if self.covariance_type == "diag":
            sxx = S[:, D:] + 2.0 * s1 * c + nk[:, None] * (c * c)
        else:
            sxx = S[:, D] + 2.0 * (s1 @ c) + nk * (c @ c)
        return nk, sx, sxx

    # ---------------------------------------------------------------------------------- EM
    def statistics(self, X: torch.Tensor, resp: torch.Tensor, XX: torch.Tensor | None
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

    def set_from_statistics(self, nk: torch.Tensor, sx: torch.Tensor, sxx: torch.Tensor) -> None:
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

    def m_step(self, X: torch.Tensor, resp: torch.Tensor, XX: torch.Tensor | None) -> None:
        """Closed-form M-step from sufficient statistics accumulated over row chunks."""
        self.set_from_statistics(*self.statistics(X, resp, XX))

    def e_step(self, X: torch.Tensor, XX: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Mean log-likelihood of X and the responsibilities (N, K), in row chunks."""
        terms = self.precision_terms()
        total = torch.zeros((), dtype=self.dtype, device=self._device)
        resp = torch.empty(X.shape[0], self.n_components, dtype=self.dtype, device=self._device)
        for rows in _chunks(X.shape[0], self.batch_size):
            lp = self.weighted_log_prob(X[rows], terms,
                                                  None if XX is None else XX[rows])
            norm = torch.logsumexp(lp, 1, keepdim=True)
            total += norm.sum()
            torch.exp(lp - norm, out=resp[rows])
        return float(total) / max(X.shape[0], 1), resp   # an empty shard of a short batch

    def initialize(self, X: torch.Tensor, XX: torch.Tensor | None, gen: torch.Generator,
                   fused: FusedRows | None = None) -> None:
        """scikit-learn's initialisations; ``fused`` (the fit's design matrix) lets k-means
        run on its centred float32 columns and the first M-step be one product."""
        N, D = X.shape
        K = self.n_components
        if self.init_params == "sklearn-kmeans":
            # scikit-learn's own first step, ``KMeans(K, n_init=1, random_state=seed)`` on the
            # float64 data (seed: the generator's, i.e. random_state + run): from it EM reaches
            # scikit-learn's GaussianMixture fit of the same seed (to the rounding of the
            # products), which tells EM's arithmetic apart from the luck of the partition.
            seed = int(gen.initial_seed()) % 2**32
            labels = KMeans(K, n_init=1, random_state=seed).fit(
                X.detach().cpu().double().numpy()).labels_
            labels = torch.as_tensor(labels, dtype=torch.long, device=X.device)
            self.set_from_statistics(*self.hard_statistics(X, labels))
            return
        if self.init_params in ("kmeans", "k-means++"):
            # Only an initialisation: float32 halves its cost at no visible loss. k-means is
            # shift-invariant, so the centred columns of z serve as they are.
            pts = (fused.centred if fused is not None else X).to(torch.float32)
            _, labels = kmeans(pts, K, generator=gen, chunk=self.batch_size,
                               n_iter=300 if self.init_params == "kmeans" else 0)
            # The first M-step in the parameters' dtype, by per-cluster sums (O(N D)).
            self.set_from_statistics(*self.hard_statistics(X, labels))
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

    def stepwise_update(self, X: torch.Tensor, XX: torch.Tensor | None,
                        reduce: Any = None) -> float:
        """One stepwise-EM step on a minibatch; returns its mean log-likelihood before it.

        ``reduce(tensors)``, if given, sums the batch statistics and row count in place over
        the processes of a distributed run (one call), so the step is the global batch's."""
        lower, resp = self.e_step(X, XX)
        B = float(X.shape[0])
        stats = self.statistics(X, resp, XX)
        if reduce is not None:
            rows = torch.tensor([B], dtype=self.dtype, device=self._device)
            stats = list(stats)
            reduce([*stats, rows])
            B = float(rows)
        batch_stats = tuple(t / B for t in stats)
        if self._running is None:
            self._running = batch_stats
        else:
            eta = (self._steps + 2) ** (-self.step_decay)
            self._running = tuple((1.0 - eta) * old + eta * new
                                  for old, new in zip(self._running, batch_stats))
        self._steps += 1
        self.set_from_statistics(*self._running)
        return lower
