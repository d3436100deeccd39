// Activation quantization every integer family shares (gemm_s8, sparse_s8, gemm_q4's int8 mode):
// quantize_row turns one float row into int8 / uint8 codes and its scale, pack_a lays rows out as the
// [kblocks][rows][kr] strips of the dot-product kernels.
//
// Plain C++ that each tier's translation unit compiles with its own flags, so the compiler vectorizes
// it for that tier. Everything in kernels/common/ has internal linkage (anonymous namespace): an
// inline function with external linkage compiled with AVX-512 flags in one file could otherwise be
// the copy the linker keeps for every caller, and run on a CPU without AVX-512. For the same reason,
// tier files use no standard-library templates, and these headers hold no intrinsics.
//
// The float arithmetic is written out operation by operation and the integer families build with
// -ffp-contract=off, so every tier produces the same bits as the numpy oracle
// (python/edgecompress/reference): quantization rounds x * (1 / s) half to even as np.round does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "edgecompress/types.h"
#include "vmath.h"

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
// width (kBytes), or, kRowMajor, [a_rows][kblocks][kKr]: each row's values in order (a contiguous
// widening copy instead of one kKr-value unit per k-block scattered across the strip). See gemm_s8.h
// for the meaning of row_offset.
template <bool kSigned, int kBytes, int kKr, bool kRowMajor = false>
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
        // codes quantized by the caller with aq's scale and zero point (1 and 0 for plain integers)
        const uint8_t* src = static_cast<const uint8_t*>(x) + r * ldx;
        for (int i = 0; i < k; ++i) scratch[i] = src[i] ^ flip;
        row_scale[r] = aq.scale;
        zp = aq.zero_point;
      } else if (!quantize_row(static_cast<const float*>(x) + r * ldx, k, aq, flip, scratch, &row_scale[r], &zp)) {
        return false;
      }
      row_offset[r] = shift + zp;
      for (int i = k; i < kblocks * kKr; ++i) scratch[i] = 0;
    } else {
      std::memset(scratch, 0, static_cast<size_t>(kblocks) * kKr);
    }
    if (kRowMajor) {
      const int kp = kblocks * kKr;
      uint8_t* row = strip + static_cast<size_t>(r) * kp * kBytes;
      if (kBytes == 1) {
        std::memcpy(row, scratch, kp);
      } else {
        int16_t* dst = reinterpret_cast<int16_t*>(row);
        for (int i = 0; i < kp; ++i) {
          dst[i] = kSigned ? static_cast<int16_t>(static_cast<int8_t>(scratch[i])) : static_cast<int16_t>(scratch[i]);
        }
      }
      continue;
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

}  // namespace
}  // namespace edgecompress
