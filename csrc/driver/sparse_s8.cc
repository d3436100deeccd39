// Loop nest of the sparse_s8 family: the weight's arrays are copied once into aligned storage (with
// each row's sum); each call quantizes x per row (as gemm_s8 does), lays it out for the kernel, splits
// the rows of W over the thread pool, and applies gemm_s8's float epilogue to the exact integers.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../kernels/sparse_s8/sparse_s8_common.h"  // quantize_row, s8_finish_one (internal linkage, baseline flags)
#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

std::unique_ptr<PackedSparseS8> pack_sparse_s8(const SparseS8Kernel& kernel, int n, int k, const int64_t* indptr,
                                               const void* indices, bool idx16, const int8_t* values,
                                               const float* scale, int scale_len) {
  auto p = std::make_unique<PackedSparseS8>();
  SparseS8& w = p->w;
  p->kernel = &kernel;
  w.n = n, w.k = k, w.kblocks = (k + 3) / 4;
  const int64_t nnzb = indptr[n];
  p->indptr = aligned_copy(indptr, static_cast<size_t>(n) + 1);
  p->values = aligned_copy(values, static_cast<size_t>(nnzb) * 4);
  copy_block_indices(indices, idx16, static_cast<size_t>(nnzb), &p->idx16, &p->idx32);
  w.idx16 = p->idx16.data();
  w.idx32 = p->idx32.data();
  p->rowsum = AlignedArray<int32_t>(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    int32_t s = 0;
    for (int64_t j = indptr[r] * 4; j < indptr[r + 1] * 4; ++j) s += values[j];
    p->rowsum.data()[r] = s;
  }
  p->scale = AlignedArray<float>(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) p->scale.data()[r] = scale[scale_len == 1 ? 0 : r];
  p->scale_min = *std::min_element(p->scale.data(), p->scale.data() + n);
  p->scale_max = *std::max_element(p->scale.data(), p->scale.data() + n);
  w.indptr = p->indptr.data();
  w.values = p->values.data();
  w.rowsum = p->rowsum.data();
  if (kernel.interleaved) {  // blocks of 4 int8 are the layout's 4-byte units; none spill (the
    // weight is small enough to be compute-bound, where a spilled block costs more than a padded one)
    p->il = build_interleaved(n, w.kblocks, w.indptr, w.idx16, w.idx32, w.values, 1);
    w.groups = p->il.groups, w.slices = p->il.slices;
    w.round_ptr = p->il.round_ptr.data();
    w.ridx = p->il.ridx.data();
    w.rval = reinterpret_cast<const int8_t*>(p->il.rval.data());
  }
  return p;
}

namespace {

struct S8Workspace {
  AlignedArray<uint8_t> a, row;
  AlignedArray<int32_t> acc;
  AlignedArray<float> row_scale;
};

S8Workspace& s8_workspace() {
  static thread_local S8Workspace ws;
  return ws;
}

}  // namespace

GemmStatus sparse_s8(const PackedSparseS8& p, const float* x, ptrdiff_t ldx, int m, const float* bias, Activation act,
                     float* y, int max_threads) {
  const SparseS8& w = p.w;
  if (m <= 0) return GemmStatus::ok;
  const SparseS8Kernel& kern = *p.kernel;
  const uint8_t flip = kern.a_unsigned ? 0x80 : 0;
  const int kp = w.kblocks * 4;
  const int lda = (kp + kSparseS8Slice - 1) / kSparseS8Slice * kSparseS8Slice;  // SpMV rows: whole slices
  const bool spmv = m <= kSparseS8SpmvRows;
  const int a_rows = spmv ? m : (m + 15) / 16 * 16;
  S8Workspace& ws = s8_workspace();
  uint8_t* a = ensure_size(ws.a, static_cast<size_t>(a_rows) * lda);
  uint8_t* row = ensure_size(ws.row, static_cast<size_t>(kp));  // pack_strip's scratch
  float* row_scale = ensure_size(ws.row_scale, static_cast<size_t>(a_rows));
  int32_t* acc = ensure_size(ws.acc, static_cast<size_t>(a_rows) * w.n);  // SpMV: (m, n); SpMM: (n, a_rows)
  if (spmv) {
    const ActQuant aq{};  // dynamic symmetric, per row
    for (int i = 0; i < m; ++i) {
      int32_t zp = 0;
      uint8_t* q = a + static_cast<size_t>(i) * lda;
      std::memset(q, 0, static_cast<size_t>(lda));  // k >= K: zero weights meet them
      if (!quantize_row(x + i * ldx, w.k, aq, flip, q, &row_scale[i], &zp)) return GemmStatus::nonfinite_input;
    }
  } else if (!kern.pack_strip(x, ldx, m, w.k, a, row_scale, row)) {
    return GemmStatus::nonfinite_input;
  }
  const double work = static_cast<double>(w.indptr[w.n]) * 4 * m;
  const int threads = work < gemm_min_parallel_macs() ? 1 : std::max(1, std::min(max_threads, get_num_threads()));
  const int chunks = std::min(w.n, threads == 1 ? 1 : 8 * threads);
  const int per = ((w.n + chunks - 1) / chunks + 15) / 16 * 16;  // groups of 16 rows stay whole
  // SpMM: the kernel's rows of W become columns of y: each chunk transposes and finishes its own.
  const SparseS8Finish fin{acc, a_rows, m, 0, 0, row_scale, p.scale.data(), p.scale_min, p.scale_max, bias, kernel_activation(act), y, w.n};
  auto run = [&](int c) {
    const int r0 = c * per, r1 = std::min(w.n, (c + 1) * per);
    if (spmv) {
      if (r0 < r1) kern.run(SparseS8Task{&w, r0, r1, m, a, lda, a_rows, acc, w.n});
      return;
    }
    // 256 rows of W at a time: their (256, a_rows) results are finished while still in L2, and
    // each row of y is written in runs of 1 KiB.
    for (int s0 = r0; s0 < r1; s0 += 256) {
      const int s1 = std::min(r1, s0 + 256);
      kern.run(SparseS8Task{&w, s0, s1, m, a, kp, a_rows, acc, a_rows});
      SparseS8Finish f = fin;
      f.c0 = s0, f.c1 = s1;
      kern.finish(f);
    }
  };
  parallel_for(chunks, threads, run);
  if (spmv) {
    for (int i = 0; i < m; ++i) {
      const bool normal = s8_row_is_normal(row_scale[i], fin);
      for (int c = 0; c < w.n; ++c) y[i * w.n + c] = s8_finish_one(acc[i * w.n + c], row_scale[i], normal, c, fin);
    }
  }
  if (act == Activation::gelu) gelu_pass(y, static_cast<int64_t>(m) * w.n, threads);
  return GemmStatus::ok;
}

}  // namespace edgecompress
