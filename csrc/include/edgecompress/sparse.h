// The sparse_f32 kernel family: y = x @ W.T (+ bias, activation) for a pruned float32 weight W (N, K)
// stored by block rows. A block is r x 1: r consecutive output columns (rows of W) at one k, so
// r = 1 is CSR and r = 4 / 8 the BSR formats of SparseWeight:
//   indptr [N / r + 1] (int64): the blocks of block row b are indptr[b] .. indptr[b + 1] - 1;
//   indices [nnzb] (uint16 when K <= 65536, else int32): each block's k;
//   values [nnzb][r] (float32): W[b * r + i][k] for i = 0..r-1.
// Results are float32 sums in block order, so they differ from the dense product by rounding only;
// the oracle's tolerance is 1e-5 * (|x| @ |W|.T).
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/gemm_s8.h"
#include "edgecompress/isa.h"

namespace edgecompress {

struct SparseF32 {
  int n = 0, k = 0, r = 1;       // r: block height (1, 4 or 8)
  int block_rows = 0;            // ceil(n / r)
  const int64_t* indptr = nullptr;
  const uint16_t* idx16 = nullptr;  // exactly one of idx16 / idx32
  const int32_t* idx32 = nullptr;
  const float* values = nullptr;
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

struct SparseKernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  void (*run)(const SparseTask& task);
};

int sparse_f32_kernels(const SparseKernel* const** kernels);
const SparseKernel* sparse_f32_select(Isa cap);

}  // namespace edgecompress
