// sparse_nm_f32 on NEON: a chunk of 16 kept values is four q-register parts of 4. A part's lane
// positions of all 4 rows of a panel come from the position block (ushr, and, shl: 4 x position in
// byte r of each lane); one tbl spreads row r's byte over its lane and an add makes byte indices
// (4 x position + 0..3 + the lane's table offset), and one tbl moves the x values of the part's span
// into the lanes: tbl2 (8 floats) for 2:4 and 4:8, tbl4 (16) for 1:4.
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
  // One row of x and one panel per pass (4 sums): with 8 or 16, GCC 12 kept some values on the stack
  // in the chunk loop (x tables, indices and constants fill the 32 registers). Not measured on
  // hardware (qemu only), so the spill-free choice.
  static constexpr int kMaxRows = 1;
  static constexpr int kSums = 4;
  static Vec zero() { return vdupq_n_f32(0.0f); }
  static Vec load(const float* p) { return vld1q_f32(p); }
  static Vec fma(Vec acc, Vec x, Vec w) { return vfmaq_f32(acc, x, w); }
  static float hsum(Vec v) { return vaddvq_f32(v); }
};

// x tables loaded straight into the register pairs / quads tbl reads (ld1 of 2 or 4 registers).
inline uint8x16x2_t q_load2(const float* p) { return vld1q_u8_x2(reinterpret_cast<const uint8_t*>(p)); }
inline uint8x16x4_t q_load4(const float* p) { return vld1q_u8_x4(reinterpret_cast<const uint8_t*>(p)); }

// 4 x the positions in field `f` (bits * f) of the 16 block bytes at `block`: byte r of dword jj
// becomes 4 * (row r's position of lane jj).
template <int bits, int f>
inline uint8x16_t q_positions4(const uint8_t* block) {
  uint32x4_t v = vreinterpretq_u32_u8(vld1q_u8(block));
  if constexpr (f > 0) v = vshrq_n_u32(v, bits * f);
  return vreinterpretq_u8_u32(vshlq_n_u32(vandq_u32(v, vdupq_n_u32(nm_bytes4((1 << bits) - 1))), 2));
}

// Row r's tbl indices: its byte of each lane in all 4 bytes, plus the byte offsets 0..3 of a float
// and the lane's table offset (`base`).
template <class Row>
inline uint8x16_t q_row(uint8x16_t positions4, uint32x4_t base) {
  constexpr uint8_t r = Row::value;
  const uint8x16_t pick = {r, r, r, r, 4 + r, 4 + r, 4 + r, 4 + r, 8 + r, 8 + r, 8 + r, 8 + r, 12 + r, 12 + r, 12 + r, 12 + r};
  return vaddq_u8(vqtbl1q_u8(positions4, pick), vreinterpretq_u8_u32(base));
}

template <int N, int G>
struct QNm;

// 2:4: part q = values 4q..4q+3 = groups 2q, 2q+1 = k 8q..8q+7 (a 32-byte table); lane j reads
// float 4 * (j / 2) + its position, field q of dword j of the block.
template <>
struct QNm<2, 4> {
  static constexpr int kSpan = 32, kMetaBytes = 4;
  template <class Part>
  static uint8x16_t expand(const uint8_t* block, Part) { return q_positions4<2, Part::value>(block); }
  template <class Row>
  static uint8x16_t index(uint8x16_t positions4, Row) {
    return q_row<Row>(positions4, uint32x4_t{0x03020100u, 0x03020100u, 0x13121110u, 0x13121110u});
  }
  template <class Part>
  static uint8x16x2_t load_x(const float* x, Part) { return q_load2(x + 8 * Part::value); }
  static float32x4_t select(uint8x16x2_t x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl2q_u8(x, index)); }
};

// 1:4: part q = values 4q..4q+3 = groups 4q..4q+3 = k 16q..16q+15 (a 64-byte table); lane j reads
// float 4 * j + its position, field q of dword j of the block.
template <>
struct QNm<1, 4> {
  static constexpr int kSpan = 64, kMetaBytes = 4;
  template <class Part>
  static uint8x16_t expand(const uint8_t* block, Part) { return q_positions4<2, Part::value>(block); }
  template <class Row>
  static uint8x16_t index(uint8x16_t positions4, Row) {
    return q_row<Row>(positions4, uint32x4_t{0x03020100u, 0x13121110u, 0x23222120u, 0x33323130u});
  }
  template <class Part>
  static uint8x16x4_t load_x(const float* x, Part) { return q_load4(x + 16 * Part::value); }
  static float32x4_t select(uint8x16x4_t x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl4q_u8(x, index)); }
};

// 4:8: part q = values 4q..4q+3 = group q = k 8q..8q+7 (a 32-byte table); lane j reads the float at
// its 4-bit position, nibble q / 2 of dword 4 * (q % 2) + j of the 32-byte block.
template <>
struct QNm<4, 8> {
  static constexpr int kSpan = 32, kMetaBytes = 8;
  template <class Part>
  static uint8x16_t expand(const uint8_t* block, Part) {
    return q_positions4<4, Part::value / 2>(block + 16 * (Part::value % 2));
  }
  template <class Row>
  static uint8x16_t index(uint8x16_t positions4, Row) { return q_row<Row>(positions4, vdupq_n_u32(0x03020100u)); }
  template <class Part>
  static uint8x16x2_t load_x(const float* x, Part) { return q_load2(x + 8 * Part::value); }
  static float32x4_t select(uint8x16x2_t x, uint8x16_t index) { return vreinterpretq_f32_u8(vqtbl2q_u8(x, index)); }
};

void nm_neon(const SparseNmTask& t) { nm_run<Q, QNm>(t); }

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_neon, "sparse_nm_f32_neon", Isa::neon, kNeedsNeon, nm_neon)
