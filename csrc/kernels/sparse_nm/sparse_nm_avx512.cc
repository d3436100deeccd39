// sparse_nm_f32 on AVX-512: one zmm holds a whole chunk of 16 kept values. The position block of a
// panel's chunk is broadcast, shifted per lane (vpsrlvd), masked and offset by the lane's group
// (vpternlogd): byte r of each lane is then row r's index, one vpsrld away. vpermt2ps moves the 32 x
// values of the span into the 16 lanes (1:4 spans 64 k: two vpermt2ps and a blend), then one FMA
// per row of x and row of the panel.
#if !defined(__AVX512F__)
#error "sparse_nm_avx512.cc must be compiled with the avx512 tier flags"
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
  static constexpr int kMaxRows = 4;  // 16 sums, up to 4 x registers per row and the indices of 32
  static constexpr int kSums = 16;
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

// The lane indices of all 4 rows of a panel's chunk: lane j's dword d of the broadcast position
// block, shifted right by the field of value j, masked per byte and offset by the lane's group
// (the positions fill bits the offsets leave zero), so byte r of each lane is row r's index.
inline __m512i zmm_expand(__m512i block, __m512i shift, int mask, __m512i base) {
  return _mm512_ternarylogic_epi32(_mm512_srlv_epi32(block, shift), _mm512_set1_epi32(mask), base, 0xEA);
}

// Row r's indices: byte r of each lane (vpermt2ps reads an index's low 5 bits only).
template <class Row>
inline __m512i zmm_row(__m512i expanded, Row) {
  return Row::value == 0 ? expanded : _mm512_srli_epi32(expanded, 8 * Row::value);
}

// Lane offsets g (0..63) repeated in the 4 bytes of a dword.
#define nm_bytes4(g) static_cast<int>(0x01010101u * (g))

template <int N, int G>
struct ZmmNm;

// 2:4: 16 values = 8 groups = 32 k; lane j reads k = 4 * (j / 2) + its 2-bit position, the field
// j / 4 of dword j % 4 (the 16-byte block broadcast to every 128-bit lane).
template <>
struct ZmmNm<2, 4> {
  static constexpr int kSpan = 32, kMetaBytes = 4;
  template <class Part>
  static __m512i expand(const uint8_t* block, Part) {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
    const __m512i shift = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    const __m512i base = _mm512_setr_epi32(nm_bytes4(0), nm_bytes4(0), nm_bytes4(4), nm_bytes4(4),
                                           nm_bytes4(8), nm_bytes4(8), nm_bytes4(12), nm_bytes4(12),
                                           nm_bytes4(16), nm_bytes4(16), nm_bytes4(20), nm_bytes4(20),
                                           nm_bytes4(24), nm_bytes4(24), nm_bytes4(28), nm_bytes4(28));
    return zmm_expand(b, shift, nm_bytes4(3), base);
  }
  template <class Row>
  static __m512i index(__m512i expanded, Row row) { return zmm_row(expanded, row); }
  template <class Part>
  static Zmm2 load_x(const float* x, Part) { return zmm_load2(x); }
  static __m512 select(const Zmm2& x, __m512i index) { return _mm512_permutex2var_ps(x.lo, index, x.hi); }
};

// 1:4: 16 values = 16 groups = 64 k; lane j reads k = 4 * j + its position (fields as for 2:4).
// vpermt2ps indexes 32 floats (it ignores bit 5), so lanes 0-7 come from the first 32 x values and
// lanes 8-15 from the next 32.
template <>
struct ZmmNm<1, 4> {
  static constexpr int kSpan = 64, kMetaBytes = 4;
  template <class Part>
  static __m512i expand(const uint8_t* block, Part) {
    const __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
    const __m512i shift = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    const __m512i base = _mm512_setr_epi32(nm_bytes4(0), nm_bytes4(4), nm_bytes4(8), nm_bytes4(12),
                                           nm_bytes4(16), nm_bytes4(20), nm_bytes4(24), nm_bytes4(28),
                                           nm_bytes4(32), nm_bytes4(36), nm_bytes4(40), nm_bytes4(44),
                                           nm_bytes4(48), nm_bytes4(52), nm_bytes4(56), nm_bytes4(60));
    return zmm_expand(b, shift, nm_bytes4(3), base);
  }
  template <class Row>
  static __m512i index(__m512i expanded, Row row) { return zmm_row(expanded, row); }
  template <class Part>
  static Zmm4 load_x(const float* x, Part) { return {zmm_load2(x), zmm_load2(x + 32)}; }
  static __m512 select(const Zmm4& x, __m512i index) {
    const __m512 lo = _mm512_permutex2var_ps(x.lo.lo, index, x.lo.hi);
    const __m512 hi = _mm512_permutex2var_ps(x.hi.lo, index, x.hi.hi);
    return _mm512_mask_blend_ps(0xFF00, lo, hi);
  }
};

// 4:8: 16 values = 4 groups = 32 k; lane j reads k = 8 * (j / 4) + its 4-bit position, the nibble
// j / 8 of dword j % 8 (the 32-byte block broadcast to both 256-bit halves).
template <>
struct ZmmNm<4, 8> {
  static constexpr int kSpan = 32, kMetaBytes = 8;
  template <class Part>
  static __m512i expand(const uint8_t* block, Part) {
    const __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block)));
    const __m512i shift = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m512i base = _mm512_setr_epi32(nm_bytes4(0), nm_bytes4(0), nm_bytes4(0), nm_bytes4(0),
                                           nm_bytes4(8), nm_bytes4(8), nm_bytes4(8), nm_bytes4(8),
                                           nm_bytes4(16), nm_bytes4(16), nm_bytes4(16), nm_bytes4(16),
                                           nm_bytes4(24), nm_bytes4(24), nm_bytes4(24), nm_bytes4(24));
    return zmm_expand(b, shift, nm_bytes4(7), base);
  }
  template <class Row>
  static __m512i index(__m512i expanded, Row row) { return zmm_row(expanded, row); }
  template <class Part>
  static Zmm2 load_x(const float* x, Part) { return zmm_load2(x); }
  static __m512 select(const Zmm2& x, __m512i index) { return _mm512_permutex2var_ps(x.lo, index, x.hi); }
};

void nm_avx512(const SparseNmTask& t) { nm_run<Zmm, ZmmNm>(t); }

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_avx512, "sparse_nm_f32_avx512", Isa::avx512, kNeedsAvx512, nm_avx512)
