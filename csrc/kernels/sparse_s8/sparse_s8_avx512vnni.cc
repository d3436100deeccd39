// sparse_s8 on AVX-512 VNNI: vpdpbusd on u8 activations (q + 128) against the int8 blocks.
//   SpMV: the interleaved layout (sparse_s8.h): 16 rows in the 16 lanes; per slice of 128
//     activations (two registers per row of x), each round's block indices pick the lanes' 4
//     activations with one vpermt2d, and one vpdpbusd adds the 16 rows' dots. No gather, no
//     horizontal sum. (Gathers were 4x slower here: Zen 4 gathers 0.8 elements per cycle.)
//   SpMM: each block's 4 weights are broadcast and multiply 16 rows of x in each of CW strips (one
//     dword per row of x holds its 4 activations at that block), CW accumulators in registers.
// Both subtract 128 * rowsum[n] at the end (the u8 shift), in wrapping uint32 arithmetic.
#if !defined(__AVX512VNNI__)
#error "sparse_s8_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "edgecompress/cpu.h"
#include "sparse_s8_common.h"  // s8_finish_one; unroll<>, with_rows<>

namespace edgecompress {
namespace {

// M rows of x, U independent accumulator chains per row (dot-product latency, not throughput,
// bounds one chain).
template <int M>
void spmv(const SparseS8Task& t) {
  const SparseS8& w = *t.w;
  constexpr int U = M == 1 ? 4 : (M == 2 ? 2 : 1);
  for (int g = t.r0 / 16; g * 16 < t.r1; ++g) {
    __m512i acc[M][U];
    unroll<M>([&](auto m) { unroll<U>([&](auto u) { acc[m.value][u.value] = _mm512_setzero_si512(); }); });
    const int64_t* rp = w.round_ptr + static_cast<ptrdiff_t>(g) * w.slices;
    for (int s = 0; s < w.slices; ++s) {
      int64_t r = rp[s];
      const int64_t r1 = rp[s + 1];
      if (r == r1) continue;
      __m512i lo[M], hi[M];
      unroll<M>([&](auto m) {
        lo[m.value] = _mm512_loadu_si512(t.a + m.value * t.lda + kSparseS8Slice * s);
        hi[m.value] = _mm512_loadu_si512(t.a + m.value * t.lda + kSparseS8Slice * s + 64);
      });
      auto round = [&](int64_t rr, auto u) {
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.ridx + 16 * rr)));
        const __m512i wv = _mm512_loadu_si512(w.rval + 64 * rr);
        unroll<M>([&](auto m) {
          acc[m.value][u.value] = _mm512_dpbusd_epi32(acc[m.value][u.value], _mm512_permutex2var_epi32(lo[m.value], idx, hi[m.value]), wv);
        });
      };
      for (; r + U <= r1; r += U) unroll<U>([&](auto u) { round(r + u.value, u); });
      // The last r1 - r < U rounds go to accumulators U-1, U-2, ...: no chain takes more than
      // ceil(rounds / U) of a cell's rounds (all of them into one chain bound short cells by latency).
      unroll<U - 1>([&](auto i) {
        if (r + static_cast<int64_t>(i.value) < r1) round(r + i.value, Rows<U - 1 - decltype(i)::value>{});
      });
    }
    const int rows = t.r1 - 16 * g < 16 ? t.r1 - 16 * g : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
    const __m512i shift = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, w.rowsum + 16 * g), 7);  // 128 * rowsum
    unroll<M>([&](auto m) {
      __m512i sum = acc[m.value][0];
      unroll<U - 1>([&](auto u) { sum = _mm512_add_epi32(sum, acc[m.value][u.value + 1]); });
      _mm512_mask_storeu_epi32(t.y + m.value * t.ldy + 16 * g, mask, _mm512_sub_epi32(sum, shift));
    });
  }
}

template <int CW, class Idx>
void spmm_chunk(const SparseS8Task& t, const Idx* __restrict idx, int row, int m0) {
  const SparseS8& w = *t.w;
  __m512i acc[CW];
  unroll<CW>([&](auto c) { acc[c.value] = _mm512_setzero_si512(); });
  for (int64_t j = w.indptr[row]; j < w.indptr[row + 1]; ++j) {
    int32_t w4;
    __builtin_memcpy(&w4, w.values + 4 * j, 4);
    const __m512i wb = _mm512_set1_epi32(w4);
    const uint8_t* xs = t.a + (static_cast<ptrdiff_t>(m0 / 16) * w.kblocks + idx[j]) * 64;
    const ptrdiff_t strip = static_cast<ptrdiff_t>(w.kblocks) * 64;
    unroll<CW>([&](auto c) { acc[c.value] = _mm512_dpbusd_epi32(acc[c.value], _mm512_loadu_si512(xs + strip * c.value), wb); });
  }
  const __m512i shift = _mm512_set1_epi32(static_cast<int32_t>(128u * static_cast<uint32_t>(w.rowsum[row])));
  int32_t* y = t.y + static_cast<ptrdiff_t>(row) * t.ldy + m0;
  unroll<CW>([&](auto c) { _mm512_storeu_si512(y + 16 * c.value, _mm512_sub_epi32(acc[c.value], shift)); });
}

template <class Idx>
void run_idx(const SparseS8Task& t, const Idx* idx) {
  if (t.m <= kSparseS8SpmvRows) {
    with_rows<kSparseS8SpmvRows>(t.m, [&](auto rows) { spmv<decltype(rows)::value>(t); });
    return;
  }
  for (int row = t.r0; row < t.r1; ++row) {
    int m0 = 0;
    for (; m0 + 128 <= t.a_rows; m0 += 128) spmm_chunk<8>(t, idx, row, m0);
    for (; m0 + 64 <= t.a_rows; m0 += 64) spmm_chunk<4>(t, idx, row, m0);
    for (; m0 + 32 <= t.a_rows; m0 += 32) spmm_chunk<2>(t, idx, row, m0);
    for (; m0 < t.a_rows; m0 += 16) spmm_chunk<1>(t, idx, row, m0);
  }
}

void run(const SparseS8Task& t) {
  if (t.w->idx16 != nullptr) return run_idx(t, t.w->idx16);
  run_idx(t, t.w->idx32);
}

// In-register transpose of a 16 x 16 int32 tile: r[j] holds row j before, column j after.
// unpack 32-bit and 64-bit pairs gather 4 x 4 blocks inside 128-bit lanes; two rounds of
// shuffle_i32x4 then move the lanes into place.
inline void transpose16(__m512i r[16]) {
  __m512i t[16], v[16];
  for (int j = 0; j < 8; ++j) {
    t[2 * j] = _mm512_unpacklo_epi32(r[2 * j], r[2 * j + 1]);
    t[2 * j + 1] = _mm512_unpackhi_epi32(r[2 * j], r[2 * j + 1]);
  }
  // v[4 b + q]: lane L holds column 4 L + q of rows 4 b .. 4 b + 3.
  for (int b = 0; b < 4; ++b) {
    v[4 * b + 0] = _mm512_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
    v[4 * b + 1] = _mm512_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
    v[4 * b + 2] = _mm512_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
    v[4 * b + 3] = _mm512_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
  }
  for (int q = 0; q < 4; ++q) {
    const __m512i x0 = _mm512_shuffle_i32x4(v[q], v[4 + q], 0x88), x1 = _mm512_shuffle_i32x4(v[q], v[4 + q], 0xdd);
    const __m512i y0 = _mm512_shuffle_i32x4(v[8 + q], v[12 + q], 0x88), y1 = _mm512_shuffle_i32x4(v[8 + q], v[12 + q], 0xdd);
    r[q] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    r[8 + q] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
    r[4 + q] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
  }
}

// The SpMM epilogue on 16 x 16 tiles: transpose in registers, then finish 16 columns of a row at
// once with the same float32 operations as the scalar epilogue (gelu and float64 rows go through it).
void finish(const SparseS8Finish& f) {
  // Rows of y outer, columns inner: each of the 16 rows of a tile row is written front to back.
  for (int i0 = 0; i0 < f.m; i0 += 16) {
    const int rows = f.m - i0 < 16 ? f.m - i0 : 16;
    for (int c0 = f.c0; c0 < f.c1; c0 += 16) {
      const int cols = f.c1 - c0 < 16 ? f.c1 - c0 : 16;
      const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
      __m512i r[16];
      for (int j = 0; j < 16; ++j)
        r[j] = j < cols ? _mm512_loadu_si512(f.yt + static_cast<ptrdiff_t>(c0 + j) * f.a_rows + i0) : _mm512_setzero_si512();
      transpose16(r);
      const __m512 scale = _mm512_maskz_loadu_ps(mask, f.scale + c0);
      for (int j = 0; j < rows; ++j) {
        const int i = i0 + j;
        const float rs = f.row_scale[i];
        float* dst = f.y + i * f.ldy + c0;
        if (f.act == Activation::gelu || !s8_row_is_normal(rs, f)) {
          alignas(64) int32_t v[16];
          _mm512_store_si512(v, r[j]);
          const bool normal = s8_row_is_normal(rs, f);
          for (int c = 0; c < cols; ++c) dst[c] = s8_finish_one(v[c], rs, normal, c0 + c, f);
          continue;
        }
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(r[j]), _mm512_mul_ps(_mm512_set1_ps(rs), scale));
        if (f.bias != nullptr) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, f.bias + c0));
        if (f.act == Activation::relu) y = _mm512_max_ps(y, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(dst, mask, y);
      }
    }
  }
}

}  // namespace

extern const SparseS8Kernel sparse_s8_avx512vnni = {"sparse_s8_avx512vnni", Isa::avx512vnni, kNeedsAvx512Vnni, true, true, run,
                                                     finish, s8_pack_strip<true>};

}  // namespace edgecompress
