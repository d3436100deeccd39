// gemm_s8 on AVX2 without VNNI.
//
// vpmaddubsw would saturate (255 * 127 * 2 > 32767), so this tier widens: activations are packed
// as int16 (u8 values), weights are sign-extended to int16 in registers (vpmovsxbw), and vpmaddwd
// multiplies pairs into int32: |a0*b0 + a1*b1| <= 2 * 255 * 128, exact. kr = 2 so one
// sign-extended load holds 8 columns x 2 k. Tile 4 x 16: 8 ymm accumulators. (6 x 16 is 5% faster
// at M = 128 but 25% slower at M = 8, which splits into strips of 6 and 2.)
#if !defined(__AVX2__)
#error "gemm_s8_avx2.cc must be compiled with the avx2 tier flags"
#endif

#include <immintrin.h>

#include "../x86_dot.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 4, kNr = 16, kKr = 2;

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, 2, 8);
  const int16_t* a = static_cast<const int16_t*>(t.a);
  const int8_t* b = t.b;
  __m256i acc[U][M][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_si256();
  auto step = [&](int kb, int u) {
    const __m128i* bp = reinterpret_cast<const __m128i*>(b + kb * kNr * kKr);
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp + 1));
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kb * M + r) * kKr, 4);
      const __m256i va = _mm256_set1_epi32(av);
      acc[u][r][0] = madd256(acc[u][r][0], va, b0);
      acc[u][r][1] = madd256(acc[u][r][1], va, b1);
    }
  };
  int kb = 0;
  for (; kb + U <= t.kblocks; kb += U)
    for (int u = 0; u < U; ++u) step(kb + u, u);
  for (; kb < t.kblocks; ++kb) step(kb, 0);
  alignas(32) int32_t out[M * kNr];
  for (int r = 0; r < M; ++r) {
    __m256i s0 = acc[0][r][0], s1 = acc[0][r][1];
    for (int u = 1; u < U; ++u) s0 = _mm256_add_epi32(s0, acc[u][r][0]), s1 = _mm256_add_epi32(s1, acc[u][r][1]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr), s0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + r * kNr + 8), s1);
  }
  finish_tile<kNr>(out, t);
}

void run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { tile<decltype(rows)::value>(t); });
}

bool supported(const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c && f.bmi2; }

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_avx2, "gemm_s8_4x16_avx2", Isa::avx2, kMr, kNr, kKr, 2, false, 1, supported, run)
