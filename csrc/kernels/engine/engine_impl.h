// The engine_f32 kernels (engine_ops.h), written once for a vector of EC_ENGINE_WIDTH floats (GCC /
// Clang vector extensions: the same source becomes SSE2, AVX2, AVX-512 or NEON code under each
// tier's flags). Element-wise loops are left to the compiler's vectorizer; reductions and the
// product keep explicit vector accumulators (a float reduction does not vectorize without
// reassociation, which we allow only here, where the oracle has a tolerance).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "edgecompress/dense_f32.h"
#include "edgecompress/engine_ops.h"
#include "../common/mca.h"
#include "../common/unroll.h"
#include "../common/vmath.h"

#ifndef EC_ENGINE_WIDTH
#error "define EC_ENGINE_WIDTH (floats per vector) before including engine_impl.h"
#endif

namespace edgecompress {
namespace {

constexpr int W = EC_ENGINE_WIDTH;
typedef float vf __attribute__((vector_size(W * 4)));
typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
// a - 0 is a for every a (a + 0 is not, for -0), so the compiler folds it to a plain broadcast
inline vf splat(float a) { return a - vf{}; }
inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

void norm_row(const float* x, const float* r, const float* gamma, const float* beta, float eps, bool rms, int n,
              float* y, float* sum) {
  // v = x + r lands in `sum` when asked for, else in y: the passes below read it from there.
  float* v = sum != nullptr ? sum : y;
  if (r != nullptr) {
    for (int i = 0; i < n; ++i) v[i] = x[i] + r[i];
  } else if (v != x) {
    for (int i = 0; i < n; ++i) v[i] = x[i];
  }
  int i = 0;
  float mean = 0.0f;
  if (!rms) {
    vf acc = vf{};
    for (; i + W <= n; i += W) acc += load(v + i);
    float s = hsum(acc);
    for (; i < n; ++i) s += v[i];
    mean = s / static_cast<float>(n);
  }
  vf acc = vf{};
  const vf vm = splat(mean);
  EC_MCA_LOOP("norm_variance", 1, 0);
  for (i = 0; i + W <= n; i += W) {
    const vf d = load(v + i) - vm;
    acc += d * d;
  }
  float ss = hsum(acc);
  for (; i < n; ++i) ss += (v[i] - mean) * (v[i] - mean);
  const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  if (beta != nullptr) {
    EC_MCA_LOOP("norm_scale", 1, 0);
    for (i = 0; i < n; ++i) y[i] = (v[i] - mean) * rstd * gamma[i] + beta[i];
  } else {
    for (i = 0; i < n; ++i) y[i] = (v[i] - mean) * rstd * gamma[i];
  }
}

void softmax_row(float* x, int n) {
  // the max with vector lanes (a scalar max reduction does not vectorize without -ffast-math)
  vf vmx = splat(-INFINITY);
  int i0 = 0;
  for (; i0 + W <= n; i0 += W) {
    const vf v = load(x + i0);
    vmx = v > vmx ? v : vmx;
  }
  float mx = -INFINITY;
  for (int l = 0; l < W; ++l) mx = vmx[l] > mx ? vmx[l] : mx;
  for (; i0 < n; ++i0) mx = x[i0] > mx ? x[i0] : mx;
  // exp as its own element-wise loop: the compiler vectorizes it whole (vmath.h is branch-free)
  EC_MCA_LOOP("softmax_exp", 1, 0);
  for (int i = 0; i < n; ++i) x[i] = exp_approx(x[i] - mx);
  int i = 0;
  vf acc = vf{};
  for (; i + W <= n; i += W) acc += load(x + i);
  float s = hsum(acc);
  for (; i < n; ++i) s += x[i];
  const float inv = 1.0f / s;
  for (i = 0; i < n; ++i) x[i] *= inv;
}

void gelu(const float* x, float* y, int64_t n) {
  EC_MCA_LOOP("gelu", 1, 0);
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_approx(x[i]);
}

void glu(int act, const float* gate, const float* up, float* y, int64_t n) {
  if (act == 0) {
    EC_MCA_LOOP("glu_silu", 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      const float g = gate[i];
      y[i] = g / (1.0f + exp_approx(-g)) * up[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float g = gate[i];
      // tanh(z) = 1 - 2 / (exp(2z) + 1); exp_approx's clamp keeps it in [-1, 1] for large |z|
      const float z = 0.7978845608028654f * (g + 0.044715f * g * g * g);
      const float th = 1.0f - 2.0f / (exp_approx(2.0f * z) + 1.0f);
      y[i] = 0.5f * g * (1.0f + th) * up[i];
    }
  }
}

void dot_rows(const float* a, ptrdiff_t lda, int rows, const float* x, int n, float alpha, float* y) {
  for (int r = 0; r < rows; ++r) {
    const float* ar = a + r * lda;
    vf acc0 = vf{}, acc1 = vf{};
    int i = 0;
    EC_MCA_LOOP("attention_dot_rows", 1, 0);
    for (; i + 2 * W <= n; i += 2 * W) {
      acc0 += load(ar + i) * load(x + i);
      acc1 += load(ar + i + W) * load(x + i + W);
    }
    for (; i + W <= n; i += W) acc0 += load(ar + i) * load(x + i);
    float s = hsum(acc0 + acc1);
    for (; i < n; ++i) s += ar[i] * x[i];
    y[r] = s * alpha;
  }
}

void binary(int op, const float* a, const float* b, int64_t nb, float* y, int64_t n) {
  for (int64_t i0 = 0; i0 < n; i0 += nb) {
    const int64_t len = n - i0 < nb ? n - i0 : nb;
    const float* ai = a + i0;
    float* yi = y + i0;
    if (op == 0) {
      EC_MCA_LOOP("binary_add", 1, 0);
      for (int64_t i = 0; i < len; ++i) yi[i] = ai[i] + b[i];
    } else {
      for (int64_t i = 0; i < len; ++i) yi[i] = ai[i] * b[i];
    }
  }
}

// Rows in blocks of MR, columns in blocks of two vectors: 2 * MR accumulators stay in registers
// while k streams (b loaded once per row block, a broadcast).
constexpr int MR = 4;

template <int R>
inline void gemm_block(int j0, int k, float alpha, const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb,
                       float* c, ptrdiff_t ldc) {
  vf acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = vf{};
  EC_MCA_LOOP("attention_gemm_nn", R, 0);
  for (int p = 0; p < k; ++p) {
    const vf b0 = load(b + p * ldb + j0), b1 = load(b + p * ldb + j0 + W);
    for (int r = 0; r < R; ++r) {
      const vf av = splat(a[r * lda + p]);
      acc0[r] += av * b0;
      acc1[r] += av * b1;
    }
  }
  const vf va = splat(alpha);
  for (int r = 0; r < R; ++r) {
    store(c + r * ldc + j0, acc0[r] * va);
    store(c + r * ldc + j0 + W, acc1[r] * va);
  }
}

template <int R>
void gemm_rows(int n, int k, float alpha, const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb, float* c,
               ptrdiff_t ldc) {
  int j = 0;
  for (; j + 2 * W <= n; j += 2 * W) gemm_block<R>(j, k, alpha, a, lda, b, ldb, c, ldc);
  for (; j < n; ++j) {  // the last columns, one at a time
    for (int r = 0; r < R; ++r) {
      float s = 0.0f;
      for (int p = 0; p < k; ++p) s += a[r * lda + p] * b[p * ldb + j];
      c[r * ldc + j] = s * alpha;
    }
  }
}

void gemm_nn(int m, int n, int k, float alpha, const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb, float* c,
             ptrdiff_t ldc) {
  int i = 0;
  for (; i + MR <= m; i += MR) gemm_rows<MR>(n, k, alpha, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  for (; i < m; ++i) gemm_rows<1>(n, k, alpha, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
}

// e^-x for the logistic function of SiLU and sigmoid: 2^t with t = -x log2(e), clamped to
// [-126, 126], t's fraction f in [-0.5, 0.5] by a degree-5 fit of 2^f (relative error 8e-8), its
// integer part in the exponent bits. A quarter cheaper per value than 1 / (1 + exp_approx(-x))
// (SiLU was 17% of EfficientNet-B0's float32 time). Rounding t adds a relative error of about
// 6e-8 |x|: below 1e-6 of a logistic value for |x| < 16, where it matters; past that the value
// is within 1e-7 of 0 or 1.
inline float exp_neg_logistic(float x) {
  float t = x * -1.44269504088896341f;
  t = select(t < -126.0f, -126.0f, t);
  t = select(t > 126.0f, 126.0f, t);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float kf = t + magic;
  const int32_t n = static_cast<int32_t>(float_bits(kf) - float_bits(magic));
  const float f = t - (kf - magic);
  float q = 0.0013266970636323094f;
  q = q * f + 0.009675459936261177f;
  q = q * f + 0.05550742521882057f;
  q = q * f + 0.24022121727466583f;
  q = q * f + 0.6931469440460205f;
  q = q * f + 1.0000001192092896f;
  return q * bits_float(static_cast<uint32_t>(n + 127) << 23);
}

#if defined(__AVX512F__) && EC_ENGINE_WIDTH == 16
// The logistic function of 16 values on AVX-512, SiLU's (Silu: x times it) or sigmoid's: e^-x =
// 2^t as exp_neg_logistic (t = -x log2(e), its fraction f by the same degree-5 fit of 2^f), with the
// rounding of t (vrndscaleps), 2^n (vscalefps) and 1 / (1 + e^-x) (vrcp14ps, 14 bits, and a Newton
// step) in one instruction each instead of the portable loop's integer tricks and division: 14
// vector operations, against about 20; a pass over L2-resident values took 0.222 ns a value for
// SiLU (0.248 before) and 0.206 for sigmoid (0.254) on a Sapphire Rapids core. t is
// clamped to [-126, 100], so that 1 + e^-x stays below 2^101 and its reciprocal a normal float; past
// x = -69 SiLU and the logistic are within 1e-29 of 0 either way. NaN stays NaN (maxps and minps
// return their second operand, t, when it is NaN).
template <bool Silu>
inline __m512 logistic16(__m512 x) {
  __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f));
  t = _mm512_max_ps(_mm512_set1_ps(-126.0f), t);
  t = _mm512_min_ps(_mm512_set1_ps(100.0f), t);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 q = _mm512_set1_ps(0.0013266970636323094f);
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.009675459936261177f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.05550742521882057f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.24022121727466583f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.6931469440460205f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0000001192092896f));
  const __m512 d = _mm512_add_ps(_mm512_scalef_ps(q, n), _mm512_set1_ps(1.0f));
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  return Silu ? _mm512_mul_ps(x, r) : r;
}

// y = logistic16 over n values, the last ones through masked loads and stores: every value gets the
// same arithmetic wherever a pass's range starts.
template <bool Silu>
void logistic_pass(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, logistic16<Silu>(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, logistic16<Silu>(_mm512_maskz_loadu_ps(m, x + i)));
  }
}
#endif

inline float relu6(float v) {
  v = v > 0.0f ? v : 0.0f;
  return v < 6.0f ? v : 6.0f;
}

void unary(int act, const float* x, float* y, int64_t n) {
  // one loop per activation, so that each vectorizes on its own
  switch (static_cast<UnaryAct>(act)) {
    case UnaryAct::relu:
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      break;
    case UnaryAct::relu6:
      for (int64_t i = 0; i < n; ++i) y[i] = relu6(x[i]);
      break;
    case UnaryAct::silu:
#if defined(__AVX512F__) && EC_ENGINE_WIDTH == 16
      logistic_pass<true>(x, y, n);
#else
      EC_MCA_LOOP("silu", 1, 0);
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + exp_neg_logistic(x[i]));
#endif
      break;
    case UnaryAct::hardswish:
      for (int64_t i = 0; i < n; ++i) y[i] = x[i] * relu6(x[i] + 3.0f) * (1.0f / 6.0f);
      break;
    case UnaryAct::hardsigmoid:
      for (int64_t i = 0; i < n; ++i) y[i] = relu6(x[i] + 3.0f) * (1.0f / 6.0f);
      break;
    case UnaryAct::sigmoid:
#if defined(__AVX512F__) && EC_ENGINE_WIDTH == 16
      logistic_pass<false>(x, y, n);
#else
      for (int64_t i = 0; i < n; ++i) y[i] = 1.0f / (1.0f + exp_neg_logistic(x[i]));
#endif
      break;
    case UnaryAct::count: break;
  }
}

// Calls f(tap, offset) for each tap of output pixel (oh, ow) inside the image, in (i, t) order: tap
// = i * kw + t, offset = the tap's pixel in x times c (the window ops' one walk over a window).
template <class F>
inline void for_taps(const Window2d& p, int oh, int ow, F f) {
  const int ih0 = oh * p.sh - p.pt, iw0 = ow * p.sw - p.pl;
  for (int i = 0; i < p.kh; ++i) {
    const int ih = ih0 + i * p.dh;
    if (ih < 0 || ih >= p.h) continue;
    for (int t = 0; t < p.kw; ++t) {
      const int iw = iw0 + t * p.dw;
      if (iw < 0 || iw >= p.w) continue;
      f(static_cast<ptrdiff_t>(i) * p.kw + t, (static_cast<ptrdiff_t>(ih) * p.w + iw) * p.c);
    }
  }
}

// Of output row oh: the kernel rows i0 .. i1 - 1 inside the image, and the output columns lo .. hi - 1
// whose taps all lie inside its columns.
struct RowInterior {
  int i0, i1, lo, hi;
};

inline RowInterior row_interior(const Window2d& p, int oh) {
  RowInterior r{0, p.kh, 0, 0};
  while (r.i0 < r.i1 && oh * p.sh - p.pt + r.i0 * p.dh < 0) ++r.i0;
  while (r.i1 > r.i0 && oh * p.sh - p.pt + (r.i1 - 1) * p.dh >= p.h) --r.i1;
  r.lo = std::min(p.wo, (p.pl + p.sw - 1) / p.sw);
  const int last = p.w + p.pl - (p.kw - 1) * p.dw - 1;  // the largest ow * sw that fits
  r.hi = std::max(r.lo, std::min(p.wo, last < 0 ? 0 : last / p.sw + 1));
  return r;
}

// The kernel columns t0 .. t1 - 1 whose taps of output column ow lie inside the image's columns.
inline void column_taps(const Window2d& p, int ow, int* t0, int* t1) {
  const int iw0 = ow * p.sw - p.pl;
  int a = 0, b = p.kw;
  while (a < b && iw0 + a * p.dw < 0) ++a;
  while (b > a && iw0 + (b - 1) * p.dw >= p.w) --b;
  *t0 = a;
  *t1 = b;
}

// Of a depthwise convolution's output row oh: the taps of kernel rows i0 .. i1 - 1 and columns
// t0 .. t1 - 1 (inside the image for each of the pixels it is given).
struct DwTaps {
  int oh, i0, i1, t0, t1;
};

// Channels j .. j + V W of U output pixels ow .. ow + U - 1 of a depthwise convolution: U x V vector
// sums (U V = 8 independent chains keep both FMA pipes busy), each weight vector loaded once for the
// U pixels. Every sum starts at the bias and adds the taps in (row, column) order.
template <int U, int V>
inline void dw_block(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow,
                     int j, float* y) {
  const ptrdiff_t step = static_cast<ptrdiff_t>(p.sw) * p.c;
  vf acc[U][V];
  for (int v = 0; v < V; ++v) {
    const vf b = bias != nullptr ? load(bias + j + v * W) : vf{};
    for (int u = 0; u < U; ++u) acc[u][v] = b;
  }
  for (int i = d.i0; i < d.i1; ++i) {
    const float* xr = x + static_cast<ptrdiff_t>(d.oh * p.sh - p.pt + i * p.dh) * p.w * p.c + j;
    const float* wr = w + static_cast<ptrdiff_t>(i) * p.kw * p.c + j;
    EC_MCA_LOOP("depthwise", U, 0);
    for (int t = d.t0; t < d.t1; ++t) {
      const float* xp = xr + static_cast<ptrdiff_t>(ow * p.sw - p.pl + t * p.dw) * p.c;
      for (int v = 0; v < V; ++v) {
        const vf wv = load(wr + static_cast<ptrdiff_t>(t) * p.c + v * W);
        for (int u = 0; u < U; ++u) acc[u][v] += load(xp + u * step + v * W) * wv;
      }
    }
  }
  for (int u = 0; u < U; ++u) {
    for (int v = 0; v < V; ++v) store(y + static_cast<ptrdiff_t>(ow + u) * p.c + j + v * W, acc[u][v]);
  }
}

// The channels j .. c - 1 (fewer than a vector) of output pixel ow, one at a time, as dw_block sums.
inline void dw_tail(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow, int j,
                    float* y) {
  for (; j < p.c; ++j) {
    float acc = bias != nullptr ? bias[j] : 0.0f;
    for (int i = d.i0; i < d.i1; ++i) {
      const float* xr = x + static_cast<ptrdiff_t>(d.oh * p.sh - p.pt + i * p.dh) * p.w * p.c + j;
      for (int t = d.t0; t < d.t1; ++t) {
        acc += xr[static_cast<ptrdiff_t>(ow * p.sw - p.pl + t * p.dw) * p.c] *
               w[(static_cast<ptrdiff_t>(i) * p.kw + t) * p.c + j];
      }
    }
    y[static_cast<ptrdiff_t>(ow) * p.c + j] = acc;
  }
}

// Channels j .. j + L - 1 (L < W: a part of a vector, past the channels' last whole vector) of U
// output pixels ow .. ow + U - 1, as dw_block sums in a vector of L lanes (a half or a quarter of the
// tier's). One channel at a time, the last 8 of MobileNetV3's 72, 88 and 120 took 3 times as long as
// the other 64 to 112 (a 28 x 28 x 88 layer ran at 12 GFLOPS).
template <int U, int L>
inline void dw_part(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow, int j,
                    float* y) {
  typedef float vl __attribute__((vector_size(L * 4)));
  const ptrdiff_t step = static_cast<ptrdiff_t>(p.sw) * p.c;
  vl b{};
  if (bias != nullptr) std::memcpy(&b, bias + j, sizeof(vl));
  vl acc[U];
  for (int u = 0; u < U; ++u) acc[u] = b;
  for (int i = d.i0; i < d.i1; ++i) {
    const float* xr = x + static_cast<ptrdiff_t>(d.oh * p.sh - p.pt + i * p.dh) * p.w * p.c + j;
    const float* wr = w + static_cast<ptrdiff_t>(i) * p.kw * p.c + j;
    for (int t = d.t0; t < d.t1; ++t) {
      const float* xp = xr + static_cast<ptrdiff_t>(ow * p.sw - p.pl + t * p.dw) * p.c;
      vl wv;
      std::memcpy(&wv, wr + static_cast<ptrdiff_t>(t) * p.c, sizeof(vl));
      for (int u = 0; u < U; ++u) {
        vl xv;
        std::memcpy(&xv, xp + u * step, sizeof(vl));
        acc[u] += xv * wv;
      }
    }
  }
  for (int u = 0; u < U; ++u) std::memcpy(y + static_cast<ptrdiff_t>(ow + u) * p.c + j, &acc[u], sizeof(vl));
}

// The channels j .. c - 1 (fewer than a vector) of U output pixels from ow: a half vector, a quarter,
// then one channel at a time.
template <int U>
inline void dw_rest(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow, int j,
                    float* y) {
  if constexpr (W >= 16) {
    if (j + 8 <= p.c) dw_part<U, 8>(p, x, w, bias, d, ow, j, y), j += 8;
  }
  if constexpr (W >= 8) {
    if (j + 4 <= p.c) dw_part<U, 4>(p, x, w, bias, d, ow, j, y), j += 4;
  }
  for (int u = 0; u < U && j < p.c; ++u) dw_tail(p, x, w, bias, d, ow + u, j, y);
}

// 8 interior output pixels ow .. ow + 7 of a depthwise convolution of kernel width KW and column
// stride S (no dilation), a vector of channels at a time: per kernel row, each of the (8 - 1) S + KW
// image columns the 8 pixels read is loaded once and multiplied by the KW weights held in
// registers, instead of once per tap that reads it (KW = 3, S = 1: 10 loads for 24 FMAs, not 27).
// Each sum adds the same products in the same order as dw_block.
template <int KW, int S>
void dw_pixels8(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow,
                float* y) {
  constexpr int U = 8;
  const ptrdiff_t c = p.c, col0 = static_cast<ptrdiff_t>(ow) * S - p.pl;  // the first image column read
  float* y0 = y + ow * c;
  int j = 0;
  for (; j + W <= p.c; j += W) {
    vf acc[U];
    const vf b = bias != nullptr ? load(bias + j) : vf{};
    for (int u = 0; u < U; ++u) acc[u] = b;
    EC_MCA_LOOP("depthwise_row8", KW, S);
    for (int i = d.i0; i < d.i1; ++i) {
      const float* xr = x + (static_cast<ptrdiff_t>(d.oh * p.sh - p.pt + i * p.dh) * p.w + col0) * c + j;
      const float* wr = w + i * KW * c + j;
      vf wv[KW];
      unroll<KW>([&](auto t) { wv[t.value] = load(wr + t.value * c); });
      unroll<(U - 1) * S + KW>([&](auto q) {
        const vf xv = load(xr + q.value * c);
        unroll<U>([&](auto u) {
          constexpr int t = q.value - u.value * S;
          if constexpr (t >= 0 && t < KW) acc[u.value] += xv * wv[t];
        });
      });
    }
    for (int u = 0; u < U; ++u) store(y0 + u * c + j, acc[u]);
  }
  if (j < p.c) dw_rest<U>(p, x, w, bias, d, ow, j, y);
}

// U pixels from ow, channels j on: blocks of V vectors, then of fewer, then the tail.
template <int U, int V>
inline void dw_pixels(const Window2d& p, const float* x, const float* w, const float* bias, const DwTaps& d, int ow,
                      int j, float* y) {
  for (; j + V * W <= p.c; j += V * W) dw_block<U, V>(p, x, w, bias, d, ow, j, y);
  if constexpr (V > 1) {
    dw_pixels<U, V / 2>(p, x, w, bias, d, ow, j, y);
  } else if (j < p.c) {
    dw_rest<U>(p, x, w, bias, d, ow, j, y);
  }
}

// Interior pixels (every tap inside the image's columns) 8, 4, 2 at a time; each pixel of the edges
// alone, over the kernel columns whose taps lie inside.
void depthwise_row(const Window2d& p, const float* x, const float* w, const float* bias, int oh, float* y) {
  const RowInterior ri = row_interior(p, oh);
  DwTaps d{oh, ri.i0, ri.i1, 0, p.kw};
  int ow = ri.lo;
  // the common kernels: 3x3 and 5x5, stride 1 or 2, no dilation
  void (*row8)(const Window2d&, const float*, const float*, const float*, const DwTaps&, int, float*) = nullptr;
  if (p.dw == 1 && p.sw == 1) row8 = p.kw == 3 ? dw_pixels8<3, 1> : p.kw == 5 ? dw_pixels8<5, 1> : nullptr;
  if (p.dw == 1 && p.sw == 2) row8 = p.kw == 3 ? dw_pixels8<3, 2> : p.kw == 5 ? dw_pixels8<5, 2> : nullptr;
  for (; row8 != nullptr && ow + 8 <= ri.hi; ow += 8) row8(p, x, w, bias, d, ow, y);
  for (; ow + 8 <= ri.hi; ow += 8) dw_pixels<8, 1>(p, x, w, bias, d, ow, 0, y);
  for (; ow + 4 <= ri.hi; ow += 4) dw_pixels<4, 2>(p, x, w, bias, d, ow, 0, y);
  for (; ow + 2 <= ri.hi; ow += 2) dw_pixels<2, 4>(p, x, w, bias, d, ow, 0, y);
  for (; ow < ri.hi; ++ow) dw_pixels<1, 8>(p, x, w, bias, d, ow, 0, y);
  auto edge = [&](int o) {
    column_taps(p, o, &d.t0, &d.t1);
    dw_pixels<1, 8>(p, x, w, bias, d, o, 0, y);
  };
  for (ow = 0; ow < ri.lo; ++ow) edge(ow);
  for (ow = std::max(ri.lo, ri.hi); ow < p.wo; ++ow) edge(ow);
}

// Output vectors v0 .. v0 + V - 1 (channels (v0 + v) W ..) of U pixels ow .. ow + U - 1 of a direct
// convolution (see conv_row). interior: every pixel's taps lie inside the image's columns and the
// kernel rows i0 .. i1 - 1 inside its rows (then U pixels share each weight load); else U = 1 and
// the taps inside the image are walked one by one.
template <int U, int V>
inline void conv_pixels(const Window2d& p, const float* x, const float* w, int k, int n, const float* bias, bool relu,
                        int oh, int ow, int v0, bool interior, int i0, int i1, float* y) {
  vf acc[U][V];
  for (int v = 0; v < V; ++v) {
    const int lane = (v0 + v) * W;
    vf b{};
    if (bias != nullptr && lane + W <= n) {
      b = load(bias + lane);
    } else if (bias != nullptr) {  // the last channels: part of a vector
      float tail[W] = {};
      for (int j = lane; j < n; ++j) tail[j - lane] = bias[j];
      b = load(tail);
    }
    for (int u = 0; u < U; ++u) acc[u][v] = b;
  }
  // vector v of the weight's row kk at wv0[v] + kk * 16: panel (lane / 16) holds its 16 columns for every k
  const float* wv0[V];
  for (int v = 0; v < V; ++v) {
    const int lane = (v0 + v) * W;
    wv0[v] = w + static_cast<ptrdiff_t>(lane / kDensePanel) * k * kDensePanel + lane % kDensePanel;
  }
  if (interior) {
    const ptrdiff_t step = static_cast<ptrdiff_t>(p.sw) * p.c;
    for (int i = i0; i < i1; ++i) {
      const float* xr = x + static_cast<ptrdiff_t>(oh * p.sh - p.pt + i * p.dh) * p.w * p.c;
      if (p.dw == 1) {
        // the kernel row's taps are kw * c consecutive values of the image row (channels last) and
        // of the weight: one loop (3 taps of 3 channels in 3 x 3 loops ran at 15 GMAC/s)
        const float* xp = xr + static_cast<ptrdiff_t>(ow * p.sw - p.pl) * p.c;
        const ptrdiff_t k0 = static_cast<ptrdiff_t>(i) * p.kw * p.c * kDensePanel;
        for (int e = 0; e < p.kw * p.c; ++e) {
          vf wv[V];
          for (int v = 0; v < V; ++v) wv[v] = load(wv0[v] + k0 + e * kDensePanel);
          for (int u = 0; u < U; ++u) {
            const float xv = xp[u * step + e];
            for (int v = 0; v < V; ++v) acc[u][v] += wv[v] * xv;
          }
        }
        continue;
      }
      for (int t = 0; t < p.kw; ++t) {
        const float* xp = xr + static_cast<ptrdiff_t>(ow * p.sw - p.pl + t * p.dw) * p.c;
        const ptrdiff_t k0 = (static_cast<ptrdiff_t>(i) * p.kw + t) * p.c * kDensePanel;
        for (int c = 0; c < p.c; ++c) {
          vf wv[V];
          for (int v = 0; v < V; ++v) wv[v] = load(wv0[v] + k0 + c * kDensePanel);
          for (int u = 0; u < U; ++u) {
            const float xv = xp[u * step + c];
            for (int v = 0; v < V; ++v) acc[u][v] += wv[v] * xv;
          }
        }
      }
    }
  } else {
    for_taps(p, oh, ow, [&](ptrdiff_t tap, ptrdiff_t at) {
      for (int c = 0; c < p.c; ++c) {
        const float xv = x[at + c];
        for (int v = 0; v < V; ++v) acc[0][v] += load(wv0[v] + (tap * p.c + c) * kDensePanel) * xv;
      }
    });
  }
  for (int u = 0; u < U; ++u) {
    float* yo = y + static_cast<ptrdiff_t>(ow + u) * n;
    for (int v = 0; v < V; ++v) {
      const vf r = relu ? (acc[u][v] > vf{} ? acc[u][v] : vf{}) : acc[u][v];
      const int lane = (v0 + v) * W;
      if (lane + W <= n) {
        store(yo + lane, r);
      } else {  // the last channels: part of a vector
        float tail[W];
        store(tail, r);
        for (int j = lane; j < n; ++j) yo[j] = tail[j - lane];
      }
    }
  }
}

template <int V>
void conv_vectors(const Window2d& p, const float* x, const float* w, int k, int n, const float* bias, bool relu, int oh,
                  int v0, int i0, int i1, int lo, int hi, float* y) {
  // U x V accumulators: 10 (16 vector registers: with V weights and a broadcast) or 20 (32 registers)
  constexpr int U = (W == 8 ? 10 : 20) / V;
  for (int ow = 0; ow < lo; ++ow) conv_pixels<1, V>(p, x, w, k, n, bias, relu, oh, ow, v0, false, i0, i1, y);
  int ow = lo;
  for (; ow + U <= hi; ow += U) conv_pixels<U, V>(p, x, w, k, n, bias, relu, oh, ow, v0, true, i0, i1, y);
  for (; ow < hi; ++ow) conv_pixels<1, V>(p, x, w, k, n, bias, relu, oh, ow, v0, true, i0, i1, y);
  for (ow = hi; ow < p.wo; ++ow) conv_pixels<1, V>(p, x, w, k, n, bias, relu, oh, ow, v0, false, i0, i1, y);
}

void conv_row(const Window2d& p, const float* x, const float* w, int k, int n, const float* bias, bool relu, int oh,
              float* y) {
  const RowInterior ri = row_interior(p, oh);
  const int i0 = ri.i0, i1 = ri.i1, lo = ri.lo, hi = ri.hi;
  const int nv = (n + W - 1) / W;
  int v0 = 0;
  if (W != 8) {
    for (; v0 + 4 <= nv; v0 += 4) conv_vectors<4>(p, x, w, k, n, bias, relu, oh, v0, i0, i1, lo, hi, y);
  }
  for (; v0 + 2 <= nv; v0 += 2) conv_vectors<2>(p, x, w, k, n, bias, relu, oh, v0, i0, i1, lo, hi, y);
  for (; v0 < nv; ++v0) conv_vectors<1>(p, x, w, k, n, bias, relu, oh, v0, i0, i1, lo, hi, y);
}

// Winograd F(M x M, 3x3) (engine_ops.h), M = 2 or 4, on tiles of A = M + 2 pixels. bt: o = B^T d
// for one line of A values (d[k * s], o[k * os]); at: o = A^T m for one line of A products (M out).
template <int M, class T>
inline void wino_bt(const T* d, int s, T* o, int os) {
  if (M == 2) {
    o[0] = d[0] - d[2 * s];
    o[os] = d[s] + d[2 * s];
    o[2 * os] = d[2 * s] - d[s];
    o[3 * os] = d[s] - d[3 * s];
  } else {
    const T d1 = d[s], d2 = d[2 * s], d3 = d[3 * s], d4 = d[4 * s];
    o[0] = 4.0f * d[0] - 5.0f * d2 + d4;
    o[os] = d4 + d3 - 4.0f * (d1 + d2);
    o[2 * os] = d4 - d3 + 4.0f * (d1 - d2);
    o[3 * os] = d4 - d2 + 2.0f * (d3 - d1);
    o[4 * os] = d4 - d2 - 2.0f * (d3 - d1);
    o[5 * os] = 4.0f * d1 - 5.0f * d3 + d[5 * s];
  }
}

template <int M, class T>
inline void wino_at(const T* m, int s, T* o, int os) {
  if (M == 2) {
    o[0] = m[0] + m[s] + m[2 * s];
    o[os] = m[s] - m[2 * s] - m[3 * s];
  } else {
    const T a = m[s] + m[2 * s], b = m[s] - m[2 * s], c = m[3 * s] + m[4 * s], d = m[3 * s] - m[4 * s];
    o[0] = m[0] + a + c;
    o[os] = b + 2.0f * d;
    o[2 * os] = a + 4.0f * c;
    o[3 * os] = b + 8.0f * d + m[5 * s];
  }
}

// Channels j .. j + V of one tile (V = W, or 1 for the tail): the A x A input pixels (zero outside the
// image: rows[i] null, cols[t] < 0) to B^T d B, rows first, then columns.
template <int M, int V, bool Interior>
inline void winograd_in_vectors(const float* const rows[], const int cols[], int j, float* v, ptrdiff_t ld) {
  typedef float vv __attribute__((vector_size(V * 4)));
  typedef float vvu __attribute__((vector_size(V * 4), aligned(4), may_alias));
  constexpr int A = M + 2;
  vv d[A][A], r[A][A];
  for (int i = 0; i < A; ++i) {
    for (int t = 0; t < A; ++t) {
      d[i][t] = Interior || (rows[i] != nullptr && cols[t] >= 0) ? *reinterpret_cast<const vvu*>(rows[i] + cols[t] + j)
                                                                 : vv{};
    }
  }
  for (int t = 0; t < A; ++t) wino_bt<M>(&d[0][t], A, &r[0][t], A);
  for (int i = 0; i < A; ++i) {
    wino_bt<M>(&r[i][0], 1, &d[i][0], 1);
    for (int t = 0; t < A; ++t) *reinterpret_cast<vvu*>(v + static_cast<ptrdiff_t>(A * i + t) * ld + j) = d[i][t];
  }
}

template <int M>
void winograd_in_tile(const Window2d& p, const float* x, int ty, int tx, float* v, ptrdiff_t ld) {
  constexpr int A = M + 2;
  const float* rows[A];
  int cols[A];
  bool interior = true;  // every pixel of the tile inside the image: loads without the checks
  for (int i = 0; i < A; ++i) {
    const int ih = M * ty - p.pt + i, iw = M * tx - p.pl + i;
    rows[i] = ih >= 0 && ih < p.h ? x + static_cast<ptrdiff_t>(ih) * p.w * p.c : nullptr;
    cols[i] = iw >= 0 && iw < p.w ? iw * p.c : -1;
    interior = interior && rows[i] != nullptr && cols[i] >= 0;
  }
  int j = 0;
  if (interior) {
    for (; j + W <= p.c; j += W) winograd_in_vectors<M, W, true>(rows, cols, j, v, ld);
  }
  for (; j + W <= p.c; j += W) winograd_in_vectors<M, W, false>(rows, cols, j, v, ld);
  for (; j < p.c; ++j) winograd_in_vectors<M, 1, false>(rows, cols, j, v, ld);
}

void winograd_in(const Window2d& p, int m, const float* x, int ty, int tx, float* v, ptrdiff_t ld) {
  if (m == 2) {
    winograd_in_tile<2>(p, x, ty, tx, v, ld);
  } else {
    winograd_in_tile<4>(p, x, ty, tx, v, ld);
  }
}

// Channels j .. j + V of a tile's outputs: A^T m A plus bias, plus the residual (res, laid out as y,
// may be null), then ReLU when relu; the rows x cols outputs inside the image are stored.
template <int M, int V>
inline void winograd_out_vectors(const float* m, ptrdiff_t ld, int n, const float* bias, const float* res, bool relu,
                                 int rows, int cols, int j, float* y, ptrdiff_t ldy) {
  typedef float vv __attribute__((vector_size(V * 4)));
  typedef float vvu __attribute__((vector_size(V * 4), aligned(4), may_alias));
  constexpr int A = M + 2;
  vv mv[A][A], s[M][A], o[M][M];
  for (int e = 0; e < A * A; ++e) mv[e / A][e % A] = *reinterpret_cast<const vvu*>(m + e * ld + j);
  for (int t = 0; t < A; ++t) wino_at<M>(&mv[0][t], A, &s[0][t], A);
  const vv b = bias != nullptr ? *reinterpret_cast<const vvu*>(bias + j) : vv{};
  for (int a = 0; a < rows; ++a) {
    wino_at<M>(&s[a][0], 1, &o[a][0], 1);
    for (int c = 0; c < cols; ++c) {
      vv r = o[a][c] + b;
      if (res != nullptr) r = r + *reinterpret_cast<const vvu*>(res + a * ldy + c * n + j);
      *reinterpret_cast<vvu*>(y + a * ldy + c * n + j) = relu ? (r > vv{} ? r : vv{}) : r;
    }
  }
}

template <int M>
void winograd_out_tile(const float* m, ptrdiff_t ld, int n, const float* bias, const float* res, bool relu, int rows,
                       int cols, float* y, ptrdiff_t ldy) {
  int j = 0;
  for (; j + W <= n; j += W) winograd_out_vectors<M, W>(m, ld, n, bias, res, relu, rows, cols, j, y, ldy);
  for (; j < n; ++j) winograd_out_vectors<M, 1>(m, ld, n, bias, res, relu, rows, cols, j, y, ldy);
}

void winograd_out(int m, const float* mm, ptrdiff_t ld, int n, const float* bias, const float* res, bool relu,
                  int rows, int cols, float* y, ptrdiff_t ldy) {
  if (m == 2) {
    winograd_out_tile<2>(mm, ld, n, bias, res, relu, rows, cols, y, ldy);
  } else {
    winograd_out_tile<4>(mm, ld, n, bias, res, relu, rows, cols, y, ldy);
  }
}

// Channels j .. j + V of pixel (oh, ow) of a pooling (V = W, or 1 for the tail).
template <int V>
inline void pool_pixel(const Window2d& p, int mode, const float* x, int oh, int ow, int j, float* y) {
  typedef float vv __attribute__((vector_size(V * 4)));
  typedef float vvu __attribute__((vector_size(V * 4), aligned(4), may_alias));
  vv acc = mode == 0 ? vv{} - INFINITY : vv{};
  int taps = 0;
  for_taps(p, oh, ow, [&](ptrdiff_t, ptrdiff_t at) {
    const vv v = *reinterpret_cast<const vvu*>(x + at + j);
    if (mode == 0) {
      acc = ((v > acc) | (v != v)) ? v : acc;  // NaN wins, as in torch
    } else {
      acc += v;
    }
    ++taps;
  });
  if (mode != 0) {
    const int count = mode == 1 ? p.kh * p.kw : taps;
    acc = count > 0 ? acc * (1.0f / static_cast<float>(count)) : vv{};
  }
  *reinterpret_cast<vvu*>(y + j) = acc;
}

// Channels j .. j + NV W of output pixel (oh, ow) of a pool: NV vectors per walk over the taps (one
// vector per walk spent more on the walk than on the maxima).
template <int NV>
inline void pool_vectors(const Window2d& p, int mode, const float* x, int oh, int ow, int j, float* y) {
  vf acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = mode == 0 ? vf{} - INFINITY : vf{};
  int taps = 0;
  for_taps(p, oh, ow, [&](ptrdiff_t, ptrdiff_t at) {
    for (int v = 0; v < NV; ++v) {
      const vf e = load(x + at + j + v * W);
      if (mode == 0) {
        acc[v] = ((e > acc[v]) | (e != e)) ? e : acc[v];  // NaN wins, as in torch
      } else {
        acc[v] += e;
      }
    }
    ++taps;
  });
  if (mode != 0) {
    const int count = mode == 1 ? p.kh * p.kw : taps;
    for (int v = 0; v < NV; ++v) acc[v] = count > 0 ? acc[v] * (1.0f / static_cast<float>(count)) : vf{};
  }
  for (int v = 0; v < NV; ++v) *reinterpret_cast<vfu*>(y + j + v * W) = acc[v];
}

void pool_row(const Window2d& p, int mode, const float* x, int oh, float* y) {
  for (int ow = 0; ow < p.wo; ++ow) {
    float* yo = y + static_cast<ptrdiff_t>(ow) * p.c;
    int j = 0;
    for (; j + 4 * W <= p.c; j += 4 * W) pool_vectors<4>(p, mode, x, oh, ow, j, yo);
    for (; j + 2 * W <= p.c; j += 2 * W) pool_vectors<2>(p, mode, x, oh, ow, j, yo);
    for (; j + W <= p.c; j += W) pool_vectors<1>(p, mode, x, oh, ow, j, yo);
    for (; j < p.c; ++j) pool_pixel<1>(p, mode, x, oh, ow, j, yo);
  }
}

}  // namespace
}  // namespace edgecompress

#define EC_ENGINE_KERNEL(sym, name, isa, needs, ws8)                                                    \
  namespace edgecompress {                                                                               \
  extern const WinogradS8Kernel ws8;                                                                     \
  extern const EngineKernel sym;                                                                         \
  const EngineKernel sym = {name, isa, needs, norm_row, softmax_row, gelu, binary, glu, dot_rows, gemm_nn, \
                            unary, depthwise_row, pool_row, conv_row, winograd_in, winograd_out, &ws8};   \
  }
