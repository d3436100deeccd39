// Code every gemm_s8 tier shares: activation quantization + packing, and the fused epilogue.
//
// Plain C++ that each tier's translation unit compiles with its own flags, so the compiler vectorizes
// it for that tier. Everything here has internal linkage (anonymous namespace): an inline function
// with external linkage compiled with AVX-512 flags in one file could otherwise be the copy the linker
// keeps for every caller, and run on a CPU without AVX-512. For the same reason, tier files use no
// standard-library templates.
//
// The float arithmetic is written out operation by operation and the project builds with
// -ffp-contract=off, so every tier produces the same bits as the numpy oracle
// (python/edgecompress/reference): quantization rounds x * (1 / s) half to even as np.round does, and the
// epilogue computes float32(y_int) * (row_scale * col_scale) + bias in float32 for rows where every
// scale product is a normal float, and y_int * row_scale * col_scale in float64 (rounded to float32)
// for the rare rows where one is not: there a float32 product could overflow (to inf, or to NaN
// against a zero accumulator) although the result is finite, or lose precision as a subnormal.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "edgecompress/gemm_s8.h"

namespace edgecompress {
namespace {

// Round half to even for |t| <= 2^22 (adding 1.5 * 2^23 leaves no fraction bits), vectorizable
// on every tier, equal to np.round for the clamped values used here.
inline float round_half_even(float t) {
  const float magic = 12582912.0f;
  return (t + magic) - magic;
}

inline float clampf(float t, float lo, float hi) {
  t = t < lo ? lo : t;
  return t > hi ? hi : t;
}

inline uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

inline float bits_float(uint32_t b) {
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// Maps float bits to integers with the same order (for non-NaN values): the reductions below run
// on integers, which compilers vectorize without -ffast-math (a float max reduction they do not).
inline int32_t ordered(uint32_t b) { return static_cast<int32_t>(b ^ ((static_cast<uint32_t>(static_cast<int32_t>(b) >> 31)) & 0x7fffffffu)); }
inline float unordered(int32_t o) { return bits_float(static_cast<uint32_t>(o ^ ((o >> 31) & 0x7fffffff))); }

constexpr uint32_t kInfBits = 0x7f800000u;  // |x| bits at or above this: Inf or NaN

constexpr float kMinNormal = 1.17549435e-38f;

// Quantizes one row into `q`: round_half_even(x * (1 / s)) + zp, clamped, as the data type's bits
// (int8 or uint8), each byte XORed with `flip`. Multiplying by the row's reciprocal (one division per
// row) keeps the loop free of divisions; the oracle does the same. Dynamic scales below the smallest
// normal float become 1 (such rows quantize to zero either way). Returns false when the row has NaN
// or Inf.
inline bool quantize_row(const float* x, int k, const ActQuant& aq, uint8_t flip, uint8_t* q, float* scale,
                         int32_t* zero_point) {
  float s = aq.scale;
  int32_t zp = 0;
  float lo, hi;  // clamp range of round(x * inv) + zp
  uint32_t abs_max = 0;
  if (aq.scheme == ActScheme::dynamic_asymmetric) {
    int32_t mn = 0, mx = 0;  // ordered(0.0f) == 0: the range always includes zero
    for (int i = 0; i < k; ++i) {
      const uint32_t b = float_bits(x[i]);
      const uint32_t a = b & 0x7fffffffu;
      abs_max = a > abs_max ? a : abs_max;
      const int32_t o = ordered(b);
      mn = o < mn ? o : mn;
      mx = o > mx ? o : mx;
    }
    if (abs_max >= kInfBits) return false;
    const float fmn = unordered(mn), fmx = unordered(mx);
    s = fmx / 255.0f - fmn / 255.0f;  // (mx - mn) / 255 could overflow
    if (!(s >= kMinNormal)) s = 1.0f;
    zp = static_cast<int32_t>(clampf(round_half_even(clampf(-fmn * (1.0f / s), 0.0f, 255.0f)), 0.0f, 255.0f));
    lo = 0.0f, hi = 255.0f;
  } else {
    for (int i = 0; i < k; ++i) {
      const uint32_t a = float_bits(x[i]) & 0x7fffffffu;
      abs_max = a > abs_max ? a : abs_max;
    }
    if (abs_max >= kInfBits) return false;
    if (aq.scheme == ActScheme::dynamic_symmetric) {
      s = bits_float(abs_max) / 127.0f;
      if (!(s >= kMinNormal)) s = 1.0f;
      lo = -127.0f, hi = 127.0f;
    } else if (aq.scheme == ActScheme::static_symmetric) {
      lo = -128.0f, hi = 127.0f;  // the caller guarantees a normal, positive scale
    } else {
      zp = aq.zero_point;
      lo = 0.0f, hi = 255.0f;
    }
  }
  const float inv = 1.0f / s, fzp = static_cast<float>(zp);
  const int32_t ilo = static_cast<int32_t>(lo), ihi = static_cast<int32_t>(hi);
  const int32_t o_lo = ordered(float_bits(-512.0f)), o_hi = ordered(float_bits(512.0f));
  // Clamping x * inv to +-512 first keeps the rounding trick exact and changes no result: anything
  // beyond it lands outside [lo, hi] either way. Both clamps run on integers (the first on the
  // order-preserving image of the float; x * inv is never NaN here): a float clamp written as
  // comparisons compiles, without -ffast-math, to mask juggling that cost 1-4x the whole loop.
  for (int i = 0; i < k; ++i) {
    int32_t o = ordered(float_bits(x[i] * inv));
    o = o < o_lo ? o_lo : o;
    o = o > o_hi ? o_hi : o;
    int32_t v = static_cast<int32_t>(round_half_even(unordered(o)) + fzp);
    v = v < ilo ? ilo : v;
    v = v > ihi ? ihi : v;
    q[i] = static_cast<uint8_t>(static_cast<uint8_t>(v) ^ flip);
  }
  *scale = s;
  *zero_point = zp;
  return true;
}

// Packs rows of A into a strip [kblocks][a_rows][kKr] of the kernel's A domain (kSigned) and element
// width (kBytes). See gemm_s8.h for the meaning of row_offset.
template <bool kSigned, int kBytes, int kKr>
bool pack_a(const void* x, ptrdiff_t ldx, int rows, int k, const ActQuant& aq, void* strip_v,
            float* row_scale, int32_t* row_offset, uint8_t* scratch, int a_rows) {
  const int kblocks = (k + kKr - 1) / kKr;
  const bool data_signed = aq.scheme == ActScheme::dynamic_symmetric ||
                           aq.scheme == ActScheme::static_symmetric || aq.scheme == ActScheme::raw_s8;
  // Moving int8 data into the u8 domain adds 128 (flip the top bit), uint8 into s8 subtracts 128.
  const uint8_t flip = data_signed == kSigned ? 0 : 0x80;
  const int32_t shift = data_signed == kSigned ? 0 : (kSigned ? -128 : 128);
  uint8_t* strip = static_cast<uint8_t*>(strip_v);
  for (int r = 0; r < a_rows; ++r) {
    if (r < rows) {
      int32_t zp = 0;
      if (aq.scheme == ActScheme::raw_s8 || aq.scheme == ActScheme::raw_u8) {
        const uint8_t* src = static_cast<const uint8_t*>(x) + r * ldx;
        for (int i = 0; i < k; ++i) scratch[i] = src[i] ^ flip;
        row_scale[r] = 1.0f;
      } else if (!quantize_row(static_cast<const float*>(x) + r * ldx, k, aq, flip, scratch, &row_scale[r], &zp)) {
        return false;
      }
      row_offset[r] = shift + zp;
      for (int i = k; i < kblocks * kKr; ++i) scratch[i] = 0;
    } else {
      std::memset(scratch, 0, static_cast<size_t>(kblocks) * kKr);
    }
    for (int kb = 0; kb < kblocks; ++kb) {
      const uint8_t* src = scratch + kb * kKr;
      const size_t at = (static_cast<size_t>(kb) * a_rows + r) * kKr;
      if (kBytes == 1) {
        std::memcpy(strip + at, src, kKr);
      } else {
        int16_t* dst = reinterpret_cast<int16_t*>(strip) + at;
        for (int j = 0; j < kKr; ++j) {
          dst[j] = kSigned ? static_cast<int16_t>(static_cast<int8_t>(src[j])) : static_cast<int16_t>(src[j]);
        }
      }
    }
  }
  return true;
}

// Dispatches a runtime row count 1..kMax to f(Rows<M>{}), so micro-kernels keep their tile in registers.
template <int N>
struct Rows {
  static constexpr int value = N;
};

template <int kMax, int M = 1, class F>
inline void with_rows(int m, F&& f) {
  if constexpr (M <= kMax) {
    if (m == M) return f(Rows<M>{});
    with_rows<kMax, M + 1>(m, f);
  }
}

// Calls f(Rows<I>{}) for I = 0..N-1, so lane numbers derived from I are constant expressions.
template <int N, int I = 0, class F>
__attribute__((always_inline)) inline void unroll(F&& f) {
  if constexpr (I < N) {
    f(Rows<I>{});
    unroll<N, I + 1>(f);
  }
}

// Independent accumulator sets along K for a tile of M rows with `per_row` accumulators each: enough
// chains in flight to hide the dot-product latency when M is small (the GEMV case).
constexpr int k_unroll(int m, int per_row, int chains) {
  const int u = chains / (m * per_row);
  return u < 1 ? 1 : (u > 4 ? 4 : u);
}

inline float gelu(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }

// Applies the epilogue to an int32 accumulator tile acc[r * kNr + c] and stores t.m x t.n results.
// Everything is read into locals first: stores through y could otherwise alias the tile's fields
// and pointers, and the compiler would reload them for every element instead of vectorizing.
template <int kNr>
void finish_tile(const int32_t* __restrict acc, const GemmS8Tile& t) {
  const int m = t.m, n = t.n;
  const ptrdiff_t ldy = t.ldy;
  const int32_t* __restrict colsum = t.colsum;
  const int32_t* __restrict row_offset = t.row_offset;
  if (t.y_i32 != nullptr) {
    for (int r = 0; r < m; ++r) {
      const uint32_t off = static_cast<uint32_t>(row_offset[r]);
      const int32_t* __restrict a = acc + r * kNr;
      int32_t* __restrict y = t.y_i32 + r * ldy;
      for (int c = 0; c < n; ++c) {
        y[c] = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
      }
    }
    return;
  }
  const float* __restrict row_scale = t.row_scale;
  const float* __restrict col_scale = t.col_scale;
  const float* __restrict bias = t.bias;
  const Activation act = t.act;
  for (int r = 0; r < m; ++r) {
    const uint32_t off = static_cast<uint32_t>(row_offset[r]);
    const int32_t* __restrict a = acc + r * kNr;
    float* __restrict y = t.y + r * ldy;
    const float rs = row_scale[r];
    if (rs * t.col_scale_min >= 1.17549435e-38f && rs * t.col_scale_max <= 3.40282347e38f) {
      // Every scale product of the row is a normal float: float32 throughout.
      for (int c = 0; c < n; ++c) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
        y[c] = static_cast<float>(v) * (rs * col_scale[c]);
      }
    } else {
      // A product would overflow (inf, or NaN against a zero accumulator) or lose precision: float64.
      for (int c = 0; c < n; ++c) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
        y[c] = static_cast<float>(static_cast<double>(v) * static_cast<double>(rs) * static_cast<double>(col_scale[c]));
      }
    }
    if (bias != nullptr) {
      for (int c = 0; c < n; ++c) y[c] = y[c] + bias[c];
    }
    if (act == Activation::relu) {
      for (int c = 0; c < n; ++c) y[c] = y[c] > 0.0f ? y[c] : 0.0f;
    } else if (act == Activation::gelu) {
      for (int c = 0; c < n; ++c) y[c] = gelu(y[c]);
    }
  }
}

}  // namespace
}  // namespace edgecompress

// Defines the registry entry of one kernel. Its pack_a wrapper binds the tier's packing parameters.
#define EC_GEMM_S8_KERNEL(var, name, isa, mr, nr, kr, a_bytes, a_signed, m_align, needs, run)          \
  namespace edgecompress {                                                                           \
  namespace {                                                                                        \
  bool var##_pack_a(const void* x, ptrdiff_t ldx, int rows, int k, const ActQuant& q, void* strip,   \
                    float* row_scale, int32_t* row_offset, uint8_t* scratch) {                      \
    const int a_rows = (rows + (m_align) - 1) / (m_align) * (m_align);                               \
    return pack_a<a_signed, a_bytes, kr>(x, ldx, rows, k, q, strip, row_scale, row_offset, scratch, \
                                         a_rows);                                                    \
  }                                                                                                  \
  }                                                                                                  \
  extern const GemmS8Kernel var = {name,    isa,       mr, nr, kr, a_bytes, a_signed, m_align,       \
                                   needs,     var##_pack_a, run};                                     \
  }
