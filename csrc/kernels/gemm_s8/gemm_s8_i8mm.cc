// gemm_s8 with the int8 matrix-multiply extension: smmla (s8 x s8, a 2 x 8 by 8 x 2 product into
// a 2 x 2 int32 block: 32 multiply-adds per instruction, twice sdot's).
//
// With kr = 8 the packed layouts already are smmla operands: one q register of the strip
// ([kb][a_rows][8]) holds 8 k of a row pair, one of the panel ([kb][nr][8]) 8 k of a column pair.
// So there is nothing to broadcast or shuffle in the loop; m_align = 2 pads the strip to whole row
// pairs (the padding row is zero and never stored). Tile 8 x 8 = 4 row pairs x 4 column pairs:
// 16 accumulators, 4 weight and up to 4 activation registers; each k-block is 16 smmla for 8 loads.
// (8 x 12 would issue a sixth fewer loads per smmla, but its 24 accumulators and 6 weight registers
// leave almost none for activations.) Odd M wastes the padding row's half of each smmla; GEMV is
// bound by the weight stream, which is the same either way.
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_MATMUL_INT8) || !defined(__ARM_FEATURE_DOTPROD)
#error "gemm_s8_i8mm.cc must be compiled with the i8mm tier flags (-march=armv8.2-a+dotprod+i8mm)"
#endif

#include <arm_neon.h>

#include "../common/mca.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 8, kNr = 8, kKr = 8;
constexpr int kColPairs = kNr / 2;


// smmla with the accumulator in place: GCC models it as a three-operand operation and in unrolled
// loops often writes the result to a fresh register and copies it back.
__attribute__((always_inline)) inline int32x4_t mmla(int32x4_t acc, int8x16_t a, int8x16_t b) {
  __asm__("smmla %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
  return acc;
}

// M rows to store, P = ceil(M / 2) row pairs in the strip.
template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int P = (M + 1) / 2;
  constexpr int U = k_unroll(P, kColPairs, 8);
  const int8_t* a = static_cast<const int8_t*>(t.a);
  const int8_t* b = t.b;
  int32x4_t acc[U][P][kColPairs];
  for (int u = 0; u < U; ++u)
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < kColPairs; ++q) acc[u][p][q] = vdupq_n_s32(0);
  auto step = [&](int kb, auto u) {
    constexpr int S = decltype(u)::value;
    int8x16_t bv[kColPairs];
    for (int q = 0; q < kColPairs; ++q) bv[q] = vld1q_s8(b + (kb * kColPairs + q) * 16);
    for (int p = 0; p < P; ++p) {
      const int8x16_t av = vld1q_s8(a + (kb * P + p) * 16);
      for (int q = 0; q < kColPairs; ++q) acc[S][p][q] = mmla(acc[S][p][q], av, bv[q]);
    }
  };
  int kb = 0;
  EC_MCA_LOOP("gemm_s8_i8mm", M, 0);
  for (; kb + U <= t.kblocks; kb += U) unroll<U>([&](auto u) { step(kb + decltype(u)::value, u); });
  for (; kb < t.kblocks; ++kb) step(kb, Rows<0>{});
  // acc[p][q] holds rows 2p, 2p+1 x columns 2q, 2q+1 as [r0c0 r0c1 r1c0 r1c1]: a row of the tile
  // is the low (or high) 64-bit halves of its pair's blocks, side by side.
  int32_t out[2 * P * kNr];
  for (int p = 0; p < P; ++p) {
    int64x2_t s[kColPairs];
    for (int q = 0; q < kColPairs; ++q) {
      int32x4_t v = acc[0][p][q];
      for (int u = 1; u < U; ++u) v = vaddq_s32(v, acc[u][p][q]);
      s[q] = vreinterpretq_s64_s32(v);
    }
    for (int h = 0; h < kNr / 4; ++h) {
      vst1q_s32(out + (2 * p) * kNr + 4 * h, vreinterpretq_s32_s64(vzip1q_s64(s[2 * h], s[2 * h + 1])));
      vst1q_s32(out + (2 * p + 1) * kNr + 4 * h, vreinterpretq_s32_s64(vzip2q_s64(s[2 * h], s[2 * h + 1])));
    }
  }
  finish_tile<kNr>(out, t);
}

void run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { tile<decltype(rows)::value>(t); });
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_i8mm, "gemm_s8_8x8_i8mm", Isa::i8mm, kMr, kNr, kKr, 1, true, 2, kNeedsI8mm, run)
