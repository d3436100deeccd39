// gemm_s8 with the ARMv8.2 dot-product extension: sdot by lane (s8 x s8, 16 multiply-adds per
// instruction, 4 per int32 lane).
//
// sdot by lane takes the 4 activation bytes of one row from any 32-bit lane of a register, so a
// strip of 4 consecutive k-blocks (16 * M bytes, [kb][row][4]) is M whole q registers and every
// (k-block, row) is a fixed lane: one load per row per 4 k-blocks, no broadcasts. Tile 8 x 8:
// 16 accumulators and 8 activation registers leave 8 for the weights of the group; each k-block is
// 16 sdot for 2 weight loads and 2 activation loads. (8 x 12 would issue a sixth fewer loads per
// sdot, but its 24 accumulators leave no room for a group's activations.)
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_DOTPROD)
#error "gemm_s8_dotprod.cc must be compiled with the dotprod tier flags (-march=armv8.2-a+dotprod)"
#endif

#include <arm_neon.h>

#include "gemm_s8_neon_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 8, kNr = 8, kKr = 4;
static_assert(kNr == 8, "finish_neon_tile handles 8-column tiles");
// k-blocks per step: 4 * M * kKr activation bytes, exactly M q registers, and 8 weight registers.
constexpr int kGroup = 4;


// sdot by lane with the accumulator in place: GCC models it as a three-operand operation and in
// unrolled loops often writes the result to a fresh register and copies it back.
template <int L>
__attribute__((always_inline)) inline int32x4_t dot(int32x4_t acc, int8x16_t b, int8x16_t a) {
  __asm__("sdot %0.4s, %1.16b, %2.4b[%c3]" : "+w"(acc) : "w"(b), "w"(a), "i"(L));
  return acc;
}

// One group of kGroup k-blocks from a (kGroup * M * kKr bytes) and b (kGroup * kNr * kKr bytes).
template <int M, int U>
__attribute__((always_inline)) inline void group(int32x4_t (&acc)[U][M][2], const int8_t* a, const int8_t* b) {
  int8x16_t av[M], bv[2 * kGroup];
  for (int i = 0; i < M; ++i) av[i] = vld1q_s8(a + 16 * i);
  for (int i = 0; i < 2 * kGroup; ++i) bv[i] = vld1q_s8(b + 16 * i);
  static_assert(kGroup == 4, "the asm below names every weight register");
  if constexpr (2 * U * M + M + 2 * kGroup <= 28) {
    // GCC sinks each weight load next to its sdot, reusing one register; in-order cores (Cortex-A55)
    // then stall on every load. Where registers allow, this pins all loads of the group ahead.
    __asm__("" : "+w"(bv[0]), "+w"(bv[1]), "+w"(bv[2]), "+w"(bv[3]), "+w"(bv[4]), "+w"(bv[5]), "+w"(bv[6]),
            "+w"(bv[7]));
  }
  unroll<kGroup>([&](auto j) {
    constexpr int J = decltype(j)::value, u = J % U;
    unroll<M>([&](auto r) {
      constexpr int R = decltype(r)::value, e = J * M + R;  // 32-bit lane of a[R][block J] in the group
      acc[u][R][0] = dot<e % 4>(acc[u][R][0], bv[2 * J], av[e / 4]);
      acc[u][R][1] = dot<e % 4>(acc[u][R][1], bv[2 * J + 1], av[e / 4]);
    });
  });
}

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, 2, 8);
  static_assert(kGroup % U == 0, "accumulator sets rotate within a group");
  const int8_t* a = static_cast<const int8_t*>(t.a);
  int32x4_t acc[U][M][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r) acc[u][r][0] = acc[u][r][1] = vdupq_n_s32(0);
  const int groups = t.kblocks / kGroup;
  EC_MCA_LOOP("gemm_s8_dotprod", M, 0);
  for (int g = 0; g < groups; ++g) group<M, U>(acc, a + g * kGroup * M * kKr, t.b + g * kGroup * kNr * kKr);
  for (int kb = groups * kGroup; kb < t.kblocks; ++kb) {  // at most 3: a broadcast per row is fine
    const int8x16_t b0 = vld1q_s8(t.b + kb * kNr * kKr), b1 = vld1q_s8(t.b + kb * kNr * kKr + 16);
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kb * M + r) * kKr, 4);
      const int8x16_t va = vreinterpretq_s8_s32(vdupq_n_s32(av));
      acc[0][r][0] = vdotq_s32(acc[0][r][0], b0, va);
      acc[0][r][1] = vdotq_s32(acc[0][r][1], b1, va);
    }
  }
  finish_neon_tile(acc, t);
}

void run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { tile<decltype(rows)::value>(t); });
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_dotprod, "gemm_s8_8x8_dotprod", Isa::dotprod, kMr, kNr, kKr, 1, true, 1, kNeedsDotprod, run)
