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
// (the last one padded with zero values at position 0). A chunk covers kNmChunk * m / n consecutive
// k (its span: 32 for 2:4 and 4:8, 64 for 1:4) and has one little-endian meta word: 32 bits for
// m = 4, 64 bits for m = 8, which is the canonical row's bit stream cut at chunk boundaries. Rows
// are grouped in panels of kNmPanel = 4 (zero rows past N), stored chunk by chunk: panel p holds,
// for c = 0..chunks-1, chunk c of rows 4p..4p+3 (values [p][c][row][16], meta [p][c][row] words).
// A panel streams once per call as one sequence, and each x value loaded serves its 4 rows (the
// loads of x, twice the values for 2:4, were what limited a row-at-a-time kernel in cache).
// The kernels expand a chunk's word into lane indices in registers (shifts and masks) and move the
// x values of the span into place with register permutes (vpermt2ps, vpermps, tbl): no dense copy
// of the weight is ever made.
//
// x is read as whole chunk spans: the driver hands the kernels x rows padded with zeros to
// chunks * span columns, so the kernels have no tails and never read past the caller's x.
//
// Results are float32 sums (FMA where the tier has it, in an order that differs between tiers):
// within the oracle's tolerance 1e-5 * (|x| @ |W|.T) of the exact product.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/gemm_s8.h"
#include "edgecompress/isa.h"

namespace edgecompress {

constexpr int kNmChunk = 16;  // kept values per chunk (one meta word)
constexpr int kNmPanel = 4;   // rows of W per panel
constexpr int kNmRows = 4;    // rows of x per kernel call

struct SparseNmF32 {
  int n = 0, k = 0;        // W is (n, k)
  int kept = 0, group = 0; // the pattern: `kept` values in each group of `group` (2:4, 1:4, 4:8)
  int chunks = 0;          // chunks per row
  int panels = 0;          // ceil(n / kNmPanel)
  const float* values = nullptr;  // panels * chunks * kNmPanel * kNmChunk
  const uint8_t* meta = nullptr;  // panels * chunks * kNmPanel * meta_bytes()
  int span() const { return kNmChunk * group / kept; }       // k covered by one chunk
  int meta_bytes() const { return group == 8 ? 8 : 4; }     // bytes of one chunk's meta word
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

int sparse_nm_f32_kernels(const SparseNmKernel* const** kernels);
const SparseNmKernel* sparse_nm_f32_select(Isa cap);

}  // namespace edgecompress
