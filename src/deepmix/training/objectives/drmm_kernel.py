r"""One C++ call for the loss and gradients of a drmm-em step of a flat DRMM.

Why: a 3 x 16 DRMM step is about 500 torch ops of a few microseconds each (terms, argmaxes,
residuals and their backward for every layer), so dispatch, not arithmetic, sets its speed;
the work itself is :math:`N K \sum_l (D + (l-1) K)` multiply-adds. This kernel does the whole
forward pass, the E-step labels, the loss and its gradients in one pass per layer, in closed
form (gradient stops between layers make every layer's gradient local):

- labels :math:`h_i = \arg\max_k m_{ik}`, :math:`e_i = \arg\max_k (d_{ik} + \rho_E a_{ik})`
  (first maximum, as ``torch.argmax``), with :math:`d_{ik} = -\frac12(\sum_d (r_{id} -
  \mu_{kd})^2 / \sigma_d^2 + \sum_d \log\sigma_d^2)` and :math:`a_{ik} = \sum_j \sum_c q_{ijc}
  \log p_{jkc}`, :math:`q_{ij}` the softmax of latent stream j;
- loss :math:`-\frac1N \sum_i m_{i e_i} - \frac{\alpha}{K}\sum_k \max_i d_{ik}`; with
  :math:`n_k` rows labelled k, :math:`S_k` their residual sum and :math:`i^*_k` the arg max:

  .. math:: \nabla_{\mathrm{logits}} = w - n/N, \quad
     \nabla_{\mu_k} = -\tfrac1N (S_k - n_k\mu_k)/\sigma^2
                      - \tfrac{\alpha}{K}(r_{i^*_k} - \mu_k)/\sigma^2,

  :math:`\nabla_{\log\sigma^2}` from :math:`\partial d/\partial \log\sigma_d^2 = \frac12((r_d -
  \mu_d)^2/\sigma_d^2 - 1)`, and for latent stream j :math:`\nabla = -\frac1N (Q_{jk} - n_k
  p_{jk})` with :math:`Q_{jk}` the sum of :math:`q_{ij}` over the rows labelled k;
- the next layer's input: :math:`r \leftarrow r - \mu_h`, :math:`q_j \leftarrow q_j /
  p_{jh}` normalised (= softmax of the categorical residual ``log_softmax(v - log p_h)``), and
  the new latent stream :math:`(1-\epsilon)\,\mathrm{onehot}(h) + \epsilon/K`.

Inner loops run over components (parameters stored transposed), so the compiler vectorises
them; rows go in blocks of 8 against each parameter row while it sits in L1, and blocks and
rows are spread over torch's thread count (OpenMP) where a layer's work exceeds 2M
multiply-adds. Every sum over rows runs serially in row order, so a result does not depend on
the thread count. The result equals the autograd path
(:meth:`~deepmix.training.objectives.drmm.DRMMObjective.layer_losses`) up to float rounding;
``tests/test_drmm_kernel.py`` checks it over several training steps. It serves what it was built
for: one continuous data stream, no mask, gradient stops, one process; everything else takes
the autograd path.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch

from ...utils import native

__all__ = ["kernel", "eligible", "loss_and_gradients", "MAX_WORK"]

#: Largest step, in multiply-adds :math:`N K \sum_l (D + (l-1)K)`, given to the kernel: it beat
#: the autograd path at every measured size up to 10 x 256 at batch 256 (759M; step_time.py,
#: docs/drmm.md Benchmarks); larger steps are unmeasured, so they keep the autograd path.
MAX_WORK = 1 << 30

_SOURCE = r"""
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>
#include <omp.h>

// Rows per block: the terms of a block are formed against each row of the (transposed)
// parameters while it sits in L1, so a large K streams them once per block, not per row.
static const long RB = 8;

// P: per layer l, 3 + l pointers: logits (K), mu (K x D), log_var (1 or D), then the latent
// streams' logits (K x K) j = 0..l-1. G: the gradients, same layout (overwritten).
// Parallel parts (the terms per row, the next layer's input) are per row; every sum over rows
// runs serially in row order, so results do not depend on the thread count.
template <typename T>
static int drmm_step(long N, long D, long K, long L, int diag, const T* x, const T* const* P,
                     T* const* G, T rho, T alpha, double* loss_out, int nthreads) {
  const T eps = T(1e-8);
  const long LQ = L > 1 ? L - 1 : 1;
  std::vector<T> r(x, x + N * D);                      // the residual, (N, D)
  std::vector<T> q((size_t)N * LQ * K);                // latent probabilities (N, L-1, K)
  std::vector<T> dall((size_t)N * K);                  // data terms of the layer (N, K)
  std::vector<T> me(N);                                // m_{i, e_i}
  std::vector<long> h(N), e(N);
  std::vector<T> muT, lpT, pk, inv(D), lw(K);
  std::vector<double> S, SQ, Q, n(K), best(K);
  std::vector<long> bi(K);
  double loss = 0.0;
  long o = 0;
  for (long l = 0; l < L; ++l) {
    const T* wl = P[o];
    const T* mu = P[o + 1];
    const T* lv = P[o + 2];
    T* gw = G[o];
    T* gmu = G[o + 1];
    T* glv = G[o + 2];
    // log w = log_softmax(logits)
    T mx = -std::numeric_limits<T>::infinity();
    for (long k = 0; k < K; ++k) mx = wl[k] > mx ? wl[k] : mx;
    double z = 0.0;
    for (long k = 0; k < K; ++k) z += std::exp(double(wl[k] - mx));
    for (long k = 0; k < K; ++k) lw[k] = T(double(wl[k] - mx) - std::log(z));
    T logdet = 0;
    for (long d = 0; d < D; ++d) {
      const T v = diag ? lv[d] : lv[0];
      inv[d] = std::exp(-v);
      logdet += v;
    }
    muT.assign(D * K, T(0));
    for (long k = 0; k < K; ++k)
      for (long d = 0; d < D; ++d) muT[d * K + k] = mu[k * D + d];
    // latent streams: log p transposed (c, k) for the terms, p (k, c) for the updates
    lpT.assign((size_t)l * K * K, T(0));
    pk.assign((size_t)l * K * K, T(0));
    const double work = double(N) * double(K) * double(D + l * K);
    const int nt = work < 2e6 ? 1 : (nthreads < 1 ? 1 : nthreads);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long jk = 0; jk < l * K; ++jk) {
      const long j = jk / K, k = jk % K;
      {
        const T* row = P[o + 3 + j] + k * K;
        T m2 = -std::numeric_limits<T>::infinity();
        for (long c = 0; c < K; ++c) m2 = row[c] > m2 ? row[c] : m2;
        T* pr = pk.data() + (j * K + k) * K;
        double z2 = 0.0;
        for (long c = 0; c < K; ++c) { pr[c] = std::exp(row[c] - m2); z2 += pr[c]; }
        const T lz = T(std::log(z2)), iz = T(1.0 / z2);
        for (long c = 0; c < K; ++c) {
          lpT[(j * K + c) * K + k] = (row[c] - m2) - lz;
          pr[c] *= iz;
        }
      }
    }
    const long nblocks = (N + RB - 1) / RB;
    int bad = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(|:bad)
    for (long b = 0; b < nblocks; ++b) {
      const long i0 = b * RB, nb = (i0 + RB <= N ? RB : N - i0);
      std::vector<T> A((size_t)nb * K, T(0));
      T* __restrict dk = dall.data() + (size_t)i0 * K;
      for (long t = 0; t < nb * K; ++t) dk[t] = T(0);
      for (long d = 0; d < D; ++d) {
        const T w = inv[d];
        const T* __restrict m = muT.data() + d * K;
        for (long t = 0; t < nb; ++t) {
          const T rv = r[(i0 + t) * D + d];
          T* __restrict dt = dk + t * K;
          for (long k = 0; k < K; ++k) {
            const T df = rv - m[k];
            dt[k] += df * df * w;
          }
        }
      }
      for (long j = 0; j < l; ++j) {
        const T* tj = lpT.data() + (size_t)j * K * K;
        long c = 0;
        // four categories per pass over a row's sums: a quarter of the loads and stores
        for (; c + 4 <= K; c += 4) {
          const T* __restrict t0 = tj + c * K;
          const T* __restrict t1 = t0 + K;
          const T* __restrict t2 = t1 + K;
          const T* __restrict t3 = t2 + K;
          for (long t = 0; t < nb; ++t) {
            const T* qr = q.data() + ((size_t)(i0 + t) * LQ + j) * K + c;
            const T q0 = qr[0], q1 = qr[1], q2 = qr[2], q3 = qr[3];
            T* __restrict at = A.data() + t * K;
            for (long k = 0; k < K; ++k)
              at[k] += (q0 * t0[k] + q1 * t1[k]) + (q2 * t2[k] + q3 * t3[k]);
          }
        }
        for (; c < K; ++c) {
          const T* __restrict tc = tj + c * K;
          for (long t = 0; t < nb; ++t) {
            const T qc = q[((size_t)(i0 + t) * LQ + j) * K + c];
            T* __restrict at = A.data() + t * K;
            for (long k = 0; k < K; ++k) at[k] += qc * tc[k];
          }
        }
      }
      for (long t = 0; t < nb; ++t) {
        T* dt = dk + t * K;
        const T* at = A.data() + t * K;
        for (long k = 0; k < K; ++k) dt[k] = T(-0.5) * (dt[k] + logdet);
        long hb = 0, eb = 0;
        T mb = lw[0] + dt[0] + at[0], ebv = dt[0] + rho * at[0];
        int nan = 0;
        for (long k = 1; k < K; ++k) {
          const T m = lw[k] + dt[k] + at[k];
          if (m > mb) { mb = m; hb = k; }
          const T ev = dt[k] + rho * at[k];
          if (ev > ebv) { ebv = ev; eb = k; }
          nan |= (m != m) | (ev != ev);   // a NaN never wins a comparison: look for it
        }
        if (nan || !std::isfinite(mb) || !std::isfinite(ebv)) bad = 1;
        h[i0 + t] = hb;
        e[i0 + t] = eb;
        me[i0 + t] = lw[eb] + dt[eb] + at[eb];
      }
    }
    if (bad) return 1;   // NaN/inf: the autograd path takes the step
    // sums over rows, serially in row order
    S.assign(K * D, 0.0);
    SQ.assign(diag ? D : 1, 0.0);
    Q.assign((size_t)l * K * K, 0.0);
    std::fill(n.begin(), n.end(), 0.0);
    std::fill(best.begin(), best.end(), -std::numeric_limits<double>::infinity());
    std::fill(bi.begin(), bi.end(), -1L);
    double fit = 0.0;
    for (long i = 0; i < N; ++i) {
      const T* ri = r.data() + i * D;
      const T* di = dall.data() + (size_t)i * K;
      for (long k = 0; k < K; ++k)
        if (double(di[k]) > best[k]) { best[k] = di[k]; bi[k] = i; }
      const long eb = e[i];
      fit += double(me[i]);
      n[eb] += 1.0;
      for (long d = 0; d < D; ++d) {
        S[eb * D + d] += ri[d];
        const double df = double(ri[d]) - double(mu[eb * D + d]);
        SQ[diag ? d : 0] += df * df * (diag ? 1.0 : double(inv[d]));
      }
      for (long j = 0; j < l; ++j) {
        const T* qi = q.data() + ((size_t)i * LQ + j) * K;
        double* Qe = Q.data() + ((size_t)j * K + eb) * K;
        for (long c = 0; c < K; ++c) Qe[c] += qi[c];
      }
    }
    const double Nd = double(N), a = double(alpha) / double(K);
    loss -= fit / Nd;
    for (long k = 0; k < K; ++k) gw[k] = T(std::exp(double(lw[k])) - n[k] / Nd);
    for (long k = 0; k < K; ++k)
      for (long d = 0; d < D; ++d)
        gmu[k * D + d] = T(-(S[k * D + d] - n[k] * mu[k * D + d]) / Nd * inv[d]);
    if (diag) {
      for (long d = 0; d < D; ++d) glv[d] = T(-0.5 * (SQ[d] * inv[d] - Nd) / Nd);
    } else {
      glv[0] = T(-0.5 * (SQ[0] - Nd * D) / Nd);
    }
    for (long j = 0; j < l; ++j) {
      T* g = G[o + 3 + j];
      const double* Qj = Q.data() + (size_t)j * K * K;
      const T* pj = pk.data() + (size_t)j * K * K;
      for (long k = 0; k < K; ++k)
        for (long c = 0; c < K; ++c)
          g[k * K + c] = T(-(Qj[k * K + c] - n[k] * double(pj[k * K + c])) / Nd);
    }
    if (alpha > 0) {
      double glv0 = 0.0;
      for (long k = 0; k < K; ++k) {
        if (bi[k] < 0) continue;
        loss -= a * best[k];
        const T* ri = r.data() + bi[k] * D;
        double sq = 0.0;
        for (long d = 0; d < D; ++d) {
          const double df = double(ri[d]) - double(mu[k * D + d]);
          gmu[k * D + d] = T(double(gmu[k * D + d]) - a * df * inv[d]);
          if (diag) glv[d] = T(double(glv[d]) - a * 0.5 * (df * df * inv[d] - 1.0));
          else sq += df * df * inv[d];
        }
        if (!diag) glv0 -= a * 0.5 * (sq - double(D));
      }
      if (!diag) glv[0] = T(double(glv[0]) + glv0);
    }
    if (l + 1 < L) {   // the next layer's input
#pragma omp parallel for num_threads(nt) schedule(static)
      for (long i = 0; i < N; ++i) {
        T* ri = r.data() + i * D;
        const long hk = h[i];
        for (long d = 0; d < D; ++d) ri[d] -= mu[hk * D + d];
        for (long j = 0; j < l; ++j) {
          T* qi = q.data() + ((size_t)i * LQ + j) * K;
          const T* pr = pk.data() + ((size_t)j * K + hk) * K;
          for (long c = 0; c < K; ++c) qi[c] = qi[c] / pr[c];
          double s = 0.0;
          for (long c = 0; c < K; ++c) s += qi[c];
          const T sc = T(1.0 / s);
          for (long c = 0; c < K; ++c) qi[c] *= sc;
        }
        T* qn = q.data() + ((size_t)i * LQ + l) * K;
        const T lo = eps / T(K);
        for (long c = 0; c < K; ++c) qn[c] = lo;
        qn[hk] = T(1) - eps + lo;
      }
    }
    o += 3 + l;
  }
  *loss_out = loss;
  return 0;
}

extern "C" {
int dm_drmm_step_f32(long N, long D, long K, long L, int diag, const float* x,
                     const float* const* P, float* const* G, float rho, float alpha,
                     double* loss, int nthreads) {
  return drmm_step<float>(N, D, K, L, diag, x, P, G, rho, alpha, loss, nthreads);
}
int dm_drmm_step_f64(long N, long D, long K, long L, int diag, const double* x,
                     const double* const* P, double* const* G, double rho, double alpha,
                     double* loss, int nthreads) {
  return drmm_step<double>(N, D, K, L, diag, x, P, G, rho, alpha, loss, nthreads);
}
}
"""


def _declare(lib: ctypes.CDLL) -> None:
    Lg, P = ctypes.c_long, ctypes.c_void_p
    for name, ct in (("dm_drmm_step_f32", ctypes.c_float), ("dm_drmm_step_f64", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.argtypes = [Lg, Lg, Lg, Lg, ctypes.c_int, P, P, P, ct, ct, P, ctypes.c_int]
        fn.restype = ctypes.c_int


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use, cached on disk), or None where it cannot be."""
    return native.load("drmm_step", _SOURCE, _declare, openmp=True)


def _layout(model: Any) -> list[torch.Tensor] | None:
    """The parameters in the kernel's order (per layer: logits, mu, log_var, latent logits),
    or None where the model is not a flat DRMM of one continuous data stream."""
    layers = getattr(model, "layers", None)
    if not layers or getattr(model, "positions", 1) != 1:
        return None
    out: list[torch.Tensor] = []
    K = layers[0].n_components
    for l, layer in enumerate(layers):
        specs = layer.specs
        if layer.n_components != K or layer.positions != 1 or len(specs) != 1 + l \
                or specs[0].kind != "continuous" or specs[0].latent:
            return None
        if any(s.kind != "categorical" or not s.latent or s.blocks != 1 or s.categories != K
               for s in specs[1:]):
            return None
        cont = layer.streams[0]
        if cont.log_var.numel() != layers[0].streams[0].log_var.numel():
            return None
        out += [layer.logits, cont.mu, cont.log_var]
        out += [mod.logits for mod in layer.streams[1:]]
    return out


def eligible(model: Any, batch: torch.Tensor) -> list[torch.Tensor] | None:
    """The parameters in the kernel's order where the kernel takes this step, else None."""
    if batch.device.type != "cpu" or batch.dtype not in (torch.float32, torch.float64) \
            or batch.dim() != 2 or batch.shape[0] == 0:
        return None
    params = _layout(model)
    # (frozen parameters or no grad mode: autograd's path knows what to leave alone)
    if params is None or not torch.is_grad_enabled() \
            or any(p.dtype != batch.dtype or p.device.type != "cpu" or not p.is_contiguous()
                   or not p.requires_grad for p in params) \
            or len(params) != sum(1 for _ in model.parameters()):
        return None
    layers = model.layers
    N, D, K, L = batch.shape[0], batch.shape[1], layers[0].n_components, len(layers)
    if D != layers[0].streams[0].width:
        return None
    if N * K * (L * D + K * L * (L - 1) // 2) > MAX_WORK or kernel() is None:
        return None
    return params


def loss_and_gradients(model: Any, batch: torch.Tensor, params: list[torch.Tensor],
                       rho_e: float, alpha: float
                       ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The drmm-em loss (0-d) of ``batch`` and the gradients of ``params`` (from
    :func:`eligible`); None where the kernel declines (a non-finite membership: the autograd
    path then reports it as it would)."""
    lib = kernel()
    assert lib is not None
    x = batch.detach().contiguous()
    grads = [torch.empty_like(p) for p in params]
    n = len(params)
    P = (ctypes.c_void_p * n)(*[p.data_ptr() for p in params])
    G = (ctypes.c_void_p * n)(*[g.data_ptr() for g in grads])
    loss = ctypes.c_double(0.0)
    layers = model.layers
    fn = lib.dm_drmm_step_f32 if x.dtype == torch.float32 else lib.dm_drmm_step_f64
    diag = int(layers[0].streams[0].log_var.numel() > 1)
    rc = fn(x.shape[0], x.shape[1], layers[0].n_components, len(layers), diag, x.data_ptr(),
            P, G, float(rho_e), float(alpha), ctypes.byref(loss), torch.get_num_threads())
    if rc != 0 or not math.isfinite(loss.value):
        return None
    return torch.tensor(loss.value, dtype=x.dtype), grads
