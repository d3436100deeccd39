// gemm_q4 on Advanced SIMD without the dot-product extension (ARMv8.0 cores: Cortex-A53, A72, ...):
// int8-mode tile for uniform weights and per-tensor codebooks, rows x one 16-column panel, one group
// at a time.
//
// A 16-byte quarter of an 8-k step is 4 columns x 4 consecutive k. After and/shift its low nibbles
// (k 0..3 of the step) and high nibbles (k 4..7) are codes 0..15 (a codebook maps them to its signed
// int8 entries with tbl); each is multiplied with smull/smull2 against the row's 4 activation bytes
// of those k repeated 4 times, the high nibbles' products added in the same int16 lanes (smlal), and
// sadalp adds adjacent int16 pairs into int32. Accumulator h of quarter q then holds, for columns
// 4q + 2h and 4q + 2h + 1, two lanes each of partial sums (k 0, 1, 4, 5 and k 2, 3, 6, 7 of every
// step); addp folds them to one int32 per column at the end of the group, where the shared
// q4_end_group does the float arithmetic in the oracle's order.
//
// Exactness: activations are in [-127, 127] (dynamic symmetric quantization) and codebook entries in
// [-127, 127], so an int16 lane (one low-nibble and one high-nibble product) is at most
// 2 * 15 * 127 = 3810 for uniform weights and 2 * 127 * 127 = 32258 <= 32767 for a codebook; every
// wider sum is in int32 (at most 127 * 127 * 128 per group).
//
// 2 rows per tile: 2 x 8 int32 accumulators, 4 activation registers and the nibble mask leave 11 of
// the 32 vector registers for the codes and the int16 products (the float accumulators live in
// memory, read and written once per group); 4 rows would need 32 for the int32 accumulators alone.
#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "gemm_q4_neon.cc must be compiled for aarch64 with Advanced SIMD"
#endif

#include <arm_neon.h>

#include "gemm_q4_neon_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 2;

template <int R, int kMode>
void q4_tile_mull(const Q4Tile& t) {
  const Q4Weight& w = *t.w;
  const int steps = w.g / 8;
  const uint8_t* nib = q4_panel_nib(w, t.panel);
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  const uint8_t* zp = q4_panel_zp(w, t.panel);
  const ptrdiff_t ldx = t.x.ldx;
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  int8x16_t tbl = vdupq_n_s8(0);
  if (kMode == kBook) tbl = vld1q_s8(w.table_i8);
  alignas(16) float f[kQ4MaxRows * kQ4Panel];
  for (int i = 0; i < R * kQ4Panel; ++i) f[i] = 0.0f;
  for (int gi = 0; gi < w.groups; ++gi) {
    const int8_t* xg = t.x.xq + static_cast<ptrdiff_t>(gi) * w.g;
    int32x4_t acc[R][4][2];
    unroll<R>([&](auto r) {
      unroll<4>([&](auto q) { acc[r.value][q.value][0] = acc[r.value][q.value][1] = vdupq_n_s32(0); });
    });
    EC_MCA_LOOP("gemm_q4_neon", R, kMode);
    for (int s = 0; s < steps; ++s) {
      // Activations of k = 8s .. 8s + 3 (xl) and 8s + 4 .. 8s + 7 (xh), 4 bytes repeated 4 times.
      int8x16_t xl[R], xh[R];
      unroll<R>([&](auto r) {
        const int32x2_t x8 = vreinterpret_s32_s8(vld1_s8(xg + r.value * ldx + 8 * s));
        xl[r.value] = vreinterpretq_s8_s32(vdupq_lane_s32(x8, 0));
        xh[r.value] = vreinterpretq_s8_s32(vdupq_lane_s32(x8, 1));
      });
      const uint8_t* b64 = nib + static_cast<size_t>(s) * 64;
      unroll<4>([&](auto q) {
        const uint8x16_t b = vld1q_u8(b64 + 16 * q.value);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, m4));
        int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
        if (kMode == kBook) {
          lo = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(lo));
          hi = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(hi));
        }
        unroll<R>([&](auto r) {
          // int16 lanes: one low-nibble plus one high-nibble product, within the bounds above.
          const int16x8_t p0 = vmlal_s8(vmull_s8(vget_low_s8(lo), vget_low_s8(xl[r.value])), vget_low_s8(hi),
                                        vget_low_s8(xh[r.value]));
          const int16x8_t p1 = vmlal_high_s8(vmull_high_s8(lo, xl[r.value]), hi, xh[r.value]);
          acc[r.value][q.value][0] = vpadalq_s16(acc[r.value][q.value][0], p0);
          acc[r.value][q.value][1] = vpadalq_s16(acc[r.value][q.value][1], p1);
        });
      });
    }
    nib += static_cast<size_t>(steps) * 64;
    int32x4_t dot[R][4];
    unroll<R>([&](auto r) {
      unroll<4>([&](auto q) { dot[r.value][q.value] = vpaddq_s32(acc[r.value][q.value][0], acc[r.value][q.value][1]); });
    });
    q4_end_group<R, kMode>(f, dot, t, gi, sw16, zp);
  }
  q4_store(t, f);
}

template <int kMaxRows>
void q4_tile_neon(const Q4Tile& t) {
  q4_dispatch<kMaxRows>(t, [&](auto r, auto m) { q4_tile_mull<decltype(r)::value, decltype(m)::value>(t); });
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_Q4_KERNEL(gemm_q4_neon, "gemm_q4_2x16_neon", Isa::neon, kMr, kNeedsNeon, q4_tile_neon<kMr>)
