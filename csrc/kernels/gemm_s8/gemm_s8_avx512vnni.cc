// gemm_s8 on AVX-512 VNNI: vpdpbusd zmm (u8 x s8, 64 multiply-adds per instruction).
//
// Tile 6 x 64: 24 zmm accumulators; per k-block four weight vectors and one broadcast per row.
// The wide panel matters most for GEMV, which is bound by how fast the weights stream in: each
// activation broadcast (a load-port operation) feeds four vpdpbusd, so the load ports spend ~90% of
// their slots on weight bytes (with a 32-column panel, 80%).
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_s8_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif

#include <immintrin.h>

#include "../x86_dot.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 6, kNr = 64, kKr = 4, kVecs = kNr / 16;

template <int M>
void tile(const GemmS8Tile& t) {
  constexpr int U = k_unroll(M, kVecs, 8);
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int8_t* b = t.b;
  __m512i acc[U][M][kVecs];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < kVecs; ++v) acc[u][r][v] = _mm512_setzero_si512();
  auto step = [&](int kb, int u) {
    __m512i bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = _mm512_loadu_si512(b + kb * kNr * kKr + 64 * v);
    for (int r = 0; r < M; ++r) {
      int32_t av;
      std::memcpy(&av, a + (kb * M + r) * kKr, 4);
      const __m512i va = _mm512_set1_epi32(av);
      for (int v = 0; v < kVecs; ++v) acc[u][r][v] = dpbusd512(acc[u][r][v], va, bv[v]);
    }
  };
  int kb = 0;
  for (; kb + U <= t.kblocks; kb += U)
    for (int u = 0; u < U; ++u) step(kb + u, u);
  for (; kb < t.kblocks; ++kb) step(kb, 0);
  alignas(64) int32_t out[M * kNr];
  for (int r = 0; r < M; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      __m512i s = acc[0][r][v];
      for (int u = 1; u < U; ++u) s = _mm512_add_epi32(s, acc[u][r][v]);
      _mm512_store_si512(out + r * kNr + 16 * v, s);
    }
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

EC_GEMM_S8_KERNEL(gemm_s8_avx512vnni, "gemm_s8_6x64_avx512vnni", Isa::avx512vnni, kMr, kNr, kKr, 1, false, 1,
                  supported, run)
