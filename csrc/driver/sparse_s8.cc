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

namespace {

// The interleaved SpMV layout (sparse_s8.h): per group of 16 rows and slice of 32 blocks, as many
// rounds as the busiest of the 16 rows has blocks in that slice. Block order inside a row is free.
void build_interleaved(PackedSparseS8* p) {
  SparseS8& w = p->w;
  constexpr int kBlocksPerSlice = kSparseS8Slice / 4;
  w.groups = (w.n + 15) / 16;
  w.slices = (w.kblocks + kBlocksPerSlice - 1) / kBlocksPerSlice;
  auto block_of = [&](int64_t j) -> int64_t { return w.idx16 != nullptr ? w.idx16[j] : w.idx32[j]; };
  const size_t cells = static_cast<size_t>(w.groups) * w.slices;
  p->round_ptr = AlignedArray<int64_t>(cells + 1);
  int64_t* rp = p->round_ptr.data();
  std::vector<int32_t> count(static_cast<size_t>(16) * w.slices);
  for (int g = 0; g < w.groups; ++g) {  // rounds per cell: the largest count of the group's rows
    std::fill(count.begin(), count.end(), 0);
    for (int l = 0; l < 16 && 16 * g + l < w.n; ++l)
      for (int64_t j = w.indptr[16 * g + l]; j < w.indptr[16 * g + l + 1]; ++j) ++count[static_cast<size_t>(l) * w.slices + block_of(j) / kBlocksPerSlice];
    for (int s = 0; s < w.slices; ++s) {
      int32_t most = 0;
      for (int l = 0; l < 16; ++l) most = std::max(most, count[static_cast<size_t>(l) * w.slices + s]);
      rp[static_cast<size_t>(g) * w.slices + s + 1] = most;
    }
  }
  rp[0] = 0;
  for (size_t c = 0; c < cells; ++c) rp[c + 1] += rp[c];
  const int64_t rounds = rp[cells];
  p->ridx = AlignedArray<uint8_t>(static_cast<size_t>(rounds) * 16);  // zero: padding lanes
  p->rval = AlignedArray<int8_t>(static_cast<size_t>(rounds) * 64);
  std::vector<int64_t> next(static_cast<size_t>(16) * w.slices);  // each lane's next round per slice
  for (int g = 0; g < w.groups; ++g) {
    for (int l = 0; l < 16; ++l)
      for (int s = 0; s < w.slices; ++s) next[static_cast<size_t>(l) * w.slices + s] = rp[static_cast<size_t>(g) * w.slices + s];
    for (int l = 0; l < 16 && 16 * g + l < w.n; ++l) {
      for (int64_t j = w.indptr[16 * g + l]; j < w.indptr[16 * g + l + 1]; ++j) {
        const int64_t kb = block_of(j);
        const int64_t r = next[static_cast<size_t>(l) * w.slices + kb / kBlocksPerSlice]++;
        p->ridx.data()[16 * r + l] = static_cast<uint8_t>(kb % kBlocksPerSlice);
        std::memcpy(p->rval.data() + 64 * r + 4 * l, w.values + 4 * j, 4);
      }
    }
  }
  w.round_ptr = rp;
  w.ridx = p->ridx.data();
  w.rval = p->rval.data();
}

}  // namespace

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
  if (kernel.interleaved) build_interleaved(p.get());
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
  const SparseS8Finish fin{acc, a_rows, m, 0, 0, row_scale, p.scale.data(), p.scale_min, p.scale_max, bias, act, y, w.n};
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
  return GemmStatus::ok;
}

}  // namespace edgecompress
