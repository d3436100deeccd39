// Peak probes of the avx2 tier: fp32 FMA (what numpy/OpenBLAS can reach) and vpmaddwd + vpaddd
// (what the avx2 gemm_s8 kernel is built on), plus 256-bit streaming reads. The loops are inline
// asm on fixed registers: compilers otherwise keep probe accumulators in memory.
#if !defined(__AVX2__) || !defined(__FMA__)
#error "peak_avx2.cc must be compiled with the avx2 tier flags"
#endif

#include <immintrin.h>

#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

#define EC_YMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

void fma_ymm(int64_t iters) {
  // All operands zero: no denormal or NaN inputs that could slow the FMA units.
  __asm__ volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n vxorps %%ymm1, %%ymm1, %%ymm1\n vxorps %%ymm2, %%ymm2, %%ymm2\n"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n vxorps %%ymm4, %%ymm4, %%ymm4\n vxorps %%ymm5, %%ymm5, %%ymm5\n"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n vxorps %%ymm7, %%ymm7, %%ymm7\n vxorps %%ymm8, %%ymm8, %%ymm8\n"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n vxorps %%ymm10, %%ymm10, %%ymm10\n vxorps %%ymm11, %%ymm11, %%ymm11\n"
      "vxorps %%ymm12, %%ymm12, %%ymm12\n vxorps %%ymm13, %%ymm13, %%ymm13\n" ::: EC_YMM_CLOBBERS);
  for (int64_t it = 0; it < iters; ++it) {
    // 12 independent accumulators (4-cycle latency x 2 per cycle needs 8), sources ymm12 and ymm13.
    __asm__ volatile(
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm0\n vfmadd231ps %%ymm12, %%ymm13, %%ymm1\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm2\n vfmadd231ps %%ymm12, %%ymm13, %%ymm3\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm4\n vfmadd231ps %%ymm12, %%ymm13, %%ymm5\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm6\n vfmadd231ps %%ymm12, %%ymm13, %%ymm7\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm8\n vfmadd231ps %%ymm12, %%ymm13, %%ymm9\n"
        "vfmadd231ps %%ymm12, %%ymm13, %%ymm10\n vfmadd231ps %%ymm12, %%ymm13, %%ymm11\n" ::: EC_YMM_CLOBBERS);
  }
  __asm__ volatile("vzeroupper" ::: EC_YMM_CLOBBERS);
}

void maddwd_ymm(int64_t iters) {
  for (int64_t it = 0; it < iters; ++it) {
    // As in the avx2 kernel: each vpmaddwd feeds a vpaddd into one of 8 accumulators.
    __asm__ volatile(
        "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n vpaddd %%ymm8, %%ymm0, %%ymm0\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n vpaddd %%ymm9, %%ymm1, %%ymm1\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm10\n vpaddd %%ymm10, %%ymm2, %%ymm2\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm11\n vpaddd %%ymm11, %%ymm3, %%ymm3\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm12\n vpaddd %%ymm12, %%ymm4, %%ymm4\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm13\n vpaddd %%ymm13, %%ymm5, %%ymm5\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm8\n vpaddd %%ymm8, %%ymm6, %%ymm6\n"
        "vpmaddwd %%ymm14, %%ymm15, %%ymm9\n vpaddd %%ymm9, %%ymm7, %%ymm7\n" ::: EC_YMM_CLOBBERS);
  }
  __asm__ volatile("vzeroupper" ::: EC_YMM_CLOBBERS);
}

}  // namespace

// The 256-bit streaming read of the x86 ymm probes (declared in peak.h).
uint64_t peak_read_ymm(const void* buf, size_t bytes) {
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

extern const PeakProbe peak_fma_ymm = {"fma_f32_ymm", Isa::avx2, 16.0, 12, kNeedsAvx2, fma_ymm, peak_read_ymm};
extern const PeakProbe peak_maddwd_ymm = {"vpmaddwd_ymm", Isa::avx2, 32.0, 8, kNeedsAvx2, maddwd_ymm, peak_read_ymm};

}  // namespace edgecompress
