// sparse_nm_f32 on NEON: a chunk of 16 kept values is four q-register parts of 4. A part's lane
// positions come from the meta word (dup, ushl by negative counts, and); a multiply-add turns them
// into byte indices (4 * float index + 0..3, plus the lane's table offset) and one tbl moves the
// x values of the part's span into the lanes: tbl2 (8 floats) for 2:4 and 4:8, tbl4 (16) for 1:4.
#if !defined(__ARM_NEON)
#error "sparse_nm_neon.cc must be compiled for aarch64 (NEON)"
#endif
#include <arm_neon.h>

#include "sparse_nm_common.h"

namespace edgecompress {
namespace {

struct Q {
  using Vec = float32x4_t;
  static constexpr int kLanes = 4;
  static constexpr int kMaxRows = 4;  // 16 sums, 4 index and up to 4 x registers of 32
  static Vec zero() { return vdupq_n_f32(0.0f); }
  static Vec load(const float* p) { return vld1q_f32(p); }
  static Vec fma(Vec acc, Vec x, Vec w) { return vfmaq_f32(acc, x, w); }
  static float hsum(Vec v) { return vaddvq_f32(v); }
};

// Byte indices for tbl: lane j of `word >> -shift[j]`, masked, times 4 in each byte, plus `base`
// (byte offsets 0..3 of a float and the lane's table offset).
inline uint8x16_t q_bytes(uint32_t word, int32x4_t shift, uint32_t mask, uint32x4_t base) {
  const uint32x4_t pos = vandq_u32(vshlq_u32(vdupq_n_u32(word), shift), vdupq_n_u32(mask));
  return vreinterpretq_u8_u32(vmlaq_n_u32(base, pos, 0x04040404u));
}

inline uint8x16_t q_u8(const float* p) { return vreinterpretq_u8_f32(vld1q_f32(p)); }
inline uint8x16x2_t q_table2(const float* p) { return {{q_u8(p), q_u8(p + 4)}}; }

template <int N, int G>
struct QNm;

// 2:4: part q = values 4q..4q+3 = groups 2q, 2q+1 = k 8q..8q+7 (a 32-byte table); lane j reads
// float 4 * (j / 2) + its position (bits 8q + 2j of the word).
template <>
struct QNm<2, 4> {
  static constexpr int kSpan = 32, kMetaBytes = 4;
  template <class Part>
  static uint8x16_t index(const uint8_t* word, Part) {
    constexpr int s = 8 * Part::value;
    const int32x4_t shift = {-s, -(s + 2), -(s + 4), -(s + 6)};
    const uint32x4_t base = {0x03020100u, 0x03020100u, 0x13121110u, 0x13121110u};
    return q_bytes(nm_word32(word), shift, 3, base);
  }
  template <class Part>
  static uint8x16x2_t load_x(const float* x, Part) { return q_table2(x + 8 * Part::value); }
  static float32x4_t select(const uint8x16x2_t& x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl2q_u8(x, index)); }
};

// 1:4: part q = values 4q..4q+3 = groups 4q..4q+3 = k 16q..16q+15 (a 64-byte table); lane j reads
// float 4 * j + its position.
template <>
struct QNm<1, 4> {
  static constexpr int kSpan = 64, kMetaBytes = 4;
  template <class Part>
  static uint8x16_t index(const uint8_t* word, Part) {
    constexpr int s = 8 * Part::value;
    const int32x4_t shift = {-s, -(s + 2), -(s + 4), -(s + 6)};
    const uint32x4_t base = {0x03020100u, 0x13121110u, 0x23222120u, 0x33323130u};
    return q_bytes(nm_word32(word), shift, 3, base);
  }
  template <class Part>
  static uint8x16x4_t load_x(const float* x, Part) {
    const float* xp = x + 16 * Part::value;
    return {{q_u8(xp), q_u8(xp + 4), q_u8(xp + 8), q_u8(xp + 12)}};
  }
  static float32x4_t select(const uint8x16x4_t& x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl4q_u8(x, index)); }
};

// 4:8: part q = values 4q..4q+3 = group q = k 8q..8q+7 (a 32-byte table); lane j reads the float
// at its 4-bit position, bits 16 * (q % 2) + 4j of the word's 32-bit half q / 2.
template <>
struct QNm<4, 8> {
  static constexpr int kSpan = 32, kMetaBytes = 8;
  template <class Part>
  static uint8x16_t index(const uint8_t* word, Part) {
    constexpr int s = 16 * (Part::value % 2);
    const int32x4_t shift = {-s, -(s + 4), -(s + 8), -(s + 12)};
    const uint32x4_t base = vdupq_n_u32(0x03020100u);
    return q_bytes(nm_word32(word + 4 * (Part::value / 2)), shift, 7, base);
  }
  template <class Part>
  static uint8x16x2_t load_x(const float* x, Part) { return q_table2(x + 8 * Part::value); }
  static float32x4_t select(const uint8x16x2_t& x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl2q_u8(x, index)); }
};

void nm_neon(const SparseNmTask& t) { nm_run<Q, QNm>(t); }

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_neon, "sparse_nm_f32_neon", Isa::neon, kNeedsNeon, nm_neon)
