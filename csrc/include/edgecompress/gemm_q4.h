// The gemm_q4 kernel family: y = x @ W.T (+ bias, activation) for 4-bit weights W (N, K), group-wise
// along K (groups of g = 32, 64 or 128), uniform (code - zero point) or codebook (table[code]), with a
// float16 scale per (column, group). The numerical specification is the numpy oracle
// python/edgecompress/reference/gemm_q4.py; every tier returns its bits in "int8" mode.
//
// Packed layout, one for every tier (the kernels differ only in how they consume it). Columns come in
// panels of kQ4Panel = 16; K (padded to whole groups, Kp) in steps of 8:
//   nib   [panel][Kp / 8][64]: byte 4 * j + i of a step holds column j's codes for k = 8s + i (low
//         nibble) and k = 8s + 4 + i (high nibble), i = 0..3. So one 16-byte quarter is 4 columns x 4
//         consecutive k, the unit of vpdpbusd / sdot, and a 64-byte step feeds 16 columns.
//   scale [panel][G][16] float16 bits; zp [panel][G][16] zero points (asymmetric weights only).
// Columns past N have code 0 and scale 0.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

constexpr int kQ4Panel = 16;

enum class Q4Compute : int { int8 = 0, float32 = 1 };

// What a kernel needs of the packed weight (one panel's pointers are derived from it).
struct Q4Weight {
  int n = 0, k = 0, kp = 0, g = 0, groups = 0, panels = 0;
  const uint8_t* nib = nullptr;     // panels * kp / 8 * 64
  const uint16_t* scale = nullptr;  // panels * groups * 16
  const uint8_t* zp = nullptr;      // panels * groups * 16, or null: symmetric (zero point 8)
  // Codebooks (null for uniform weights). Integer form for the int8 mode: entries round(t / a) in
  // [-127, 127] and the scale a; float form for the float mode.
  bool per_channel = false;         // tables per column ([panel * 16 + j][16]) or one table
  const int8_t* table_i8 = nullptr;
  const float* table_scale = nullptr;  // a, per table
  const float* table_f32 = nullptr;
};

// Activations of the rows a tile covers, prepared by the kernel's `prepare` (int8 mode: quantized per
// group; float mode: copied and zero-padded to kp).
struct Q4Rows {
  const int8_t* xq = nullptr;    // int8 mode: rows * kp
  const float* xf = nullptr;     // float mode: rows * kp
  const float* sx = nullptr;     // int8 mode: rows * groups activation scales
  const int32_t* sumq = nullptr;  // int8 mode: rows * groups sums of xq over the group
  ptrdiff_t ldx = 0;             // elements between rows of xq / xf
  ptrdiff_t lds = 0;             // elements between rows of sx / sumq
};

struct Q4Tile {
  const Q4Weight* w;
  Q4Compute compute;
  Q4Rows x;           // already offset to the tile's first row
  int rows;           // 1..mr
  int panel;
  int n;              // columns to store, 1..16
  const float* bias;  // 16 values for this panel, or null
  Activation act;
  float* y;           // output of the first row and column
  ptrdiff_t ldy;
};

struct GemmQ4Kernel {
  const char* name;
  Isa isa;
  int mr;          // rows per tile
  uint32_t needs;  // CpuFeature bits its compiler flags enable (cpu.h)
  // Prepares `rows` rows of x (fp32, row stride ldx) into the buffers of `out`, which the caller
  // sized: int8 mode rows * kp bytes + 2 * rows * groups scalars; float mode rows * kp floats.
  // Returns false if x holds NaN or Inf.
  bool (*prepare)(const Q4Weight& w, Q4Compute compute, const float* x, ptrdiff_t ldx, int rows, int8_t* xq,
                  float* xf, float* sx, int32_t* sumq);
  void (*run)(const Q4Tile& tile);
  // Tile kernels (amx) keep state per thread (tile configuration, decoded panels): the driver calls
  // end() on a worker after its last tile of a call. Null for the others.
  void (*end)();
  // Calls with fewer rows than small_m_rows run small_m (any gemm_q4 kernel reads the same packed
  // weight) where the CPU has it; 0 and null: every call runs this kernel.
  int small_m_rows;
  const GemmQ4Kernel* small_m;
};

}  // namespace edgecompress
