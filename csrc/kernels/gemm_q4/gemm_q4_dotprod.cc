// gemm_q4 with the ARMv8.2 dot-product extension: int8-mode tile for uniform weights and per-tensor
// codebooks, rows x one 16-column panel, one group at a time.
//
// A 16-byte quarter of an 8-k step is 4 columns x 4 consecutive k, exactly the operand of sdot: after
// and/shift its low nibbles (k 0..3 of the step) and high nibbles (k 4..7) are 16 codes 0..15, valid
// s8, and sdot by lane multiplies them against 4 activation bytes taken from one 32-bit lane of a
// register holding 16 bytes of the row (two steps), so int32 lane j of accumulator q is column
// 4q + j and nothing is reduced across lanes. A codebook maps the codes to its signed int8 entries
// with tbl and sdot multiplies them as they are (s8 x s8: no zero point to correct). At the end of a
// group the shared q4_end_group does the float arithmetic in the oracle's order.
//
// The and/shift that unpack a code register share the vector pipes with sdot and serve one sdot per
// row and nibble half, so R rows reach at most R / (R + 1) of sdot's peak: up to 8 rows per tile.
// Up to 4 rows: 4R int32 accumulators, R activation registers and the 8 code registers of a step
// fit the 32 vector registers. 5 to 8 rows (q4_tile_sdot_wide) walk each group twice, one half of
// the panel per pass. The float accumulators live in memory, read and written once per group. One
// row (GEMV) splits each accumulator into two chains (low and high nibbles) so that 8 independent
// sdot chains hide the instruction's latency.
#if !defined(__aarch64__) || !defined(__ARM_FEATURE_DOTPROD)
#error "gemm_q4_dotprod.cc must be compiled with the dotprod tier flags (-march=armv8.2-a+dotprod)"
#endif

#include <arm_neon.h>

#include "gemm_q4_neon_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 8;

template <int R, int kMode>
void q4_tile_sdot(const Q4Tile& t) {
  constexpr int C = R == 1 ? 2 : 1;  // accumulator chains per column block
  const Q4Weight& w = *t.w;
  const int steps = w.g / 8;  // 4, 8 or 16: even, so steps are taken in pairs
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
    int32x4_t acc[R][C][4];
    unroll<R>([&](auto r) {
      unroll<C>([&](auto c) { unroll<4>([&](auto q) { acc[r.value][c.value][q.value] = vdupq_n_s32(0); }); });
    });
    EC_MCA_LOOP("gemm_q4_dotprod", R, kMode);
    for (int s = 0; s < steps; s += 2) {
      // k = 8s .. 8s + 15 of each row: 32-bit lanes 0, 1 belong to step s, lanes 2, 3 to step s + 1.
      int8x16_t xv[R];
      unroll<R>([&](auto r) { xv[r.value] = vld1q_s8(xg + r.value * ldx + 8 * s); });
      unroll<2>([&](auto u) {
        constexpr int L = 2 * decltype(u)::value;
        const uint8_t* b64 = nib + static_cast<size_t>(s + u.value) * 64;
        unroll<4>([&](auto q) {
          const uint8x16_t b = vld1q_u8(b64 + 16 * q.value);
          int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, m4));
          int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
          if (kMode == kBook) {
            lo = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(lo));
            hi = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(hi));
          }
          unroll<R>([&](auto r) {
            int32x4_t& a0 = acc[r.value][0][q.value];
            int32x4_t& a1 = acc[r.value][C - 1][q.value];
            a0 = vdotq_laneq_s32(a0, lo, xv[r.value], L);
            a1 = vdotq_laneq_s32(a1, hi, xv[r.value], L + 1);
          });
        });
      });
    }
    nib += static_cast<size_t>(steps) * 64;
    int32x4_t dot[R][4];
    unroll<R>([&](auto r) {
      unroll<4>([&](auto q) {
        dot[r.value][q.value] = acc[r.value][0][q.value];
        if (C == 2) dot[r.value][q.value] = vaddq_s32(dot[r.value][q.value], acc[r.value][C - 1][q.value]);
      });
    });
    q4_end_group<R, kMode>(f, dot, t, gi, sw16, zp);
  }
  q4_store(t, f);
}

// 5 to 8 rows: each code register unpacked once serves R sdot per nibble half, but R x 4 column
// blocks of accumulators no longer fit, so each group is walked twice, one pass per half of the
// panel (2 column blocks, R x 2 accumulators), one step per iteration with 8 activation bytes per
// row in a d register. Same exact dot products as q4_tile_sdot, handed to the same group end.
// sdot by lane of a d register with the accumulator in place: with the intrinsic, GCC writes some
// results to a fresh register and copies them back (two extra vector operations per step).
template <int L>
__attribute__((always_inline)) inline int32x4_t dot_lane(int32x4_t acc, int8x16_t b, int8x8_t a) {
  __asm__("sdot %0.4s, %1.16b, %2.4b[%c3]" : "+w"(acc) : "w"(b), "w"(a), "i"(L));
  return acc;
}

template <int R, int kMode>
void q4_tile_sdot_wide(const Q4Tile& t) {
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
    int32x4_t dot[R][4];
    for (int h = 0; h < 2; ++h) {
      int32x4_t acc[R][2];
      unroll<R>([&](auto r) { acc[r.value][0] = acc[r.value][1] = vdupq_n_s32(0); });
      const uint8_t* b32 = nib + 32 * h;
      EC_MCA_LOOP("gemm_q4_dotprod", R, kMode);
      for (int s = 0; s < steps; ++s) {
        // k = 8s .. 8s + 3 of each row in 32-bit lane 0, 8s + 4 .. 8s + 7 in lane 1
        int8x8_t xv[R];
        unroll<R>([&](auto r) { xv[r.value] = vld1_s8(xg + r.value * ldx + 8 * s); });
        unroll<2>([&](auto q) {
          const uint8x16_t b = vld1q_u8(b32 + static_cast<size_t>(s) * 64 + 16 * q.value);
          int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, m4));
          int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
          if (kMode == kBook) {
            lo = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(lo));
            hi = vqtbl1q_s8(tbl, vreinterpretq_u8_s8(hi));
          }
          unroll<R>([&](auto r) {
            int32x4_t& a = acc[r.value][q.value];
            a = dot_lane<0>(a, lo, xv[r.value]);
            a = dot_lane<1>(a, hi, xv[r.value]);
          });
        });
      }
      unroll<R>([&](auto r) {
        dot[r.value][2 * h] = acc[r.value][0];
        dot[r.value][2 * h + 1] = acc[r.value][1];
      });
    }
    nib += static_cast<size_t>(steps) * 64;
    q4_end_group<R, kMode>(f, dot, t, gi, sw16, zp);
  }
  q4_store(t, f);
}

template <int kMaxRows>
void q4_tile_dotprod(const Q4Tile& t) {
  q4_dispatch<kMaxRows>(t, [&](auto r, auto m) {
    constexpr int R = decltype(r)::value, kMode = decltype(m)::value;
    if constexpr (R > 4) {
      q4_tile_sdot_wide<R, kMode>(t);
    } else {
      q4_tile_sdot<R, kMode>(t);
    }
  });
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_Q4_KERNEL(gemm_q4_dotprod, "gemm_q4_8x16_dotprod", Isa::dotprod, kMr, kNeedsDotprod, q4_tile_dotprod<kMr>)
