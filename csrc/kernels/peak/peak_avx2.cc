// Peak probes of the avx2 tier: fp32 FMA (what numpy/OpenBLAS can reach) and vpmaddwd (what the
// avx2 gemm_s8 tier is built on), plus 256-bit streaming reads.
#if !defined(__AVX2__) || !defined(__FMA__)
#error "peak_avx2.cc must be compiled with the avx2 tier flags"
#endif

#include <immintrin.h>

#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

int64_t fma_ymm(int64_t iters) {
  __m256 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]));
  }
  __m256 s = acc[0];
  for (int i = 1; i < 16; ++i) s = _mm256_add_ps(s, acc[i]);
  return static_cast<int64_t>(_mm256_cvtss_f32(s));
}

int64_t maddwd_ymm(int64_t iters) {
  __m256i acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i x = _mm256_set1_epi16(3), y = _mm256_set1_epi16(-2);
  for (int64_t it = 0; it < iters; ++it) {
    // 16 vpmaddwd with the accumulating vpaddd each, as in the avx2 gemm_s8 kernel.
    for (int j = 0; j < 2; ++j)
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, y));
    __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]));
  }
  __m256i s = acc[0];
  for (int i = 1; i < 8; ++i) s = _mm256_add_epi32(s, acc[i]);
  return _mm256_extract_epi32(s, 0);
}

uint64_t read_ymm(const void* buf, size_t bytes) {
  const __m256i* p = static_cast<const __m256i*>(buf);
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < bytes / 32; i += 8) {
    s0 = _mm256_add_epi64(s0, _mm256_add_epi64(_mm256_load_si256(p + i), _mm256_load_si256(p + i + 1)));
    s1 = _mm256_add_epi64(s1, _mm256_add_epi64(_mm256_load_si256(p + i + 2), _mm256_load_si256(p + i + 3)));
    s2 = _mm256_add_epi64(s2, _mm256_add_epi64(_mm256_load_si256(p + i + 4), _mm256_load_si256(p + i + 5)));
    s3 = _mm256_add_epi64(s3, _mm256_add_epi64(_mm256_load_si256(p + i + 6), _mm256_load_si256(p + i + 7)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
  return static_cast<uint64_t>(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 3));
}

bool supported(const CpuFeatures& f) { return f.avx2 && f.fma; }

}  // namespace

extern const PeakProbe peak_fma_ymm = {"fma_f32_ymm", Isa::avx2, 16.0, supported, fma_ymm, read_ymm};
extern const PeakProbe peak_maddwd_ymm = {"vpmaddwd_ymm", Isa::avx2, 32.0, supported, maddwd_ymm, read_ymm};

}  // namespace edgecompress
