// The sparse_s8 kernel family: y = dequant(quant(x) @ W.T) (+ bias, activation) for a pruned int8
// weight W (N, K) stored in blocks of 1 x 4 along K (four consecutive k of one row, k a multiple of
// 4: the unit of vpdpbusd / sdot). Activations are quantized per row as in gemm_s8 (symmetric int8),
// so the integer results equal the dense int8 product of the same weight, bit for bit.
//
// Weight (one block row per output row n):
//   indptr [N + 1] (int64): the blocks of row n are indptr[n] .. indptr[n + 1] - 1;
//   indices [nnzb] (uint16 when K / 4 <= 65536, else int32): each block's kb = k / 4;
//   values [nnzb][4] (int8 in [-127, 127]): W[n][4 kb + i], zero past K;
//   rowsum [N] (int32): the sum of row n's stored values (undoes the +128 shift of u8 kernels).
//
// Kernel contract: the exact int32 y_int[m][n] = sum over stored blocks of q[m][4 kb + i] * w[i], for
// the rows [r0, r1) of W, with two's-complement wrap-around (callers keep |y_int| < 2^31):
//   m <= kSparseS8SpmvRows: q rows at a + m * lda (kblocks * 4 bytes), result y[m * ldy + n];
//   otherwise: strips of 16 rows, [a_rows / 16][kblocks][16][4] (the 4 activations of a block for
//   16 rows of x are 64 contiguous bytes), written by the kernel's own pack_strip; result transposed
//   y[n * ldy + m] for m < a_rows.
// Kernels with a_unsigned read q ^ 0x80 (q + 128, the u8 operand of vpdpbusd) and subtract
// 128 * rowsum[n] themselves; the others read q as int8. SpMV rows of q are padded with zeros to a
// multiple of kSparseS8Slice bytes.
//
// Kernels with `interleaved` also get, for SpMV, the same blocks in a second layout that needs no
// gather: rows in groups of 16 (one per vector lane) and K in slices of 32 blocks (128 activations,
// two registers). For group g and slice s, rounds round_ptr[g * slices + s] .. [.. + 1] - 1 each hold
// one block per lane: ridx[16 r + l] its block index inside the slice (0..31), rval[64 r + 4 l ..]
// its 4 weights; a lane whose row has no more blocks there gets zero weights. One permute then
// fetches the 16 lanes' activations from the two registers of the slice.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

constexpr int kSparseS8SpmvRows = 4;
constexpr int kSparseS8Slice = 128;  // activations per slice of the interleaved layout

struct SparseS8 {
  int n = 0, k = 0, kblocks = 0;
  const int64_t* indptr = nullptr;
  const uint16_t* idx16 = nullptr;  // exactly one of idx16 / idx32
  const int32_t* idx32 = nullptr;
  const int8_t* values = nullptr;
  const int32_t* rowsum = nullptr;
  // the interleaved SpMV layout (null unless the kernel asks for it)
  int groups = 0, slices = 0;
  const int64_t* round_ptr = nullptr;  // groups * slices + 1
  const uint8_t* ridx = nullptr;       // rounds * 16
  const int8_t* rval = nullptr;        // rounds * 64
};

struct SparseS8Task {
  const SparseS8* w;
  int r0, r1;
  int m;               // rows of x
  const uint8_t* a;    // quantized activations (layout above)
  ptrdiff_t lda;       // SpMV: bytes between rows
  int a_rows;          // SpMM: rows in the strip
  int32_t* y;
  ptrdiff_t ldy;
};

// The SpMM epilogue for output columns [c0, c1): y[i][c] = epilogue(yt[c * a_rows + i]) for i < m,
// exactly gemm_s8's: float32(v) * (row_scale[i] * scale[c]) when every scale product of row i is a
// normal float (scale_min / scale_max bound them), else in float64; then bias and activation.
struct SparseS8Finish {
  const int32_t* yt;
  int a_rows, m, c0, c1;
  const float* row_scale;
  const float* scale;
  float scale_min, scale_max;
  const float* bias;
  Activation act;
  float* y;
  ptrdiff_t ldy;
};

struct SparseS8Kernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  bool a_unsigned;
  bool interleaved;  // wants the interleaved SpMV layout (and row ranges in multiples of 16)
  void (*run)(const SparseS8Task& task);
  void (*finish)(const SparseS8Finish& f);  // transposes and finishes an SpMM result
  // Quantizes m rows of x (per row, symmetric int8, as gemm_s8) into the SpMM strips (a_rows =
  // m rounded up to 16; padding rows are zero) and their scales; scratch holds kblocks * 4 bytes.
  // Returns false if x has NaN or Inf.
  bool (*pack_strip)(const float* x, ptrdiff_t ldx, int m, int k, uint8_t* strips, float* row_scale, uint8_t* scratch);
};

}  // namespace edgecompress
