// What the neon and dotprod kernels share: their 8-column tiles keep, per row and accumulator set,
// two int32x4 accumulators (columns 0-3 and 4-7). Internal linkage: see common/act_quant.h.
#pragma once

#include <arm_neon.h>

#include "../common/mca.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

// Sums the U accumulator sets of an M x 8 tile and runs the epilogue.
template <int U, int M>
void finish_neon_tile(int32x4_t (&acc)[U][M][2], const GemmS8Tile& t) {
  int32_t out[M * 8];
  for (int r = 0; r < M; ++r) {
    int32x4_t s0 = acc[0][r][0], s1 = acc[0][r][1];
    for (int u = 1; u < U; ++u) s0 = vaddq_s32(s0, acc[u][r][0]), s1 = vaddq_s32(s1, acc[u][r][1]);
    vst1q_s32(out + r * 8, s0);
    vst1q_s32(out + r * 8 + 4, s1);
  }
  finish_tile<8>(out, t);
}

}  // namespace
}  // namespace edgecompress
