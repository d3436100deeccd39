// Peak probes of the neon tier: fp32 fmla on q registers (what numpy/OpenBLAS can reach) and
// smlal/smlal2 by lane (what the neon gemm_s8 kernel is built on), plus 128-bit streaming reads
// (shared by the dotprod and i8mm probes: this file has the baseline flags, so it runs everywhere).
//
// Each probe is one asm statement holding the whole loop, on fixed registers: with the loop in C++,
// GCC may copy accumulators or reuse the source registers between asm statements. 24 independent
// accumulators (v8-v31) cover latency x pipes of current cores (4 x 4 on Neoverse V-series); the
// sources stay in v0/v1 because the 16-bit by-lane forms can only name v0-v15. Clobbering v8-v15
// makes GCC save their callee-saved low halves.
#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "peak_neon.cc must be compiled for aarch64 with Advanced SIMD"
#endif

#include <arm_neon.h>

#include "edgecompress/peak.h"

namespace edgecompress {

// 128-bit loads (the compiler pairs them into ldp q), 256 bytes per iteration; every load feeds an
// add so none is dead, with four chains so the adds never limit the loads.
uint64_t peak_read_q(const void* buf, size_t bytes) {
  const uint64_t* p = static_cast<const uint64_t*>(buf);
  uint64x2_t s0 = vdupq_n_u64(0), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < bytes / 8; i += 32) {
    s0 = vaddq_u64(s0, vaddq_u64(vld1q_u64(p + i), vld1q_u64(p + i + 2)));
    s1 = vaddq_u64(s1, vaddq_u64(vld1q_u64(p + i + 4), vld1q_u64(p + i + 6)));
    s2 = vaddq_u64(s2, vaddq_u64(vld1q_u64(p + i + 8), vld1q_u64(p + i + 10)));
    s3 = vaddq_u64(s3, vaddq_u64(vld1q_u64(p + i + 12), vld1q_u64(p + i + 14)));
    s0 = vaddq_u64(s0, vaddq_u64(vld1q_u64(p + i + 16), vld1q_u64(p + i + 18)));
    s1 = vaddq_u64(s1, vaddq_u64(vld1q_u64(p + i + 20), vld1q_u64(p + i + 22)));
    s2 = vaddq_u64(s2, vaddq_u64(vld1q_u64(p + i + 24), vld1q_u64(p + i + 26)));
    s3 = vaddq_u64(s3, vaddq_u64(vld1q_u64(p + i + 28), vld1q_u64(p + i + 30)));
  }
  const uint64x2_t s = vaddq_u64(vaddq_u64(s0, s1), vaddq_u64(s2, s3));
  return vgetq_lane_u64(s, 0) + vgetq_lane_u64(s, 1);
}

namespace {

#define EC_V_CLOBBERS                                                                              \
  "cc", "v0", "v1", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", \
      "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31"
// One instruction per accumulator v8-v31; I(n) is the instruction on accumulator n.
#define EC_ACC24(I)                                                                                 \
  I(8) I(9) I(10) I(11) I(12) I(13) I(14) I(15) I(16) I(17) I(18) I(19) I(20) I(21) I(22) I(23)     \
  I(24) I(25) I(26) I(27) I(28) I(29) I(30) I(31)

#define EC_ZERO(n) "movi v" #n ".16b, #0\n"
#define EC_FMLA(n) "fmla v" #n ".4s, v0.4s, v1.4s\n"

void fmla_q(int64_t iters) {
  if (iters <= 0) return;
  // Zero operands: no subnormal or NaN inputs on cores that handle those out of line.
  __asm__ volatile("movi v0.16b, #0\n movi v1.16b, #0\n" EC_ACC24(EC_ZERO)
                   "1:\n" EC_ACC24(EC_FMLA)
                   "subs %x0, %x0, #1\n b.ne 1b\n"
                   : "+r"(iters)
                   :
                   : EC_V_CLOBBERS);
}

// smlal and smlal2 by lane alternate, as the kernel issues them.
void smlal_q(int64_t iters) {
  if (iters <= 0) return;
  __asm__ volatile(
      "1:\n"
      "smlal v8.4s, v1.4h, v0.h[0]\n smlal2 v9.4s, v1.8h, v0.h[0]\n"
      "smlal v10.4s, v1.4h, v0.h[1]\n smlal2 v11.4s, v1.8h, v0.h[1]\n"
      "smlal v12.4s, v1.4h, v0.h[2]\n smlal2 v13.4s, v1.8h, v0.h[2]\n"
      "smlal v14.4s, v1.4h, v0.h[3]\n smlal2 v15.4s, v1.8h, v0.h[3]\n"
      "smlal v16.4s, v1.4h, v0.h[4]\n smlal2 v17.4s, v1.8h, v0.h[4]\n"
      "smlal v18.4s, v1.4h, v0.h[5]\n smlal2 v19.4s, v1.8h, v0.h[5]\n"
      "smlal v20.4s, v1.4h, v0.h[6]\n smlal2 v21.4s, v1.8h, v0.h[6]\n"
      "smlal v22.4s, v1.4h, v0.h[7]\n smlal2 v23.4s, v1.8h, v0.h[7]\n"
      "smlal v24.4s, v1.4h, v0.h[0]\n smlal2 v25.4s, v1.8h, v0.h[0]\n"
      "smlal v26.4s, v1.4h, v0.h[1]\n smlal2 v27.4s, v1.8h, v0.h[1]\n"
      "smlal v28.4s, v1.4h, v0.h[2]\n smlal2 v29.4s, v1.8h, v0.h[2]\n"
      "smlal v30.4s, v1.4h, v0.h[3]\n smlal2 v31.4s, v1.8h, v0.h[3]\n"
      "subs %x0, %x0, #1\n b.ne 1b\n"
      : "+r"(iters)
      :
      : EC_V_CLOBBERS);
}


}  // namespace

extern const PeakProbe peak_fmla_q = {"fmla_f32_q", Isa::neon, 8.0, 24, kNeedsNeon, fmla_q, peak_read_q};
extern const PeakProbe peak_smlal_q = {"smlal_q", Isa::neon, 8.0, 24, kNeedsNeon, smlal_q, peak_read_q};

}  // namespace edgecompress
