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
(the background of digit images) score exactly :math:`c`, so they are evaluated once. On a
:math:`\sqrt K \times \sqrt K` torus g factors into two circulant matrices, and the annealing
is done as lane rotations along each axis. :func:`fused_update` then does the layer's whole SGD
step (annealing of the statistics, the three gradients, the update and the refill of the linear
form) in one more call.

The kernel is plain C++ (no torch headers, GCC vector extensions, OpenMP threads = torch's
thread count) built on first use by :mod:`deepmix.utils.native` (system compiler, per-user
cache, :mod:`ctypes`); without a compiler, or if the build fails, :func:`kernel` returns None
and the layer silently keeps its pure-torch path. ``DEEPMIX_FUSED=0`` turns the kernel off.
Results equal the reference path up to float rounding (the summation order differs).
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch

from ..utils import native

__all__ = ["kernel", "available", "fused_statistics", "fused_update", "linear_form",
           "background_scores",
           "Background", "MAX_K", "MAX_LIVE"]

#: Largest K the kernel takes (register blocking over K in 64-byte vectors).
MAX_K = 128

#: :func:`background_scores` declines maps where more than this fraction of the positions
#: differ from the background vector (there the convolution is faster).
MAX_LIVE = 0.5

_SOURCE = r"""
#include <cmath>
#include <algorithm>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

template <typename T> struct Vec { typedef T type __attribute__((vector_size(64))); };
// Lane indices of a Vec (for __builtin_shuffle).
template <typename T> struct IVec;
template <> struct IVec<float> { typedef int32_t type __attribute__((vector_size(64))); };
template <> struct IVec<double> { typedef int64_t type __attribute__((vector_size(64))); };

// exp(d) for d <= 0 of one vector, 0 where d < -42 (the reference would cut that to 0 too).
template <typename T, typename V> struct Exp {
  static inline V apply(V d) {
    V out;
    for (unsigned l = 0; l < sizeof(V) / sizeof(T); ++l) out[l] = d[l] < T(-42) ? T(0) : std::exp(d[l]);
    return out;
  }
};
// float: Cody-Waite reduction and the Cephes polynomial (about 1 ulp), 16 lanes at once.
template <typename V> struct Exp<float, V> {
  static inline V apply(V d) {
    typedef int I __attribute__((vector_size(sizeof(V))));
    const V lo = V{} - 42.0f;
    V x = d < lo ? lo : d;
    V t = x * 1.44269504088896341f - 0.5f;
    I n = __builtin_convertvector(t, I);            // round(x log2 e) for x <= 0
    V nf = __builtin_convertvector(n, V);
    V r = x - nf * 0.693359375f - nf * -2.12194440e-4f;
    V p = V{} + 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f; p = p * r + 8.3334519073E-3f; p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f; p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    I bits = (n + 127) << 23;
    V scale; std::memcpy(&scale, &bits, sizeof(V));
    V e = p * scale;
    return d < lo ? V{} : e;
  }
};

// Max / sum of the lanes of a B-byte vector by halving it (lanes pairwise, as a tree).
template <typename T, unsigned B> struct Halve {
  typedef T V __attribute__((vector_size(B)));
  typedef T H __attribute__((vector_size(B / 2)));
  static inline T max(V v) {
    H lo, hi;
    std::memcpy(&lo, &v, B / 2); std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return Halve<T, B / 2>::max(lo > hi ? lo : hi);
  }
  static inline T max_nan(V v) {   // NaN wins, as in torch's max
    H lo, hi;
    std::memcpy(&lo, &v, B / 2); std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return Halve<T, B / 2>::max_nan((lo > hi) | (lo != lo) ? lo : hi);
  }
  static inline T sum(V v) {
    H lo, hi;
    std::memcpy(&lo, &v, B / 2); std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return Halve<T, B / 2>::sum(lo + hi);
  }
};
template <typename T> struct Halve<T, 2 * sizeof(T)> {
  typedef T V __attribute__((vector_size(2 * sizeof(T))));
  static inline T max(V v) { return v[0] > v[1] ? v[0] : v[1]; }
  static inline T max_nan(V v) { return v[0] > v[1] || v[0] != v[0] ? v[0] : v[1]; }
  static inline T sum(V v) { return v[0] + v[1]; }
};

// Append the non-zero entries of src[0, n) (values, and base + their index) at out[nnz...]; the
// new count. NaN counts as non-zero, -0 as zero (as v != 0).
template <typename T> struct Compact {
  static inline long run(const T* src, long n, int base, T* val, int* idx, long nnz) {
    T any = 0;   // most patch rows of a digit image are background: test the row first
    for (long i = 0; i < n; ++i) any += src[i] != T(0) ? T(1) : T(0);
    if (any == T(0)) return nnz;
    for (long i = 0; i < n; ++i) {
      // Branch-free compaction: digit patches have nonzeros at unpredictable places.
      const T v = src[i];
      val[nnz] = v; idx[nnz] = base + (int)i; nnz += (v != T(0));
    }
    return nnz;
  }
};
#if defined(__AVX512F__)
// AVX-512: 16 entries a step by a compress into a register and a plain (whole-vector) store;
// the scalar loop above was a fifth of a pixel layer's pass. (Zen 4 microcodes compress
// straight to memory, hence the register form.)
template <> struct Compact<float> {
  static inline long run(const float* src, long n, int base, float* val, int* idx, long nnz) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (long i = 0; i < n; i += 16) {
      const __mmask16 lm = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(lm, src + i);
      const __mmask16 nz = _mm512_mask_cmp_ps_mask(lm, v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
      if (!nz) continue;
      _mm512_storeu_ps(val + nnz, _mm512_maskz_compress_ps(nz, v));
      const __m512i id = _mm512_add_epi32(_mm512_set1_epi32(base + (int)i), iota);
      _mm512_storeu_si512(idx + nnz, _mm512_maskz_compress_epi32(nz, id));
      nnz += __builtin_popcount((unsigned)nz);
    }
    return nnz;
  }
};
// Two patch rows of at most 8 floats (a pixel patch of width <= 8) compacted by one 16-lane
// compress: half the compaction work of two single rows (0.90x a pixel layer's pass).
static inline long compact_pair(const float* a, const float* b, long n, int base_a, int base_b,
                                float* val, int* idx, long nnz) {
  const __mmask8 lm = (__mmask8)((1u << n) - 1);
  const __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_maskz_loadu_ps(lm, a)),
                                      _mm256_maskz_loadu_ps(lm, b), 1);
  const __mmask16 nz = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ);
  const __m512i id = _mm512_add_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7),
      _mm512_inserti32x8(_mm512_set1_epi32(base_a), _mm256_set1_epi32(base_b), 1));
  _mm512_storeu_ps(val + nnz, _mm512_maskz_compress_ps(nz, v));
  _mm512_storeu_si512(idx + nnz, _mm512_maskz_compress_epi32(nz, id));
  return nnz + __builtin_popcount((unsigned)nz);
}
#endif

// Index of the first lane of a[0..NV) equal to the maximum m, or the first NaN lane where m is
// NaN (torch's max): the first maximum, capped at K - 1.
template <typename T, typename V, int NV> struct FirstEq {
  static inline long find(const V* a, T m, long K) {
    T b[NV * 16];
    std::memcpy(b, a, sizeof(V) * NV);
    long k = 0;
    if (m != m)
      while (b[k] == b[k] && k < K - 1) ++k;
    else
      while (b[k] != m && k < K - 1) ++k;
    return k;
  }
};
#if defined(__AVX512F__)
// AVX-512: a compare to a mask per vector (the scalar scan mispredicted its exit branch).
template <typename V, int NV> struct FirstEq<float, V, NV> {
  static inline long find(const V* a, float m, long K) {
    const __m512 mv = _mm512_set1_ps(m);
    const bool nan = m != m;
    for (int v = 0; v < NV; ++v) {
      const __mmask16 eq = nan ? _mm512_cmp_ps_mask((__m512)a[v], (__m512)a[v], _CMP_UNORD_Q)
                               : _mm512_cmp_ps_mask((__m512)a[v], mv, _CMP_EQ_OQ);
      if (eq) {
        const long k = v * 16L + __builtin_ctz((unsigned)eq);
        return k < K - 1 ? k : K - 1;
      }
    }
    return K - 1;
  }
};
#endif

template <typename T, int NV>
static void run(const T* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                long Ho, long Wo, long M, const T* Wt, const T* cpad, const T* gT, long K,
                const T* given, const unsigned char* live, const T* bgrow, const T* bgs,
                T* resp, T* sums, int64_t* counts, double* best_sum, int nthreads) {
  typedef typename Vec<T>::type V;
  const long L = 64 / sizeof(T), KP = NV * L, D = fy * fx * C, D2 = 2 * D, run_len = fx * C;
  const T floor_r = T(1e-18);
  // Horizontal max / sum of NV vectors: lane-wise over the NV vectors, then halving the vector
  // (in registers; a scalar tree through a stack buffer stalled on store forwarding).
  auto hmax = [&](const V* a) {
    V m = a[0];
    for (int v = 1; v < NV; ++v) m = m > a[v] ? m : a[v];
    return Halve<T, sizeof(V)>::max(m);
  };
  auto hmax_nan = [&](const V* a) {   // NaN wins, as in torch's max
    V m = a[0];
    for (int v = 1; v < NV; ++v) m = (m > a[v]) | (m != m) ? m : a[v];
    return Halve<T, sizeof(V)>::max_nan(m);
  };
  auto hsum = [&](const V* a) {
    V m = a[0];
    for (int v = 1; v < NV; ++v) m += a[v];
    return Halve<T, sizeof(V)>::sum(m);
  };
  // Padding lanes (k >= K) hold -inf in c, hence in the scores; the annealed scores start there.
  V apad[NV];
  for (int v = 0; v < NV; ++v)
    for (long l = 0; l < L; ++l) apad[v][l] = v * L + l < K ? T(0) : -std::numeric_limits<T>::infinity();
  typedef decltype(V{} < V{}) Mask;
  Mask valid[NV];
  for (int v = 0; v < NV; ++v) valid[v] = apad[v] == T(0);
  const T ninf = -std::numeric_limits<T>::infinity();
  // Separable annealing (float, two vectors: K = n^2 <= 32 on an n x n torus, the pixel layers'
  // G(25)): g_kj = hy[(jy - ky) mod n] hx[(jx - kx) mod n], as every toroidal g is (its rows'
  // weights exp(-(dy^2 + dx^2) / 2 sigma^2) factor, and so do their sums). Then a = g s is n
  // lane rotations along x and n along y (2 x 2n two-vector permutes and 4n FMAs) instead of
  // K broadcasts and 2K FMAs. Used only where g has that form to 1e-6 of its largest weight.
  typedef typename IVec<T>::type Idx;
  bool sep = false;
  long sn = 0;
  T hy[16], hx[16];
  Idx MX[16][2], MY[16][2];
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value && NV == 2) {
    sn = (long)std::lround(std::sqrt((double)K));
    if (gT && sn * sn == K && sn >= 2 && gT[0] > T(0)) {
      // g[0][j] = gT[j * KP + 0]: row 0 gives both factors (up to a common scale).
      const double g00 = gT[0], rt = std::sqrt(g00);
      for (long a = 0; a < sn; ++a) { hy[a] = T(gT[a * sn * KP] / rt); hx[a] = T(gT[a * KP] / rt); }
      // Factors below 1e-15 are dropped: a weight of g below that changes no float32 score,
      // and products of two of them (under WEIGHT_FLOOR, 0 in g) would be denormal.
      for (long a = 0; a < sn; ++a) {
        if (hy[a] < T(1e-15)) hy[a] = T(0);
        if (hx[a] < T(1e-15)) hx[a] = T(0);
      }
      double gmax = 0.0, err = 0.0;
      for (long k = 0; k < K; ++k)
        for (long j = 0; j < K; ++j) {
          const long dy = ((j / sn - k / sn) % sn + sn) % sn, dx = ((j % sn - k % sn) % sn + sn) % sn;
          const double gk = gT[j * KP + k];
          gmax = std::max(gmax, gk);
          err = std::max(err, std::fabs(gk - (double)hy[dy] * (double)hx[dx]));
        }
      sep = err <= 1e-6 * gmax;
      for (long d = 0; d < sn && sep; ++d)
        for (int v = 0; v < 2; ++v)
          for (long l = 0; l < L; ++l) {
            const long lane = v * L + l, y = lane / sn, x = lane % sn;
            MX[d][v][l] = lane < K ? (int)(y * sn + (x + d) % sn) : (int)lane;
            MY[d][v][l] = lane < K ? (int)(((y + d) % sn) * sn + x) : (int)lane;
          }
    }
  }
#endif
  // Winner, annealed best score and responsibilities of one patch from its scores. The fast
  // form (careful false) gives up (false) where a maximum or the softmax sum is not finite: a
  // NaN or infinite input. The careful form then sets the padding lanes back to -inf (an
  // infinite input times a padding weight 0 made them NaN) and lets NaN win the maxima, as
  // torch does; it costs a tenth of a pixel layer's pass, so only such patches take it.
  auto finish_as = [&](auto careful_c, const V* sv_in, T* rr, long& ks, T& best)
      __attribute__((always_inline)) -> bool {
    constexpr bool careful = decltype(careful_c)::value;
    V sv[NV];
    for (int v = 0; v < NV; ++v) sv[v] = careful ? (valid[v] ? sv_in[v] : ninf) : sv_in[v];
    const V* ap = sv;
    V g[NV];
#if defined(__AVX512F__)
    if constexpr (std::is_same<T, float>::value && NV == 2) {
      if (!careful && sep) {   // (the careful form keeps the dense product: NaN/inf as torch)
        V t0 = V{}, t1 = V{}, a0 = V{}, a1 = V{};
        for (long d = 0; d < sn; ++d) {
          t0 += hx[d] * __builtin_shuffle(sv[0], sv[1], MX[d][0]);
          t1 += hx[d] * __builtin_shuffle(sv[0], sv[1], MX[d][1]);
        }
        for (long d = 0; d < sn; ++d) {
          a0 += hy[d] * __builtin_shuffle(t0, t1, MY[d][0]);
          a1 += hy[d] * __builtin_shuffle(t0, t1, MY[d][1]);
        }
        g[0] = valid[0] ? a0 : ninf;   // padding lanes never win
        g[1] = valid[1] ? a1 : ninf;
        ap = g;
      }
    }
#endif
    if (gT && ap == sv) {
      T s[NV * 16];
      std::memcpy(s, sv, sizeof(V) * NV);
      // CH accumulator chains: one chain of K dependent FMAs would be latency-bound.
      constexpr int CH = NV <= 2 ? 4 : 2;
      V h[CH][NV];
      for (int v = 0; v < NV; ++v) {
        h[0][v] = apad[v];
        for (int q = 1; q < CH; ++q) h[q][v] = V{};
      }
      long j = 0;
      for (; j + CH <= K; j += CH)
        for (int q = 0; q < CH; ++q) {
          const T sj = s[j + q];
          for (int v = 0; v < NV; ++v) {
            V w;
            std::memcpy(&w, gT + (j + q) * KP + v * L, sizeof(V));
            h[q][v] += sj * w;
          }
        }
      for (; j < K; ++j) {
        const T sj = s[j];
        for (int v = 0; v < NV; ++v) { V w; std::memcpy(&w, gT + j * KP + v * L, sizeof(V)); h[0][v] += sj * w; }
      }
      for (int v = 0; v < NV; ++v) {
        g[v] = h[0][v];
        for (int q = 1; q < CH; ++q) g[v] += h[q][v];
        if (careful) g[v] = valid[v] ? g[v] : ninf;
      }
      ap = g;
    }
    // First maximum of the annealed scores.
    const T am = careful ? hmax_nan(ap) : hmax(ap);
    const T mx = careful ? hmax_nan(sv) : hmax(sv);
    V e[NV];
    for (int v = 0; v < NV; ++v) e[v] = Exp<T, V>::apply(sv[v] - mx);
    const T inv = T(1) / hsum(e);
    if (!careful && !(std::isfinite(am) && std::isfinite(mx) && std::isfinite(inv))) return false;
    ks = FirstEq<T, V, NV>::find(ap, am, K);
    best = am;
    T out[NV * 16];
    for (int v = 0; v < NV; ++v) {
      V r = e[v] * inv;
      r = r <= floor_r ? V{} : r;   // (NaN stays NaN, as torch.threshold leaves it)
      std::memcpy(out + v * L, &r, sizeof(V));
    }
    std::memcpy(rr, out, K * sizeof(T));
    return true;
  };
  auto careful = [&](const V* sv, T* rr, long& ks, T& best) __attribute__((noinline)) {
    finish_as(std::true_type{}, sv, rr, ks, best);
  };
  auto finish = [&](const V* sv, T* rr, long& ks, T& best) __attribute__((always_inline)) {
    if (__builtin_expect(!finish_as(std::false_type{}, sv, rr, ks, best), 0)) careful(sv, rr, ks, best);
  };
  // The all-zero patch scores exactly c: evaluate it once.
  T r0[NV * 16];
  long k0 = 0;
  T a0 = 0;
  {
    V acc[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&acc[v], cpad + v * L, sizeof(V));
    finish(acc, r0, k0, a0);
  }
  // With given scores and live flags (background_scores): a patch of background positions only
  // scores exactly bgs, so it too is finished once; its rows (bgrow tiled) are added at the end.
  T rb[NV * 16];
  long kb = 0;
  T ab = 0;
  if (live) {
    V acc[NV];
    T sv[NV * 16];
    for (long k = 0; k < KP; ++k) sv[k] = k < K ? bgs[k] : cpad[k];
    std::memcpy(acc, sv, sizeof(V) * NV);
    finish(acc, rb, kb, ab);
  }
  int nt = nthreads < 1 ? 1 : nthreads;
  // Given scores for few patches with long rows (a top layer: (K, 2D) sums as large as all its
  // rows together): finish every patch first, then add the rows to the winners' sums by column
  // ranges, one per thread, rows in order; no private copy of the sums to clear and reduce.
  const bool by_columns = given && K * 4 > M;
  if (M < 64 && !by_columns) nt = 1;
  // Thread 0 adds into sums itself: a top layer's (K, 2D) sums are large next to its few rows,
  // so every private copy costs a clear and a reduction pass.
  std::vector<T> tsums(by_columns ? 0 : (size_t)(nt - 1) * K * D2, T(0));
  std::vector<int64_t> tcounts((size_t)nt * K, 0), tzero(nt, 0), tbg(nt, 0);
  std::vector<double> tbest(nt, 0.0);
  std::vector<long> win(by_columns ? M : 0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    const long m_begin = M * t / nth, m_end = M * (t + 1) / nth;
    T* ls = t == 0 || by_columns ? sums : tsums.data() + (size_t)(t - 1) * K * D2;
    int64_t* lc = tcounts.data() + (size_t)t * K;
    int64_t nzero = 0, nbg = 0;
    double best = 0.0;
    if (by_columns) {
      for (long m = m_begin; m < m_end; ++m) {
        if (live && !live[m]) { std::memcpy(resp + m * K, rb, K * sizeof(T)); win[m] = -1; ++nbg; continue; }
        V acc[NV];
        T sv[NV * 16];
        for (long k = 0; k < KP; ++k) sv[k] = k < K ? given[m * K + k] : cpad[k];
        std::memcpy(acc, sv, sizeof(V) * NV);
        long ks; T bk;
        finish(acc, resp + m * K, ks, bk);
        best += (double)bk;
        win[m] = ks;
        ++lc[ks];
      }
#pragma omp barrier
      const long c0 = D * t / nth, c1 = D * (t + 1) / nth;
      for (long m = 0; m < M; ++m) {
        if (win[m] < 0) continue;
        const long n = m / (Ho * Wo), oh = (m / Wo) % Ho, ow = m % Wo;
        T* dst = ls + win[m] * D2;
        for (long r = c0 / run_len; r < fy && r * run_len < c1; ++r) {
          const long lo = std::max(c0, r * run_len), hi = std::min(c1, (r + 1) * run_len);
          // src[i] is design column i of this patch row
          const T* src = x + ((n * H + oh * sy + r) * W + ow * sx) * C - r * run_len;
          for (long i = lo; i < hi; ++i) { const T v = src[i]; dst[i] += v; dst[D + i] += v * v; }
        }
      }
    } else {
      std::vector<T> zval(D + 16);   // + 16: Compact stores whole vectors
      std::vector<int> zidx(D + 16);
      // Patch m's (n, oh, ow), advanced with m: three integer divisions a patch cost as much as
      // scoring a background patch.
      long ow = m_begin % Wo, oh = (m_begin / Wo) % Ho, n = m_begin / (Wo * Ho);
      auto advance = [&]() { if (++ow == Wo) { ow = 0; if (++oh == Ho) { oh = 0; ++n; } } };
      for (long m = m_begin; m < m_end; ++m, advance()) {
        if (given) {
          // Scores computed outside (a convolution over dense maps): finish the patch, then add
          // its rows [x, x^2] to the winner's sums straight from the input.
          if (live && !live[m]) { std::memcpy(resp + m * K, rb, K * sizeof(T)); ++nbg; continue; }
          // (The same lines as above, not a shared lambda: that made this loop 1.4x slower.)
          V acc[NV];
          T sv[NV * 16];
          for (long k = 0; k < KP; ++k) sv[k] = k < K ? given[m * K + k] : cpad[k];
          std::memcpy(acc, sv, sizeof(V) * NV);
          long ks; T bk;
          finish(acc, resp + m * K, ks, bk);
          best += (double)bk;
          T* dst = ls + ks * D2;
          for (long r = 0; r < fy; ++r) {
            const T* src = x + ((n * H + oh * sy + r) * W + ow * sx) * C;
            T* d1 = dst + r * run_len;
            T* d2 = d1 + D;
            for (long i = 0; i < run_len; ++i) { const T v = src[i]; d1[i] += v; d2[i] += v * v; }
          }
          ++lc[ks];
          continue;
        }
        // Gather the patch's non-zero entries (exact zeros add nothing to a score or a sum).
        long nnz = 0;
        long r = 0;
  #if defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value)
          if (run_len <= 8)
            for (; r + 1 < fy; r += 2) {
              const T* src = x + ((n * H + oh * sy + r) * W + ow * sx) * C;
              nnz = compact_pair(src, src + W * C, run_len, (int)(r * run_len),
                                 (int)((r + 1) * run_len), zval.data(), zidx.data(), nnz);
            }
  #endif
        for (; r < fy; ++r) {
          const T* src = x + ((n * H + oh * sy + r) * W + ow * sx) * C;
          nnz = Compact<T>::run(src, run_len, (int)(r * run_len), zval.data(), zidx.data(), nnz);
        }
        T* rr = resp + m * K;
        if (nnz == 0) { std::memcpy(rr, r0, K * sizeof(T)); ++nzero; continue; }
        // s = c + sum_i x_i W_i + x_i^2 W_{D+i} over the non-zero x_i, in four FMA chains.
        V acc[NV], acc2[NV], acc3[NV], acc4[NV];
        for (int v = 0; v < NV; ++v) {
          std::memcpy(&acc[v], cpad + v * L, sizeof(V)); acc2[v] = V{}; acc3[v] = V{}; acc4[v] = V{};
        }
        long q = 0;
        for (; q + 1 < nnz; q += 2) {
          const T zv = zval[q], zz = zv * zv, yv = zval[q + 1], yy = yv * yv;
          const T* w1 = Wt + (long)zidx[q] * KP;
          const T* w2 = w1 + D * KP;
          const T* u1 = Wt + (long)zidx[q + 1] * KP;
          const T* u2 = u1 + D * KP;
          for (int v = 0; v < NV; ++v) {
            V a, b, c1, c2;
            std::memcpy(&a, w1 + v * L, sizeof(V)); std::memcpy(&b, w2 + v * L, sizeof(V));
            std::memcpy(&c1, u1 + v * L, sizeof(V)); std::memcpy(&c2, u2 + v * L, sizeof(V));
            acc[v] += zv * a; acc2[v] += zz * b; acc3[v] += yv * c1; acc4[v] += yy * c2;
          }
        }
        for (; q < nnz; ++q) {
          const T zv = zval[q], zz = zv * zv;
          const T* w1 = Wt + (long)zidx[q] * KP;
          const T* w2 = w1 + D * KP;
          for (int v = 0; v < NV; ++v) {
            V a, b; std::memcpy(&a, w1 + v * L, sizeof(V)); std::memcpy(&b, w2 + v * L, sizeof(V));
            acc[v] += zv * a; acc2[v] += zz * b;
          }
        }
        for (int v = 0; v < NV; ++v) acc[v] += (acc2[v] + acc3[v]) + acc4[v];
        long ks; T bk;
        finish(acc, rr, ks, bk);
        best += (double)bk;
        T* dst = ls + ks * D2;
        for (long q = 0; q < nnz; ++q) { const T zv = zval[q]; dst[zidx[q]] += zv; dst[D + zidx[q]] += zv * zv; }
        ++lc[ks];
      }
    }
    tzero[t] = nzero;
    tbg[t] = nbg;
    tbest[t] = best;
  }
  // Deterministic reduction in thread order.
  double bsum = 0.0;
  for (int t = 0; t < nt; ++t) {
    if (t > 0) {
      if (!by_columns) {
        const T* ls = tsums.data() + (size_t)(t - 1) * K * D2;
        for (long i = 0; i < K * D2; ++i) sums[i] += ls[i];
      }
    }
    for (long k = 0; k < K; ++k) counts[k] += tcounts[(size_t)t * K + k];
    counts[k0] += tzero[t];
    bsum += tbest[t] + (double)tzero[t] * (double)a0;
  }
  int64_t nb = 0;
  for (int t = 0; t < nt; ++t) nb += tbg[t];
  if (live && nb > 0) {   // (0 x an infinite background row would be NaN)
    counts[kb] += nb;
    bsum += (double)nb * (double)ab;
    T* dst = sums + kb * D2;
    for (long i = 0; i < D; ++i) {
      const T v = bgrow[i % C];
      dst[i] += T(nb) * v; dst[D + i] += T(nb) * (v * v);
    }
  }
  *best_sum += bsum;
}

// The entry of one layer pass: lays out what run() reads (weights (2D, KP) padded to whole
// vectors, offsets padded with -inf, g^T padded) from the layer's own (K, 2D) linear form, c
// and g (a few thousand entries: cheaper here than as torch ops), and writes the counts in T
// and the loss = best-score sum + offset.
template <typename T>
static int dispatch(const T* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                    long Ho, long Wo, long M, const T* Wk, const T* c, const T* g, long K,
                    long nv, const T* given, const unsigned char* live, const T* bgrow,
                    const T* bgs, T* resp, T* sums, T* counts_out, double offset, T* loss,
                    int nthreads) {
  const long L = 64 / sizeof(T), KP = nv * L, D2 = 2 * fy * fx * C;
  std::vector<T> Wt(Wk ? D2 * KP : KP, T(0));
  if (Wk)
    for (long k = 0; k < K; ++k)
      for (long i = 0; i < D2; ++i) Wt[i * KP + k] = Wk[k * D2 + i];
  std::vector<T> cpad(KP, -std::numeric_limits<T>::infinity());   // padding lanes never win
  std::copy(c, c + K, cpad.begin());
  std::vector<T> gT(g ? K * KP : 0, T(0));
  if (g)
    for (long j = 0; j < K; ++j)
      for (long k = 0; k < K; ++k) gT[j * KP + k] = g[k * K + j];
  std::vector<int64_t> counts(K, 0);
  double best = 0.0;
  switch (nv) {
#define CASE(n) case n: run<T, n>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wt.data(), cpad.data(), \
                                  g ? gT.data() : nullptr, K, given, live, bgrow, bgs, resp, sums, \
                                  counts.data(), &best, nthreads); break;
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
#undef CASE
    default: return 1;
  }
  for (long k = 0; k < K; ++k) counts_out[k] = T(counts[k]);
  *loss = T(best + offset);
  return 0;
}

// Row r of the linear form: out = [d^2 m, -d^2/2], *ls = sum log d, *pm = sum d^2 m^2 (in double).
template <typename T> struct LinearRow {
  static inline void run(const T* m, const T* d, long D, T* out, double* ls, double* pm) {
    double a = 0.0, b = 0.0;
    for (long i = 0; i < D; ++i) {
      const T p = d[i] * d[i], q = p * m[i];
      out[i] = q; out[D + i] = p * T(-0.5);
      a += std::log((double)d[i]); b += (double)q * (double)m[i];
    }
    *ls = a; *pm = b;
  }
};
// float: 16 lanes a step, log by the Cephes logf polynomial (about 1 ulp; d > 0 always, the
// layer clamps it to [d_min, d_max]), sums over lanes in double.
template <> struct LinearRow<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef int I __attribute__((vector_size(64)));
  typedef double W __attribute__((vector_size(128)));
  static inline V log16(V x) {
    I bits; std::memcpy(&bits, &x, sizeof(V));
    I e = ((bits >> 23) & 0xff) - 126;
    bits = (bits & 0x807fffff) | 0x3f000000;          // mantissa in [0.5, 1)
    V f; std::memcpy(&f, &bits, sizeof(V));
    const I small = f < 0.707106781186547524f;
    e = e + small;                                        // (small is -1 where true)
    V fe = __builtin_convertvector(e, V);
    V y = f + (small ? f : V{}) - 1.0f;                   // 2f - 1 or f - 1
    const V z = y * y;
    V p = V{} + 7.0376836292E-2f;
    p = p * y - 1.1514610310E-1f; p = p * y + 1.1676998740E-1f; p = p * y - 1.2420140846E-1f;
    p = p * y + 1.4249322787E-1f; p = p * y - 1.6668057665E-1f; p = p * y + 2.0000714765E-1f;
    p = p * y - 2.4999993993E-1f; p = p * y + 3.3333331174E-1f;
    V r = p * y * z;
    r = r + fe * -2.12194440e-4f;
    r = r - 0.5f * z;
    return y + r + fe * 0.693359375f;
  }
  static inline void run(const float* m, const float* d, long D, float* out, double* ls,
                         double* pm) {
    W a = W{}, b = W{};
    I bad = I{};   // lanes where d is not a normal positive float: log16 does not cover them
    long i = 0;
    for (; i + 16 <= D; i += 16) {
      V dv, mv;
      std::memcpy(&dv, d + i, sizeof(V)); std::memcpy(&mv, m + i, sizeof(V));
      bad |= (dv < 1.17549435e-38f) | (dv != dv) | (dv > 3.40282347e+38f);
      const V p = dv * dv, q = p * mv, h = p * -0.5f;
      std::memcpy(out + i, &q, sizeof(V)); std::memcpy(out + D + i, &h, sizeof(V));
      a += __builtin_convertvector(log16(dv), W);
      b += __builtin_convertvector(q * mv, W);
    }
    double sa = 0.0, sb = 0.0;
    for (int l = 0; l < 16; ++l) { sa += a[l]; sb += b[l]; }
    bool any_bad = false;
    for (int l = 0; l < 16; ++l) any_bad |= bad[l] != 0;
    if (any_bad) {   // (d <= 0, subnormal, inf or NaN: only a hand-set or loaded d) exact logs
      sa = 0.0;
      for (long k = 0; k < i; ++k) sa += std::log((double)d[k]);
    }
    for (; i < D; ++i) {
      const float p = d[i] * d[i], q = p * m[i];
      out[i] = q; out[D + i] = p * -0.5f;
      sa += std::log((double)d[i]); sb += (double)q * (double)m[i];
    }
    *ls = sa; *pm = sb;
  }
};

// Offsets of one position's linear form: c_k = log softmax(xi)_k + sum log d_k - (1/2) sum
// d_k^2 mu_k^2, in double, rounded once. The fill from parameters and the refill after a
// fused update share it, so a trained layer and its reload hold the same bits.
template <typename T>
static void offsets_row(const T* xi, const double* lsum, const double* pmmu, long K, T* c) {
  double m = -std::numeric_limits<double>::infinity();
  for (long k = 0; k < K; ++k) m = std::max(m, (double)xi[k]);
  double z = 0.0;
  for (long k = 0; k < K; ++k) z += std::exp((double)xi[k] - m);
  const double lz = m + std::log(z);
  for (long k = 0; k < K; ++k) c[k] = T(((double)xi[k] - lz) + (lsum[k] - 0.5 * pmmu[k]));
}

// The linear form of every row (the fill from parameters; update_step refills row by row),
// and with xi the offsets c (P, K).
template <typename T>
static void linear_rows(const T* mu, const T* d, const T* xi, long P, long K, long D, T* lf,
                        T* c, int nthreads) {
  const long rows = P * K;
  std::vector<double> lsum(rows), pmmu(rows);
  int nt = nthreads < 1 ? 1 : nthreads;
  if (rows * D < 32768) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (long r = 0; r < rows; ++r)
    LinearRow<T>::run(mu + r * D, d + r * D, D, lf + r * 2 * D, &lsum[r], &pmmu[r]);
  for (long p = 0; p < P; ++p) offsets_row(xi + p * K, &lsum[p * K], &pmmu[p * K], K, c + p * K);
}

// Annealed sums A_p = g^T S_p ((K, 2D) per position p): A_k = sum_j g_jk S_j over the
// components j that won (count c_j != 0: the other rows of S are sums of no rows, exact zeros;
// a top layer's batch has one or two winners among 36 components early in training) and the
// non-zero g_jk (WEIGHT_FLOOR zeros at a small sigma). Columns go in blocks of four 64-byte
// vectors of accumulators per output row; the rows of a block stay in L1.
template <typename T>
static void anneal_sums(const T* S, const std::vector<long>& act, const std::vector<long>& nact,
                        const T* g, long P, long K, long D2, T* A, int nthreads) {
  typedef typename Vec<T>::type V;
  const long L = 64 / sizeof(T), CB = 4 * L, nb = (D2 + CB - 1) / CB;
  long work = 0;
  for (long p = 0; p < P; ++p) work += nact[p];
  int nt = nthreads < 1 ? 1 : nthreads;
  if (work * K * D2 < (1L << 18)) nt = 1;
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (long p = 0; p < P; ++p)
    for (long b = 0; b < nb; ++b) {
      const long c0 = b * CB, w = std::min(CB, D2 - c0), na = nact[p];
      const long* aj = act.data() + p * K;
      const T* Sp = S + p * K * D2 + c0;
      T* Ap = A + p * K * D2 + c0;
      for (long k = 0; k < K; ++k) {
        if (w == CB) {
          V a[4] = {V{}, V{}, V{}, V{}};
          for (long q = 0; q < na; ++q) {
            const long j = aj[q];
            const T gw = g[j * K + k];
            if (gw == T(0)) continue;
            for (int v = 0; v < 4; ++v) {
              V s; std::memcpy(&s, Sp + j * D2 + v * L, sizeof(V));
              a[v] += gw * s;
            }
          }
          std::memcpy(Ap + k * D2, a, sizeof(a));
        } else {
          T a[64 / sizeof(T) * 4] = {};
          for (long q = 0; q < na; ++q) {
            const long j = aj[q];
            const T gw = g[j * K + k];
            if (gw == T(0)) continue;
            for (long i = 0; i < w; ++i) a[i] += gw * Sp[j * D2 + i];
          }
          std::memcpy(Ap + k * D2, a, w * sizeof(T));
        }
      }
    }
}

// The whole SGD ascent step of GMM.apply_statistics from the winners' sums S and counts c:
// with g, n = c g and S <- g^T S per position (else n = c); then
//   xi += step lr_xi (n - softmax(xi) sum n),
//   t = S^x - n mu, e = S^xx - mu (S^x + t), mu += step lr_mu d^2 t, d += step lr_d (n/d - d e),
// d clamped to [d_min, d_max]; every term from the old mu, d and xi, as in the torch path.
// With lf, the same pass writes the new linear form (row r: [d^2 mu, -d^2/2]) and c its offsets.
template <typename T>
static void update_step(T* mu, T* d, T* xi, const T* sums, const T* counts, const T* g, long P,
                        long K, long D, double step, double lr_mu, double lr_d, double lr_xi,
                        int update_d, T d_min, T d_max, T* lf, T* c, int nthreads) {
  const long rows = P * K, D2 = 2 * D;
  std::vector<T> n(rows);
  const T* A = sums;
  static thread_local std::vector<T> abuf;
  // The components that won (the other rows of the sums are zeros).
  std::vector<long> act(rows), nact(P, 0);
  bool by_row = false;
  if (g) {
    long most = 0;
    for (long p = 0; p < P; ++p) {
      for (long j = 0; j < K; ++j)
        if (counts[p * K + j] != T(0)) act[p * K + nact[p]++] = j;
      most = std::max(most, nact[p]);
    }
    for (long p = 0; p < P; ++p)
      for (long k = 0; k < K; ++k) {
        double s = 0.0;
        for (long j = 0; j < K; ++j) s += (double)counts[p * K + j] * (double)g[j * K + k];
        n[p * K + k] = T(s);
      }
    // Few winners (a top layer early in training: one or two of 36): each row's annealed sums
    // are formed in the update pass from those few rows (in L2), not written and read back.
    by_row = most <= 8;
    if (!by_row) {
      if ((long)abuf.size() < rows * D2) abuf.resize(rows * D2);
      anneal_sums(sums, act, nact, g, P, K, D2, abuf.data(), nthreads);
      A = abuf.data();
    }
  } else {
    std::copy(counts, counts + rows, n.begin());
  }
  for (long p = 0; p < P; ++p) {   // softmax(xi) of the old xi
    T* x = xi + p * K;
    double m = -std::numeric_limits<double>::infinity(), z = 0.0, tot = 0.0;
    for (long k = 0; k < K; ++k) m = std::max(m, (double)x[k]);
    for (long k = 0; k < K; ++k) { z += std::exp((double)x[k] - m); tot += (double)n[p * K + k]; }
    for (long k = 0; k < K; ++k) {
      const double pi = std::exp((double)x[k] - m) / z;
      x[k] = T((double)x[k] + step * lr_xi * ((double)n[p * K + k] - pi * tot));
    }
  }
  const T step_mu = T(step * lr_mu), step_d = T(step * lr_d);
  std::vector<double> lsum(lf ? rows : 0), pmmu(lf ? rows : 0);
  int nt = nthreads < 1 ? 1 : nthreads;
  if (rows * D < 32768) nt = 1;
#pragma omp parallel num_threads(nt)
  {
  std::vector<T> row(by_row ? D2 : 0);
#pragma omp for schedule(static)
  for (long r = 0; r < rows; ++r) {
    const T nr = n[r];
    const T* sx = A + r * D2;
    if (by_row) {
      const long p = r / K, k = r % K;
      std::fill(row.begin(), row.end(), T(0));
      for (long q = 0; q < nact[p]; ++q) {
        const long j = act[p * K + q];
        const T gw = g[j * K + k];
        const T* sj = sums + (p * K + j) * D2;
        if (gw != T(0))
          for (long i = 0; i < D2; ++i) row[i] += gw * sj[i];
      }
      sx = row.data();
    }
    const T* sxx = sx + D;
    T* m = mu + r * D;
    T* dd = d + r * D;
    for (long i = 0; i < D; ++i) {
      const T mi = m[i], di = dd[i], t = sx[i] - nr * mi;
      if (update_d) {
        const T e = sxx[i] - mi * (sx[i] + t);
        T nd = di + step_d * (nr / di - di * e);
        nd = nd < d_min ? d_min : nd;
        dd[i] = nd > d_max ? d_max : nd;
      }
      m[i] = mi + step_mu * ((di * di) * t);
    }
    // The new linear form's row and its offsets' sums sum log d, sum d^2 mu^2 while the row
    // is in L1 (torch took five passes and a log over all parameters for them).
    if (lf) LinearRow<T>::run(m, dd, D, lf + r * D2, &lsum[r], &pmmu[r]);
  }
  }
  if (lf)
    for (long p = 0; p < P; ++p) offsets_row(xi + p * K, &lsum[p * K], &pmmu[p * K], K, c + p * K);
}

// Scores of every patch of a map that mostly repeats one vector r0 (the responsibilities of
// background patches). With z = x - r0 and the per-offset table [A; B] (A = W1 + 2 r0 W2,
// B = W2), s = c' + sum over the patch's positions (u, v) of z A_uv + z^2 B_uv, where
// c' = c + sum_uv (r0 W1_uv + r0^2 W2_uv): positions equal to r0 add nothing, so each image
// costs O(live positions x offsets x 2C x K) instead of the convolution's O(patches x D x K).
// A live position of class (i mod sy, j mod sx) meets a patch at each offset (u, v) of that
// class; those (position, patch) pairs are scored in register blocks of PB positions sharing
// one table row. Returns 2 (nothing written) when more than max_frac of the first images'
// positions are live: the convolution is faster there (max_frac >= 1: no check; out NULL: only
// the check).
template <typename T, int NV>
static int bg_scores(const T* x, long N, long H, long W, long C, long fy, long fx, long sy,
                     long sx, long Ho, long Wo, const T* r0, const T* tab, const T* cpad, long K,
                     double max_frac, T* out, unsigned char* live, int nthreads) {
  typedef typename Vec<T>::type V;
  constexpr int PB = NV >= 16 ? 1 : 16 / NV;
  const long L = 64 / sizeof(T), KP = NV * L, C2 = 2 * C, HW = H * W, P = Ho * Wo;
  if (max_frac < 1.0) {
    const long nchk = N < 16 ? N : 16;
    long nlive = 0;
    for (long p = 0; p < nchk * HW; ++p) {
      const T* xp = x + p * C;
      for (long c = 0; c < C; ++c)
        if (xp[c] != r0[c]) { ++nlive; break; }
    }
    if ((double)nlive > max_frac * (double)(nchk * HW)) return 2;
  }
  if (!out) return 0;   // (the density check alone)
  int nt = nthreads < 1 ? 1 : nthreads;
  if (N < 2) nt = 1;
#pragma omp parallel num_threads(nt)
  {
    // Row HW is never written (nz < HW): the padding slots' zeros.
    std::vector<T> z((size_t)(HW + 1) * C2, T(0));
    std::vector<T> S((size_t)(P + 1) * KP);            // row P: the padding slots' sink
    std::vector<unsigned char> touched(P + 1);
    std::vector<int> lst((size_t)sy * sx * HW), pi(HW + 1), pj(HW + 1);
    std::vector<long> cnt((size_t)sy * sx);
#pragma omp for schedule(static)
    for (long n = 0; n < N; ++n) {
      for (auto& c : cnt) c = 0;
      long nz = 0;
      const T* xn = x + n * HW * C;
      for (long i = 0; i < H; ++i)
        for (long j = 0; j < W; ++j) {
          const T* xp = xn + (i * W + j) * C;
          T any = 0;   // (a count, not a branch per channel: vectorises)
          for (long c = 0; c < C; ++c) any += xp[c] != r0[c] ? T(1) : T(0);
          if (any == T(0)) continue;
          T* zr = z.data() + nz * C2;
          for (long c = 0; c < C; ++c) {
            const T d = xp[c] - r0[c];
            zr[c] = d; zr[C + c] = d * d;
          }
          const long cls = (i % sy) * sx + (j % sx);
          lst[cls * HW + cnt[cls]++] = (int)nz;
          pi[nz] = (int)(i / sy); pj[nz] = (int)(j / sx);   // i = pi sy + i mod sy
          ++nz;
        }
      // The sums start at 0 and c' is added last: c' is large, and small terms added onto it
      // would each lose the bits below its last place.
      std::fill(S.begin(), S.end(), T(0));
      std::fill(touched.begin(), touched.end(), (unsigned char)0);
      for (long u = 0; u < fy; ++u)
        for (long v = 0; v < fx; ++v) {
          const long cls = (u % sy) * sx + (v % sx);
          // A position of this class meets the patch (pi - u / sy, pj - v / sx): no division
          // per position (they cost as much as the scoring).
          const long ud = u / sy, vd = v / sx;
          const T* tw = tab + (u * fx + v) * C2 * KP;
          const T* zp[PB];
          T* sp[PB];
          int nb = 0;
          auto flush = [&]() {
            for (int b = nb; b < PB; ++b) { zp[b] = z.data() + HW * C2; sp[b] = S.data() + P * KP; }
            V acc[PB][NV];
            for (int b = 0; b < PB; ++b)
              for (int w = 0; w < NV; ++w) std::memcpy(&acc[b][w], sp[b] + w * L, sizeof(V));
            for (long d = 0; d < C2; ++d) {
              V wt[NV];
              for (int w = 0; w < NV; ++w) std::memcpy(&wt[w], tw + d * KP + w * L, sizeof(V));
              for (int b = 0; b < PB; ++b) {
                const T zv = zp[b][d];
                for (int w = 0; w < NV; ++w) acc[b][w] += zv * wt[w];
              }
            }
            // Padding slots add 0 to the sink (stored last-wins, all equal): harmless.
            for (int b = 0; b < PB; ++b)
              for (int w = 0; w < NV; ++w) std::memcpy(sp[b] + w * L, &acc[b][w], sizeof(V));
            nb = 0;
          };
          const long nc = cnt[cls];
          for (long q = 0; q < nc; ++q) {
            const int r = lst[cls * HW + q];
            const long oa = pi[r] - ud, ob = pj[r] - vd;
            if (oa < 0 || ob < 0 || oa >= Ho || ob >= Wo) continue;
            zp[nb] = z.data() + (long)r * C2;
            sp[nb] = S.data() + (oa * Wo + ob) * KP;
            touched[oa * Wo + ob] = 1;
            if (++nb == PB) flush();
          }
          if (nb) flush();
        }
      T* on = out + n * P * K;
      for (long p = 0; p < P; ++p)
        for (long k = 0; k < K; ++k) on[p * K + k] = S[p * KP + k] + cpad[k];
      std::memcpy(live + n * P, touched.data(), P);
    }
  }
  return 0;
}

template <typename T>
static int bg_dispatch(const T* x, long N, long H, long W, long C, long fy, long fx, long sy,
                       long sx, long Ho, long Wo, const T* r0, const T* tab, const T* cpad, long K,
                       long nv, double max_frac, T* out, unsigned char* live, int nthreads) {
  switch (nv) {
#define CASE(n) case n: return bg_scores<T, n>(x, N, H, W, C, fy, fx, sy, sx, Ho, Wo, r0, tab, \
                                               cpad, K, max_frac, out, live, nthreads);
    CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
    CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15) CASE(16)
#undef CASE
  }
  return 1;
}

extern "C" {
int dm_gmm_linear_f32(const float* mu, const float* d, const float* xi, long P, long K, long D,
                      float* lf, float* c, int nthreads) {
  linear_rows<float>(mu, d, xi, P, K, D, lf, c, nthreads);
  return 0;
}
int dm_gmm_linear_f64(const double* mu, const double* d, const double* xi, long P, long K,
                      long D, double* lf, double* c, int nthreads) {
  linear_rows<double>(mu, d, xi, P, K, D, lf, c, nthreads);
  return 0;
}
int dm_gmm_bgscores_f32(const float* x, long N, long H, long W, long C, long fy, long fx, long sy,
                        long sx, long Ho, long Wo, const float* r0, const float* tab,
                        const float* cpad, long K, long nv, double max_frac, float* out,
                        unsigned char* live, int nthreads) {
  return bg_dispatch<float>(x, N, H, W, C, fy, fx, sy, sx, Ho, Wo, r0, tab, cpad, K, nv, max_frac,
                            out, live, nthreads);
}
int dm_gmm_bgscores_f64(const double* x, long N, long H, long W, long C, long fy, long fx, long sy,
                        long sx, long Ho, long Wo, const double* r0, const double* tab,
                        const double* cpad, long K, long nv, double max_frac, double* out,
                        unsigned char* live, int nthreads) {
  return bg_dispatch<double>(x, N, H, W, C, fy, fx, sy, sx, Ho, Wo, r0, tab, cpad, K, nv, max_frac,
                             out, live, nthreads);
}
int dm_gmm_update_f32(float* mu, float* d, float* xi, const float* sums, const float* counts,
                      const float* g, long P, long K, long D, double step, double lr_mu,
                      double lr_d, double lr_xi, int update_d, float d_min, float d_max,
                      float* lf, float* c, int nthreads) {
  update_step<float>(mu, d, xi, sums, counts, g, P, K, D, step, lr_mu, lr_d, lr_xi, update_d,
                     d_min, d_max, lf, c, nthreads);
  return 0;
}
int dm_gmm_update_f64(double* mu, double* d, double* xi, const double* sums,
                      const double* counts, const double* g, long P, long K, long D, double step,
                      double lr_mu, double lr_d, double lr_xi, int update_d, double d_min,
                      double d_max, double* lf, double* c, int nthreads) {
  update_step<double>(mu, d, xi, sums, counts, g, P, K, D, step, lr_mu, lr_d, lr_xi, update_d,
                      d_min, d_max, lf, c, nthreads);
  return 0;
}

int dm_gmm_stats_f32(const float* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                     long Ho, long Wo, long M, const float* Wk, const float* c, const float* g,
                     long K, long nv, const float* given, const unsigned char* live,
                     const float* bgrow, const float* bgs, float* resp, float* sums,
                     float* counts, double offset, float* loss, int nthreads) {
  return dispatch<float>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wk, c, g, K, nv, given, live,
                         bgrow, bgs, resp, sums, counts, offset, loss, nthreads);
}
int dm_gmm_stats_f64(const double* x, long H, long W, long C, long fy, long fx, long sy, long sx,
                     long Ho, long Wo, long M, const double* Wk, const double* c, const double* g,
                     long K, long nv, const double* given, const unsigned char* live,
                     const double* bgrow, const double* bgs, double* resp, double* sums,
                     double* counts, double offset, double* loss, int nthreads) {
  return dispatch<double>(x, H, W, C, fy, fx, sy, sx, Ho, Wo, M, Wk, c, g, K, nv, given, live,
                          bgrow, bgs, resp, sums, counts, offset, loss, nthreads);
}
}
"""

def _declare(lib: ctypes.CDLL) -> None:
    L, P = ctypes.c_long, ctypes.c_void_p
    for name in ("dm_gmm_stats_f32", "dm_gmm_stats_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [P, L, L, L, L, L, L, L, L, L, L, P, P, P, L, L, P, P, P, P, P, P, P,
                       ctypes.c_double, P, ctypes.c_int]
        fn.restype = ctypes.c_int
    Dbl = ctypes.c_double
    for name, ct in (("dm_gmm_update_f32", ctypes.c_float), ("dm_gmm_update_f64", Dbl)):
        fn = getattr(lib, name)
        fn.argtypes = [P, P, P, P, P, P, L, L, L, Dbl, Dbl, Dbl, Dbl, ctypes.c_int, ct, ct, P, P,
                       ctypes.c_int]
        fn.restype = ctypes.c_int
    for name in ("dm_gmm_linear_f32", "dm_gmm_linear_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [P, P, P, L, L, L, P, P, ctypes.c_int]
        fn.restype = ctypes.c_int
    for name in ("dm_gmm_bgscores_f32", "dm_gmm_bgscores_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [P, L, L, L, L, L, L, L, L, L, L, P, P, P, L, L, ctypes.c_double, P, P,
                       ctypes.c_int]
        fn.restype = ctypes.c_int


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use, cached on disk), or None where it cannot be."""
    return native.load("fused_gmm", _SOURCE, _declare, openmp=True)


def available(x: torch.Tensor, K: int) -> bool:
    """Whether the fused kernel can take input ``x`` for a layer with K components."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and 1 <= K <= (MAX_K if x.dtype == torch.float32 else MAX_K // 2)
            and kernel() is not None)


class Background(NamedTuple):
    """What :func:`background_scores` found: the patches' ``scores`` (M, K), which patches hold
    a position other than the background (``live``, (M,) uint8), the background vector ``row``
    (C,) and the scores of an all-background patch ``patch_scores`` (K,)."""

    scores: torch.Tensor
    live: torch.Tensor
    row: torch.Tensor
    patch_scores: torch.Tensor


def _prepare(x: torch.Tensor, geometry: tuple[int, ...], Wl: torch.Tensor) -> tuple:
    """The library, contiguous x, its shape, the patch geometry, (2D, K), and the K padding:
    nv 64-byte vectors of KP lanes."""
    lib = kernel()
    assert lib is not None
    x = x.contiguous()
    D2, K = Wl.shape
    N, H, W, C = x.shape
    fy, fx, sy, sx, Ho, Wo = (int(v) for v in geometry)
    # The kernels index x and Wl by this geometry: refuse what would read past them.
    if min(fy, fx, sy, sx, Ho, Wo) < 1 or (Ho - 1) * sy + fy > H or (Wo - 1) * sx + fx > W \
            or D2 != 2 * fy * fx * C:
        raise ValueError(f"fused GMM kernel: patches {fy}x{fx} stride {sy}x{sx} -> {Ho}x{Wo} do "
                         f"not fit x {tuple(x.shape)} and a linear form of {D2} rows")
    nv = -(-K // (64 // x.element_size()))
    return (lib, x, tuple(x.shape), tuple(int(v) for v in geometry), (D2, K), nv,
            nv * (64 // x.element_size()))


def fused_statistics(x: torch.Tensor, geometry: tuple[int, ...], Wl: torch.Tensor,
                     c: torch.Tensor, g: torch.Tensor | None, scores: torch.Tensor | None = None,
                     background: Background | None = None, offset: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sums (K, 2D), counts (K,), loss (0-d), responsibilities (M, K)), all in x's dtype; the
    loss is the sum of the patches' best annealed scores plus ``offset`` (summed in float64).

    ``x`` is (N, H, W, C); ``geometry`` = (fy, fx, sy, sx, Ho, Wo) of the patches (1, 1, 1, 1,
    H, W without a Folding layer); ``Wl`` (2D, K), ``c`` (K,) the linear form and ``g`` the
    annealing matrix (None: identity). With ``scores`` (M, K) given (computed by a convolution
    over dense maps, where a GEMM reuses the weights better than the kernel's sparse scoring),
    the kernel only finishes each patch and adds it to its winner's sums. With ``background``
    (from :func:`background_scores`; its scores are then the scores) an all-background patch is
    finished once and its rows are added to its winner's sums as one multiple.
    """
    lib, x, (N, H, W, C), (fy, fx, sy, sx, Ho, Wo), (D2, K), nv, KP = _prepare(x, geometry, Wl)
    dt = x.dtype
    Wk = None
    if scores is None and background is None:
        # The kernel pads and transposes the (K, 2D) rows itself: the layer's buffer as it is.
        Wk = Wl.t().to(dt).contiguous()
    c = c.to(dt).contiguous()
    if g is not None:
        g = g.to(dt).contiguous()
        assert g.shape == (K, K)
    M = N * Ho * Wo
    resp = torch.empty(M, K, dtype=dt)
    sums = torch.zeros(K, D2, dtype=dt)
    counts = torch.empty(K, dtype=dt)
    loss = torch.empty((), dtype=dt)
    fn = lib.dm_gmm_stats_f32 if dt == torch.float32 else lib.dm_gmm_stats_f64
    if background is not None:
        scores = background.scores
        assert background.live.shape == (M,) and background.row.shape == (C,)
    if scores is not None:
        scores = scores.contiguous()
        assert scores.shape == (M, K) and scores.dtype == dt
    rc = fn(x.data_ptr(), H, W, C, fy, fx, sy, sx, Ho, Wo, M, 0 if Wk is None else Wk.data_ptr(),
            c.data_ptr(), 0 if g is None else g.data_ptr(), K, nv,
            0 if scores is None else scores.data_ptr(),
            *((0, 0, 0) if background is None else (background.live.data_ptr(),
                                                      background.row.data_ptr(),
                                                      background.patch_scores.data_ptr())),
            resp.data_ptr(), sums.data_ptr(), counts.data_ptr(), float(offset), loss.data_ptr(),
            torch.get_num_threads())
    if rc != 0:
        raise RuntimeError("fused GMM kernel rejected its arguments")
    return sums, counts, loss, resp


def background_scores(x: torch.Tensor, geometry: tuple[int, ...], Wl: torch.Tensor,
                      c: torch.Tensor, *, max_live: float = MAX_LIVE) -> Background | None:
    r"""Scores (M, K) of every patch of a map ``x`` (N, H, W, C) that mostly repeats one vector
    :math:`r_0` (with which patches hold other vectors: :class:`Background`), or None where
    more than ``max_live`` of the positions differ from it.

    With :math:`z = x - r_0` at each position and the linear form split per patch offset
    :math:`(u, v)` into :math:`W^1_{uv}, W^2_{uv}` (C, K) (the x and x^2 halves),
    :math:`s = c + \sum_{uv} z W^1_{uv} + 2 (r_0 z) W^2_{uv} + z^2 W^2_{uv}
    + \sum_{uv} r_0 W^1_{uv} + r_0^2 W^2_{uv}`: positions equal to :math:`r_0` add nothing.
    Responsibility maps of digit images repeat the background patch's responsibilities at
    about two thirds of their positions, so this costs about a third of the convolution.
    :math:`r_0` is the first image's top-left position (background in such data); the
    result is exact whatever it is, only the speed depends on it. ``geometry`` and ``Wl``,
    ``c`` as in :func:`fused_statistics`.
    """
    if x.shape[0] == 0:
        return None
    lib, x, (N, H, W, C), (fy, fx, sy, sx, Ho, Wo), (D2, K), nv, KP = _prepare(x, geometry, Wl)
    dt = x.dtype
    r0 = x[0, 0, 0].clone()
    fn = lib.dm_gmm_bgscores_f32 if dt == torch.float32 else lib.dm_gmm_bgscores_f64
    # The density check first: a declined map then costs no tables (a few torch ops on
    # (fy, fx, C, K) arrays, as long as the check on a dense 12 x 12 map).
    if max_live < 1.0 and fn(x.data_ptr(), N, H, W, C, fy, fx, sy, sx, Ho, Wo, r0.data_ptr(), 0, 0,
                             K, nv, float(max_live), 0, 0, 1) == 2:
        return None
    # The constant in float64: a sum of fy*fx*C*K products that the convolution would not form.
    w1 = Wl[: D2 // 2].view(fy, fx, C, K).double()
    w2 = Wl[D2 // 2:].view(fy, fx, C, K).double()
    r = r0.double()[:, None]
    tab = torch.zeros(fy, fx, 2 * C, KP, dtype=dt)
    tab[:, :, :C, :K] = (w1 + 2 * r * w2).to(dt)
    tab[:, :, C:, :K] = w2.to(dt)
    cpad = torch.full((KP,), float("-inf"), dtype=dt)
    cpad[:K] = (c.double() + (w1 * r + w2 * (r * r)).sum((0, 1, 2))).to(dt)
    out = torch.empty(N * Ho * Wo, K, dtype=dt)
    live = torch.empty(N * Ho * Wo, dtype=torch.uint8)
    rc = fn(x.data_ptr(), N, H, W, C, fy, fx, sy, sx, Ho, Wo, r0.data_ptr(), tab.data_ptr(),
            cpad.data_ptr(), K, nv, 1.0, out.data_ptr(), live.data_ptr(),
            torch.get_num_threads())
    if rc != 0:
        raise RuntimeError("fused GMM kernel rejected its arguments")
    return Background(out, live, r0, cpad[:K].clone())


def linear_form(mu: torch.Tensor, d: torch.Tensor, xi: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
    r"""Write :math:`[d^2 \mu, -d^2/2]` of ``mu``, ``d`` (P, K, D) into ``out`` (P, K, 2D) and
    return the offsets (P, K) :math:`c = \log\mathrm{softmax}(\xi) + \sum \log d - \tfrac12
    \sum d^2 \mu^2` (summed in float64, rounded once). The same code as :func:`fused_update`'s
    refill, so a layer's linear form is the same bits whether it was refilled by a training
    step or computed from loaded parameters."""
    lib = kernel()
    P, K, D = mu.shape
    assert lib is not None and mu.is_contiguous() and d.is_contiguous() and out.is_contiguous()
    assert out.shape == (P, K, 2 * D) and out.dtype == mu.dtype == d.dtype
    xi = xi.to(mu.dtype).contiguous()
    assert xi.shape == (P, K)
    c = torch.empty(P, K, dtype=mu.dtype)
    fn = lib.dm_gmm_linear_f32 if mu.dtype == torch.float32 else lib.dm_gmm_linear_f64
    fn(mu.data_ptr(), d.data_ptr(), xi.data_ptr(), P, K, D, out.data_ptr(), c.data_ptr(),
       torch.get_num_threads())
    return c


def fused_update(mu: torch.Tensor, d: torch.Tensor, xi: torch.Tensor, sums: torch.Tensor,
                 counts: torch.Tensor, g: torch.Tensor | None, step: float, lr_mu: float,
                 lr_d: float, lr_xi: float, update_d: bool, d_min: float, d_max: float,
                 linear_form: torch.Tensor | None = None) -> torch.Tensor | None:
    r"""One SGD ascent step of a GMM layer in place, from its winners' ``sums`` (P, K, 2D) and
    ``counts`` (P, K) (before annealing; as in :class:`~deepmix.layers.gmm.WinnerStatistics`,
    the sums of a component with count 0 are zero, and the annealing skips them). With the
    annealing matrix ``g`` (K, K), :math:`n = c\,g` and :math:`S \leftarrow g^T S` per
    position; then, every term at the old parameters,

    .. math:: \xi \mathrel{+}= \eta\lambda_\xi (n - \pi \textstyle\sum_k n_k), \quad
              \mu \mathrel{+}= \eta\lambda_\mu d^2 (S^x - n\mu), \quad
              d \leftarrow \mathrm{clamp}(d + \eta\lambda_d (n/d - d(S^{xx} - 2\mu S^x + n\mu^2)))

    (:math:`\eta` = ``step``, d only with ``update_d``, clamped to [d_min, d_max]). One call
    instead of about twenty torch ops and a (K, K) x (K, 2D) product. The caller bumps the
    parameters' version counters (the linear-form cache keys on them).

    With ``linear_form`` (a contiguous (P, K, 2D) buffer) the same pass writes the new
    :math:`[d^2 \mu, -d^2/2]` into it and returns the new offsets c (P, K) (as
    :func:`linear_form` computes them)."""
    lib = kernel()
    assert lib is not None and mu.is_contiguous() and d.is_contiguous() and xi.is_contiguous()
    P, K, D = mu.shape
    dt = mu.dtype
    assert d.dtype == xi.dtype == dt and xi.shape == (P, K)
    # The C code reads these as mu's dtype, in these shapes: anything else would be garbage.
    sums = sums.to(dt).contiguous()
    counts = counts.to(dt).contiguous()
    if sums.numel() != P * K * 2 * D or counts.numel() != P * K:
        raise ValueError(f"fused_update: sums {tuple(sums.shape)} / counts {tuple(counts.shape)} "
                         f"do not match mu {tuple(mu.shape)}")
    if g is not None:
        g = g.to(dt).contiguous()
        assert g.shape == (K, K)
    c = None
    if linear_form is not None:
        assert linear_form.is_contiguous() and linear_form.shape == (P, K, 2 * D) \
            and linear_form.dtype == dt
        c = torch.empty(P, K, dtype=dt)
    fn = lib.dm_gmm_update_f32 if dt == torch.float32 else lib.dm_gmm_update_f64
    fn(mu.data_ptr(), d.data_ptr(), xi.data_ptr(), sums.data_ptr(), counts.data_ptr(),
       0 if g is None else g.data_ptr(), P, K, D, float(step), float(lr_mu), float(lr_d),
       float(lr_xi), int(bool(update_d)), float(d_min), float(d_max),
       *((0, 0) if c is None else (linear_form.data_ptr(), c.data_ptr())),
       torch.get_num_threads())
    return c
