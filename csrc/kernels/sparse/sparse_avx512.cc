// sparse_f32 on AVX-512: the shared source vectorized for 512-bit registers (one zmm per 16 lanes),
// and for CSR SpMV the interleaved layout (sparse.h): 16 rows of W in the 16 lanes; per slice of 32
// columns, x's two registers per row stay loaded while each round's column indices pick the lanes'
// x values with one vpermt2ps and one FMA adds them into the 16 rows. No gather and no horizontal
// sum: CSR's scattered scalar loads of x ran at 0.8-0.9 per cycle, a round does 16 nonzeros. A
// row's few nonzeros that spill past the rounds (driver.h) are added one by one.
#if !defined(__AVX512F__)
#error "sparse_avx512.cc must be compiled with the avx512 tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "edgecompress/cpu.h"
#include "sparse_common.h"

namespace edgecompress {
namespace {

// M rows of x, U independent accumulator chains per row (FMA latency bounds one chain).
template <int M>
void spmv_interleaved(const SparseTask& t) {
  const SparseF32& w = *t.w;
  constexpr int U = M == 1 ? 4 : (M == 2 ? 2 : 1);
  for (int g = t.b0 / 16; g * 16 < t.b1; ++g) {
    __m512 acc[M][U];
    unroll<M>([&](auto m) { unroll<U>([&](auto u) { acc[m.value][u.value] = _mm512_setzero_ps(); }); });
    const int64_t* rp = w.round_ptr + static_cast<ptrdiff_t>(g) * w.slices;
    for (int s = 0; s < w.slices; ++s) {
      int64_t r = rp[s];
      const int64_t r1 = rp[s + 1];
      if (r == r1) continue;
      const int k0 = kInterleaveSlice * s, left = w.k - k0;  // the last slice may be partial
      const __mmask16 mlo = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 mhi = left >= 32 ? 0xffff : (left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1));
      __m512 lo[M], hi[M];
      unroll<M>([&](auto m) {
        lo[m.value] = _mm512_maskz_loadu_ps(mlo, t.x + m.value * t.ldx + k0);
        hi[m.value] = _mm512_maskz_loadu_ps(mhi, t.x + m.value * t.ldx + k0 + 16);
      });
      auto round = [&](int64_t rr, auto u) {
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(w.ridx + 16 * rr)));
        const __m512 wv = _mm512_load_ps(w.rval + 16 * rr);
        unroll<M>([&](auto m) {
          acc[m.value][u.value] = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo[m.value], idx, hi[m.value]), wv, acc[m.value][u.value]);
        });
      };
      for (; r + U <= r1; r += U) unroll<U>([&](auto u) { round(r + u.value, u); });
      // The last r1 - r < U rounds go to accumulators U-1, U-2, ...: no chain takes more than
      // ceil(rounds / U) of a cell's rounds (all of them into one chain bound short cells by latency).
      unroll<U - 1>([&](auto i) {
        if (r + static_cast<int64_t>(i.value) < r1) round(r + i.value, Rows<U - 1 - decltype(i)::value>{});
      });
    }
    const int row0 = 16 * g, rows = t.b1 - row0 < 16 ? t.b1 - row0 : 16;
    const __mmask16 mask = static_cast<__mmask16>((1u << rows) - 1);
    alignas(64) float spill[M][16] = {};  // the spilled nonzeros, row by row
    for (int l = 0; l < rows; ++l)
      for (int64_t j = w.spill_ptr[row0 + l]; j < w.spill_ptr[row0 + l + 1]; ++j)
        unroll<M>([&](auto m) { spill[m.value][l] += w.spill_val[j] * t.x[m.value * t.ldx + w.spill_idx[j]]; });
    unroll<M>([&](auto m) {
      __m512 sum = _mm512_load_ps(spill[m.value]);
      unroll<U>([&](auto u) { sum = _mm512_add_ps(sum, acc[m.value][u.value]); });
      float* y = t.y + static_cast<ptrdiff_t>(m.value) * w.n + row0;
      if (t.act == Activation::gelu) {  // the scalar epilogue (gelu is not vectorized)
        alignas(64) float v[16];
        _mm512_store_ps(v, sum);
        for (int i = 0; i < rows; ++i) y[i] = bias_act(v[i], t.bias, row0 + i, t.act);
        return;
      }
      if (t.bias != nullptr) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, t.bias + row0));
      if (t.act == Activation::relu) sum = _mm512_max_ps(sum, _mm512_setzero_ps());
      _mm512_mask_storeu_ps(y, mask, sum);
    });
  }
}

void run(const SparseTask& t) {
  if (t.w->round_ptr != nullptr && t.m <= kSpmvRows) {
    with_rows<kSpmvRows>(t.m, [&](auto rows) { spmv_interleaved<decltype(rows)::value>(t); });
    return;
  }
  sp_run(t);
}

}  // namespace

extern const SparseKernel sparse_f32_avx512 = {"sparse_f32_avx512", Isa::avx512, kNeedsAvx512, true, run};

}  // namespace edgecompress
