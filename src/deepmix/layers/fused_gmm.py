r"""Fused CPU kernel for one GMM-layer training pass (shared mode): fold, score, anneal, winner
statistics and responsibilities in ONE pass over each block of patches.

The reference path (:meth:`deepmix.layers.GMM.winner_statistics`) makes separate passes over
the (M, 2D) design matrix and the (M, K) scores (patch copy, squares, GEMM, K x K annealing
product, max, softmax, threshold, scatter-add of the winners' rows). Here each block of four
patches is gathered from the layer's input (patch rows are contiguous runs in NHWC), squared,
scored against the (2D, K) linear form with register-blocked vector FMAs, annealed, reduced to
its winner :math:`k^* = \arg\max_k \sum_j g_{kj} s_j` (first maximum), turned into the
responsibilities :math:`\mathrm{softmax}_k(s_k)` (entries :math:`\le 10^{-18}` set to 0, as in the
reference; an exponent below -42 is not evaluated, its result would be cut to 0 anyway), and its
row :math:`[x, x^2]` added to the winner's sums, all while the block sits in L1. All-zero patches
(the background of digit images) score exactly :math:`c`, so they are evaluated once.

The kernel is plain C++ (no torch headers, GCC vector extensions, OpenMP threads = torch's
thread count) built on first use with the system compiler into a per-user cache and called
through :mod:`ctypes`; without a compiler, or if the build fails, :func:`kernel` returns None
and the layer silently keeps its pure-torch path. ``DEEPMIX_FUSED=0`` turns the kernel off.
Results equal the reference path up to float rounding (the summation order differs).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["kernel", "available", "fused_statistics", "MAX_K"]

#: Largest K the kernel takes (register blocking over K in 64-byte vectors).
MAX_K = 128

_SOURCE = r"""
#include <cmath>
#include <cstring>
#include <cstdint>
#include <vector>
#include <omp.h>

template <typename T> struct Vec { typedef T type __attribute__((vector_size(64))); };

template <typename T, int NV>
static void run(const T* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                long Ho, long Wo, long M, const T* Wt, const T* cpad, const T* gT, long K,
                T* resp, T* sums, int64_t* counts, double* best_sum, int nthreads) {
  typedef typename Vec<T>::type V;
  const long L = 64 / sizeof(T), KP = NV * L, D = fy * fx * C, D2 = 2 * D, run_len = fx * C;
  // The all-zero patch scores exactly c: evaluate it once.
  T s0[NV * 16], a0[NV * 16], r0[NV * 16];
  long k0 = 0;
  {
    for (long k = 0; k < K; ++k) s0[k] = cpad[k];
    for (long k = 0; k < K; ++k) {
      T a = 0;
      if (gT) { for (long j = 0; j < K; ++j) a += gT[j * KP + k] * s0[j]; } else a = s0[k];
      a0[k] = a;
    }
    for (long k = 1; k < K; ++k) if (a0[k] > a0[k0]) k0 = k;
    T m = s0[0];
    for (long k = 1; k < K; ++k) if (s0[k] > m) m = s0[k];
    T tot = 0;
    for (long k = 0; k < K; ++k) { T d = s0[k] - m; r0[k] = d < T(-42) ? T(0) : std::exp(d); tot += r0[k]; }
    for (long k = 0; k < K; ++k) { T r = r0[k] / tot; r0[k] = r > T(1e-18) ? r : T(0); }
  }
  int nt = nthreads < 1 ? 1 : nthreads;
  if (M < 64) nt = 1;
  std::vector<T> tsums((size_t)nt * K * D2, T(0));
  std::vector<int64_t> tcounts((size_t)nt * K, 0), tzero(nt, 0);
  std::vector<double> tbest(nt, 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const long m_begin = M * t / nth, m_end = M * (t + 1) / nth;
    T* ls = tsums.data() + (size_t)t * K * D2;
    int64_t* lc = tcounts.data() + (size_t)t * K;
    int64_t nzero = 0;
    double best = 0.0;
    std::vector<T> zb(4 * D2);
    long rows[4];
    T sv[NV * 16], av[NV * 16];
    long m = m_begin;
    while (m < m_end) {
      int nb = 0;
      // Gather up to four non-zero patches into the block.
      while (nb < 4 && m < m_end) {
        const long ow = m % Wo, oh = (m / Wo) % Ho, n = m / (Wo * Ho);
        T* z = zb.data() + nb * D2;
        bool nonzero = false;
        for (long r = 0; r < fy; ++r) {
          const T* src = x + ((n * H + oh * sy + r) * W + ow * sx) * C;
          T* dst = z + r * run_len;
          for (long i = 0; i < run_len; ++i) { T v = src[i]; dst[i] = v; nonzero |= (v != T(0)); }
        }
        if (nonzero) {
          for (long i = 0; i < D; ++i) z[D + i] = z[i] * z[i];
          rows[nb++] = m;
        } else {
          std::memcpy(resp + m * K, r0, K * sizeof(T));
          ++nzero;
        }
        ++m;
      }
      if (nb == 0) break;
      for (int p = nb; p < 4; ++p) std::memset(zb.data() + p * D2, 0, D2 * sizeof(T));
      V acc[4][NV];
      for (int v = 0; v < NV; ++v) {
        V cv; std::memcpy(&cv, cpad + v * L, sizeof(V));
        acc[0][v] = cv; acc[1][v] = cv; acc[2][v] = cv; acc[3][v] = cv;
      }
      const T* z0 = zb.data(); const T* z1 = z0 + D2; const T* z2 = z1 + D2; const T* z3 = z2 + D2;
      for (long i = 0; i < D2; ++i) {
        const T* wr = Wt + i * KP;
        const T e0 = z0[i], e1 = z1[i], e2 = z2[i], e3 = z3[i];
        for (int v = 0; v < NV; ++v) {
          V w; std::memcpy(&w, wr + v * L, sizeof(V));
          acc[0][v] += e0 * w; acc[1][v] += e1 * w; acc[2][v] += e2 * w; acc[3][v] += e3 * w;
        }
      }
      for (int p = 0; p < nb; ++p) {
        std::memcpy(sv, acc[p], sizeof(V) * NV);
        const T* s = sv;
        const T* a = s;
        if (gT) {
          V g[NV];
          for (int v = 0; v < NV; ++v) g[v] = V{} ;
          for (long j = 0; j < K; ++j) {
            const T sj = s[j];
            for (int v = 0; v < NV; ++v) {
              V w; std::memcpy(&w, gT + j * KP + v * L, sizeof(V));
              g[v] += sj * w;
            }
          }
          std::memcpy(av, g, sizeof(V) * NV);
          a = av;
        }
        long ks = 0;
        for (long k = 1; k < K; ++k) if (a[k] > a[ks]) ks = k;
        best += (double)a[ks];
        T mx = s[0];
        for (long k = 1; k < K; ++k) if (s[k] > mx) mx = s[k];
        T* rr = resp + rows[p] * K;
        T tot = 0;
        for (long k = 0; k < K; ++k) {
          T d = s[k] - mx;
          T e = d < T(-42) ? T(0) : std::exp(d);
          rr[k] = e; tot += e;
        }
        for (long k = 0; k < K; ++k) { T r = rr[k] / tot; rr[k] = r > T(1e-18) ? r : T(0); }
        T* dst = ls + ks * D2;
        const T* z = zb.data() + p * D2;
        for (long i = 0; i < D2; ++i) dst[i] += z[i];
        ++lc[ks];
      }
    }
    tzero[t] = nzero;
    tbest[t] = best;
  }
  // Deterministic reduction in thread order.
  double bsum = 0.0;
  for (int t = 0; t < nt; ++t) {
    const T* ls = tsums.data() + (size_t)t * K * D2;
    for (long i = 0; i < K * D2; ++i) sums[i] += ls[i];
    for (long k = 0; k < K; ++k) counts[k] += tcounts[(size_t)t * K + k];
    counts[k0] += tzero[t];
    bsum += tbest[t] + (double)tzero[t] * (double)a0[k0];
  }
  *best_sum += bsum;
}

template <typename T>
static int dispatch(const T* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                    long Ho, long Wo, long M, const T* Wt, const T* cpad, const T* gT, long K,
                    long nv, T* resp, T* sums, int64_t* counts, double* best_sum, int nthreads) {
  switch (nv) {
#define CASE(n) case n: run<T, n>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wt, cpad, gT, K, resp, \
                                  sums, counts, best_sum, nthreads); return 0;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
#undef CASE
  }
  return 1;
}

extern "C" {
int dm_gmm_stats_f32(const float* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                     long Ho, long Wo, long M, const float* Wt, const float* cpad,
                     const float* gT, long K, long nv, float* resp, float* sums,
                     int64_t* counts, double* best_sum, int nthreads) {
  return dispatch<float>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wt, cpad, gT, K, nv, resp, sums,
                         counts, best_sum, nthreads);
}
int dm_gmm_stats_f64(const double* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                     long Ho, long Wo, long M, const double* Wt, const double* cpad,
                     const double* gT, long K, long nv, double* resp, double* sums,
                     int64_t* counts, double* best_sum, int nthreads) {
  return dispatch<double>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wt, cpad, gT, K, nv, resp, sums,
                          counts, best_sum, nthreads);
}
}
"""

_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=c++17"]
_STATE: dict[str, object] = {}


def _cache_dir() -> Path:
    base = os.environ.get("DEEPMIX_CACHE") or os.environ.get("XDG_CACHE_HOME") \
        or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepmix" / "kernels"


def _cpu_key() -> str:
    # -march=native ties the binary to this CPU: key the cache on its feature flags.
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build() -> ctypes.CDLL | None:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None or platform.system() != "Linux":
        return None
    key = hashlib.sha256("\0".join([_SOURCE, cxx, *_FLAGS, _cpu_key(),
                                    torch.__version__]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fused_gmm_{key}.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "fused_gmm.cpp"
            src.write_text(_SOURCE)
            lib = Path(tmp) / out.name
            res = subprocess.run([cxx, *_FLAGS, "-fopenmp", str(src), "-o", str(lib)],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                return None
            os.replace(lib, out)   # atomic: concurrent builds (ranks, tests) never see half a file
    # Loading after torch makes the kernel share torch's OpenMP runtime (same soname).
    lib = ctypes.CDLL(str(out))
    for name, ct in (("dm_gmm_stats_f32", ctypes.c_float), ("dm_gmm_stats_f64", ctypes.c_double)):
        fn = getattr(lib, name)
        L, P = ctypes.c_long, ctypes.c_void_p
        fn.argtypes = [P, L, L, L, L, L, L, L, L, L, L, P, P, P, L, L, P, P, P, P, ctypes.c_int]
        fn.restype = ctypes.c_int
    return lib


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use, cached on disk), or None where it cannot be."""
    if os.environ.get("DEEPMIX_FUSED", "1") == "0":
        return None
    if "lib" not in _STATE:
        try:
            _STATE["lib"] = _build()
        except Exception:   # no compiler, read-only cache, sandbox: the torch path still works
            _STATE["lib"] = None
    return _STATE["lib"]  # type: ignore[return-value]


def available(x: torch.Tensor, K: int) -> bool:
    """Whether the fused kernel can take input ``x`` for a layer with K components."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and 1 <= K <= (MAX_K if x.dtype == torch.float32 else MAX_K // 2)
            and kernel() is not None)


def fused_statistics(x: torch.Tensor, geometry: tuple[int, ...], Wl: torch.Tensor,
                     c: torch.Tensor, g: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sums (K, 2D), counts (K,) int64, best-score sum (0-d float64), responsibilities (M, K)).

    ``x`` is (N, H, W, C); ``geometry`` = (fy, fx, sy, sx, Ho, Wo) of the patches (1, 1, 1, 1,
    H, W without a Folding layer); ``Wl`` (2D, K), ``c`` (K,) the linear form and ``g`` the
    annealing matrix (None: identity).
    """
    lib = kernel()
    assert lib is not None
    dt = x.dtype
    x = x.contiguous()
    N, H, W, C = x.shape
    fy, fx, sy, sx, Ho, Wo = (int(v) for v in geometry)
    D2, K = Wl.shape
    lanes = 64 // x.element_size()
    nv = -(-K // lanes)
    KP = nv * lanes
    Wt = torch.zeros(D2, KP, dtype=dt)
    Wt[:, :K] = Wl
    cpad = torch.zeros(KP, dtype=dt)
    cpad[:K] = c
    gT = None
    if g is not None:
        gT = torch.zeros(K, KP, dtype=dt)
        gT[:, :K] = g.T.to(dt)
    M = N * Ho * Wo
    resp = torch.empty(M, K, dtype=dt)
    sums = torch.zeros(K, D2, dtype=dt)
    counts = torch.zeros(K, dtype=torch.int64)
    best = torch.zeros((), dtype=torch.float64)
    fn = lib.dm_gmm_stats_f32 if dt == torch.float32 else lib.dm_gmm_stats_f64
    rc = fn(x.data_ptr(), H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wt.data_ptr(), cpad.data_ptr(),
            0 if gT is None else gT.data_ptr(), K, nv, resp.data_ptr(), sums.data_ptr(),
            counts.data_ptr(), best.data_ptr(), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError("fused GMM kernel rejected its arguments")
    return sums, counts, best, resp
