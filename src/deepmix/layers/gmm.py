r"""Convolutional GMM layer G(K): a diagonal Gaussian mixture over the channel vector at every position.

Parameters (shared over positions by default, one set per position in *independent* mode): raw
weights :math:`\xi` (K), centroids :math:`\mu` (K x D) and :math:`d` (K x D), the square root of the
diagonal precision (precision :math:`d^2`, std :math:`1/d`). With :math:`\pi = \mathrm{softmax}(\xi)`
the log-score of component k at an input vector x (without the :math:`2\pi` constant) is

.. math:: s_k(x) = \log\pi_k + \sum_i \log d_{ki} - \tfrac12 \sum_i d_{ki}^2 (x_i - \mu_{ki})^2,

computed as one matrix product of :math:`[x, x^2]` with :math:`[d^2\mu, -\tfrac12 d^2]^T` (never
an N x H x W x K x D tensor). The layer outputs the responsibilities
:math:`r = \mathrm{softmax}_k(s_k)`, its true log-likelihood is
:math:`\log\sum_k e^{s_k} - \tfrac D2\log 2\pi`, and it trains by SGD *ascent* on the annealed
max-component loss of :mod:`deepmix.layers.annealing` with closed-form gradients (see
:meth:`GMM.train_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import increment_version

from ..errors import SpecError
from . import fused_gmm
from .annealing import annealing_matrix, initial_sigma
from .base import Layer, Shape

__all__ = ["GMM", "WinnerStatistics"]

_LOG_2PI = math.log(2.0 * math.pi)
#: Pixel patches (one input channel) this small train by convolution, larger ones by the patch
#: matrix: the faster choice measured on a 2-core CPU (2L-c, E).
_CONV_MAX_PIXEL_D = 32
#: Responsibilities below this are set to exactly 0: their squares would be denormal floats,
#: which make CPU arithmetic in the layer above many times slower, for no visible difference.
RESPONSIBILITY_FLOOR = 1e-18


def _conv_weight(W: torch.Tensor, fold: Any) -> torch.Tensor:
    """(2D, K) design weights -> (K, 2C, fy, fx) weights of a convolution over [x, x^2]."""
    K = W.shape[1]
    C = fold.input_shape[2]
    return W.T.reshape(K, 2, fold.fy, fold.fx, C).permute(0, 1, 4, 2, 3).reshape(
        K, 2 * C, fold.fy, fold.fx)


def _conv_weight_to_rows(gw: torch.Tensor, fold: Any) -> torch.Tensor:
    """Inverse layout map of :func:`_conv_weight`: (K, 2C, fy, fx) -> (K, 2D)."""
    K = gw.shape[0]
    C = fold.input_shape[2]
    return gw.view(K, 2, C, fold.fy, fold.fx).permute(0, 1, 3, 4, 2).reshape(K, -1)


def _with_squares(x: torch.Tensor) -> torch.Tensor:
    """[x, x^2] along the last (channel) dim, (N, H, W, 2C), as an NCHW view (channels last).

    Written in place into one buffer (a copy and a multiply with ``out``) rather than
    ``cat([x, x * x])``, which first materialises x^2 and then copies both halves: for a
    responsibility map of 100 x 26 x 26 x 25 floats that is a third less memory traffic."""
    if x.requires_grad and torch.is_grad_enabled():   # ``out=`` has no autograd
        return torch.cat([x, x * x], dim=-1).permute(0, 3, 1, 2)
    C = x.shape[-1]
    out = torch.empty(*x.shape[:-1], 2 * C, dtype=x.dtype, device=x.device)
    out[..., :C].copy_(x)
    torch.mul(x, x, out=out[..., C:])
    return out.permute(0, 3, 1, 2)


def _responsibilities(s: torch.Tensor) -> torch.Tensor:
    r = torch.softmax(s, dim=-1)
    if r.requires_grad:  # autograd needs softmax's own output: no in-place change
        return torch.threshold(r, RESPONSIBILITY_FLOOR, 0.0)
    # In place: an out-of-place threshold allocates a fresh (M, K) result on every step.
    return torch.threshold_(r, RESPONSIBILITY_FLOOR, 0.0)


@dataclass
class WinnerStatistics:
    r"""What one SGD step of a GMM layer needs from a batch (see :meth:`GMM.train_step`):
    the winners' summed design rows ``sums`` (P*K, 2D) = :math:`[\sum x, \sum x^2]` per
    winning component, their ``counts`` (P*K,) (as floats) and the batch's summed annealed
    loss ``loss_sum`` (0-d); all are sums over rows, so a distributed run adds them over its
    ranks (:meth:`tensors`, one all-reduce) before :meth:`GMM.apply_statistics`. ``resp`` holds
    the batch's responsibilities (the layer's output), computed before the update.
    """

    sums: torch.Tensor
    counts: torch.Tensor
    loss_sum: torch.Tensor
    resp: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        """The summable tensors, in a fixed order (to reduce in place)."""
        return [self.sums, self.counts, self.loss_sum]


class GMM(Layer):
    """G(K) or G(K, independent).

    Arguments:
        input_shape: (H, W, D) of the input activities.
        K: number of components.
        independent: one parameter set per position instead of one shared set.
        mu_init: centroids start uniform in [-mu_init, mu_init].
        d_init: start value of d (reference sqrt(20)).
        d_min, d_max: d is clamped to [d_min, d_max] after each step (reference d_max sqrt(20)).
        sigma: start value of the annealing radius (default :math:`\\sqrt{2K}/4`).
        generator: random generator for the centroid initialisation.
    """

    code = "G"
    #: Train with a convolution over [x, x^2] when a Folding layer feeds this (shared) layer,
    #: instead of materialising the patch matrix (which repeats each input fy*fx/(sy*sx) times).
    #: Used where it measured faster on a 2-core CPU: many input channels (responsibility maps)
    #: or small patches (D < 32); large single-channel pixel patches keep the matrix product.
    use_conv: bool = True
    #: Compute a shared layer's winner statistics with the fused CPU kernel of
    #: :mod:`deepmix.layers.fused_gmm` (one pass per patch, cost O(non-zeros x K)) where it is
    #: built. None (default): for pixel input (one input channel), where it measured 1.5-4x
    #: faster on a 2-core CPU (sparse digit patches); dense responsibility maps keep the GEMM or
    #: convolution below, which reuses the weights across rows. True: wherever the kernel
    #: applies (CPU, float32/float64, shared). False: never (the pure-torch reference path).
    use_fused: bool | None = None

    def __init__(self, input_shape: Shape, K: int, independent: bool = False, *,
                 mu_init: float = 0.1, d_init: float = math.sqrt(20.0), d_min: float = 0.1,
                 d_max: float = math.sqrt(20.0), sigma: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(input_shape)
        H, W, D = self.input_shape
        self.K, self.D, self.independent = int(K), int(D), bool(independent)
        if self.K < 1:
            raise SpecError(f"{self.spec()}: K must be >= 1")
        if not 0 < d_min <= d_max:
            raise SpecError(f"{self.spec()}: need 0 < d_min <= d_max, got {d_min}, {d_max}")
        self.d_min, self.d_max = float(d_min), float(d_max)
        self.output_shape = (H, W, self.K)
        P = H * W if self.independent else 1
        self.xi = nn.Parameter(torch.zeros(P, self.K))
        mu = (torch.rand(P, self.K, self.D, generator=generator) * 2.0 - 1.0) * mu_init
        self.mu = nn.Parameter(mu)
        self.d = nn.Parameter(torch.full((P, self.K, self.D), float(min(d_init, d_max))))
        sigma0 = initial_sigma(self.K) if sigma is None else float(sigma)
        self.register_buffer("sigma", torch.tensor(sigma0, dtype=torch.float64))
        self._g_cache: tuple[float, torch.dtype, torch.device, torch.Tensor | None] | None = None
        self._lf_key: tuple | None = None
        self._lf: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lf_buf: torch.Tensor | None = None

    def spec(self) -> str:
        return f"G({self.K},independent)" if self.independent else f"G({self.K})"

    # ----------------------------------------------------------------------------------- scores
    @property
    def pi(self) -> torch.Tensor:
        """Mixture weights (P, K), normalised per position."""
        return torch.softmax(self.xi, dim=-1)

    def _linear_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 2D, K) weights and (P, K) offsets with s = [x, x^2] @ W + c.

        Differentiable when gradients w.r.t. the parameters are wanted; otherwise cached in a
        buffer and recomputed only after the parameters changed (tracked by their versions).
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in (self.mu, self.d, self.xi)):
            prec = self.d * self.d
            pm = prec * self.mu
            W = torch.cat([pm, prec * -0.5], dim=2).transpose(1, 2)
            c = (torch.log_softmax(self.xi, dim=-1) + torch.log(self.d).sum(-1)
                 - 0.5 * torch.linalg.vecdot(pm, self.mu))
            return W, c
        if self._lf_key != self._params_key():
            with torch.no_grad():
                self._lf = self._fill_linear_form()
            self._lf_key = self._params_key()
        return self._lf

    def _params_key(self) -> tuple:
        """What the cached linear form depends on: the parameters' versions and storage (a new
        dtype or device is new storage). Read from ``_parameters`` directly: this runs twice a
        training step, and nn.Module's attribute lookup was most of its cost."""
        p = self._parameters
        mu, d, xi = p["mu"], p["d"], p["xi"]
        return (mu._version, d._version, xi._version, mu.data_ptr(), d.data_ptr(), xi.data_ptr())

    def _fill_linear_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Write [d^2 mu, -d^2/2] into a reused (P, K, 2D) buffer: three passes, no concatenation."""
        P, K, D = self.mu.shape
        buf = self._lf_buf
        if buf is None or buf.shape != (P, K, 2 * D) or buf.dtype != self.mu.dtype \
                or buf.device != self.mu.device:
            buf = self._lf_buf = torch.empty(P, K, 2 * D, dtype=self.mu.dtype, device=self.mu.device)
        if self._fused_linear_form():
            # The kernel's fill: the same code (and bits) as the refill after a fused update.
            c = fused_gmm.linear_form(self.mu.detach(), self.d.detach(), self.xi.detach(), buf)
            return buf.transpose(1, 2), c
        pm, half_prec = buf[..., :D], buf[..., D:]
        torch.mul(self.d, self.d, out=half_prec)
        torch.mul(half_prec, self.mu, out=pm)
        c = (torch.log_softmax(self.xi, dim=-1) + torch.log(self.d).sum(-1)
             - 0.5 * torch.linalg.vecdot(pm, self.mu))
        half_prec.mul_(-0.5)
        return buf.transpose(1, 2), c

    def _fused_linear_form(self) -> bool:
        """Whether the kernel fills the linear form (then a fused update refills it too)."""
        return (self.use_fused is not False and self.mu.dtype == self.d.dtype
                and self.mu.is_contiguous() and self.d.is_contiguous()
                and fused_gmm.available(self.mu, self.K))

    @staticmethod
    def design(x: torch.Tensor) -> torch.Tensor:
        """:math:`[x, x^2]` of the channel vectors of ``x`` (N, H, W, D), as (N*H*W, 2D)."""
        xf = x.reshape(-1, x.shape[-1])
        return torch.cat([xf, xf * xf], dim=1)

    def _scores_flat(self, x: torch.Tensor) -> torch.Tensor:
        """Log-scores: (M, K) with M = N*H*W in shared mode, (P, N, K) in independent mode."""
        W, c = self._linear_form()
        Z = self.design(x)
        if self.independent:
            Zp = Z.view(x.shape[0], -1, 2 * self.D).transpose(0, 1)
            return torch.baddbmm(c.unsqueeze(1), Zp, W)
        return torch.addmm(c[0], Z, W[0])

    def _to_nhwk(self, s: torch.Tensor, N: int) -> torch.Tensor:
        H, W, _ = self.input_shape
        if self.independent:
            s = s.transpose(0, 1)
        return s.reshape(N, H, W, s.shape[-1])

    def log_scores(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`s_k(x)` for every position, (N, H, W, K); differentiable."""
        return self._to_nhwk(self._scores_flat(x), x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities :math:`\\mathrm{softmax}_k s_k(x)`, (N, H, W, K)."""
        return _responsibilities(self.log_scores(x))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """True log-likelihood :math:`\\log\\sum_k \\pi_k \\mathcal N_k(x)` in nats, (N, H, W)."""
        return torch.logsumexp(self.log_scores(x), dim=-1) - 0.5 * self.D * _LOG_2PI

    def log_scores_observed(self, x: torch.Tensor, observed: torch.Tensor, *,
                            prior: bool = True) -> torch.Tensor:
        r"""Log-scores of the observed dimensions only, (N, H, W, K).

        A diagonal Gaussian marginalises a missing dimension by dropping its factor, so with the
        0/1 mask :math:`m` (same shape as ``x``)

        .. math:: s^{obs}_k(x) = \log\pi_k + \sum_i m_i\left[\log d_{ki}
                  - \tfrac12 d_{ki}^2 (x_i - \mu_{ki})^2\right] - \tfrac12 \log 2\pi \sum_i m_i,

        i.e. :math:`\log \pi_k p(x_{obs} | k)`; without ``prior`` the :math:`\log\pi_k` term is
        left out. A position with nothing observed gets :math:`\log\pi_k` (or 0).
        """
        P, K, D = self.mu.shape
        m = observed.to(x.dtype).reshape(-1, D)
        xm = x.reshape(-1, D) * m
        prec = self.d * self.d
        # Stack the four sufficient terms so one (batched) product gives every score.
        Z = torch.cat([m, xm, xm * xm], dim=1)                            # (M, 3D)
        Wt = torch.cat([torch.log(self.d) - 0.5 * prec * self.mu * self.mu - 0.5 * _LOG_2PI,
                        prec * self.mu, -0.5 * prec], dim=2).transpose(1, 2)  # (P, 3D, K)
        if self.independent:
            Zp = Z.view(x.shape[0], -1, 3 * D).transpose(0, 1)
            s = torch.bmm(Zp, Wt)                                          # (P, N, K)
            if prior:
                s = s + torch.log_softmax(self.xi, dim=-1).unsqueeze(1)
        else:
            s = Z @ Wt[0]
            if prior:
                s = s + torch.log_softmax(self.xi[0], dim=-1)
        return self._to_nhwk(s, x.shape[0])

    def annealing_matrix(self, sigma: float | None = None) -> torch.Tensor | None:
        """g(sigma) for this layer (None when it is the identity to float precision)."""
        d = self._parameters["d"]
        sigma = float(self._buffers["sigma"]) if sigma is None else float(sigma)
        key = (sigma, d.dtype, d.device)
        if self._g_cache is None or self._g_cache[:3] != key:
            g = annealing_matrix(self.K, sigma, dtype=d.dtype, device=d.device)
            eye = torch.eye(self.K, dtype=g.dtype, device=g.device)
            # Once sigma is small the off-diagonal weights underflow: skip the K x K product.
            is_eye = bool(torch.equal(g, eye))
            self._g_cache = (*key, None if is_eye else g)
        return self._g_cache[3]

    def annealed_loss(self, x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
        """:math:`\\ell_\\sigma(x) = \\max_k \\sum_j g_{kj} s_j(x) - \\tfrac D2 \\log 2\\pi`, (N, H, W)."""
        s = self.log_scores(x)
        g = self.annealing_matrix(sigma)
        a = s if g is None else s @ g.T
        return a.max(dim=-1).values - 0.5 * self.D * _LOG_2PI

    # --------------------------------------------------------------------------------- training
    @torch.no_grad()
    def train_step(self, x: torch.Tensor, lr: float, lr_mu: float = 1.0, lr_d: float = 0.1,
                   lr_xi: float = 0.2, update_d: bool = True, *, fold: Any = None,
                   chunk_rows: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
        r"""One SGD ascent step on the mean annealed loss; returns (loss sum, responsibilities).

        ``x`` is this layer's input (N, H, W, D) or, with ``fold``, the input of that Folding
        layer below: the scores are then a convolution over [x, x^2] (see :attr:`use_conv`), or
        the Folding layer writes the design matrix [x, x^2] straight into one buffer. Design
        matrices are built in chunks of about ``chunk_rows`` positions; the step itself is one
        update for the whole batch. The loss sum is over all N*H*W positions (a 0-dim tensor:
        no host synchronisation).

        The gradient of :math:`\ell_\sigma` w.r.t. the scores of a sample is row :math:`k^*` of
        g, so with :math:`n_j = \sum_k c_k g_{kj}` (c: counts of winners k*) and the g-weighted
        sums :math:`S^x_j, S^{xx}_j` of x and x^2, per parameter
        :math:`\partial\mu = d^2 (S^x - n\mu)`,
        :math:`\partial d = n/d - d (S^{xx} - 2\mu S^x + n\mu^2)`,
        :math:`\partial\xi = n - \pi \sum_j n_j`, divided by the number of averaged terms
        (N*H*W shared; N per position in independent mode). The sums cost O(M D) (a scatter-add
        of the winners' rows) instead of autograd's second O(M D K) product.
        """
        st = self.winner_statistics(x, fold=fold, chunk_rows=chunk_rows)
        self.apply_statistics(st, x.shape[0], lr, lr_mu, lr_d, lr_xi, update_d=update_d)
        return st.loss_sum, st.resp

    @torch.no_grad()
    def winner_statistics(self, x: torch.Tensor, *, fold: Any = None,
                          chunk_rows: int = 16384) -> WinnerStatistics:
        """The first half of :meth:`train_step`: the winners' sums and counts of a batch (no
        update); ``x`` and ``fold`` as there. An empty batch gives zero sums."""
        N = x.shape[0]
        P, K, D = self.mu.shape
        H, W, _ = self.input_shape
        Wl, c = self._linear_form()
        g = self.annealing_matrix()
        if self._fused_applies(x, fold):
            return self._fused_statistics(x, fold, Wl, c, g)
        if fold is not None and fold._is_reshape and not self.independent and N > 0 \
                and self._fused_finish_applies(x, fold):
            # The whole map is one patch (a top layer): scores by two GEMMs on x and x^2, no
            # design matrix; the kernel finishes them and sums the winners' rows from x itself.
            xf = x.reshape(N, -1)
            s = torch.addmm(c[0], xf, Wl[0][:D])
            s.addmm_(xf * xf, Wl[0][D:])
            return self._fused_statistics(x, fold, Wl, c, g, scores=s)
        per_chunk = max(1, chunk_rows // (H * W))
        sums = torch.zeros(P * K, 2 * D, dtype=self.mu.dtype, device=self.mu.device)
        counts = torch.zeros(P * K, dtype=torch.long, device=self.mu.device)
        offsets = torch.arange(P, device=self.mu.device) * K if self.independent else None
        best_sum = torch.zeros((), dtype=self.mu.dtype, device=self.mu.device)
        resp_parts = []
        conv = fold is not None and self.use_conv and not self.independent \
            and not fold._is_reshape and (fold.input_shape[2] > 1 or D < _CONV_MAX_PIXEL_D)
        if conv:
            wconv = _conv_weight(Wl[0], fold)
            # The convolution needs no design matrix, so the whole batch goes at once.
            per_chunk = max(1, N)
        for c0 in range(0, N, per_chunk):
            xc = x[c0:c0 + per_chunk]
            n = xc.shape[0]
            if conv:
                finish = self._fused_finish_applies(xc, fold)
                if finish:
                    # Maps that mostly repeat one vector (background): scored from the positions
                    # that differ from it, or None (then the convolution).
                    bg = fused_gmm.background_scores(
                        xc, (fold.fy, fold.fx, fold.sy, fold.sx, H, W), Wl[0], c[0],
                        max_live=fused_gmm.MAX_LIVE)
                    if bg is not None:
                        return self._fused_statistics(xc, fold, Wl, c, g, background=bg)
                inp = _with_squares(xc)
                s4 = F.conv2d(inp, wconv, c[0], stride=(fold.sy, fold.sx))
                s = s4.permute(0, 2, 3, 1).reshape(-1, K)              # (n*H*W, K)
                if finish:
                    # (One chunk: the whole batch.) The kernel finishes the convolution's scores
                    # in one pass and sums the winners' patches from the input: no weight-
                    # gradient convolution (as costly as the scores) for the sums.
                    return self._fused_statistics(xc, fold, Wl, c, g, scores=s)
            else:
                Z = fold.forward_design(xc) if fold is not None else self.design(xc)
                if self.independent:
                    # Z rows are (sample, position); scores are computed per position.
                    s = torch.baddbmm(c.unsqueeze(1), Z.view(n, P, 2 * D).transpose(0, 1), Wl)
                    s = s.transpose(0, 1)                              # (n, P, K)
                else:
                    s = torch.addmm(c[0], Z, Wl[0])                    # (n*H*W, K)
            a = s if g is None else s @ g.T
            best, kstar = a.max(dim=-1)
            best_sum += best.sum()
            resp_parts.append(_responsibilities(s))
            index = (kstar + offsets).reshape(-1) if self.independent else kstar
            if conv:
                # Sums of the winners' patches = the weight gradient of the convolution for a
                # one-hot output gradient: no (M x 2D) patch matrix is ever built.
                onehot = torch.zeros_like(s).scatter_(1, kstar.unsqueeze(1), 1.0)
                onehot = onehot.view(n, H, W, K).permute(0, 3, 1, 2)
                gw = torch.nn.grad.conv2d_weight(inp, wconv.shape, onehot,
                                                 stride=(fold.sy, fold.sx))
                sums += _conv_weight_to_rows(gw, fold)
            else:
                sums.index_add_(0, index, Z)
            counts += torch.bincount(index, minlength=P * K)
        loss_sum = best_sum - N * H * W * 0.5 * D * _LOG_2PI
        if not resp_parts:
            resp_parts.append(torch.empty(0, K, dtype=self.mu.dtype, device=self.mu.device))
        resp = resp_parts[0] if len(resp_parts) == 1 else torch.cat(resp_parts)
        return WinnerStatistics(sums=sums, counts=counts.to(sums.dtype), loss_sum=loss_sum,
                                resp=resp.reshape(N, H, W, K))

    def _fused_applies(self, x: torch.Tensor, fold: Any) -> bool:
        if self.use_fused is False or self.independent or x.shape[0] == 0:
            return False
        if self.use_fused is None and (fold.input_shape[2] if fold is not None else self.D) != 1:
            return False
        shape = fold.input_shape if fold is not None else self.input_shape
        mu = self._parameters["mu"]
        return (x.dtype == mu.dtype and x.device == mu.device
                and tuple(x.shape[1:]) == tuple(shape) and fused_gmm.available(x, self.K))

    def _fused_finish_applies(self, x: torch.Tensor, fold: Any) -> bool:
        mu = self._parameters["mu"]
        return (self.use_fused is not False and x.dtype == mu.dtype
                and x.device == mu.device and tuple(x.shape[1:]) == tuple(fold.input_shape)
                and fused_gmm.available(x, self.K))

    def _fused_statistics(self, x: torch.Tensor, fold: Any, Wl: torch.Tensor, c: torch.Tensor,
                          g: torch.Tensor | None, scores: torch.Tensor | None = None,
                          background: Any = None) -> WinnerStatistics:
        """:meth:`winner_statistics` by the fused kernel (same results up to float rounding)."""
        N = x.shape[0]
        H, W, _ = self.input_shape
        geometry = ((fold.fy, fold.fx, fold.sy, fold.sx, H, W) if fold is not None
                    else (1, 1, 1, 1, H, W))
        sums, counts, loss_sum, resp = fused_gmm.fused_statistics(
            x, geometry, Wl[0], c[0], g, scores=scores, background=background,
            offset=-N * H * W * 0.5 * self.D * _LOG_2PI)
        return WinnerStatistics(sums=sums, counts=counts, loss_sum=loss_sum,
                                resp=resp.reshape(N, H, W, self.K))

    @torch.no_grad()
    def apply_statistics(self, st: WinnerStatistics, rows: int, lr: float, lr_mu: float = 1.0,
                         lr_d: float = 0.1, lr_xi: float = 0.2, update_d: bool = True) -> None:
        """The second half of :meth:`train_step`: the SGD update from (possibly all-reduced)
        statistics ``st`` of ``rows`` samples, at the same parameters, annealing radius and
        linear form they were computed with."""
        params = self._parameters            # (not nn.Module's slower attribute lookup)
        mu, d, xi = params["mu"], params["d"], params["xi"]
        P, K, D = mu.shape
        H, W, _ = self.input_shape
        g = self.annealing_matrix()
        N = int(rows)
        step = lr / (float(N) if self.independent else float(N * H * W))
        if self.use_fused is not False and fused_gmm.available(mu, K) \
                and d.dtype == xi.dtype == mu.dtype and st.sums.device == mu.device:
            # One call for annealing, the three gradients and the update (about twenty torch
            # ops and a (K, K) x (K, 2D) product otherwise); it also refills the linear-form
            # buffer for the new parameters (the same bits as _fill_linear_form).
            buf = self._lf_buf
            if buf is None or buf.shape != (P, K, 2 * D) or buf.dtype != mu.dtype \
                    or buf.device != mu.device or not (mu.is_contiguous() and d.is_contiguous()):
                buf = None
            c = fused_gmm.fused_update(mu.data, d.data, xi.data, st.sums, st.counts, g,
                                       step, lr_mu, lr_d, lr_xi, update_d, self.d_min,
                                       self.d_max, linear_form=buf)
            for p in (mu, d, xi) if update_d else (mu, xi):
                increment_version(p)
            if c is not None:
                self._lf = (buf.transpose(1, 2), c)
                self._lf_key = self._params_key()
            return
        Wl, _ = self._linear_form()
        counts_f = st.counts.view(P, K)
        sums = st.sums.view(P, K, 2 * D)
        if g is not None:
            sums = torch.matmul(g.T, sums)
            counts_f = counts_f @ g
        grad_xi = counts_f - self.pi * counts_f.sum(-1, keepdim=True)
        Sx, Sxx = sums[..., :D], sums[..., D:]
        nk = counts_f.unsqueeze(-1)
        half_prec = Wl.transpose(1, 2)[..., D:]                     # -d^2/2 at the old d
        # Fused in-place forms of the gradients in the docstring (few passes over K x D).
        t = torch.addcmul(Sx, nk, mu, value=-1.0)                 # S^x - n mu
        if update_d:
            e = torch.addcmul(Sxx, mu, Sx + t, value=-1.0)         # S^xx - 2 mu S^x + n mu^2
            dd = (nk / d).sub_(d * e)                              # n/d - d e
        mu.addcmul_(half_prec, t, value=-2.0 * step * lr_mu)       # mu += step d^2 (S^x - n mu)
        if update_d:
            d.add_(dd, alpha=step * lr_d).clamp_(self.d_min, self.d_max)
        self.xi.add_(grad_xi, alpha=step * lr_xi)

    # --------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def backwards(self, control: torch.Tensor | None, *, generator: torch.Generator | None = None,
                  n: int | None = None, top_s: int = 1, divisor: float = 10.0,
                  use_pi: bool = False, mode: str = "sample", **options: Any) -> torch.Tensor:
        """Sample one component per position and emit its centroid plus noise, (N, H, W, D).

        ``control`` (N, H, W, K) comes from the layer above; it is clipped to [1e-6, inf), only its
        ``top_s`` largest entries are kept and, renormalised, give the component probabilities.
        Without a control signal (top layer, ``n`` samples) components are uniform, or follow pi
        with ``use_pi``. Noise is Gaussian with std :math:`1/(d \\cdot \\text{divisor})`, zero
        where d still sits at its upper clamp; ``divisor=inf`` (or 0) gives no noise.

        ``mode="mean"`` emits the expectation :math:`\\sum_k p_k \\mu_k` over the (top-S,
        renormalised) component probabilities instead of one draw, without noise: the
        least-squares estimate used by in-painting.
        """
        if mode not in ("sample", "mean"):
            raise ValueError(f"unknown GMM backwards mode '{mode}' (sample or mean)")
        H, W, _ = self.input_shape
        P, K, D = self.mu.shape
        dev = self.mu.device
        if control is None:
            if n is None:
                raise ValueError("backwards() of the top GMM needs n when there is no control signal")
            probs = self.pi if use_pi else torch.full((P, K), 1.0 / K, device=dev)
            probs = probs.unsqueeze(0).expand(n, P, K)
            if P == 1:
                probs = probs.expand(n, H * W, K)
            probs = probs.reshape(n * H * W, K)
            idx = None
        else:
            n = control.shape[0]
            t = control.reshape(n * H * W, K).clamp_min(1e-6)
            s = max(1, min(int(top_s), K))
            probs, idx = t.topk(s, dim=-1) if s < K else (t, None)
        if mode == "mean":
            return self._expected_centroids(probs, idx, n)
        cdf = probs.cumsum(-1)
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=dev) * cdf[:, -1:]
        pick = (cdf < u).sum(-1).clamp_max(cdf.shape[1] - 1)
        k = pick if idx is None else idx.gather(1, pick.unsqueeze(1)).squeeze(1)
        k = k.view(n, H * W)
        if P == 1:
            mu, d = self.mu[0][k], self.d[0][k]
        else:
            pos = torch.arange(P, device=dev).unsqueeze(0)
            mu, d = self.mu[pos, k], self.d[pos, k]
        out = mu
        if divisor and math.isfinite(divisor):
            noise = torch.randn(mu.shape, generator=generator, device=dev, dtype=mu.dtype)
            std = torch.where(d >= self.d_max * (1 - 1e-6), torch.zeros_like(d), 1.0 / (d * divisor))
            out = mu + noise * std
        return out.reshape(n, H, W, D)

    def _expected_centroids(self, probs: torch.Tensor, idx: torch.Tensor | None,
                            n: int) -> torch.Tensor:
        """:math:`\\sum_k p_k \\mu_k` per position from (M, s) probabilities over indices ``idx``."""
        H, W, _ = self.input_shape
        P, K, D = self.mu.shape
        w = probs / probs.sum(-1, keepdim=True)
        if idx is not None:
            w = torch.zeros(w.shape[0], K, dtype=w.dtype, device=w.device).scatter_(1, idx, w)
        w = w.to(self.mu.dtype)
        if P == 1:
            out = w @ self.mu[0]
        else:
            out = torch.bmm(w.view(n, P, K).transpose(0, 1), self.mu).transpose(0, 1)
        return out.reshape(n, H, W, D)
