// Code the sparse_nm_f32 tiers share (internal linkage, see common/act_quant.h): the epilogue
// and the loop over panels and chunks of the vector tiers, built with -ffp-contract=fast like the
// other float families (sparse_common.h).
//
// A vector tier supplies
//   T: its register of floats (Vec, kLanes, zero, load, fma, hsum), kMaxRows, the rows of x one pass
//     over a panel computes, and kSums, the running sums a pass keeps in registers;
//   P<n, m>: per pattern, the expansion of a panel's chunk (4 rows of 16 kept values and their
//     position block, see sparse_nm.h) in parts of kLanes values: expand(block, part) turns the
//     block into the part's lane indices of all 4 rows, index(expanded, row) picks one row's,
//     load_x(x, part) loads the x values of the part's span, and select(xs, index) permutes them
//     into the lanes.
// nm_panel then expands, per chunk, the indices of each panel's 4 rows once, loads each row of x's
// span once, and adds select(x) * values into one sum per (row of x, row of W): at least 4
// independent FMA chains even for one row of x.
#pragma once

#include <cstdint>

#include "../common/epilogue.h"
#include "../common/unroll.h"
#include "edgecompress/sparse_nm.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "sparse_nm reads its packed position blocks as little-endian dwords"
#endif

namespace edgecompress {
namespace {

// A byte value (a lane's group offset or a mask) repeated in the 4 bytes of a dword.
constexpr int nm_bytes4(int v) { return static_cast<int>(0x01010101u * static_cast<uint32_t>(v)); }

// Stores sums[i][j] (row i0 + i of x, i < m, row kNmPanel * p + j of W) with the epilogue, rows of
// W < n.
inline void nm_store(const SparseNmTask& t, int p, int i0, int m, const float (*sums)[kNmPanel]) {
  const int r0 = p * kNmPanel;
  const int rows = t.w->n - r0 < kNmPanel ? t.w->n - r0 : kNmPanel;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < rows; ++j) t.y[(i0 + i) * t.ldy + r0 + j] = bias_act(sums[i][j], t.bias, r0 + j, t.act);
}

// With two or more rows of x, the permutes per chunk keep the core busy long enough that the
// hardware prefetchers fall behind the weight stream; prefetching 8 KiB ahead (32 chunks of a
// panel) gained 10-15% at DRAM sizes on Zen 4 for 3 or 4 rows (neutral for 2 rows over 2 panels).
// With one row it gained nothing there and cost 20% on weights in cache (the prefetches compete
// for load slots), so it is off for M = 1.
constexpr ptrdiff_t kNmPrefetchBytes = 8192;

// Panels p .. p + P - 1 of W times rows i0 .. i0 + M - 1 of x: per chunk, each row of x's span is
// loaded once for all P panels, and each panel's block is expanded once for its 4 rows.
template <class T, class Pat, int M, int P>
void nm_panel(const SparseNmTask& t, int p, int i0) {
  using V = typename T::Vec;
  constexpr int kParts = kNmChunk / T::kLanes;
  constexpr ptrdiff_t kSpan = Pat::kSpan, kMeta = Pat::kMetaBytes;
  const ptrdiff_t chunks = t.w->chunks;
  const ptrdiff_t vals_stride = chunks * kNmPanel * kNmChunk, meta_stride = chunks * kNmPanel * kMeta;
  const float* __restrict vals = t.w->values + p * vals_stride;
  const uint8_t* __restrict meta = t.w->meta + p * meta_stride;
  const float* __restrict x = t.x + i0 * t.ldx;
  V acc[M][P][kNmPanel];
  unroll<M>([&](auto i) {
    unroll<P>([&](auto b) { unroll<kNmPanel>([&](auto j) { acc[i.value][b.value][j.value] = T::zero(); }); });
  });
  for (ptrdiff_t c = 0; c < chunks; ++c) {
    if constexpr (M > 1) {
      unroll<P>([&](auto b) {
        const char* ahead = reinterpret_cast<const char*>(vals + b.value * vals_stride + c * kNmPanel * kNmChunk);
        unroll<kNmPanel * kNmChunk * sizeof(float) / 64>([&](auto l) {
          __builtin_prefetch(ahead + kNmPrefetchBytes + 64 * l.value);
        });
        __builtin_prefetch(meta + b.value * meta_stride + c * kNmPanel * kMeta + kNmPrefetchBytes * kMeta / kNmChunk / 4);
      });
    }
    unroll<kParts>([&](auto q) {
      decltype(Pat::load_x(x, q)) xs[M];
      unroll<M>([&](auto i) { xs[i.value] = Pat::load_x(x + i.value * t.ldx + c * kSpan, q); });
      unroll<P>([&](auto b) {
        const float* vc = vals + b.value * vals_stride + c * kNmPanel * kNmChunk + q.value * T::kLanes;
        const auto block = Pat::expand(meta + b.value * meta_stride + c * kNmPanel * kMeta, q);
        unroll<kNmPanel>([&](auto j) {
          const auto index = Pat::index(block, j);
          const V wv = T::load(vc + j.value * kNmChunk);
          unroll<M>([&](auto i) {
            V& a = acc[i.value][b.value][j.value];
            a = T::fma(a, Pat::select(xs[i.value], index), wv);
          });
        });
      });
    });
  }
  unroll<P>([&](auto b) {
    float sums[M][kNmPanel];
    unroll<M>([&](auto i) {
      unroll<kNmPanel>([&](auto j) { sums[i.value][j.value] = T::hsum(acc[i.value][b.value][j.value]); });
    });
    nm_store(t, p + b.value, i0, M, sums);
  });
}

// Every panel of the task times its M rows of x, in passes of at most T::kMaxRows rows (a panel is
// still in L1/L2 for the next pass) over P panels at once, P such that a pass keeps T::kSums running
// sums: the P panels are P streams from memory, which on Zen 4 kept DRAM busier than one (a 2:4
// GEMV at 4096 x 4096 went from 1.3 to 1.1 ms with P = 4; two rows of x from 2.4 to 1.8 ms with
// P = 2), at a cost of about 10% on weights in cache.
template <class T, class Pat, int M>
void nm_panels(const SparseNmTask& t) {
  constexpr int kPassRows = M < T::kMaxRows ? M : T::kMaxRows;
  constexpr int kPasses = (M + T::kMaxRows - 1) / T::kMaxRows;
  constexpr int P = T::kSums / (kPassRows * kNmPanel) > 1 ? T::kSums / (kPassRows * kNmPanel) : 1;
  auto passes = [&](int p, auto panels) {
    unroll<kPasses>([&](auto pass) {
      constexpr int i0 = pass.value * T::kMaxRows;
      nm_panel<T, Pat, (M - i0 < T::kMaxRows ? M - i0 : T::kMaxRows), decltype(panels)::value>(t, p, i0);
    });
  };
  int p = t.p0;
  for (; p + P <= t.p1; p += P) passes(p, Rows<P>{});
  for (; p < t.p1; ++p) passes(p, Rows<1>{});
}

template <class T, class Pat>
void nm_pattern(const SparseNmTask& t) {
  with_rows<kNmRows>(t.m, [&](auto rows) { nm_panels<T, Pat, decltype(rows)::value>(t); });
}

// The run function of a vector tier.
template <class T, template <int, int> class P>
void nm_run(const SparseNmTask& t) {
  if (t.w->group == 8) return nm_pattern<T, P<4, 8>>(t);
  if (t.w->kept == 1) return nm_pattern<T, P<1, 4>>(t);
  nm_pattern<T, P<2, 4>>(t);
}

}  // namespace
}  // namespace edgecompress

#define EC_SPARSE_NM_KERNEL(var, name, isa, needs, run) \
  namespace edgecompress {                              \
  extern const SparseNmKernel var = {name, isa, needs, run}; \
  }
