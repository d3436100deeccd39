// The gemm_s8 kernel family: y = dequant(quant(x) @ W.T) (+ bias, activation), W int8 (N, K).
//
// Kernel contract (every tier implements the same one; the scalar kernel is its specification):
//
//   acc[r][c] = sum over k of a[r][k] * b[c][k], in int32 with two's-complement wrap-around,
//
// where a is the packed activation strip (int8 or uint8, or those values widened to int16) and b the
// packed weight panel (int8 in [-127, 127]). The true integer result is then
//
//   y_int[r][c] = acc[r][c] - row_offset[r] * colsum[c]      (also modulo 2^32)
//
// row_offset undoes the +-128 shift that moves activations into the domain the instruction wants
// (vpdpbusd multiplies u8 x s8, sdot/smmla s8 x s8) plus the activation zero point. The callers keep
// |y_int| < 2^31, so the wrapped arithmetic gives the exact result on every tier, bit for bit.
//
// Layouts (kr consecutive k values are the unit of every dot-product instruction):
//   packed B panel (nr columns): [kblocks][nr][kr] int8, columns >= N and k >= K are zero;
//   packed A strip (a_rows rows): [ceil(K / a_kr)][a_rows][a_kr] elements of a_bytes bytes, k >= K
//   zero, where a_kr = kr for the dot-product tiers and 64 for amx (an A tile holds 64 k per row);
//   such a kernel may read B in units of a_kr too, up to a_kr / kr - 1 k-blocks past a panel's
//   last (they meet zero activations): the packed weight ends with that much zeroed slack;
// so the nr x kr bytes a micro-kernel needs for one k-block are contiguous, as are the rows' k-blocks.
// A kernel may keep its strips row-major instead, [a_rows][ceil(K / a_kr)][a_kr] (avx2: its int16
// strips are then one widening copy of each row; its pack_a and run agree on it).
//
// Tile kernels (amx) keep state per thread: the driver calls begin(kblocks) on a worker before it
// runs any tile of a call and end() after its last one. Where a tile kernel's tiles pay only from
// some number of rows on, calls with fewer than small_m_rows rows run small_m, a kernel of the same
// nr and kr (so the same packed weight) of a lower tier.
//
// Names follow gemm_s8_<mr>x<nr>_<tier>[_<encoding>].
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

// One output tile for a micro-kernel, with its fused epilogue.
struct GemmS8Tile {
  const void* a;       // packed A strip, a_rows rows
  const int8_t* b;     // packed B panel
  int m;               // rows to store, 1..mr
  int a_rows;          // rows in the strip: m rounded up to the kernel's m_align
  int n;               // columns to store, 1..nr
  int kblocks;
  const int32_t* row_offset;  // (m)
  const int32_t* colsum;      // (nr)
  const float* row_scale;     // (m) activation scales (float output only)
  const float* col_scale;     // (nr) weight scales (float output only)
  float col_scale_min, col_scale_max;  // over the whole weight (picks the epilogue's precision)
  const float* bias;          // (nr) or null
  Activation act;
  float* y;                   // float output, or null
  int32_t* y_i32;             // raw int32 output (y_int), or null
  ptrdiff_t ldy;              // elements between output rows
};

struct GemmS8Kernel {
  const char* name;
  Isa isa;
  int mr, nr, kr;
  int a_bytes;    // 1: A stored as 8-bit; 2: A widened to int16
  bool a_signed;  // A domain: true s8, false u8
  int m_align;    // strip rows are padded to a multiple of this (smmla works on row pairs)
  uint32_t needs;  // CpuFeature bits its compiler flags enable (cpu.h)
  // Quantizes (or, for raw schemes, copies) `rows` rows of x into one packed strip and fills
  // row_scale / row_offset. scratch holds K rounded up to a_kr bytes. Returns false if x has NaN or Inf.
  bool (*pack_a)(const void* x, ptrdiff_t ldx, int rows, int k, const ActQuant& q, void* strip,
                 float* row_scale, int32_t* row_offset, uint8_t* scratch);
  void (*run)(const GemmS8Tile& tile);
  int a_kr;                        // k values per unit of the packed A strip (see above)
  void (*begin)(int kblocks);      // null for kernels without per-thread state
  void (*end)();
  int small_m_rows;                // 0: every call runs this kernel
  const GemmS8Kernel* small_m;     // runs calls with m < small_m_rows (where the CPU has it)
  // Quantizes n floats with a static scheme's scale (and zero point) into codes of the data's own
  // type (int8 symmetric, uint8 asymmetric), as pack_a quantizes a row, with this tier's vectors: an
  // image quantized once for a convolution's patches. Returns false if x has NaN or Inf.
  bool (*quantize)(const float* x, int n, const ActQuant& q, uint8_t* codes);
};

}  // namespace edgecompress
