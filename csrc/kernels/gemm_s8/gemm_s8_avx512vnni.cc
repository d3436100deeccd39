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
#include "gemm_s8_x86_tile.h"

namespace edgecompress {
namespace {

constexpr int kMr = 6, kNr = 64, kKr = 4;

struct Ops {
  using Vec = __m512i;
  static constexpr int kLanes = 16, kBBytes = 64;
  static Vec zero() { return _mm512_setzero_si512(); }
  static Vec load_b(const int8_t* p) { return _mm512_loadu_si512(p); }
  static Vec broadcast(int32_t v) { return _mm512_set1_epi32(v); }
  static Vec mac(Vec acc, Vec a, Vec b) { return dpbusd512(acc, a, b); }
  static Vec add(Vec x, Vec y) { return _mm512_add_epi32(x, y); }
  static void store(int32_t* p, Vec v) { _mm512_store_si512(p, v); }
};


}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_avx512vnni, "gemm_s8_6x64_avx512vnni", Isa::avx512vnni, kMr, kNr, kKr, 1, false, 1,
                  kNeedsAvx512Vnni, (x86_run<Ops, kMr, kNr>))
