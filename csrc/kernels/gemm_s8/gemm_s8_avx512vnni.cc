// gemm_s8 on AVX-512 VNNI: vpdpbusd zmm (u8 x s8, 64 multiply-adds per instruction).
// Tile 8 x 32: 16 zmm accumulators, per k-block two weight loads and one broadcast per row.
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_s8_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif

#include <immintrin.h>

#include "../x86_dot.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 8, kNr = 32, kKr = 4;

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, 2, 8);
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int8_t* b = t.b;
  __m512i acc[U][M][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r) acc[u][r][0] = acc[u][r][1] = _mm512_setzero_si512();
  auto step = [&](int kb, int u) {
    const __m512i b0 = _mm512_loadu_si512(b + kb * kNr * kKr);
    const __m512i b1 = _mm512_loadu_si512(b + kb * kNr * kKr + 64);
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kb * M + r) * kKr, 4);
      const __m512i va = _mm512_set1_epi32(av);
      acc[u][r][0] = dpbusd512(acc[u][r][0], va, b0);
      acc[u][r][1] = dpbusd512(acc[u][r][1], va, b1);
    }
  };
  int kb = 0;
  for (; kb + U <= t.kblocks; kb += U)
    for (int u = 0; u < U; ++u) step(kb + u, u);
  for (; kb < t.kblocks; ++kb) step(kb, 0);
  alignas(64) int32_t out[M * kNr];
  for (int r = 0; r < M; ++r) {
    __m512i s0 = acc[0][r][0], s1 = acc[0][r][1];
    for (int u = 1; u < U; ++u) s0 = _mm512_add_epi32(s0, acc[u][r][0]), s1 = _mm512_add_epi32(s1, acc[u][r][1]);
    _mm512_store_si512(out + r * kNr, s0);
    _mm512_store_si512(out + r * kNr + 16, s1);
  }
  finish_tile<kNr>(out, t);
}

void run(const GemmS8Tile& t) {
  with_rows<kMr>(t.m, [&](auto rows) { tile<decltype(rows)::value>(t); });
}

bool supported(const CpuFeatures& f) {
  return f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512vnni && f.fma && f.f16c && f.bmi2;
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_avx512vnni, "gemm_s8_8x32_avx512vnni", Isa::avx512vnni, kMr, kNr, kKr, 1, false, 1,
                  supported, run)
