// The sparse_f32 kernels, written once with GCC/Clang vector extensions and compiled by each tier's
// translation unit with that tier's flags, with internal linkage (see common/act_quant.h).
// Unlike the integer families these files are built with -ffp-contract=fast (CMakeLists.txt): a
// multiply-add is one FMA where the tier has it, so tiers differ in rounding, within the oracle's
// tolerance (sparse.h).
//
//   SpMV (M <= 4), CSR: 16 running partial sums per row, each fed every 16th nonzero of the row,
//     summed in a fixed tree at the row's end. Scalar code on purpose: x is read at the nonzeros'
//     columns, and hardware gathers were slower than scalar loads on the CPUs measured (Zen 4: 0.80
//     vs 0.87 elements per cycle).
//   SpMV, BSR r x 1: per block, the r values times x[k] broadcast, into two alternating sums.
//   SpMM (M > 4): activations transposed to (K, M), so a block of the weight drives the loop: its
//     r values times a contiguous run of 16 x CW activations (one k, many rows of x).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../common/epilogue.h"
#include "../common/unroll.h"
#include "edgecompress/sparse.h"


#pragma GCC diagnostic ignored "-Wpsabi"  // vectors wider than a tier's registers: internal linkage

namespace edgecompress {
namespace {

typedef float sp_f32x8 __attribute__((vector_size(32)));
typedef float sp_f32x4 __attribute__((vector_size(16)));
// The SpMM vector: as wide as the tier's registers (wider vectors would be split and spilled).
#if defined(__AVX512F__)
constexpr int kSpLanes = 16;
#elif defined(__AVX2__)
constexpr int kSpLanes = 8;
#else
constexpr int kSpLanes = 4;
#endif
typedef float sp_vec __attribute__((vector_size(4 * kSpLanes)));

template <class V>
inline V sp_load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// Sum of 16 partial sums in a fixed tree (overwrites a).
inline float sp_hsum(float* a) {
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] = a[i] + a[i + w];
  return a[0];
}

template <class Idx>
__attribute__((optimize("no-tree-vectorize", "no-tree-slp-vectorize")))
void sp_csr_spmv(const SparseTask& t, const Idx* __restrict idx) {
  const SparseF32& w = *t.w;
  const float* __restrict vals = w.values;
  for (int row = t.b0; row < t.b1; ++row) {
    const int64_t j0 = w.indptr[row], j1 = w.indptr[row + 1];
    for (int m = 0; m < t.m; ++m) {
      const float* __restrict x = t.x + m * t.ldx;
      float a[16] = {};
      int64_t j = j0;
      for (; j + 16 <= j1; j += 16)
        for (int l = 0; l < 16; ++l) a[l] = a[l] + vals[j + l] * x[idx[j + l]];
      for (int l = 0; j < j1; ++j, ++l) a[l] = a[l] + vals[j] * x[idx[j]];
      t.y[static_cast<ptrdiff_t>(m) * w.n + row] = bias_act(sp_hsum(a), t.bias, row, t.act);
    }
  }
}

template <int R, class V, class Idx>
void sp_bsr_spmv(const SparseTask& t, const Idx* __restrict idx) {
  const SparseF32& w = *t.w;
  const float* __restrict vals = w.values;
  for (int b = t.b0; b < t.b1; ++b) {
    const int64_t j0 = w.indptr[b], j1 = w.indptr[b + 1];
    for (int m = 0; m < t.m; ++m) {
      const float* __restrict x = t.x + m * t.ldx;
      V acc0 = {}, acc1 = {};
      int64_t j = j0;
      for (; j + 2 <= j1; j += 2) {
        acc0 = acc0 + sp_load<V>(vals + j * R) * x[idx[j]];
        acc1 = acc1 + sp_load<V>(vals + (j + 1) * R) * x[idx[j + 1]];
      }
      if (j < j1) acc0 = acc0 + sp_load<V>(vals + j * R) * x[idx[j]];
      const V acc = acc0 + acc1;
      for (int i = 0; i < R && b * R + i < w.n; ++i) {
        t.y[static_cast<ptrdiff_t>(m) * w.n + b * R + i] = bias_act(acc[i], t.bias, b * R + i, t.act);
      }
    }
  }
}

// SpMM: rows of x in chunks of kSpLanes * CW; per block row, R x CW vectors of sums (in registers: the
// indices are compile-time constants through unroll<>).
template <int R, int CW, class Idx>
void sp_spmm(const SparseTask& t, const Idx* __restrict idx) {
  const SparseF32& w = *t.w;
  const float* __restrict vals = w.values;
  constexpr int kChunk = kSpLanes * CW;
  for (int m0 = 0; m0 < t.m; m0 += kChunk) {
    for (int b = t.b0; b < t.b1; ++b) {
      const int64_t j0 = w.indptr[b], j1 = w.indptr[b + 1];
      sp_vec acc[R][CW];
      unroll<R>([&](auto i) { unroll<CW>([&](auto c) { acc[i.value][c.value] = sp_vec{}; }); });
      for (int64_t j = j0; j < j1; ++j) {
        const float* __restrict xk = t.xt + static_cast<ptrdiff_t>(idx[j]) * t.ldt + m0;
        sp_vec xv[CW];
        unroll<CW>([&](auto c) { xv[c.value] = sp_load<sp_vec>(xk + kSpLanes * c.value); });
        unroll<R>([&](auto i) {
          const float v = vals[j * R + i.value];
          unroll<CW>([&](auto c) { acc[i.value][c.value] = acc[i.value][c.value] + xv[c.value] * v; });
        });
      }
      alignas(64) float out[R][kChunk];
      unroll<R>([&](auto i) { unroll<CW>([&](auto c) { std::memcpy(&out[i.value][kSpLanes * c.value], &acc[i.value][c.value], sizeof(sp_vec)); }); });
      const int rows = t.m - m0 < kChunk ? t.m - m0 : kChunk;
      const int cols = w.n - b * R < R ? w.n - b * R : R;
      for (int l = 0; l < rows; ++l) {
        float* __restrict yr = t.y + static_cast<ptrdiff_t>(m0 + l) * w.n + b * R;
        for (int i = 0; i < cols; ++i) yr[i] = bias_act(out[i][l], t.bias, b * R + i, t.act);
      }
    }
  }
}

template <class Idx>
void sp_run_idx(const SparseTask& t, const Idx* idx) {
  const int r = t.w->r;
  if (t.m <= kSpmvRows) {
    if (r == 1) return sp_csr_spmv(t, idx);
    if (r == 4) return sp_bsr_spmv<4, sp_f32x4>(t, idx);
    return sp_bsr_spmv<8, sp_f32x8>(t, idx);
  }
  // R x CW sums: at most 8 registers of accumulators.
  if (r == 1) return sp_spmm<1, 4>(t, idx);
  if (r == 4) return sp_spmm<4, 2>(t, idx);
  return sp_spmm<8, 1>(t, idx);
}

void sp_run(const SparseTask& t) {
  if (t.w->idx16 != nullptr) return sp_run_idx(t, t.w->idx16);
  sp_run_idx(t, t.w->idx32);
}

}  // namespace
}  // namespace edgecompress

#define EC_SPARSE_KERNEL(var, name, isa, needs) \
  namespace edgecompress {                      \
  extern const SparseKernel var = {name, isa, needs, false, sp_run}; \
  }
