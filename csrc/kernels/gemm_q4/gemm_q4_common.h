// Code every gemm_q4 tier shares: activation preparation, the portable tiles (the scalar tier's
// kernels, and on every tier the float mode and per-channel codebooks), and the epilogue.
//
// Plain C++ compiled by each tier's translation unit with that tier's flags; internal linkage, no
// standard-library templates (see common/act_quant.h for why). Float operations are written in
// the oracle's order (python/edgecompress/reference/gemm_q4.py) and the project builds with
// -ffp-contract=off, so the int8 mode returns the oracle's bits on every tier.
#pragma once

#include <cstdint>
#include <cstring>

#include "../common/act_quant.h"
#include "../common/epilogue.h"
#include "../common/unroll.h"
#include "edgecompress/gemm_q4.h"

namespace edgecompress {
namespace {

inline int q4_ksteps(const Q4Weight& w) { return w.kp / 8; }
inline const uint8_t* q4_panel_nib(const Q4Weight& w, int panel) {
  return w.nib + static_cast<size_t>(panel) * q4_ksteps(w) * 64;
}
inline const uint16_t* q4_panel_scale(const Q4Weight& w, int panel) {
  return w.scale + static_cast<size_t>(panel) * w.groups * kQ4Panel;
}
inline const uint8_t* q4_panel_zp(const Q4Weight& w, int panel) {
  return w.zp == nullptr ? nullptr : w.zp + static_cast<size_t>(panel) * w.groups * kQ4Panel;
}

// Code of column j at k = 8 * s + i within a panel's packed nibbles.
inline int q4_code(const uint8_t* nib, int s, int j, int i) {
  const uint8_t b = nib[static_cast<size_t>(s) * 64 + 4 * j + (i & 3)];
  return i < 4 ? (b & 0x0f) : (b >> 4);
}

// int8 mode: per row, each group of x (zero-padded to kp) quantized like quantize_rows_symmetric.
// Float mode: x copied into xf, zero-padded to kp. Returns false on NaN or Inf.
inline bool q4_prepare(const Q4Weight& w, Q4Compute compute, const float* x, ptrdiff_t ldx, int rows, int8_t* xq,
                       float* xf, float* sx, int32_t* sumq) {
  const int k = w.k, kp = w.kp, g = w.g;
  ActQuant aq;  // dynamic symmetric
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    if (compute == Q4Compute::float32) {
      float* dst = xf + static_cast<ptrdiff_t>(r) * kp;
      uint32_t abs_max = 0;
      for (int i = 0; i < k; ++i) {
        const uint32_t a = float_bits(xr[i]) & 0x7fffffffu;
        abs_max = a > abs_max ? a : abs_max;
        dst[i] = xr[i];
      }
      if (abs_max >= kInfBits) return false;
      for (int i = k; i < kp; ++i) dst[i] = 0.0f;
      continue;
    }
    int8_t* q = xq + static_cast<ptrdiff_t>(r) * kp;
    for (int gi = 0; gi < w.groups; ++gi) {
      const int k0 = gi * g, len = k - k0 < g ? k - k0 : g;
      uint8_t* qg = reinterpret_cast<uint8_t*>(q + k0);
      int32_t zp_unused = 0;
      float s = 1.0f;
      if (!quantize_row(xr + k0, len, aq, 0, qg, &s, &zp_unused)) return false;
      for (int i = len; i < g; ++i) qg[i] = 0;
      int32_t sum = 0;
      for (int i = 0; i < g; ++i) sum += static_cast<int8_t>(qg[i]);
      sx[static_cast<ptrdiff_t>(r) * w.groups + gi] = s;
      sumq[static_cast<ptrdiff_t>(r) * w.groups + gi] = sum;
    }
  }
  return true;
}

// The integers column j multiplies in the int8 mode, for one group: c[j * g + kk].
inline void q4_decode_group_i8(const Q4Weight& w, int panel, int gi, int8_t* c) {
  const int g = w.g, steps = g / 8;
  const uint8_t* nib = q4_panel_nib(w, panel) + static_cast<size_t>(gi) * steps * 64;
  const uint8_t* zp = q4_panel_zp(w, panel);
  for (int j = 0; j < kQ4Panel; ++j) {
    const int8_t* table = nullptr;
    if (w.table_i8 != nullptr) table = w.table_i8 + (w.per_channel ? (panel * kQ4Panel + j) * 16 : 0);
    const int z = zp != nullptr ? zp[gi * kQ4Panel + j] : 8;
    for (int s = 0; s < steps; ++s) {
      for (int i = 0; i < 8; ++i) {
        const int code = q4_code(nib, s, j, i);
        c[j * g + 8 * s + i] = static_cast<int8_t>(table != nullptr ? table[code] : code - z);
      }
    }
  }
}

// Applies the codebook scale a, bias and activation to acc (rows x 16) and stores t.n columns. Only
// the tile's t.n columns are read from bias and the tables: the last panel may be partial.
inline void q4_store(const Q4Tile& t, const float* __restrict acc) {
  const Q4Weight& w = *t.w;
  const float* __restrict bias = t.bias;
  const int n = t.n;
  float a[kQ4Panel];
  for (int j = 0; j < n; ++j) a[j] = 1.0f;
  const bool scaled = w.table_i8 != nullptr && t.compute == Q4Compute::int8;
  if (scaled) {
    for (int j = 0; j < n; ++j) a[j] = w.table_scale[w.per_channel ? t.panel * kQ4Panel + j : 0];
  }
  for (int r = 0; r < t.rows; ++r) {
    float v[kQ4Panel];
    for (int j = 0; j < n; ++j) v[j] = scaled ? acc[r * kQ4Panel + j] * a[j] : acc[r * kQ4Panel + j];
    bias_act_row(v, n, bias, t.act);
    float* y = t.y + r * t.ldy;
    for (int j = 0; j < n; ++j) y[j] = v[j];
  }
}

constexpr int kQ4MaxRows = 8;  // largest mr of any tier (EC_GEMM_Q4_KERNEL checks)

// Portable int8-mode tile: the specification every SIMD tile reproduces.
inline void q4_tile_generic_int8(const Q4Tile& t) {
  const Q4Weight& w = *t.w;
  const int g = w.g;
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  alignas(64) int8_t c[kQ4Panel * 128];
  alignas(64) float acc[kQ4MaxRows * kQ4Panel];
  for (int i = 0; i < t.rows * kQ4Panel; ++i) acc[i] = 0.0f;
  for (int gi = 0; gi < w.groups; ++gi) {
    q4_decode_group_i8(w, t.panel, gi, c);
    float sw[kQ4Panel];
    for (int j = 0; j < kQ4Panel; ++j) sw[j] = half_to_float(sw16[gi * kQ4Panel + j]);
    for (int r = 0; r < t.rows; ++r) {
      const int8_t* xq = t.x.xq + r * t.x.ldx + static_cast<ptrdiff_t>(gi) * g;
      const float sx = t.x.sx[r * t.x.lds + gi];
      for (int j = 0; j < kQ4Panel; ++j) {
        int32_t dot = 0;
        for (int kk = 0; kk < g; ++kk) dot += static_cast<int32_t>(xq[kk]) * c[j * g + kk];
        acc[r * kQ4Panel + j] = acc[r * kQ4Panel + j] + static_cast<float>(dot) * (sx * sw[j]);
      }
    }
  }
  q4_store(t, acc);
}

// Portable float-mode tile (all tiers): the weights dequantized (code - zero point, or table entry,
// times the group's scale), then a float32 dot product in k order.
// Written with GCC/Clang vector extensions: a 16-lane vector is one panel (one zmm, two ymm, four
// xmm or NEON registers, whatever the tier's flags give), so the codes of a 64-byte step are decoded
// in registers, 16 columns at a time, and a per-tensor codebook is a register shuffle (vpermps on
// AVX-512). Elementwise vector arithmetic rounds like scalar code; -ffp-contract=off keeps mul and
// add separate.
// (Tiers without 512-bit registers pass these vectors in memory; GCC notes that ABI difference with
// -Wpsabi, which does not matter here: every function has internal linkage.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float q4_f32x16 __attribute__((vector_size(64)));
typedef int32_t q4_i32x16 __attribute__((vector_size(64)));
typedef uint32_t q4_u32x16 __attribute__((vector_size(64)));

inline q4_f32x16 q4_load16(const float* p) {
  q4_f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// kKind: 0 uniform, 1 per-tensor codebook, 2 per-channel codebook.
template <int R, int kKind>
void q4_tile_f32(const Q4Tile& t) {
  const Q4Weight& w = *t.w;
  const int g = w.g, steps = g / 8;
  const uint8_t* nib = q4_panel_nib(w, t.panel);
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  const uint8_t* zp = q4_panel_zp(w, t.panel);
  const float* table = kKind ? w.table_f32 + (w.per_channel ? t.panel * kQ4Panel * 16 : 0) : nullptr;
  q4_f32x16 tbl = {};
  if (kKind == 1) tbl = q4_load16(table);
  q4_f32x16 acc[R];
  unroll<R>([&](auto r) { acc[r.value] = q4_f32x16{}; });
  for (int gi = 0; gi < w.groups; ++gi) {
    q4_f32x16 z = {}, sw;
    for (int j = 0; j < kQ4Panel; ++j) {
      if (kKind == 0) z[j] = zp != nullptr ? static_cast<float>(zp[gi * kQ4Panel + j]) : 8.0f;
      sw[j] = half_to_float(sw16[gi * kQ4Panel + j]);
    }
    for (int s = 0; s < steps; ++s) {
      q4_u32x16 words;  // word j: column j's 8 codes of this step
      std::memcpy(&words, nib + static_cast<size_t>(gi * steps + s) * 64, sizeof(words));
      unroll<8>([&](auto i) {  // k = 8s + i: low nibbles for i < 4, high nibbles after
        constexpr int shift = 8 * (i.value & 3) + 4 * (i.value >> 2);
        const q4_u32x16 code = (words >> shift) & 15u;
        q4_f32x16 c;
        if constexpr (kKind == 0) {
          c = __builtin_convertvector(code, q4_f32x16) - z;
        } else if constexpr (kKind == 1) {
          c = __builtin_shuffle(tbl, __builtin_convertvector(code, q4_i32x16));
        } else {
          for (int j = 0; j < kQ4Panel; ++j) c[j] = table[j * 16 + code[j]];
        }
        c = c * sw;  // the dequantized weights (exact for uniform codes: 4 bits x a float16)
        unroll<R>([&](auto r) {
          const float xv = t.x.xf[r.value * t.x.ldx + static_cast<ptrdiff_t>(gi) * g + 8 * s + i.value];
          acc[r.value] = acc[r.value] + c * xv;
        });
      });
    }
  }
  alignas(64) float out[kQ4MaxRows * kQ4Panel];
  unroll<R>([&](auto r) { std::memcpy(out + r.value * kQ4Panel, &acc[r.value], sizeof(acc[r.value])); });
  q4_store(t, out);
}

inline void q4_tile_generic_f32(const Q4Tile& t) {
  const int kind = t.w->table_f32 == nullptr ? 0 : (t.w->per_channel ? 2 : 1);
  with_rows<kQ4MaxRows>(t.rows, [&](auto r) {
    constexpr int R = decltype(r)::value;
    if (kind == 0) q4_tile_f32<R, 0>(t);
    else if (kind == 1) q4_tile_f32<R, 1>(t);
    else q4_tile_f32<R, 2>(t);
  });
}

// How a tier's int8-mode tile treats the codes: uniform symmetric (zero point 8), uniform asymmetric
// (packed zero points), or per-tensor codebook (per-channel codebooks take the portable tile).
enum Q4Mode { kSym = 0, kAsym = 1, kBook = 2 };

inline int q4_mode(const Q4Weight& w) { return w.table_i8 != nullptr ? kBook : (w.zp != nullptr ? kAsym : kSym); }

// Calls f(Rows<rows>{}, Rows<mode>{}) with the tile's row count and weight mode as constants, so a
// tier's tile template is instantiated for each (rows, mode) and picked at run time here.
template <int kMaxRows, class F>
void q4_dispatch(const Q4Tile& t, F&& f) {
  const int mode = q4_mode(*t.w);
  with_rows<kMaxRows>(t.rows, [&](auto r) {
    if (mode == kSym) f(r, Rows<kSym>{});
    else if (mode == kAsym) f(r, Rows<kAsym>{});
    else f(r, Rows<kBook>{});
  });
}

// A tier's run(): the float mode and per-channel codebooks take the portable tiles, the rest the
// tier's own int8 tile.
template <void (*kTileInt8)(const Q4Tile&)>
void q4_run(const Q4Tile& t) {
  if (t.compute == Q4Compute::float32) return q4_tile_generic_f32(t);
  if (t.w->table_i8 != nullptr && t.w->per_channel) return q4_tile_generic_int8(t);
  kTileInt8(t);
}

}  // namespace
}  // namespace edgecompress

// Defines the registry entry of one gemm_q4 kernel.
#define EC_GEMM_Q4_KERNEL(var, name, isa, mr, needs, tile_int8)                                         \
  namespace edgecompress {                                                                          \
  static_assert((mr) >= 1 && (mr) <= kQ4MaxRows, "gemm_q4 tiles hold at most kQ4MaxRows rows");      \
  extern const GemmQ4Kernel var = {name, isa, mr, needs, q4_prepare, q4_run<tile_int8>, nullptr, 0, nullptr}; \
  }
