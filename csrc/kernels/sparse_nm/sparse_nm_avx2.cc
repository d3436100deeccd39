// sparse_nm_f32 on AVX2: a chunk of 16 kept values is two ymm parts of 8. A part's 8 lane indices
// of all 4 rows of a panel come from the position block (broadcast, vpsrlvd, and, or), each row's
// a vpsrld away; vpermps permutes each 8-float vector of x in the part's span and fixed blends keep
// each lane's vector (two for 2:4 and 4:8, four for 1:4).
#if !defined(__AVX2__)
#error "sparse_nm_avx2.cc must be compiled with the avx2 tier flags"
#endif
#include <immintrin.h>

#include "sparse_nm_common.h"

namespace edgecompress {
namespace {

struct Ymm {
  using Vec = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 2;  // 8 sums, 4 index and up to 4 x registers of 16
  // 16 sums spill some, but the 4 panels of a one-row GEMV kept DRAM busier (1.67 -> 1.39 ms at
  // 4096 x 4096, 2:4, Zen 4).
  static constexpr int kSums = 16;
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec fma(Vec acc, Vec x, Vec w) { return _mm256_fmadd_ps(x, w, acc); }
  static float hsum(Vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct Ymm2 {
  __m256 lo, hi;
};
struct Ymm4 {
  Ymm2 lo, hi;
};

inline Ymm2 ymm_load2(const float* x) { return {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)}; }

// vpermps of two consecutive 8-float vectors of x: lanes 0-3 from the first, 4-7 from the second.
inline __m256 ymm_select2(const Ymm2& x, __m256i index) {
  return _mm256_blend_ps(_mm256_permutevar8x32_ps(x.lo, index), _mm256_permutevar8x32_ps(x.hi, index), 0xF0);
}

// Part q's lane indices of all 4 rows from a 2-bit position block: the 16-byte block in both
// 128-bit halves puts dword jj % 4 in lane jj, whose field 2q + jj / 4 is value 8q + jj's position;
// masked per byte and offset by the lane's group, byte r is row r's index.
template <int q>
inline __m256i ymm_expand2(const uint8_t* block, __m256i base) {
  const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  const __m256i shift = _mm256_setr_epi32(4 * q, 4 * q, 4 * q, 4 * q, 4 * q + 2, 4 * q + 2, 4 * q + 2, 4 * q + 2);
  return _mm256_or_si256(_mm256_and_si256(_mm256_srlv_epi32(b, shift), _mm256_set1_epi32(nm_bytes4(3))), base);
}

// Row r's indices: byte r of each lane (vpermps reads an index's low 3 bits only).
template <class Row>
inline __m256i ymm_row(__m256i expanded, Row) {
  return Row::value == 0 ? expanded : _mm256_srli_epi32(expanded, 8 * Row::value);
}

template <int N, int G>
struct YmmNm;

// 2:4: part q = values 8q..8q+7 = 4 groups = k 16q..16q+15; lane j reads vector j / 4 at
// 4 * (j / 2 % 2) + its 2-bit position.
template <>
struct YmmNm<2, 4> {
  static constexpr int kSpan = 32, kMetaBytes = 4;
  template <class Part>
  static __m256i expand(const uint8_t* block, Part) {
    return ymm_expand2<Part::value>(block, _mm256_setr_epi32(0, 0, nm_bytes4(4), nm_bytes4(4), 0, 0, nm_bytes4(4),
                                                              nm_bytes4(4)));
  }
  template <class Row>
  static __m256i index(__m256i expanded, Row row) { return ymm_row(expanded, row); }
  template <class Part>
  static Ymm2 load_x(const float* x, Part) { return ymm_load2(x + 16 * Part::value); }
  static __m256 select(const Ymm2& x, __m256i index) { return ymm_select2(x, index); }
};

// 1:4: part q = values 8q..8q+7 = 8 groups = k 32q..32q+31 (four vectors of x); lane j reads
// vector j / 2 at 4 * (j % 2) + its position.
template <>
struct YmmNm<1, 4> {
  static constexpr int kSpan = 64, kMetaBytes = 4;
  template <class Part>
  static __m256i expand(const uint8_t* block, Part) {
    const int four = nm_bytes4(4);
    return ymm_expand2<Part::value>(block, _mm256_setr_epi32(0, four, 0, four, 0, four, 0, four));
  }
  template <class Row>
  static __m256i index(__m256i expanded, Row row) { return ymm_row(expanded, row); }
  template <class Part>
  static Ymm4 load_x(const float* x, Part) {
    return {ymm_load2(x + 32 * Part::value), ymm_load2(x + 32 * Part::value + 16)};
  }
  static __m256 select(const Ymm4& x, __m256i index) {
    __m256 v = _mm256_permutevar8x32_ps(x.lo.lo, index);
    v = _mm256_blend_ps(v, _mm256_permutevar8x32_ps(x.lo.hi, index), 0x0C);
    v = _mm256_blend_ps(v, _mm256_permutevar8x32_ps(x.hi.lo, index), 0x30);
    return _mm256_blend_ps(v, _mm256_permutevar8x32_ps(x.hi.hi, index), 0xC0);
  }
};

// 4:8: part q = values 8q..8q+7 = groups 2q, 2q+1 = k 16q..16q+15; lane j reads vector j / 4 at
// its 4-bit position, nibble q of dword j of the 32-byte block. vpermps reads only an index's low
// 3 bits, so the shifted block needs no mask.
template <>
struct YmmNm<4, 8> {
  static constexpr int kSpan = 32, kMetaBytes = 8;
  template <class Part>
  static __m256i expand(const uint8_t* block, Part) {
    return _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block)), 4 * Part::value);
  }
  template <class Row>
  static __m256i index(__m256i expanded, Row row) { return ymm_row(expanded, row); }
  template <class Part>
  static Ymm2 load_x(const float* x, Part) { return ymm_load2(x + 16 * Part::value); }
  static __m256 select(const Ymm2& x, __m256i index) { return ymm_select2(x, index); }
};

void nm_avx2(const SparseNmTask& t) { nm_run<Ymm, YmmNm>(t); }

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_avx2, "sparse_nm_f32_avx2", Isa::avx2, kNeedsAvx2, nm_avx2)
