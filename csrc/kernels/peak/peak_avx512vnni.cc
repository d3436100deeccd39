// Peak probes of the VNNI tiers: vpdpbusd on zmm (avx512vnni) and on ymm (the 256-bit VNNI tier,
// EVEX encoded, which is how that tier runs on AVX-512 CPUs), fp32 FMA on zmm, and 512-bit reads.
#if !defined(__AVX512F__) || !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
#error "peak_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif

#include <immintrin.h>

#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

int64_t dpbusd_zmm(int64_t iters) {
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], x, y);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]));
  }
  __m512i s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_epi32(s, acc[i]);
  return _mm512_reduce_add_epi32(s);
}

int64_t dpbusd_ymm(int64_t iters) {
  __m256i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i x = _mm256_set1_epi8(3), y = _mm256_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm256_dpbusd_epi32(acc[i], x, y);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]));
  }
  __m256i s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm256_add_epi32(s, acc[i]);
  return _mm256_extract_epi32(s, 0);
}

int64_t fma_zmm(int64_t iters) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]));
  }
  __m512 s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm512_add_ps(s, acc[i]);
  return static_cast<int64_t>(_mm512_reduce_add_ps(s));
}

uint64_t read_zmm(const void* buf, size_t bytes) {
  const __m512i* p = static_cast<const __m512i*>(buf);
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < bytes / 64; i += 4) {
    s0 = _mm512_add_epi64(s0, _mm512_load_si512(p + i));
    s1 = _mm512_add_epi64(s1, _mm512_load_si512(p + i + 1));
    s2 = _mm512_add_epi64(s2, _mm512_load_si512(p + i + 2));
    s3 = _mm512_add_epi64(s3, _mm512_load_si512(p + i + 3));
  }
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
}

bool supported(const CpuFeatures& f) { return f.avx512f && f.avx512vl && f.avx512vnni; }

}  // namespace

extern const PeakProbe peak_dpbusd_zmm = {"vpdpbusd_zmm", Isa::avx512vnni, 128.0, supported, dpbusd_zmm, read_zmm};
extern const PeakProbe peak_dpbusd_ymm = {"vpdpbusd_ymm", Isa::avxvnni, 64.0, supported, dpbusd_ymm, read_zmm};
extern const PeakProbe peak_fma_zmm = {"fma_f32_zmm", Isa::avx512vnni, 32.0, supported, fma_zmm, read_zmm};

}  // namespace edgecompress
