// gemm_s8 on AVX2 without VNNI.
//
// vpmaddubsw would saturate (255 * 127 * 2 > 32767), so this tier widens: activations are packed
// as int16 (u8 values), weights are sign-extended to int16 in registers (vpmovsxbw), and vpmaddwd
// multiplies pairs into int32: |a0*b0 + a1*b1| <= 2 * 255 * 128, exact. kr = 2 so one
// sign-extended load holds 8 columns x 2 k. Tile 6 x 16: 12 ymm accumulators, two weight vectors,
// one broadcast and one product fill the 16 registers.
#if !defined(__AVX2__)
#error "gemm_s8_avx2.cc must be compiled with the avx2 tier flags"
#endif

#include <immintrin.h>

#include "../x86_dot.h"
#include "gemm_s8_x86_tile.h"

namespace edgecompress {
namespace {

constexpr int kMr = 6, kNr = 16, kKr = 2;

struct Ops {
  using Vec = __m256i;
  static constexpr int kLanes = 8, kBBytes = 16;  // 8 columns x 2 k of int8, widened on load
  static Vec zero() { return _mm256_setzero_si256(); }
  static Vec load_b(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static Vec broadcast(int32_t v) { return _mm256_set1_epi32(v); }
  static Vec mac(Vec acc, Vec a, Vec b) { return madd256(acc, a, b); }
  static Vec add(Vec x, Vec y) { return _mm256_add_epi32(x, y); }
  static void store(int32_t* p, Vec v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
};


}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL_ROW_MAJOR(gemm_s8_avx2, "gemm_s8_6x16_avx2", Isa::avx2, kMr, kNr, kKr, 2, false, 1, kNeedsAvx2,
                            (x86_run<Ops, kMr, kNr, true>))
