// The micro-kernel loop every x86 gemm_s8 tier shares: a kMr x kNr tile whose columns lie in
// kNr / Ops::kLanes vectors. Per k-block it loads the panel's vectors once, broadcasts each row's
// 4 bytes of packed activations (one int32: 4 u8 for VNNI, 2 int16 for AVX2) and multiply-adds.
// The tiers differ only in Ops: the vector type, how a weight vector is loaded (AVX2 sign-extends
// int8 to int16) and the multiply-accumulate instruction (x86_dot.h). Internal linkage: see
// common/act_quant.h.
#pragma once

#include <cassert>

#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

// kRowMajor: the strip holds each row's k-blocks in order ([M][kblocks][4 bytes]; pack_a's kRowMajor)
// rather than the rows of each k-block.
template <class Ops, int kNr, int M, bool kRowMajor>
void x86_tile(const GemmS8Tile& t) {
  using V = typename Ops::Vec;
  constexpr int kVecs = kNr / Ops::kLanes;
  constexpr int kPanelStep = kVecs * Ops::kBBytes;  // panel bytes per k-block
  constexpr int U = k_unroll(M, kVecs, 8);
  assert(t.a_rows == M);  // strips are not padded (m_align 1): the strip's row stride is M
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int8_t* b = t.b;
  V acc[U][M][kVecs];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < kVecs; ++v) acc[u][r][v] = Ops::zero();
  auto step = [&](int kb, int u) {
    V bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = Ops::load_b(b + kb * kPanelStep + v * Ops::kBBytes);
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kRowMajor ? static_cast<ptrdiff_t>(r) * t.kblocks + kb : kb * M + r) * 4, 4);
      const V va = Ops::broadcast(av);
      for (int v = 0; v < kVecs; ++v) acc[u][r][v] = Ops::mac(acc[u][r][v], va, bv[v]);
    }
  };
  int kb = 0;
  for (; kb + U <= t.kblocks; kb += U)
    for (int u = 0; u < U; ++u) step(kb + u, u);
  for (; kb < t.kblocks; ++kb) step(kb, 0);
  alignas(64) int32_t out[M * kNr];
  for (int r = 0; r < M; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      V s = acc[0][r][v];
      for (int u = 1; u < U; ++u) s = Ops::add(s, acc[u][r][v]);
      Ops::store(out + r * kNr + v * Ops::kLanes, s);
    }
  }
  finish_tile<kNr>(out, t);
}

template <class Ops, int kMr, int kNr, bool kRowMajor = false>
void x86_run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { x86_tile<Ops, kNr, decltype(rows)::value, kRowMajor>(t); });
}

}  // namespace
}  // namespace edgecompress
