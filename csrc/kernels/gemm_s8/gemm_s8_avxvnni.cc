// gemm_s8 on 256-bit VNNI: vpdpbusd ymm (u8 x s8, 32 multiply-adds per instruction).
// Tile 6 x 16: 12 ymm accumulators, two weight vectors and one broadcast fit the 16 registers.
//
// Built twice: with -mavxvnni (VEX encoding, for AVX-VNNI CPUs such as Alder Lake) and, with
// EC_VNNI_EVEX defined, with AVX-512 VNNI + VL flags (EVEX encoding of the same instructions, for
// CPUs that have AVX-512 VNNI but not AVX-VNNI, such as Zen 4). The source is the same; the
// registry prefers the VEX build.
#include <immintrin.h>

#if defined(EC_VNNI_EVEX)
#if !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
#error "the EVEX build of gemm_s8_avxvnni.cc needs AVX-512 VNNI and VL flags"
#endif
#define EC_KERNEL_VAR gemm_s8_avxvnni_evex
#define EC_KERNEL_NAME "gemm_s8_6x16_avxvnni_evex"
#else
#if !defined(__AVXVNNI__) || !defined(__AVX2__)
#error "gemm_s8_avxvnni.cc must be compiled with the avxvnni tier flags"
#endif
#define EC_KERNEL_VAR gemm_s8_avxvnni
#define EC_KERNEL_NAME "gemm_s8_6x16_avxvnni"
#endif

#include "../x86_dot.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 6, kNr = 16, kKr = 4;

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, 2, 8);
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int8_t* b = t.b;
  __m256i acc[U][M][2];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r) acc[u][r][0] = acc[u][r][1] = _mm256_setzero_si256();
  auto step = [&](int kb, int u) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kb * kNr * kKr));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kb * kNr * kKr + 32));
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kb * M + r) * kKr, 4);
      const __m256i va = _mm256_set1_epi32(av);
      acc[u][r][0] = dpbusd256(acc[u][r][0], va, b0);
      acc[u][r][1] = dpbusd256(acc[u][r][1], va, b1);
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

bool supported(const CpuFeatures& f) {
#if defined(EC_VNNI_EVEX)
  return f.avx512vnni && f.avx512vl && f.fma && f.f16c && f.bmi2;
#else
  return f.avxvnni && f.fma && f.f16c && f.bmi2;
#endif
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(EC_KERNEL_VAR, EC_KERNEL_NAME, Isa::avxvnni, kMr, kNr, kKr, 1, false, 1, supported, run)
