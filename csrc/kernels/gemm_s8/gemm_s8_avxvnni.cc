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
#define EC_KERNEL_NEEDS kNeedsAvx512Vnni  // everything its flags enable, used or not
#else
#if !defined(__AVXVNNI__) || !defined(__AVX2__)
#error "gemm_s8_avxvnni.cc must be compiled with the avxvnni tier flags"
#endif
#define EC_KERNEL_VAR gemm_s8_avxvnni
#define EC_KERNEL_NAME "gemm_s8_6x16_avxvnni"
#define EC_KERNEL_NEEDS kNeedsAvxVnni
#endif

#include "../x86_dot.h"
#include "gemm_s8_x86_tile.h"

namespace edgecompress {
namespace {

constexpr int kMr = 6, kNr = 16, kKr = 4;

struct Ops {
  using Vec = __m256i;
  static constexpr int kLanes = 8, kBBytes = 32;
  static Vec zero() { return _mm256_setzero_si256(); }
  static Vec load_b(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec broadcast(int32_t v) { return _mm256_set1_epi32(v); }
  static Vec mac(Vec acc, Vec a, Vec b) { return dpbusd256(acc, a, b); }
  static Vec add(Vec x, Vec y) { return _mm256_add_epi32(x, y); }
  static void store(int32_t* p, Vec v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
};

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(EC_KERNEL_VAR, EC_KERNEL_NAME, Isa::avxvnni, kMr, kNr, kKr, 1, false, 1, EC_KERNEL_NEEDS,
                  (x86_run<Ops, kMr, kNr>))
