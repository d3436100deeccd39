// sparse_s8 on AVX-512 VNNI: vpdpbusd on u8 activations (q + 128) against the int8 blocks.
//   SpMV: 16 blocks of a row at a time; vpgatherdd fetches the 4 activation bytes of each block
//     (one dword per block index), one vpdpbusd adds the 16 dots; the row's sum is reduced at its end.
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

inline __m512i block_indices(const uint16_t* idx, int64_t j, __mmask16 mask) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, idx + j));
}
inline __m512i block_indices(const int32_t* idx, int64_t j, __mmask16 mask) {
  return _mm512_maskz_loadu_epi32(mask, idx + j);
}

template <int M, class Idx>
void spmv(const SparseS8Task& t, const Idx* __restrict idx) {
  const SparseS8& w = *t.w;
  for (int row = t.r0; row < t.r1; ++row) {
    const int64_t j0 = w.indptr[row], j1 = w.indptr[row + 1];
    __m512i acc[M];
    unroll<M>([&](auto m) { acc[m.value] = _mm512_setzero_si512(); });
    auto step = [&](int64_t j, __mmask16 mask) {
      const __m512i vi = block_indices(idx, j, mask);
      const __m512i wv = _mm512_maskz_loadu_epi32(mask, w.values + 4 * j);
      unroll<M>([&](auto m) {
        const __m512i q = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, vi, t.a + m.value * t.lda, 4);
        acc[m.value] = _mm512_dpbusd_epi32(acc[m.value], q, wv);
      });
    };
    int64_t j = j0;
    for (; j + 16 <= j1; j += 16) step(j, 0xffff);
    if (j < j1) step(j, static_cast<__mmask16>((1u << (j1 - j)) - 1));
    const uint32_t shift = 128u * static_cast<uint32_t>(w.rowsum[row]);
    unroll<M>([&](auto m) {
      t.y[m.value * t.ldy + row] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[m.value])) - shift);
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
    with_rows<kSparseS8SpmvRows>(t.m, [&](auto rows) { spmv<decltype(rows)::value>(t, idx); });
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

extern const SparseS8Kernel sparse_s8_avx512vnni = {"sparse_s8_avx512vnni", Isa::avx512vnni, kNeedsAvx512Vnni, true, run,
                                                     finish, s8_pack_strip<true>};

}  // namespace edgecompress
