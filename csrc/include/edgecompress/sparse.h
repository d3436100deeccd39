// The sparse_f32 kernel family: y = x @ W.T (+ bias, activation) for a pruned float32 weight W (N, K)
// stored by block rows. A block is r x 1: r consecutive output columns (rows of W) at one k, so
// r = 1 is CSR and r = 4 / 8 the BSR formats of SparseWeight:
//   indptr [N / r + 1] (int64): the blocks of block row b are indptr[b] .. indptr[b + 1] - 1;
//   indices [nnzb] (uint16 when K <= 65536, else int32): each block's k;
//   values [nnzb][r] (float32): W[b * r + i][k] for i = 0..r-1.
// Results are float32 sums (in block order, or interleaved as below), so they differ from the dense
// product by rounding only: within gamma(K + 2) * (|x| @ |W|.T) (reference/rounding.py).
//
// Kernels with `interleaved` also get, for CSR (r = 1) SpMV, the nonzeros in the interleaved layout
// of driver.h (build_interleaved): rows in groups of 16, one per vector lane, and K in slices of 32
// columns, so that per round one permute of a slice's two registers of x fetches the 16 lanes' x
// values (no gather), and one FMA adds them into 16 rows at once; the few nonzeros of a row that
// spill past its cells' rounds are added one by one. Their SpMV row ranges are whole groups of 16
// (the last one may end at n).
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

struct SparseF32 {
  int n = 0, k = 0, r = 1;       // r: block height (1, 4 or 8)
  int block_rows = 0;            // ceil(n / r)
  const int64_t* indptr = nullptr;
  const uint16_t* idx16 = nullptr;  // exactly one of idx16 / idx32
  const int32_t* idx32 = nullptr;
  const float* values = nullptr;
  // the interleaved SpMV layout (null unless the kernel asks for it and r = 1)
  int groups = 0, slices = 0;
  const int64_t* round_ptr = nullptr;  // groups * slices + 1
  const uint8_t* ridx = nullptr;       // rounds * 16 columns inside the slice
  const float* rval = nullptr;         // rounds * 16 values
  const int64_t* spill_ptr = nullptr;  // n + 1: each row's nonzeros past its cells' rounds
  const int32_t* spill_idx = nullptr;
  const float* spill_val = nullptr;
};

// Block rows [b0, b1) for m rows of activations. For m <= kSpmvRows, x is row-major (m, k) with
// stride ldx; above it, xt is x transposed and padded: (k, ldt) with ldt >= m a multiple of 16.
struct SparseTask {
  const SparseF32* w;
  int b0, b1;
  int m;
  const float* x;
  ptrdiff_t ldx;
  const float* xt;
  ptrdiff_t ldt;
  const float* bias;  // n values or null
  Activation act;
  float* y;           // (m, n), row stride n
};

constexpr int kSpmvRows = 4;
constexpr int kInterleaveSlice = 32;  // columns (units) per slice of the interleaved layout

struct SparseKernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  bool interleaved;  // wants the interleaved SpMV layout of CSR weights
  void (*run)(const SparseTask& task);
};

}  // namespace edgecompress
