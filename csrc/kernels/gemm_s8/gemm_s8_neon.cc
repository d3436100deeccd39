// gemm_s8 on Advanced SIMD without the dot-product extension (ARMv8.0 cores: Cortex-A53, A72, ...).
//
// ARMv8.0 has no 8-bit dot product, and 8-bit multiplies (smull.8h) would need a widening pass
// after every instruction, so this tier widens up front: activations are packed as int16 (once per
// call, reused by every panel), weights are sign-extended in registers (sxtl), and smlal/smlal2 by
// lane multiply-add 4 int16 pairs into int32 lanes; each product (at most 128 * 127) is exact.
//
// kr = 1 makes the strip A transposed (M int16 per k), so the activations of 8 consecutive k are M
// whole q registers and every (k, row) value is a fixed lane of one of them: the by-lane multiply
// replaces all broadcasts. Tile 8 x 8: 16 accumulators + 8 activation registers + the weights of
// one k fit the 32 vector registers; 16 smlal per 8 weight bytes and one activation load.
#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "gemm_s8_neon.cc must be compiled for aarch64 with Advanced SIMD"
#endif

#include <arm_neon.h>

#include "gemm_s8_neon_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 8, kNr = 8, kKr = 1;
static_assert(kNr == 8, "finish_neon_tile handles 8-column tiles");
constexpr int kGroup = 8;  // k per step: 8 * M int16 of activations, exactly M q registers


// smlal / smlal2 by lane with the accumulator in place: GCC models them as three-operand operations
// and in unrolled loops often writes the result to a fresh register and copies it back (an extra
// mov per multiply-add). "x": the 16-bit by-lane forms can only name v0-v15.
template <int L>
__attribute__((always_inline)) inline int32x4_t mla_lo(int32x4_t acc, int16x8_t b, int16x8_t a) {
  __asm__("smlal %0.4s, %1.4h, %2.h[%c3]" : "+w"(acc) : "w"(b), "x"(a), "i"(L));
  return acc;
}
template <int L>
__attribute__((always_inline)) inline int32x4_t mla_hi(int32x4_t acc, int16x8_t b, int16x8_t a) {
  __asm__("smlal2 %0.4s, %1.8h, %2.h[%c3]" : "+w"(acc) : "w"(b), "x"(a), "i"(L));
  return acc;
}

// One group of kGroup k values from a (kGroup * M int16) and b (kGroup * kNr int8).
template <int M, int U>
__attribute__((always_inline)) inline void group(int32x4_t (&acc)[U][M][2], const int16_t* a, const int8_t* b) {
  int16x8_t av[M];
  for (int i = 0; i < M; ++i) av[i] = vld1q_s16(a + 8 * i);
  unroll<kGroup>([&](auto j) {
    constexpr int J = decltype(j)::value, u = J % U;
    const int16x8_t bk = vmovl_s8(vld1_s8(b + J * kNr));
    unroll<M>([&](auto r) {
      constexpr int R = decltype(r)::value, e = J * M + R;  // flat index of a[R][J] in the group
      acc[u][R][0] = mla_lo<e % 8>(acc[u][R][0], bk, av[e / 8]);
      acc[u][R][1] = mla_hi<e % 8>(acc[u][R][1], bk, av[e / 8]);
    });
  });
}

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, 2, 8);
  static_assert(kGroup % U == 0, "accumulator sets rotate within a group");
  const int16_t* a = static_cast<const int16_t*>(t.a);
  int32x4_t acc[U][M][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r) acc[u][r][0] = acc[u][r][1] = vdupq_n_s32(0);
  const int groups = t.kblocks / kGroup;
  EC_MCA_LOOP("gemm_s8_neon", M, 0);
  for (int g = 0; g < groups; ++g) group<M, U>(acc, a + g * kGroup * M, t.b + g * kGroup * kNr);
  for (int k = groups * kGroup; k < t.kblocks; ++k) {  // at most 7: a broadcast per row is fine
    const int16x8_t bk = vmovl_s8(vld1_s8(t.b + k * kNr));
    for (int r = 0; r < M; ++r) {
      acc[0][r][0] = vmlal_n_s16(acc[0][r][0], vget_low_s16(bk), a[k * M + r]);
      acc[0][r][1] = vmlal_high_n_s16(acc[0][r][1], bk, a[k * M + r]);
    }
  }
  finish_neon_tile(acc, t);
}

void run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { tile<decltype(rows)::value>(t); });
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_neon, "gemm_s8_8x8_neon", Isa::neon, kMr, kNr, kKr, 2, true, 1, kNeedsNeon, run)
