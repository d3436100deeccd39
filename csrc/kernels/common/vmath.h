// exp and GELU as plain float32 arithmetic (no libm call, no branch), so that a loop over them
// vectorizes on every tier and every tier computes the same bits: the same operations in the same
// order, with -ffp-contract=off in the files that need identical results (internal linkage: see
// act_quant.h).
//
// exp_approx: x clamped to [-87, 88] (exp(-87) = 1.6e-38, the smallest normal range), x = n ln2 + r
// with |r| <= ln2 / 2 (n by the 1.5 * 2^23 rounding trick, ln2 in two parts so n ln2 is exact), e^r by
// its Taylor series to degree 7 (truncation below 1e-8), times 2^n built in the exponent bits.
// Relative error <= 1e-7 over the range.
//
// gelu_approx: x * Phi(x) with Phi(x) = 1 - e (x >= 0) or e (x < 0), where e = erfc(z) / 2 and
// z = |x| / sqrt(2). erfc(z) = exp(-z^2) * erfcx(z), and erfcx(z) (smooth, 1 at 0, falling like
// 1 / (z sqrt(pi))) is a degree-9 polynomial in t = 1 / (1 + z / 2), least-squares fitted in float64
// on z in [0, 10] (relative error 3.3e-8; float32 evaluation 3e-7). Taking e from erfc keeps the
// relative error of the negative tail small (1 + erf(x) would cancel). Past z = 9.25 the result is
// below 1e-38 and is flushed to 0. Max relative error against float64 GELU: 3e-7 for |x| <= 4, growing
// as 1.2e-7 z^2 below (the rounding of z^2 in the exponent), on values smaller than 1e-8 |x|.
#pragma once

#include <cstdint>
#include <cstring>

namespace edgecompress {
namespace {

// A float's bits and back (every family's bit tricks use these).
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

// Exact float16 -> float32 (the scales are finite).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}


// a if c else b, through bit masks: compilers if-convert a select between two computed floats only
// under -ffast-math, but vectorize this form everywhere.
inline float select(bool c, float a, float b) {
  const uint32_t m = c ? 0xffffffffu : 0u;
  return bits_float((float_bits(a) & m) | (float_bits(b) & ~m));
}

inline float exp_approx(float x) {
  x = select(x < -87.0f, -87.0f, x);
  x = select(x > 88.0f, 88.0f, x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  float kf = x * 1.44269504088896341f + magic;
  const int32_t n = static_cast<int32_t>(float_bits(kf) - float_bits(magic));
  kf = kf - magic;
  float r = x - kf * 0.693145751953125f;  // ln2 high part: 16 significant bits, exact times n
  r = r - kf * 1.42860682030941723e-6f;   // ln2 low part
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_float(static_cast<uint32_t>(n + 127) << 23);
}

inline float gelu_approx(float x) {
  const float ax = bits_float(float_bits(x) & 0x7fffffffu);
  float z = ax * 0.707106781186547524f;
  const bool tiny = z > 9.25f;
  z = select(tiny, 9.25f, z);
  const float t = 1.0f / (1.0f + 0.5f * z);
  float h = -0.05506087467074394f;
  h = h * t + 0.2639479339122772f;
  h = h * t + -0.44156694412231445f;
  h = h * t + 0.2212897092103958f;
  h = h * t + 0.017011316493153572f;
  h = h * t + 0.18127775192260742f;
  h = h * t + 0.24978625774383545f;
  h = h * t + 0.2810995280742645f;
  h = h * t + 0.2822212874889374f;
  h = h * t + -6.008601303619798e-06f;
  const float e = select(tiny, 0.0f, 0.5f * exp_approx(-(z * z)) * h);
  return x * select(x >= 0.0f, 1.0f - e, e);
}

}  // namespace
}  // namespace edgecompress
