// Peak probes of the VNNI tiers: vpdpbusd on zmm (avx512vnni) and on ymm (the 256-bit VNNI tier,
// EVEX encoded, which is how that tier runs on AVX-512 CPUs), fp32 FMA on zmm, and 512-bit reads.
// Inline asm on fixed registers, as in peak_avx2.cc.
#if !defined(__AVX512F__) || !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
#error "peak_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif

#include <immintrin.h>

#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

#define EC_ZMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17"
// 16 independent accumulators, sources in registers 16 and 17.
#define EC_16(op, w)                                                                                 \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm0\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm1\n "      \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm2\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm3\n "      \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm4\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm5\n "      \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm6\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm7\n "      \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm8\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm9\n "      \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm10\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm11\n "    \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm12\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm13\n "    \
  op " %%" w "mm16, %%" w "mm17, %%" w "mm14\n " op " %%" w "mm16, %%" w "mm17, %%" w "mm15\n"

void dpbusd_zmm(int64_t iters) {
  for (int64_t it = 0; it < iters; ++it) __asm__ volatile(EC_16("vpdpbusd", "z") ::: EC_ZMM_CLOBBERS);
  __asm__ volatile("vzeroupper" ::: EC_ZMM_CLOBBERS);
}

void dpbusd_ymm(int64_t iters) {
  for (int64_t it = 0; it < iters; ++it) __asm__ volatile(EC_16("vpdpbusd", "y") ::: EC_ZMM_CLOBBERS);
  __asm__ volatile("vzeroupper" ::: EC_ZMM_CLOBBERS);
}

void fma_zmm(int64_t iters) {
  // All operands zero: no denormal or NaN inputs that could slow the FMA units.
  __asm__ volatile(EC_16("vpxord", "z") "vpxord %%zmm16, %%zmm16, %%zmm16\n vpxord %%zmm17, %%zmm17, %%zmm17" ::: EC_ZMM_CLOBBERS);
  for (int64_t it = 0; it < iters; ++it) __asm__ volatile(EC_16("vfmadd231ps", "z") ::: EC_ZMM_CLOBBERS);
  __asm__ volatile("vzeroupper" ::: EC_ZMM_CLOBBERS);
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
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)));
  return lanes[0] + lanes[7];
}


}  // namespace

extern const PeakProbe peak_dpbusd_zmm = {"vpdpbusd_zmm", Isa::avx512vnni, 128.0, 16, kNeedsAvx512Vnni, dpbusd_zmm, read_zmm};
extern const PeakProbe peak_dpbusd_ymm = {"vpdpbusd_ymm", Isa::avxvnni, 64.0, 16, kNeedsAvx512Vnni, dpbusd_ymm, read_zmm};
extern const PeakProbe peak_fma_zmm = {"fma_f32_zmm", Isa::avx512vnni, 32.0, 16, kNeedsAvx512Vnni, fma_zmm, read_zmm};

}  // namespace edgecompress
