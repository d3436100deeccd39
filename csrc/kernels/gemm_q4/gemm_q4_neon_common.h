// What the neon and dotprod int8-mode tiles of gemm_q4 share: the weight mode and the end of a group,
// where the numerics are (the tiles differ only in how they compute the exact int32 dot products).
// Internal linkage: see gemm_s8/gemm_s8_common.h.
#pragma once

#include <arm_neon.h>

#include "../common/mca.h"
#include "gemm_q4_common.h"

namespace edgecompress {
namespace {

// Ends group gi for R rows: dot[r][q] holds the exact int32 dot products of row r's activations with
// columns 4q..4q+3 (codes 0..15 for uniform weights, the signed table entries for a codebook). As the
// oracle: d = dot - zero point x sum(xq), then f = f + float(d) * (sx * scale), one rounding per
// operation (vmulq + vaddq, never a fused multiply-add). zp * sum(xq) is at most 15 * 127 * 128 in
// magnitude, and |dot| at most 127 * 127 * 128: both far inside int32.
template <int R, int kMode>
__attribute__((always_inline)) inline void q4_end_group(float* f, const int32x4_t (&dot)[R][4],
                                                        const Q4Tile& t, int gi, const uint16_t* sw16,
                                                        const uint8_t* zp) {
  const ptrdiff_t lds = t.x.lds;
  float32x4_t sw[4];
  int32x4_t zv[4];
  if (kMode == kAsym) {
    const uint8x16_t z = vld1q_u8(zp + gi * kQ4Panel);
    const uint16x8_t z0 = vmovl_u8(vget_low_u8(z)), z1 = vmovl_high_u8(z);
    zv[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(z0)));
    zv[1] = vreinterpretq_s32_u32(vmovl_high_u16(z0));
    zv[2] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(z1)));
    zv[3] = vreinterpretq_s32_u32(vmovl_high_u16(z1));
  }
  unroll<4>([&](auto q) {
    // float16 -> float32 (fcvtl) is exact, subnormal halves included under the default FPCR.
    sw[q.value] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sw16 + gi * kQ4Panel + 4 * q.value)));
    if (kMode == kSym) zv[q.value] = vdupq_n_s32(8);
  });
  unroll<R>([&](auto r) {
    const int32_t sum = t.x.sumq[r.value * lds + gi];
    const float32x4_t sx = vdupq_n_f32(t.x.sx[r.value * lds + gi]);
    unroll<4>([&](auto q) {
      int32x4_t d = dot[r.value][q.value];
      if (kMode != kBook) d = vsubq_s32(d, vmulq_s32(zv[q.value], vdupq_n_s32(sum)));
      const float32x4_t p = vmulq_f32(sx, sw[q.value]);
      float* fq = f + r.value * kQ4Panel + 4 * q.value;
      vst1q_f32(fq, vaddq_f32(vld1q_f32(fq), vmulq_f32(vcvtq_f32_s32(d), p)));
    });
  });
}

}  // namespace
}  // namespace edgecompress
