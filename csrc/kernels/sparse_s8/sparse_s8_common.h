// The portable sparse_s8 kernel (signed int8 activations), compiled by each tier's translation unit
// with that tier's flags so the compiler vectorizes what it can. Internal linkage (see
// common/act_quant.h). Tiers with dot-product instructions have their own files.
#pragma once

#include <cstdint>

#include "../common/act_quant.h"
#include "../common/epilogue.h"
#include "../common/unroll.h"
#include "edgecompress/sparse_s8.h"

namespace edgecompress {
namespace {

inline int32_t s8_dot4(const int8_t* q, const int8_t* w) {
  return q[0] * w[0] + q[1] * w[1] + q[2] * w[2] + q[3] * w[3];
}

template <class Idx>
void s8_generic_idx(const SparseS8Task& t, const Idx* __restrict idx) {
  const SparseS8& w = *t.w;
  const int8_t* __restrict vals = w.values;
  if (t.m <= kSparseS8SpmvRows) {
    for (int row = t.r0; row < t.r1; ++row) {
      for (int m = 0; m < t.m; ++m) {
        const int8_t* __restrict q = reinterpret_cast<const int8_t*>(t.a + m * t.lda);
        uint32_t acc = 0;  // wraps like the vector kernels; the true sum fits in int32
        for (int64_t j = w.indptr[row]; j < w.indptr[row + 1]; ++j) {
          acc += static_cast<uint32_t>(s8_dot4(q + 4 * static_cast<ptrdiff_t>(idx[j]), vals + 4 * j));
        }
        t.y[m * t.ldy + row] = static_cast<int32_t>(acc);
      }
    }
    return;
  }
  // SpMM: per row of W, 16 rows of the strip at a time; each block adds a dot of 4 to each of them.
  const int8_t* __restrict strip = reinterpret_cast<const int8_t*>(t.a);
  for (int row = t.r0; row < t.r1; ++row) {
    const int64_t j0 = w.indptr[row], j1 = w.indptr[row + 1];
    for (int m0 = 0; m0 < t.a_rows; m0 += 16) {
      uint32_t acc[16] = {};
      for (int64_t j = j0; j < j1; ++j) {
        const int8_t* __restrict xs = strip + (static_cast<ptrdiff_t>(m0 / 16) * w.kblocks + idx[j]) * 64;
        const int8_t* __restrict wv = vals + 4 * j;
        for (int l = 0; l < 16; ++l) acc[l] += static_cast<uint32_t>(s8_dot4(xs + 4 * l, wv));
      }
      int32_t* __restrict y = t.y + static_cast<ptrdiff_t>(row) * t.ldy + m0;
      for (int l = 0; l < 16; ++l) y[l] = static_cast<int32_t>(acc[l]);
    }
  }
}

[[maybe_unused]] void s8_generic(const SparseS8Task& t) {
  if (t.w->idx16 != nullptr) return s8_generic_idx(t, t.w->idx16);
  s8_generic_idx(t, t.w->idx32);
}

// Strips of 16 rows with gemm_s8's activation packing (quantize_row and the [kblocks][16][4] layout),
// compiled with the tier's flags; kUnsigned moves q into the u8 domain (q + 128).
template <bool kUnsigned>
bool s8_pack_strip(const float* x, ptrdiff_t ldx, int m, int k, uint8_t* strips, float* row_scale, uint8_t* scratch) {
  const int kblocks = (k + 3) / 4;
  int32_t row_offset[16];
  for (int i0 = 0; i0 < m; i0 += 16) {
    const int rows = m - i0 < 16 ? m - i0 : 16;
    if (!pack_a<!kUnsigned, 1, 4>(x + i0 * ldx, ldx, rows, k, ActQuant{}, strips + static_cast<ptrdiff_t>(i0 / 16) * kblocks * 64,
                                  row_scale + i0, row_offset, scratch, 16))
      return false;
  }
  return true;
}

inline bool s8_row_is_normal(float rs, const SparseS8Finish& f) { return scales_normal(rs, f.scale_min, f.scale_max); }

// One output value, exactly as gemm_s8's finish_tile.
inline float s8_finish_one(int32_t v, float rs, bool normal, int c, const SparseS8Finish& f) {
  return bias_act(normal ? dequantize_normal(v, rs, f.scale[c]) : dequantize_wide(v, rs, f.scale[c]), f.bias, c, f.act);
}

// 16 columns at a time: each output line is written once, whole, while the 16 source rows stay in L1
// (row-by-row order thrashed L1 sets: N * 4 bytes is often a multiple of 4 KiB).
[[maybe_unused]] void s8_finish_generic(const SparseS8Finish& f) {
  for (int c0 = f.c0; c0 < f.c1; c0 += 16) {
    const int cols = f.c1 - c0 < 16 ? f.c1 - c0 : 16;
    for (int i = 0; i < f.m; ++i) {
      const float rs = f.row_scale[i];
      const bool normal = s8_row_is_normal(rs, f);
      const int32_t* src = f.yt + static_cast<ptrdiff_t>(c0) * f.a_rows + i;
      float* dst = f.y + i * f.ldy;
      for (int c = 0; c < cols; ++c) dst[c0 + c] = s8_finish_one(src[static_cast<ptrdiff_t>(c) * f.a_rows], rs, normal, c0 + c, f);
    }
  }
}

}  // namespace
}  // namespace edgecompress
