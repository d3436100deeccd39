// Peak probe of the dotprod tier: sdot by lane on q registers, the form the dotprod gemm_s8 kernel
// issues (16 multiply-adds per instruction). One asm statement holds the whole loop on fixed
// registers, with 24 independent accumulators, as in peak_neon.cc, whose 128-bit read it shares.
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_DOTPROD)
#error "peak_dotprod.cc must be compiled with the dotprod tier flags (-march=armv8.2-a+dotprod)"
#endif

#include "edgecompress/peak.h"

namespace edgecompress {


namespace {

void sdot_q(int64_t iters) {
  if (iters <= 0) return;
  __asm__ volatile(
      "1:\n"
      "sdot v8.4s, v1.16b, v0.4b[0]\n sdot v9.4s, v1.16b, v0.4b[1]\n"
      "sdot v10.4s, v1.16b, v0.4b[2]\n sdot v11.4s, v1.16b, v0.4b[3]\n"
      "sdot v12.4s, v1.16b, v0.4b[0]\n sdot v13.4s, v1.16b, v0.4b[1]\n"
      "sdot v14.4s, v1.16b, v0.4b[2]\n sdot v15.4s, v1.16b, v0.4b[3]\n"
      "sdot v16.4s, v1.16b, v0.4b[0]\n sdot v17.4s, v1.16b, v0.4b[1]\n"
      "sdot v18.4s, v1.16b, v0.4b[2]\n sdot v19.4s, v1.16b, v0.4b[3]\n"
      "sdot v20.4s, v1.16b, v0.4b[0]\n sdot v21.4s, v1.16b, v0.4b[1]\n"
      "sdot v22.4s, v1.16b, v0.4b[2]\n sdot v23.4s, v1.16b, v0.4b[3]\n"
      "sdot v24.4s, v1.16b, v0.4b[0]\n sdot v25.4s, v1.16b, v0.4b[1]\n"
      "sdot v26.4s, v1.16b, v0.4b[2]\n sdot v27.4s, v1.16b, v0.4b[3]\n"
      "sdot v28.4s, v1.16b, v0.4b[0]\n sdot v29.4s, v1.16b, v0.4b[1]\n"
      "sdot v30.4s, v1.16b, v0.4b[2]\n sdot v31.4s, v1.16b, v0.4b[3]\n"
      "subs %x0, %x0, #1\n b.ne 1b\n"
      : "+r"(iters)
      :
      : "cc", "v0", "v1", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19",
        "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31");
}


}  // namespace

extern const PeakProbe peak_sdot_q = {"sdot_q", Isa::dotprod, 32.0, 24, kNeedsDotprod, sdot_q, peak_read_q};

}  // namespace edgecompress
