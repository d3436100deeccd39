// sparse_nm_f32 on AVX-512: one zmm holds a whole chunk of 16 kept values. The chunk's meta word is
// broadcast, shifted per lane (vpsrlvd), masked and offset by the lane's group (vpternlogd), and
// vpermt2ps moves the 32 x values of the span into the 16 lanes (1:4 spans 64 k: two vpermt2ps and
// a blend). Then one FMA per row of x and row of the panel.
#if !defined(__AVX512F__)
#error "sparse_nm_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "sparse_nm_common.h"

namespace edgecompress {
namespace {

struct Zmm {
  using Vec = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 4;  // 16 sums, up to 4 x registers and 4 index registers of 32
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec fma(Vec acc, Vec x, Vec w) { return _mm512_fmadd_ps(x, w, acc); }
  static float hsum(Vec v) { return _mm512_reduce_add_ps(v); }
};

struct Zmm2 {
  __m512 lo, hi;
};
struct Zmm4 {
  Zmm2 lo, hi;
};

inline Zmm2 zmm_load2(const float* x) { return {_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16)}; }

// (word >> shift) & mask | base, per lane (the positions fill bits the group offsets leave zero).
inline __m512i zmm_lanes(__m512i word, __m512i shift, int mask, __m512i base) {
  return _mm512_ternarylogic_epi32(_mm512_srlv_epi32(word, shift), _mm512_set1_epi32(mask), base, 0xEA);
}

template <int N, int G>
struct ZmmNm;

// 2:4: 16 values = 8 groups = 32 k; lane j reads k = 4 * (j / 2) + its 2-bit position.
template <>
struct ZmmNm<2, 4> {
  static constexpr int kSpan = 32, kMetaBytes = 4;
  template <class Part>
  static __m512i index(const uint8_t* word, Part) {
    const __m512i w = _mm512_set1_epi32(static_cast<int>(nm_word32(word)));
    const __m512i shift = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    return zmm_lanes(w, shift, 3, base);
  }
  template <class Part>
  static Zmm2 load_x(const float* x, Part) { return zmm_load2(x); }
  static __m512 select(const Zmm2& x, __m512i index) { return _mm512_permutex2var_ps(x.lo, index, x.hi); }
};

// 1:4: 16 values = 16 groups = 64 k; lane j reads k = 4 * j + its position. vpermt2ps indexes 32
// floats (it ignores bit 5), so lanes 0-7 come from the first 32 x values and lanes 8-15 from the
// next 32.
template <>
struct ZmmNm<1, 4> {
  static constexpr int kSpan = 64, kMetaBytes = 4;
  template <class Part>
  static __m512i index(const uint8_t* word, Part) {
    const __m512i w = _mm512_set1_epi32(static_cast<int>(nm_word32(word)));
    const __m512i shift = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60);
    return zmm_lanes(w, shift, 3, base);
  }
  template <class Part>
  static Zmm4 load_x(const float* x, Part) { return {zmm_load2(x), zmm_load2(x + 32)}; }
  static __m512 select(const Zmm4& x, __m512i index) {
    const __m512 lo = _mm512_permutex2var_ps(x.lo.lo, index, x.lo.hi);
    const __m512 hi = _mm512_permutex2var_ps(x.hi.lo, index, x.hi.hi);
    return _mm512_mask_blend_ps(0xFF00, lo, hi);
  }
};

// 4:8: 16 values = 4 groups = 32 k; lane j reads k = 8 * (j / 4) + its 4-bit position. The 64-bit
// word's low half holds lanes 0-7, its high half lanes 8-15.
template <>
struct ZmmNm<4, 8> {
  static constexpr int kSpan = 32, kMetaBytes = 8;
  template <class Part>
  static __m512i index(const uint8_t* word, Part) {
    const __m512i w = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(nm_word32(word))), 0xFF00,
                                             static_cast<int>(nm_word32(word + 4)));
    const __m512i shift = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    const __m512i base = _mm512_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 24);
    return zmm_lanes(w, shift, 7, base);
  }
  template <class Part>
  static Zmm2 load_x(const float* x, Part) { return zmm_load2(x); }
  static __m512 select(const Zmm2& x, __m512i index) { return _mm512_permutex2var_ps(x.lo, index, x.hi); }
};

void nm_avx512(const SparseNmTask& t) { nm_run<Zmm, ZmmNm>(t); }

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_avx512vnni, "sparse_nm_f32_avx512vnni", Isa::avx512vnni, kNeedsAvx512Vnni, nm_avx512)
