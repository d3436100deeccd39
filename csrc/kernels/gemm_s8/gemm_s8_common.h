// Code every gemm_s8 tier shares: the epilogue of an int32 accumulator tile and the registry entry
// of a kernel. Activation quantization and packing, the epilogue's steps and the unrolling helpers
// are shared with the other families (kernels/common/; internal linkage and exact float arithmetic:
// see act_quant.h and epilogue.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../common/act_quant.h"
#include "../common/epilogue.h"
#include "../common/unroll.h"
#include "edgecompress/gemm_s8.h"

namespace edgecompress {
namespace {

// A whole tile row whose scale products are all normal floats: dequantize, bias and activation in
// registers, one store (three passes over y made each pass wait on the previous one's stores). The
// steps are template arguments so that each case is one loop without branches: the compiler
// vectorizes that, while a loop with the branches inside, or the steps in a local array, came out as
// scalar code. Same operations, same order, same bits as bias_act_row.
template <int kNr, bool kBias, Activation kAct>
void whole_row_as(const int32_t* __restrict a, uint32_t off, const int32_t* __restrict colsum, float rs,
                  const float* __restrict col_scale, const float* __restrict bias, float* __restrict y) {
  for (int c = 0; c < kNr; ++c) {
    const int32_t q = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
    float v = dequantize_normal(q, rs, col_scale[c]);
    if (kBias) v = v + bias[c];
    if (kAct == Activation::relu) v = relu(v);
    if (kAct == Activation::gelu) v = gelu(v);
    y[c] = v;
  }
}

template <int kNr, bool kBias>
void whole_row_act(const int32_t* a, uint32_t off, const int32_t* colsum, float rs, const float* col_scale,
                   const float* bias, Activation act, float* y) {
  if (act == Activation::relu) whole_row_as<kNr, kBias, Activation::relu>(a, off, colsum, rs, col_scale, bias, y);
  else if (act == Activation::gelu) whole_row_as<kNr, kBias, Activation::gelu>(a, off, colsum, rs, col_scale, bias, y);
  else whole_row_as<kNr, kBias, Activation::none>(a, off, colsum, rs, col_scale, bias, y);
}

template <int kNr>
void whole_row(const int32_t* a, uint32_t off, const int32_t* colsum, float rs, const float* col_scale,
               const float* bias, Activation act, float* y) {
  if (bias != nullptr) whole_row_act<kNr, true>(a, off, colsum, rs, col_scale, bias, act, y);
  else whole_row_act<kNr, false>(a, off, colsum, rs, col_scale, bias, act, y);
}

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
    if (n == kNr && scales_normal(rs, t.col_scale_min, t.col_scale_max)) {
      whole_row<kNr>(a, off, colsum, rs, col_scale, bias, act, y);
      continue;
    }
    if (scales_normal(rs, t.col_scale_min, t.col_scale_max)) {
      // Every scale product of the row is a normal float: float32 throughout.
      for (int c = 0; c < n; ++c) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
        y[c] = dequantize_normal(v, rs, col_scale[c]);
      }
    } else {
      // A product would overflow (inf, or NaN against a zero accumulator) or lose precision: float64.
      for (int c = 0; c < n; ++c) {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(a[c]) - off * static_cast<uint32_t>(colsum[c]));
        y[c] = dequantize_wide(v, rs, col_scale[c]);
      }
    }
    bias_act_row(y, n, bias, act);
  }
}

}  // namespace
}  // namespace edgecompress

// Defines the registry entry of one kernel. Its pack_a wrapper binds the tier's packing parameters.
#define EC_GEMM_S8_KERNEL(var, name, isa, mr, nr, kr, a_bytes, a_signed, m_align, needs, run)                   \
  EC_GEMM_S8_KERNEL_WITH(var, name, isa, mr, nr, kr, kr, a_bytes, a_signed, m_align, needs, run, nullptr, nullptr, 0, \
                         nullptr, false)

// The same with the A strips row-major (pack_a's kRowMajor; the kernel's run reads them so).
#define EC_GEMM_S8_KERNEL_ROW_MAJOR(var, name, isa, mr, nr, kr, a_bytes, a_signed, m_align, needs, run)         \
  EC_GEMM_S8_KERNEL_WITH(var, name, isa, mr, nr, kr, kr, a_bytes, a_signed, m_align, needs, run, nullptr, nullptr, 0, \
                         nullptr, true)

// The same with every field of GemmS8Kernel: the A strip's k unit, the per-call hooks and the
// small-M kernel (the tile kernels' fields), and whether the A strips are row-major.
#define EC_GEMM_S8_KERNEL_WITH(var, name, isa, mr, nr, kr, a_kr, a_bytes, a_signed, m_align, needs, run, begin,   \
                               end, small_m_rows, small_m, row_major)                                            \
  namespace edgecompress {                                                                                     \
  namespace {                                                                                                  \
  bool var##_pack_a(const void* x, ptrdiff_t ldx, int rows, int k, const ActQuant& q, void* strip,             \
                    float* row_scale, int32_t* row_offset, uint8_t* scratch) {                                \
    const int a_rows = (rows + (m_align) - 1) / (m_align) * (m_align);                                         \
    return pack_a<a_signed, a_bytes, a_kr, row_major>(x, ldx, rows, k, q, strip, row_scale, row_offset, scratch, \
                                                      a_rows);                                                 \
  }                                                                                                            \
  bool var##_quantize(const float* x, int n, const ActQuant& q, uint8_t* codes) {                             \
    float scale;                                                                                               \
    int32_t zp;                                                                                                \
    return quantize_row(x, n, q, 0, codes, &scale, &zp);                                                       \
  }                                                                                                            \
  }                                                                                                            \
  extern const GemmS8Kernel var = {name,  isa,   mr,    nr,           kr,     a_bytes, a_signed, m_align, needs, \
                                   var##_pack_a, run, a_kr, begin, end,    small_m_rows, small_m, var##_quantize}; \
  }
