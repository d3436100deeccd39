// The winograd_s8 kernels (winograd_s8.h), one source for every tier. The transforms are written for
// vectors of EC_WS8_LANES int16 (GCC / Clang vector extensions, so each tier's flags make them SSE2,
// AVX2, AVX-512 or NEON code); the product's micro-kernel is the tier's 16-bit multiply-add
// (vpmaddwd, vmlal) chosen by EC_WS8_TIER: 0 plain C++, 1 AVX2, 2 AVX-512 BW, 3 NEON.
//
// Built with -ffp-contract=off like the other integer families: the epilogue's float operations are
// gemm_s8's, in the same order, so a winograd_s8 node gives the same bits as its conv2d node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "edgecompress/winograd_s8.h"
#include "../common/epilogue.h"
#include "../common/mca.h"
#include "../common/unroll.h"

#if EC_WS8_TIER == 1 || EC_WS8_TIER == 2
#include <immintrin.h>

#include "../x86_dot.h"
#elif EC_WS8_TIER == 3
#include <arm_neon.h>
#endif

#if !defined(EC_WS8_LANES) || !defined(EC_WS8_TIER)
#error "define EC_WS8_LANES (int16 values per vector) and EC_WS8_TIER before including winograd_s8_impl.h"
#endif

namespace edgecompress {
namespace {

// Vectors of N lanes (N = 1: plain scalars, which the vector extensions do not take): int16 and
// uint8 / int8 for the input transform, uint32 / int32 / float for the output transform.
template <int N>
struct Lanes {
  typedef int16_t s16 __attribute__((vector_size(N * 2)));
  typedef uint8_t u8 __attribute__((vector_size(N)));
  typedef int8_t s8 __attribute__((vector_size(N)));
  typedef uint32_t u32 __attribute__((vector_size(N * 4)));
  typedef int32_t s32 __attribute__((vector_size(N * 4)));
  typedef float f32 __attribute__((vector_size(N * 4)));
  template <class To, class From>
  static To convert(From v) { return __builtin_convertvector(v, To); }
};
template <>
struct Lanes<1> {
  typedef int16_t s16;
  typedef uint8_t u8;
  typedef int8_t s8;
  typedef uint32_t u32;
  typedef int32_t s32;
  typedef float f32;
  template <class To, class From>
  static To convert(From v) { return static_cast<To>(v); }
};

template <class T>
inline T load_as(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <class T>
inline void store_as(void* p, T v) { std::memcpy(p, &v, sizeof(T)); }

// ---- input transform: N channels of the 16 pixels of a tile ----
template <int N, bool Signed>
inline void in_lanes(const uint8_t* const src[16], int zp, int j, int16_t* v, ptrdiff_t ld) {
  using L = Lanes<N>;
  typedef typename L::s16 vs;
  vs d[16];
  for (int e = 0; e < 16; ++e) {
    if constexpr (Signed) {
      d[e] = L::template convert<vs>(load_as<typename L::s8>(src[e] + j));
    } else {
      d[e] = L::template convert<vs>(load_as<typename L::u8>(src[e] + j)) - static_cast<int16_t>(zp);
    }
  }
  // B^T d (down each column b of the tile), then (B^T d) B (along each row a)
  vs t[16];
  for (int b = 0; b < 4; ++b) {
    t[b] = d[b] - d[8 + b];
    t[4 + b] = d[4 + b] + d[8 + b];
    t[8 + b] = d[8 + b] - d[4 + b];
    t[12 + b] = d[4 + b] - d[12 + b];
  }
  for (int a = 0; a < 4; ++a) {
    const vs* r = t + 4 * a;
    store_as<vs>(v + (4 * a) * ld + j, r[0] - r[2]);
    store_as<vs>(v + (4 * a + 1) * ld + j, r[1] + r[2]);
    store_as<vs>(v + (4 * a + 2) * ld + j, r[2] - r[1]);
    store_as<vs>(v + (4 * a + 3) * ld + j, r[1] - r[3]);
  }
}

template <bool Signed>
void in_tile(const Window2d& p, const uint8_t* q, const uint8_t* pad, int zp, int ty, int tx, int16_t* v,
             ptrdiff_t ld) {
  const uint8_t* src[16];
  const int r0 = 2 * ty - p.pt, c0 = 2 * tx - p.pl;
  for (int i = 0; i < 4; ++i) {
    for (int t = 0; t < 4; ++t) {
      const int r = r0 + i, c = c0 + t;
      const bool inside = r >= 0 && r < p.h && c >= 0 && c < p.w;
      src[4 * i + t] = inside ? q + (static_cast<ptrdiff_t>(r) * p.w + c) * p.c : pad;
    }
  }
  constexpr int L = EC_WS8_LANES;
  int j = 0;
  for (; j + L <= p.c; j += L) in_lanes<L, Signed>(src, zp, j, v, ld);
  for (; j < p.c; ++j) in_lanes<1, Signed>(src, zp, j, v, ld);
  if (p.c % 2 != 0) {
    for (int e = 0; e < 16; ++e) v[e * ld + p.c] = 0;
  }
}

void ws8_in(const Window2d& p, const uint8_t* q, const uint8_t* pad, bool is_signed, int zp, int ty, int tx,
            int16_t* v, ptrdiff_t ld) {
  if (is_signed) in_tile<true>(p, q, pad, 0, ty, tx, v, ld);
  else in_tile<false>(p, q, pad, zp, ty, tx, v, ld);
}

// ---- the product: M rows of a with one panel of 16 outputs ----
#if EC_WS8_TIER == 1
constexpr int kMr = 6;  // 12 accumulators, two weight vectors, one broadcast
template <int M>
void ws8_tile(int kp, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c, ptrdiff_t ldc) {
  __m256i acc[M][2];
  for (int r = 0; r < M; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  auto step = [&](int k) __attribute__((always_inline)) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * k));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32 * k + 16));
    for (int r = 0; r < M; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, 4);
      const __m256i av = _mm256_set1_epi32(pair);
      acc[r][0] = madd256(acc[r][0], av, b0);
      acc[r][1] = madd256(acc[r][1], av, b1);
    }
  };
  // two k pairs an iteration (the counter and pointer updates once per two): 2-5% faster on Zen 3,
  // where this kernel runs at up to about 90% of the vpmaddwd + vpaddd peak
  int k = 0;
  for (; k + 2 <= kp; k += 2) {
    step(k);
    step(k + 1);
  }
  if (k < kp) step(k);
  // the panel's 16 columns: b0's pairs are columns 0..7, b1's 8..15
  for (int r = 0; r < M; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8), acc[r][1]);
  }
}
#elif EC_WS8_TIER == 2
constexpr int kMr = 12;  // one 512-bit vector holds a panel's 16 columns x 2 k
template <int M>
void ws8_tile(int kp, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c, ptrdiff_t ldc) {
  __m512i acc[M];
  for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_si512();
  for (int k = 0; k < kp; ++k) {
    const __m512i bv = _mm512_loadu_si512(b + 32 * k);
    for (int r = 0; r < M; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, 4);
      acc[r] = _mm512_add_epi32(acc[r], _mm512_madd_epi16(_mm512_set1_epi32(pair), bv));
    }
  }
  for (int r = 0; r < M; ++r) _mm512_storeu_si512(c + r * ldc, acc[r]);
}
#elif EC_WS8_TIER == 3
constexpr int kMr = 4;  // 16 accumulators of 4 columns, four weight vectors
template <int M>
void ws8_tile(int kp, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c, ptrdiff_t ldc) {
  int32x4_t acc[M][4];
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = vdupq_n_s32(0);
  EC_MCA_LOOP("winograd_s8_neon", M, 0);
  for (int k = 0; k < kp; ++k) {
    // val[0]: k of columns 0..7 (8..15), val[1]: k + 1
    const int16x8x2_t lo = vld2q_s16(b + 32 * k), hi = vld2q_s16(b + 32 * k + 16);
    // each row's pair in one load (lanes 0, 1: k, k + 1), multiplied by lane
    int16x4_t av[M];
    for (int r = 0; r < M; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, 4);
      av[r] = vreinterpret_s16_s32(vdup_n_s32(pair));
    }
    // k's products for every accumulator, then k + 1's: an in-order core (Cortex-A55) never waits
    // on the accumulator it has just written
    unroll<2>([&](auto h) {
      constexpr int H = decltype(h)::value;
      for (int r = 0; r < M; ++r) {
        acc[r][0] = vmlal_lane_s16(acc[r][0], vget_low_s16(lo.val[H]), av[r], H);
        acc[r][1] = vmlal_high_lane_s16(acc[r][1], lo.val[H], av[r], H);
        acc[r][2] = vmlal_lane_s16(acc[r][2], vget_low_s16(hi.val[H]), av[r], H);
        acc[r][3] = vmlal_high_lane_s16(acc[r][3], hi.val[H], av[r], H);
      }
    });
  }
  for (int r = 0; r < M; ++r)
    for (int v = 0; v < 4; ++v) vst1q_s32(c + r * ldc + 4 * v, acc[r][v]);
}
#else
constexpr int kMr = 4;
template <int M>
void ws8_tile(int kp, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c, ptrdiff_t ldc) {
  uint32_t acc[M][16] = {};
  for (int k = 0; k < kp; ++k) {
    for (int r = 0; r < M; ++r) {
      const int32_t a0 = a[r * lda + 2 * k], a1 = a[r * lda + 2 * k + 1];
      for (int o = 0; o < 16; ++o) {
        const int32_t s = a0 * b[32 * k + 2 * o] + a1 * b[32 * k + 2 * o + 1];  // |s| < 2^22
        acc[r][o] += static_cast<uint32_t>(s);
      }
    }
  }
  for (int r = 0; r < M; ++r)
    for (int o = 0; o < 16; ++o) c[r * ldc + o] = static_cast<int32_t>(acc[r][o]);
}
#endif

// Panel after panel (its kp x 16 pairs stay in L1 for every row of a), rows kMr at a time.
void ws8_gemm(int m, int kp, int panels, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c,
              ptrdiff_t ldc) {
  for (int pn = 0; pn < panels; ++pn) {
    const int16_t* bp = b + static_cast<ptrdiff_t>(pn) * kp * 32;
    for (int r = 0; r < m; r += kMr) {
      const int rows = m - r < kMr ? m - r : kMr;
      with_rows<kMr>(rows, [&](auto mr) {
        ws8_tile<decltype(mr)::value>(kp, a + r * lda, lda, bp, c + r * ldc + 16 * pn, ldc);
      });
    }
  }
}

// ---- output transform and epilogue: N outputs of a tile ----
template <int N>
inline void out_lanes(const int32_t* mm, ptrdiff_t ld, int n, float rs, const float* cs, const float* bias,
                      const float* res, bool relu, int rows, int cols, int j, float* y, ptrdiff_t ldy) {
  using L = Lanes<N>;
  typedef typename L::u32 vu;
  typedef typename L::s32 vi;
  typedef typename L::f32 vf;
  vu m[16];
  for (int e = 0; e < 16; ++e) m[e] = load_as<vu>(mm + e * ld + j);
  // A^T m (rows), then (A^T m) A (columns); unsigned: two's-complement wrap-around
  vu t[8];
  for (int b = 0; b < 4; ++b) {
    t[b] = m[b] + m[4 + b] + m[8 + b];
    t[4 + b] = m[4 + b] - m[8 + b] - m[12 + b];
  }
  const vf scale = rs * load_as<vf>(cs + j);
  const vf vbias = bias != nullptr ? load_as<vf>(bias + j) : vf{};
  const vf zero{};
  for (int i = 0; i < rows; ++i) {
    const vu* r = t + 4 * i;
    const vu o[2] = {r[0] + r[1] + r[2], r[1] - r[2] - r[3]};
    for (int k = 0; k < cols; ++k) {
      // 4 times the convolution's sum, so the arithmetic shift divides exactly
      const vi q = L::template convert<vi>(o[k]) >> 2;
      vf f = L::template convert<vf>(q) * scale;
      if (bias != nullptr) f = f + vbias;
      if (res != nullptr) f = f + load_as<vf>(res + i * ldy + k * n + j);
      if (relu) f = f > zero ? f : zero;  // NaN and -0 give +0, as epilogue.h's relu
      store_as<vf>(y + i * ldy + k * n + j, f);
    }
  }
}

void ws8_out(const int32_t* mm, ptrdiff_t ld, int n, float rs, const float* cs, bool wide, const float* bias,
             const float* res, bool relu, int rows, int cols, float* y, ptrdiff_t ldy) {
  if (wide) {
    // a scale product is not a normal float: gemm_s8's float64 dequantization, one value at a time
    for (int j = 0; j < n; ++j) {
      uint32_t m[16];
      for (int e = 0; e < 16; ++e) m[e] = static_cast<uint32_t>(mm[e * ld + j]);
      for (int i = 0; i < rows; ++i) {
        uint32_t t[4];
        for (int b = 0; b < 4; ++b) t[b] = i == 0 ? m[b] + m[4 + b] + m[8 + b] : m[4 + b] - m[8 + b] - m[12 + b];
        const uint32_t o[2] = {t[0] + t[1] + t[2], t[1] - t[2] - t[3]};
        for (int k = 0; k < cols; ++k) {
          float v = dequantize_wide(static_cast<int32_t>(o[k]) >> 2, rs, cs[j]);
          if (bias != nullptr) v = v + bias[j];
          if (res != nullptr) v = v + res[i * ldy + k * n + j];
          if (relu) v = edgecompress::relu(v);
          y[i * ldy + k * n + j] = v;
        }
      }
    }
    return;
  }
  constexpr int L = EC_WS8_LANES / 2;
  int j = 0;
  for (; j + L <= n; j += L) out_lanes<L>(mm, ld, n, rs, cs, bias, res, relu, rows, cols, j, y, ldy);
  for (; j < n; ++j) out_lanes<1>(mm, ld, n, rs, cs, bias, res, relu, rows, cols, j, y, ldy);
}

}  // namespace
}  // namespace edgecompress

#define EC_WINOGRAD_S8_KERNEL(sym, name, isa, needs) \
  namespace edgecompress {                           \
  extern const WinogradS8Kernel sym;                 \
  const WinogradS8Kernel sym = {name, isa, needs, ws8_in, ws8_gemm, ws8_out}; \
  }
