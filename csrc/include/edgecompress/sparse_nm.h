// The sparse_nm_f32 kernel family: y = x @ W.T (+ bias, activation) for a float32 weight W (N, K)
// with N:M semi-structured sparsity: in every group of m consecutive k of a row, at most n values
// are nonzero (2:4, 1:4, 4:8). Only the kept values and their positions are stored.
//
// Canonical arrays (SparseWeight, the files): K padded with zeros to Kp, a multiple of m;
//   values (N, Kp * n / m) float32: the n kept values of each group, in k order;
//   meta (N, ceil(Kp * n / m * b / 8)) uint8: the position (0..m-1) of each kept value inside its
//     group, b = 2 bits per position for m = 4 and b = 4 bits (a nibble) for m = 8, as one
//     little-endian bit stream per row: value j's position is bits [b * j, b * j + b) of the row,
//     i.e. (meta[j * b / 8] >> (j * b % 8)) & (m - 1). Positions increase inside a group.
//
// Packed layout (the same for every tier): each row is cut into chunks of kNmChunk = 16 kept values
// (the last one padded with zero values at position 0); a chunk covers kNmChunk * m / n consecutive
// k (its span: 32 for 2:4 and 4:8, 64 for 1:4). Rows are grouped in panels of kNmPanel = 4 (zero
// rows past N), stored chunk by chunk: values [panel][chunk][row][16], so a panel streams once per
// call as one sequence and each x value loaded serves its 4 rows (the loads of x, twice the values
// for 2:4, were what limited a row-at-a-time kernel in cache).
// The positions of a panel's chunk are one block of D dwords, D = 4 for m = 4 (2-bit positions)
// and D = 8 for m = 8 (4-bit positions), transposed so that byte r of dword d holds row r's
// positions of values d, d + D, d + 2D, ... from its low bits up. One broadcast, one variable shift
// and one mask then give every lane its position in byte r of its dword, for all 4 rows at once;
// each row's indices are a byte shift away (x86), or a tbl away (NEON). The kernels add the lane's
// group offset and move the x values of the span into place with register permutes (vpermt2ps,
// vpermps, tbl): no dense copy of the weight is ever made.
//
// x is read as whole chunk spans: the driver hands the kernels x rows padded with zeros to
// chunks * span columns, so the kernels have no tails and never read past the caller's x.
//
// Results are float32 sums (FMA where the tier has it, in an order that differs between tiers):
// within the worst-case bound of float32 sums, gamma(K + 2) * (|x| @ |W|.T) of the exact product
// (reference/rounding.py).
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

constexpr int kNmChunk = 16;  // kept values per chunk
constexpr int kNmPanel = 4;   // rows of W per panel
constexpr int kNmRows = 4;    // rows of x per kernel call

struct SparseNmF32 {
  int n = 0, k = 0;        // W is (n, k)
  int kept = 0, group = 0; // the pattern: `kept` values in each group of `group` (2:4, 1:4, 4:8)
  int chunks = 0;          // chunks per row
  int panels = 0;          // ceil(n / kNmPanel)
  const float* values = nullptr;  // panels * chunks * kNmPanel * kNmChunk
  const uint8_t* meta = nullptr;  // panels * chunks blocks of kNmPanel * meta_bytes()
  int span() const { return kNmChunk * group / kept; }       // k covered by one chunk
  int meta_bytes() const { return group == 8 ? 8 : 4; }     // position bytes of one row's chunk (D)
};

// Panels [p0, p1) of W for m <= kNmRows rows of x (padded: row stride ldx >= chunks * span, zeros
// past k); y has row stride ldy.
struct SparseNmTask {
  const SparseNmF32* w;
  int p0, p1;
  int m;
  const float* x;
  ptrdiff_t ldx;
  const float* bias;  // n values or null
  Activation act;
  float* y;
  ptrdiff_t ldy;
};

struct SparseNmKernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  void (*run)(const SparseNmTask& task);
};

}  // namespace edgecompress
