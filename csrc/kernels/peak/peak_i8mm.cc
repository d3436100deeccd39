// Peak probe of the i8mm tier: smmla (a 2 x 8 by 8 x 2 int8 product, 32 multiply-adds per
// instruction), as the i8mm gemm_s8 kernel issues it. One asm statement holds the whole loop on
// fixed registers, with 24 independent accumulators, as in peak_neon.cc, whose 128-bit read it shares.
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_MATMUL_INT8)
#error "peak_i8mm.cc must be compiled with the i8mm tier flags (-march=armv8.2-a+dotprod+i8mm)"
#endif

#include "edgecompress/peak.h"

namespace edgecompress {


namespace {

void smmla_q(int64_t iters) {
  if (iters <= 0) return;
  __asm__ volatile(
      "1:\n"
      "smmla v8.4s, v0.16b, v1.16b\n smmla v9.4s, v0.16b, v1.16b\n"
      "smmla v10.4s, v0.16b, v1.16b\n smmla v11.4s, v0.16b, v1.16b\n"
      "smmla v12.4s, v0.16b, v1.16b\n smmla v13.4s, v0.16b, v1.16b\n"
      "smmla v14.4s, v0.16b, v1.16b\n smmla v15.4s, v0.16b, v1.16b\n"
      "smmla v16.4s, v0.16b, v1.16b\n smmla v17.4s, v0.16b, v1.16b\n"
      "smmla v18.4s, v0.16b, v1.16b\n smmla v19.4s, v0.16b, v1.16b\n"
      "smmla v20.4s, v0.16b, v1.16b\n smmla v21.4s, v0.16b, v1.16b\n"
      "smmla v22.4s, v0.16b, v1.16b\n smmla v23.4s, v0.16b, v1.16b\n"
      "smmla v24.4s, v0.16b, v1.16b\n smmla v25.4s, v0.16b, v1.16b\n"
      "smmla v26.4s, v0.16b, v1.16b\n smmla v27.4s, v0.16b, v1.16b\n"
      "smmla v28.4s, v0.16b, v1.16b\n smmla v29.4s, v0.16b, v1.16b\n"
      "smmla v30.4s, v0.16b, v1.16b\n smmla v31.4s, v0.16b, v1.16b\n"
      "subs %x0, %x0, #1\n b.ne 1b\n"
      : "+r"(iters)
      :
      : "cc", "v0", "v1", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19",
        "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31");
}


}  // namespace

extern const PeakProbe peak_smmla_q = {"smmla_q", Isa::i8mm, 64.0, 24, kNeedsI8mm, smmla_q, peak_read_q};

}  // namespace edgecompress
