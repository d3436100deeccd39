// Peak probe of the avxvnni tier on CPUs with AVX-VNNI: vpdpbusd ymm, VEX encoded (only ymm0-15).
// On AVX-512 CPUs without AVX-VNNI the EVEX probe of the same name (peak_avx512vnni.cc) serves.
#if !defined(__AVXVNNI__)
#error "peak_avxvnni.cc must be compiled with the avxvnni tier flags"
#endif

#include <immintrin.h>

#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

#define EC_YMM_CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

void dpbusd_vex(int64_t iters) {
  for (int64_t it = 0; it < iters; ++it) {
    // 14 independent accumulators, sources in ymm14 and ymm15.
    __asm__ volatile(
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm0\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm1\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm2\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm3\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm4\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm5\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm6\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm7\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm8\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm9\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm10\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm11\n"
        "%{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm12\n %{vex%} vpdpbusd %%ymm14, %%ymm15, %%ymm13\n" ::: EC_YMM_CLOBBERS);
  }
  __asm__ volatile("vzeroupper" ::: EC_YMM_CLOBBERS);
}

}  // namespace

extern const PeakProbe peak_dpbusd_ymm_vex = {"vpdpbusd_ymm", Isa::avxvnni, 64.0, 14, kNeedsAvxVnni, dpbusd_vex, peak_read_ymm};

}  // namespace edgecompress
