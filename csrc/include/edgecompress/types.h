// Plain types every kernel family shares: how activations become integers, and the fused activation
// of an epilogue.
#pragma once

#include <cstdint>

namespace edgecompress {

// How activations become integers, per call.
enum class ActScheme : int {
  dynamic_symmetric = 0,  // per row: s = max|x| / 127, q = round(x / s) in [-127, 127]
  dynamic_asymmetric,     // per row: s = (max(x,0) - min(x,0)) / 255, zp, q = round(x / s) + zp in [0, 255]
  static_symmetric,       // given s: q = clamp(round(x / s), -128, 127)
  static_asymmetric,      // given s, zp: q = clamp(round(x / s) + zp, 0, 255)
  raw_s8,                 // x is already int8 codes of scale s (qgemm: s = 1)
  raw_u8,                 // x is already uint8 codes of scale s and zero point zp (qgemm: 1, 0)
};

struct ActQuant {
  ActScheme scheme = ActScheme::dynamic_symmetric;
  float scale = 1.0f;      // static schemes
  int32_t zero_point = 0;  // static_asymmetric
};

enum class Activation : int { none = 0, relu = 1, gelu = 2 };

}  // namespace edgecompress
