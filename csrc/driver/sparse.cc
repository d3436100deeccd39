// Loop nest of the sparse_f32 family: the weight's arrays are copied once into aligned storage;
// each call checks x, transposes it for SpMM, and splits the block rows over the thread pool.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

// The interleaved layout's rounds cover all but the 4 busiest rows of each 16 (driver.h): float32
// GEMV streams its weight from memory, so bytes decide it.
constexpr int kSpillRank = 5;

// The layout's rounds take at most 16 bytes per nonzero (each holds >= kSpillRank of them), but its
// table of cells has one entry per 16 rows x 32 columns whatever the nonzeros. Below one nonzero
// per cell there is nothing to interleave (almost every nonzero would spill) and that table alone
// would outweigh the CSR arrays many times (N * K / 64 bytes), so such weights keep plain CSR.
bool interleaved_pays(int n, int k, int64_t nnz) {
  const int64_t cells = (static_cast<int64_t>(n) + 15) / 16 * ((static_cast<int64_t>(k) + kInterleaveSlice - 1) / kInterleaveSlice);
  return cells <= nnz;
}

std::unique_ptr<PackedSparseF32> pack_sparse_f32(const SparseKernel& kernel, int n, int k, int r,
                                                 const int64_t* indptr, const void* indices, bool idx16,
                                                 const float* values) {
  auto p = std::make_unique<PackedSparseF32>();
  SparseF32& w = p->w;
  p->kernel = &kernel;
  w.n = n, w.k = k, w.r = r;
  w.block_rows = (n + r - 1) / r;
  const int64_t nnzb = indptr[w.block_rows];
  p->indptr = aligned_copy(indptr, static_cast<size_t>(w.block_rows) + 1);
  p->values = aligned_copy(values, static_cast<size_t>(nnzb) * r);
  copy_block_indices(indices, idx16, static_cast<size_t>(nnzb), &p->idx16, &p->idx32);
  w.idx16 = p->idx16.data();
  w.idx32 = p->idx32.data();
  w.indptr = p->indptr.data();
  w.values = p->values.data();
  if (kernel.interleaved && r == 1 && interleaved_pays(n, k, nnzb)) {  // one float32 is the layout's 4-byte unit
    p->il = build_interleaved(n, k, w.indptr, w.idx16, w.idx32, w.values, kSpillRank);
    w.groups = p->il.groups, w.slices = p->il.slices;
    w.round_ptr = p->il.round_ptr.data();
    w.ridx = p->il.ridx.data();
    w.rval = reinterpret_cast<const float*>(p->il.rval.data());
    w.spill_ptr = p->il.spill_ptr.data();
    w.spill_idx = p->il.spill_idx.data();
    w.spill_val = reinterpret_cast<const float*>(p->il.spill_val.data());
  }
  return p;
}

namespace {

AlignedArray<float>& transpose_workspace() {
  static thread_local AlignedArray<float> ws;
  return ws;
}

}  // namespace

GemmStatus sparse_f32(const PackedSparseF32& p, const float* x, ptrdiff_t ldx, int m, const float* bias,
                      Activation act, float* y, int max_threads) {
  const SparseF32& w = p.w;
  if (m <= 0) return GemmStatus::ok;
  if (rows_nonfinite(x, ldx, m, w.k)) return GemmStatus::nonfinite_input;
  SparseTask t{};
  t.w = &w;
  t.m = m;
  t.bias = bias;
  t.act = kernel_activation(act);
  t.y = y;
  if (m <= kSpmvRows) {
    t.x = x;
    t.ldx = ldx;
  } else {
    const ptrdiff_t ldt = (static_cast<ptrdiff_t>(m) + 63) / 64 * 64;  // whole chunks of every kernel
    AlignedArray<float>& ws = transpose_workspace();
    const size_t need = static_cast<size_t>(w.k) * ldt;
    float* xt = ensure_size(ws, need);
    for (int c = 0; c < w.k; ++c) std::memset(xt + c * ldt + m, 0, (ldt - m) * sizeof(float));
    for (int i = 0; i < m; ++i)
      for (int c = 0; c < w.k; ++c) xt[c * ldt + i] = x[i * ldx + c];
    t.xt = xt;
    t.ldt = ldt;
  }
  const double work = static_cast<double>(w.indptr[w.block_rows]) * w.r * m;
  const int threads = work < gemm_min_parallel_macs() ? 1 : std::max(1, std::min(max_threads, get_num_threads()));
  const int chunks = std::min(w.block_rows, threads == 1 ? 1 : 8 * threads);
  int per = (w.block_rows + chunks - 1) / chunks;
  if (w.round_ptr != nullptr && m <= kSpmvRows) per = (per + 15) / 16 * 16;  // whole groups of 16 rows
  const SparseKernel& kern = *p.kernel;
  auto run = [&](int c) {
    SparseTask task = t;
    task.b0 = c * per;
    task.b1 = std::min(w.block_rows, (c + 1) * per);
    if (task.b0 < task.b1) kern.run(task);
  };
  parallel_for(chunks, threads, run);
  if (act == Activation::gelu) gelu_pass(y, static_cast<int64_t>(m) * w.n, threads);
  return GemmStatus::ok;
}

}  // namespace edgecompress
