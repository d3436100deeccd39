// x86 int8-mode tiles of gemm_q4 (uniform weights and per-tensor codebooks): rows x one 16-column
// panel, one group at a time. Per 8-k step a 64-byte load carries 16 columns x 8 codes; the low and
// high nibbles (k 0..3 and 4..7 of the step) are split with and/shift and multiplied against four
// broadcast activation bytes each, so int32 lane j accumulates column j and nothing is reduced
// across lanes. At the end of a group: subtract zero point x sum(xq) (exact), then
// acc = acc + float(dot) * (sx * scale), as the oracle.
//
//   vpdpbusd (u8 x s8): codes 0..15 are the u8 side. Codebook entries ct in [-127, 127] become
//     ct + 128 through vpshufb on a table, and 128 x sum(xq) is subtracted like a zero point.
//   AVX2 vpmaddubsw (u8 x s8 -> saturating int16 pairs): codes times |xq| <= 127 give pairs of at
//     most 2 * 15 * 127 = 3810, so 8 of them (32 k) sum exactly in int16 before vpmaddwd widens
//     them. Codebooks use |ct| x sign(xq, ct) (pairs <= 2 * 127 * 127 < 2^15), widened every step.
#pragma once

#include <immintrin.h>

#include "../x86_dot.h"
#include "gemm_q4_common.h"

namespace edgecompress {
namespace {

inline int32_t load_i32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}


#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
inline __m512i dpbusd512_bcast(__m512i acc, __m512i a_u8, const int8_t* b4) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a_u8), "m"(*reinterpret_cast<const int32_t*>(b4)));
  return acc;
}

template <int R, int kMode>
void q4_tile512(const Q4Tile& t) {
  // Per row and group two accumulator chains: low nibbles and high nibbles. For uniform weights the
  // high nibbles are not shifted down: (b & 0xf0) is 16 x code, so that chain holds 16 x its dot
  // product, exactly (|16 x 15 x 127 x 64| < 2^31), and one arithmetic shift per group undoes it.
  // The low chain starts at -zp x sum(xq) when the zero point is one constant (symmetric: 8; the
  // codebook's +128 shift), so the correction costs nothing. Consecutive groups are independent, so
  // out-of-order execution overlaps their chains.
  const Q4Weight& w = *t.w;
  const int steps = w.g / 8;
  const uint8_t* nib = q4_panel_nib(w, t.panel);
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  const uint8_t* zp = q4_panel_zp(w, t.panel);
  const int32_t* sumq = t.x.sumq;
  const float* sx = t.x.sx;
  const ptrdiff_t ldx = t.x.ldx, lds = t.x.lds;
  const __m512i m4 = _mm512_set1_epi8(0x0f), m4hi = _mm512_set1_epi8(static_cast<char>(0xf0));
  constexpr int32_t kZero = kMode == kBook ? 128 : 8;
  // One row (GEMV): high nibbles masked in place (b & 0xf0, see above), one op per step. Several
  // rows: one shift per step is cheaper than one per row and group.
  constexpr bool kSplit = R == 1;
  __m512i tbl = _mm512_setzero_si512();
  if (kMode == kBook) {
    // ct + 128 as u8, in every 16-byte lane: vpshufb indexes with the low 4 bits of each byte, vpermb
    // with the low 6, so a raw byte (or one shifted right by 4) finds its nibble's entry.
    const __m128i ct = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.table_i8));
    tbl = _mm512_broadcast_i32x4(_mm_xor_si128(ct, _mm_set1_epi8(static_cast<char>(0x80))));
  }
  __m512 f[R];
  unroll<R>([&](auto r) { f[r.value] = _mm512_setzero_ps(); });
  for (int gi = 0; gi < w.groups; ++gi) {
    const int8_t* xg = t.x.xq + static_cast<ptrdiff_t>(gi) * w.g;
    __m512i lo_acc[R], hi_acc[R];
    unroll<R>([&](auto r) {
      lo_acc[r.value] = kMode == kAsym ? _mm512_setzero_si512() : _mm512_set1_epi32(-kZero * sumq[r.value * lds + gi]);
      hi_acc[r.value] = _mm512_setzero_si512();
    });
    for (int s = 0; s < steps; ++s) {
      __m512i b = _mm512_loadu_si512(nib + static_cast<size_t>(s) * 64);
      __asm__("" : "+v"(b));  // one load for both nibbles: GCC would fold it into each vpandd
      __m512i lo = _mm512_and_si512(b, m4), hi;
      if (kMode == kBook) {
#if defined(__AVX512VBMI__)
        lo = _mm512_permutexvar_epi8(b, tbl);  // no masking: vpermb ignores index bits 6-7
        hi = _mm512_permutexvar_epi8(_mm512_srli_epi16(b, 4), tbl);
#else
        lo = _mm512_shuffle_epi8(tbl, lo);  // vpshufb zeroes bytes whose index has bit 7 set: mask
        hi = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(b, 4), m4));
#endif
      } else if (kSplit) {
        hi = _mm512_and_si512(b, m4hi);
      } else {
        hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m4);
      }
      unroll<R>([&](auto r) {
        const int8_t* xr = xg + r.value * ldx + 8 * s;
        lo_acc[r.value] = dpbusd512_bcast(lo_acc[r.value], lo, xr);
        hi_acc[r.value] = dpbusd512_bcast(hi_acc[r.value], hi, xr + 4);
      });
    }
    nib += static_cast<size_t>(steps) * 64;
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sw16 + gi * kQ4Panel)));
    __m512i zv = _mm512_setzero_si512();
    if (kMode == kAsym) zv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zp + gi * kQ4Panel)));
    unroll<R>([&](auto r) {
      const __m512i hi = hi_acc[r.value];
      __m512i d = _mm512_add_epi32(lo_acc[r.value], kMode == kBook || !kSplit ? hi : _mm512_srai_epi32(hi, 4));
      if (kMode == kAsym) d = _mm512_sub_epi32(d, _mm512_mullo_epi32(zv, _mm512_set1_epi32(sumq[r.value * lds + gi])));
      const __m512 p = _mm512_mul_ps(_mm512_set1_ps(sx[r.value * lds + gi]), sw);
      f[r.value] = _mm512_add_ps(f[r.value], _mm512_mul_ps(_mm512_cvtepi32_ps(d), p));
    });
  }
  alignas(64) float out[kQ4MaxRows * kQ4Panel];
  unroll<R>([&](auto r) { _mm512_store_ps(out + r.value * kQ4Panel, f[r.value]); });
  q4_store(t, out);
}

template <int kMaxRows>
void q4_tile_avx512(const Q4Tile& t) {
  q4_dispatch<kMaxRows>(t, [&](auto r, auto m) { q4_tile512<decltype(r)::value, decltype(m)::value>(t); });
}
#endif

#if defined(__AVX2__)
// 256-bit tiles: a panel is two ymm halves (columns 0..7 and 8..15 are bytes 0..31 and 32..63).
// kVnni: vpdpbusd ymm; otherwise vpmaddubsw + vpmaddwd.
template <int R, int kMode, bool kVnni>
void q4_tile256(const Q4Tile& t) {
  const Q4Weight& w = *t.w;
  const int steps = w.g / 8;
  const uint8_t* nib = q4_panel_nib(w, t.panel);
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  const uint8_t* zp = q4_panel_zp(w, t.panel);
  const ptrdiff_t ldx = t.x.ldx, lds = t.x.lds;
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i tbl = _mm256_setzero_si256();
  if (kMode == kBook) {
    const __m128i ct = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.table_i8));
    // VNNI: ct + 128 as u8 (a zero point of 128); AVX2: ct itself (|ct| x sign(xq, ct)).
    tbl = _mm256_broadcastsi128_si256(kVnni ? _mm_xor_si128(ct, _mm_set1_epi8(static_cast<char>(0x80))) : ct);
  }
  __m256 f[R][2];
  unroll<R>([&](auto r) { f[r.value][0] = f[r.value][1] = _mm256_setzero_ps(); });
  for (int gi = 0; gi < w.groups; ++gi) {
    const int8_t* xg = t.x.xq + static_cast<ptrdiff_t>(gi) * w.g;
    __m256i acc[R][2];
    unroll<R>([&](auto r) {
      acc[r.value][0] = acc[r.value][1] = _mm256_setzero_si256();
    });
    for (int s0 = 0; s0 < steps; s0 += 4) {
      __m256i acc16[R][2];
      if (!kVnni && kMode != kBook) {
        unroll<R>([&](auto r) { acc16[r.value][0] = acc16[r.value][1] = _mm256_setzero_si256(); });
      }
      for (int s = s0; s < s0 + 4; ++s) {
        unroll<2>([&](auto h) {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(nib + static_cast<size_t>(s) * 64 + 32 * h.value));
          __m256i lo = _mm256_and_si256(b, m4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
          if (kMode == kBook) {
            lo = _mm256_shuffle_epi8(tbl, lo);
            hi = _mm256_shuffle_epi8(tbl, hi);
          }
          unroll<R>([&](auto r) {
            const int8_t* xr = xg + r.value * ldx + 8 * s;
            const __m256i xlo = _mm256_set1_epi32(load_i32(xr)), xhi = _mm256_set1_epi32(load_i32(xr + 4));
            __m256i& a = acc[r.value][h.value];
            if constexpr (kVnni) {
  #if defined(EC_HAS_DPBUSD256)
              a = dpbusd256(dpbusd256(a, lo, xlo), hi, xhi);
  #endif
            } else if (kMode == kBook) {
              const __m256i plo = _mm256_maddubs_epi16(_mm256_abs_epi8(lo), _mm256_sign_epi8(xlo, lo));
              const __m256i phi = _mm256_maddubs_epi16(_mm256_abs_epi8(hi), _mm256_sign_epi8(xhi, hi));
              a = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_madd_epi16(plo, ones16), _mm256_madd_epi16(phi, ones16)));
            } else {
              __m256i& a16 = acc16[r.value][h.value];
              a16 = _mm256_add_epi16(a16, _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi)));
            }
          });
        });
      }
      if (!kVnni && kMode != kBook) {
        unroll<R>([&](auto r) {
          unroll<2>([&](auto h) {
            acc[r.value][h.value] = _mm256_add_epi32(acc[r.value][h.value], _mm256_madd_epi16(acc16[r.value][h.value], ones16));
          });
        });
      }
    }
    nib += static_cast<size_t>(steps) * 64;
    unroll<2>([&](auto h) {
      const __m256 sw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sw16 + gi * kQ4Panel + 8 * h.value)));
      __m256i zv = _mm256_set1_epi32(kMode == kBook ? (kVnni ? 128 : 0) : 8);
      if (kMode == kAsym) zv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(zp + gi * kQ4Panel + 8 * h.value)));
      unroll<R>([&](auto r) {
        __m256i d = acc[r.value][h.value];
        d = _mm256_sub_epi32(d, _mm256_mullo_epi32(zv, _mm256_set1_epi32(t.x.sumq[r.value * lds + gi])));
        const __m256 p = _mm256_mul_ps(_mm256_set1_ps(t.x.sx[r.value * lds + gi]), sw);
        f[r.value][h.value] = _mm256_add_ps(f[r.value][h.value], _mm256_mul_ps(_mm256_cvtepi32_ps(d), p));
      });
    });
  }
  alignas(64) float out[kQ4MaxRows * kQ4Panel];
  unroll<R>([&](auto r) {
    _mm256_store_ps(out + r.value * kQ4Panel, f[r.value][0]);
    _mm256_store_ps(out + r.value * kQ4Panel + 8, f[r.value][1]);
  });
  q4_store(t, out);
}

template <int kMaxRows, bool kVnni>
void q4_tile_avx256(const Q4Tile& t) {
#if !defined(EC_HAS_DPBUSD256)
  static_assert(!kVnni, "the VNNI build of this tile needs vpdpbusd ymm (x86_dot.h)");
#endif
  q4_dispatch<kMaxRows>(t, [&](auto r, auto m) { q4_tile256<decltype(r)::value, decltype(m)::value, kVnni>(t); });
}
#endif

}  // namespace
}  // namespace edgecompress
