// The fused epilogue every kernel family shares (internal linkage: see act_quant.h): dequantization
// of an int32 result, then bias, then activation, in float32.
//
// Integer families dequantize as float32(y_int) * (row_scale * col_scale) for rows where every scale
// product is a normal float, and as y_int * row_scale * col_scale in float64 (rounded to float32) for
// the rare rows where one is not: there a float32 product could overflow (to inf, or to NaN against a
// zero accumulator) although the result is finite, or lose precision as a subnormal. The numpy oracle
// (python/edgecompress/reference) does the same.
#pragma once

#include <cmath>
#include <cstdint>

#include "edgecompress/types.h"
#include "vmath.h"

namespace edgecompress {
namespace {

// GELU (erf form) without a libm call, so the epilogue loops vectorize (vmath.h).
inline float gelu(float v) { return gelu_approx(v); }

// Whether rs times every column scale in [cs_min, cs_max] is a normal float32 (dequantize_normal
// applies), or some product needs dequantize_wide.
inline bool scales_normal(float rs, float cs_min, float cs_max) {
  return rs * cs_min >= 1.17549435e-38f && rs * cs_max <= 3.40282347e38f;
}

inline float dequantize_normal(int32_t v, float rs, float cs) { return static_cast<float>(v) * (rs * cs); }

inline float dequantize_wide(int32_t v, float rs, float cs) {
  return static_cast<float>(static_cast<double>(v) * static_cast<double>(rs) * static_cast<double>(cs));
}

// ReLU: v > 0 ? v : +0 (NaN gives 0), applied to the bits. Written as a float select, a tile row
// of fixed length (finish_tile) compiled to one scalar compare and blend per value; the mask form
// vectorizes there and in plain loops alike.
inline float relu(float v) { return bits_float(float_bits(v) & (0u - static_cast<uint32_t>(v > 0.0f))); }

// One output value: v + bias[col] (when bias is given), then the activation.
inline float bias_act(float v, const float* bias, int col, Activation act) {
  if (bias != nullptr) v = v + bias[col];
  if (act == Activation::relu) v = relu(v);
  if (act == Activation::gelu) v = gelu(v);
  return v;
}

// The activation over a row of n values in place.
inline void act_row(float* __restrict y, int n, Activation act) {
  if (act == Activation::relu) {
    for (int c = 0; c < n; ++c) y[c] = relu(y[c]);
  } else if (act == Activation::gelu) {
    for (int c = 0; c < n; ++c) y[c] = gelu(y[c]);
  }
}

// Bias, then activation, over a row of n values in place, one pass per step so that each vectorizes.
inline void bias_act_row(float* __restrict y, int n, const float* __restrict bias, Activation act) {
  if (bias != nullptr) {
    for (int c = 0; c < n; ++c) y[c] = y[c] + bias[c];
  }
  act_row(y, n, act);
}

}  // namespace
}  // namespace edgecompress
