// Loop nests over the kernel families: packing weights once, blocking, threading, epilogues.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "edgecompress/dense_f32.h"
#include "edgecompress/gemm_q4.h"
#include "edgecompress/gemm_s8.h"
#include "edgecompress/sparse.h"
#include "edgecompress/sparse_s8.h"
#include "edgecompress/sparse_nm.h"

namespace edgecompress {

// 64-byte aligned, zero-initialized storage.
template <class T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n);
  AlignedArray(AlignedArray&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr, o.n_ = 0; }
  AlignedArray& operator=(AlignedArray&& o) noexcept;
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  ~AlignedArray();
  T* data() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// a's data with room for at least n values: per-thread workspaces grow (by at least half, so a
// slowly rising size does not reallocate every call) and are kept between calls.
template <class T>
T* ensure_size(AlignedArray<T>& a, size_t n) {
  if (a.size() < n) a = AlignedArray<T>(n > a.size() * 3 / 2 ? n : a.size() * 3 / 2);
  return a.data();
}

// n values copied from src into new aligned storage (the packers' copies of canonical arrays).
template <class T>
AlignedArray<T> aligned_copy(const T* src, size_t n) {
  AlignedArray<T> a(n);
  if (n > 0) std::memcpy(a.data(), src, n * sizeof(T));
  return a;
}

// A block-row index array (uint16 or int32) copied into whichever of idx16 / idx32 it is; the
// other stays empty (data() null), which is how the kernels tell them apart.
inline void copy_block_indices(const void* indices, bool is16, size_t n, AlignedArray<uint16_t>* idx16,
                               AlignedArray<int32_t>* idx32) {
  if (is16) {
    *idx16 = aligned_copy(static_cast<const uint16_t*>(indices), n);
  } else {
    *idx32 = aligned_copy(static_cast<const int32_t*>(indices), n);
  }
}

// The interleaved SpMV layout of a block-row weight whose blocks are 4-byte units (one float32 of
// sparse_f32's CSR, one 1 x 4 int8 block of sparse_s8), for kernels that fetch x with register
// permutes instead of gathers: rows in groups of 16 (one per vector lane), unit columns in slices of
// kInterleaveSlice (one permute's two source registers of x). For group g and slice s, rounds
// round_ptr[g * slices + s] .. round_ptr[g * slices + s + 1] - 1 each hold one unit per lane:
// ridx[16 r + l] its column inside the slice (0..31), rval[64 r + 4 l ..] its 4 bytes; a lane whose
// row has no more units in the slice gets column 0 and zero bytes. (kInterleaveSlice: sparse.h.)
// A cell's rounds can stop short of its busiest rows (spill_rank > 1): their remaining units spill
// to per-row lists (CSR: spill_ptr [n + 1], spill_idx the unit column, spill_val 4 bytes each) that
// the kernel adds one by one. Padding is what a busy lane costs the other 15, so letting the few
// busiest spill saves bytes: at 50 / 75 / 90% random sparsity, rank 5 stores 5.7 / 6.2 / 7.0 bytes
// per float32 nonzero instead of 6.6 / 7.8 / 10.1, with 3 / 5 / 10% of them spilled.
struct InterleavedLayout {
  int groups = 0, slices = 0;
  AlignedArray<int64_t> round_ptr;  // groups * slices + 1
  AlignedArray<uint8_t> ridx;       // rounds * 16
  AlignedArray<uint8_t> rval;       // rounds * 64
  AlignedArray<int64_t> spill_ptr;  // n + 1
  AlignedArray<int32_t> spill_idx;
  AlignedArray<uint8_t> spill_val;  // 4 bytes per spilled unit
  size_t nbytes() const {
    return round_ptr.size() * 8 + ridx.size() + rval.size() + spill_ptr.size() * 8 + spill_idx.size() * 4 + spill_val.size();
  }
};

// n rows over `units` unit columns: row i's units are indptr[i] .. indptr[i + 1] - 1 with columns
// idx16 / idx32 (exactly one non-null) and 4 bytes each at values. spill_rank: 1..16 (above).
InterleavedLayout build_interleaved(int n, int units, const int64_t* indptr, const uint16_t* idx16, const int32_t* idx32,
                                    const void* values, int spill_rank);

// An int8 weight packed for one kernel: panels of kernel->nr columns plus column sums and scales.
struct PackedS8Weight {
  const GemmS8Kernel* kernel = nullptr;
  int n = 0, k = 0, kblocks = 0, panels = 0;
  AlignedArray<int8_t> data;     // panels * kblocks * nr * kr
  AlignedArray<int32_t> colsum;  // panels * nr
  AlignedArray<float> scale;     // panels * nr (a per-tensor scale is repeated)
  float scale_min = 0, scale_max = 0;
  size_t nbytes() const { return data.size() + colsum.size() * 4 + scale.size() * 4; }
};

// w: (n, k) int8 row-major with values in [-127, 127]; scale: n values, or 1 for a per-tensor scale.
std::unique_ptr<PackedS8Weight> pack_s8_weight(const GemmS8Kernel& kernel, const int8_t* w, int n, int k,
                                               const float* scale, int scale_len);

enum class GemmStatus { ok, nonfinite_input, out_of_memory };

// y (m, n) = epilogue(quant(x) @ W.T). x: (m, k) fp32 (or int8/uint8 for the raw schemes) with row
// stride ldx elements. Exactly one of y / y_i32 is given, with row stride n. Unless it returns ok,
// the output is unspecified (nonfinite_input: x holds NaN or Inf). Runs on the thread pool.
GemmStatus gemm_s8(const PackedS8Weight& w, const void* x, ptrdiff_t ldx, int m, const ActQuant& aq,
                   const float* bias, Activation act, float* y, int32_t* y_i32, int max_threads);

// Below this many multiply-adds a call (of gemm_s8 or gemm_q4) runs on one thread (waking workers
// costs more). Tests set it to 0 so that small shapes exercise the parallel paths too.
void set_gemm_s8_min_parallel_macs(double macs);
double gemm_min_parallel_macs();

// A 4-bit weight packed for the gemm_q4 kernels (one layout for every tier, see gemm_q4.h).
struct PackedQ4Weight {
  const GemmQ4Kernel* kernel = nullptr;
  Q4Weight w;  // views into the arrays below
  AlignedArray<uint8_t> nib, zp;
  AlignedArray<uint16_t> scale;
  AlignedArray<int8_t> table_i8;
  AlignedArray<float> table_scale, table_f32;
  float scale_absmax = 0;  // max |scale|: picks the rows the int8 mode scales in float64
  size_t nbytes() const {
    return nib.size() + zp.size() + scale.size() * 2 + table_i8.size() + 4 * (table_scale.size() + table_f32.size());
  }
};

// qweight: n rows of kp / 2 bytes (codes, low nibble first, kp = groups * g); scale: (n, groups)
// float16 bits; zp: (n, groups) zero points 0..15 or null (symmetric); codebook: 16 floats, n * 16
// (per_channel) or null.
std::unique_ptr<PackedQ4Weight> pack_q4_weight(const GemmQ4Kernel& kernel, const uint8_t* qweight, int n, int k,
                                               int g, const uint16_t* scale, const uint8_t* zp,
                                               const float* codebook, bool per_channel);

// y (m, n) = epilogue(x @ W.T) for fp32 x (row stride ldx). Runs on the thread pool.
GemmStatus gemm_q4(const PackedQ4Weight& w, const float* x, ptrdiff_t ldx, int m, Q4Compute compute,
                   const float* bias, Activation act, float* y, int max_threads);

// The clipping search of 4-bit quantization: for each of `groups` groups of g weights (g a multiple
// of 8) and each of its r candidates (scale, code bounds lo..hi), the squared error of the group's
// codes clip(round(w / scale), lo, hi) times scale; best[i] = the candidate of least error (the first
// of equals). scale, lo, hi: (groups, r). Runs on the thread pool.
void int4_best_candidates(const float* w, int64_t groups, int g, int r, const float* scale, const float* lo,
                          const float* hi, int32_t* best, int max_threads);

// A pruned float32 weight for the sparse_f32 kernels (see sparse.h): copies of the block-row arrays.
struct PackedSparseF32 {
  const SparseKernel* kernel = nullptr;
  SparseF32 w;
  AlignedArray<int64_t> indptr;
  AlignedArray<uint16_t> idx16;
  AlignedArray<int32_t> idx32;
  AlignedArray<float> values;
  InterleavedLayout il;  // the interleaved SpMV layout of CSR weights, when the kernel wants it
  size_t nbytes() const { return indptr.size() * 8 + idx16.size() * 2 + idx32.size() * 4 + values.size() * 4 + il.nbytes(); }
};

// indptr: ceil(n / r) + 1 offsets; indices: uint16 (idx16) or int32, one per block; values: r per block.
std::unique_ptr<PackedSparseF32> pack_sparse_f32(const SparseKernel& kernel, int n, int k, int r,
                                                 const int64_t* indptr, const void* indices, bool idx16,
                                                 const float* values);

// y (m, n) = epilogue(x @ W.T) for fp32 x (row stride ldx); refuses NaN/Inf in x. Thread pool.
GemmStatus sparse_f32(const PackedSparseF32& w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                      Activation act, float* y, int max_threads);

// A pruned int8 weight for the sparse_s8 kernels (see sparse_s8.h): copies of the block arrays, each
// row's sum, and the weight scales (one per row).
struct PackedSparseS8 {
  const SparseS8Kernel* kernel = nullptr;
  SparseS8 w;
  AlignedArray<int64_t> indptr;
  AlignedArray<uint16_t> idx16;
  AlignedArray<int32_t> idx32;
  AlignedArray<int8_t> values;
  AlignedArray<int32_t> rowsum;
  AlignedArray<float> scale;
  InterleavedLayout il;  // the interleaved SpMV layout, when the kernel wants it
  float scale_min = 0, scale_max = 0;
  size_t nbytes() const {
    return indptr.size() * 8 + idx16.size() * 2 + idx32.size() * 4 + values.size() + rowsum.size() * 4 + scale.size() * 4 +
           il.nbytes();
  }
};

// indptr: n + 1 offsets; indices: uint16 (idx16) or int32 block indices k / 4; values: 4 int8 per block;
// scale: n values, or 1 for a per-tensor scale.
std::unique_ptr<PackedSparseS8> pack_sparse_s8(const SparseS8Kernel& kernel, int n, int k, const int64_t* indptr,
                                               const void* indices, bool idx16, const int8_t* values,
                                               const float* scale, int scale_len);

// y (m, n) = epilogue(quant(x) @ W.T): x quantized per row (symmetric int8, as gemm_s8), exact int32
// sums, gemm_s8's float epilogue. Refuses NaN/Inf in x. Thread pool.
GemmStatus sparse_s8(const PackedSparseS8& w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                     Activation act, float* y, int max_threads);

// An N:M sparse float32 weight for the sparse_nm_f32 kernels (see sparse_nm.h): panels of 4 rows
// cut into chunks of 16 kept values and their meta words.
struct PackedSparseNmF32 {
  const SparseNmKernel* kernel = nullptr;
  SparseNmF32 w;
  AlignedArray<float> values;
  AlignedArray<uint8_t> meta;
  size_t nbytes() const { return values.size() * 4 + meta.size(); }
};

// values: n rows of kp * kept / group floats (kp: k rounded up to a multiple of group); meta: n rows
// of the canonical packed positions, ceil(row values * bits / 8) bytes (2 bits for group 4, 4 for 8).
std::unique_ptr<PackedSparseNmF32> pack_sparse_nm_f32(const SparseNmKernel& kernel, int n, int k, int kept, int group,
                                                      const float* values, const uint8_t* meta);

// y (m, n) = epilogue(x @ W.T) for fp32 x (row stride ldx); refuses NaN/Inf in x. Thread pool.
GemmStatus sparse_nm_f32(const PackedSparseNmF32& w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                         Activation act, float* y, int max_threads);

// y = gelu(y) over count values, on the thread pool: the families whose epilogue finishes one value at
// a time (the sparse ones) run their kernels with the bias only and apply GELU in this vectorized pass
// (a scalar GELU per output cost more than their product).
void gelu_pass(float* y, int64_t count, int max_threads);

// The activation a sparse family's kernels apply: GELU is left to gelu_pass.
inline Activation kernel_activation(Activation act) { return act == Activation::gelu ? Activation::none : act; }

// True when one of the m rows of x (k floats, row stride ldx) holds NaN or Inf: the float families
// refuse such input like the quantizing ones (a skipped zero would hide the Inf * 0 = NaN).
bool rows_nonfinite(const float* x, ptrdiff_t ldx, int m, int k);

// A float32 weight (n, k) packed in panels for the dense_f32 kernels (see dense_f32.h).
struct PackedDenseF32 {
  const DenseKernel* kernel = nullptr;
  DenseF32 w;
  AlignedArray<float> data;
  size_t nbytes() const { return data.size() * 4; }
};

// w: (n, k) float32 row-major.
std::unique_ptr<PackedDenseF32> pack_dense_f32(const DenseKernel& kernel, const float* w, int n, int k);

// y (m, n) = epilogue(x @ W.T) for fp32 x (row stride ldx); refuses NaN/Inf in x. Thread pool.
GemmStatus dense_f32(const PackedDenseF32& w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                     Activation act, float* y, int max_threads);

// dense_f32 without the check of x, for rows the caller knows to be finite (the Winograd
// convolution's transformed tiles, of an image it checked once): no bias, no activation.
void dense_f32_unchecked(const PackedDenseF32& w, const float* x, ptrdiff_t ldx, int m, float* y, int max_threads);

// The low-rank product y (m, n) = epilogue((x @ V.T) @ U.T) with V (r, k) and U (n, r) packed for
// dense_f32; the (rows, r) intermediate lives in a per-thread buffer of at most 64 KiB.
GemmStatus lowrank_f32(const PackedDenseF32& v, const PackedDenseF32& u, const float* x, ptrdiff_t ldx, int m,
                       const float* bias, Activation act, float* y, int max_threads);

}  // namespace edgecompress
