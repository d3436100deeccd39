// Loop nests of the dense_f32 family and the low-rank product built on it: packing into panels,
// splitting panels over the thread pool, and the two-step x @ V.T @ U.T with the intermediate in a
// per-thread buffer small enough to stay in L1/L2.
#include <algorithm>
#include <cstring>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"
#include "../kernels/common/vmath.h"

namespace edgecompress {

bool rows_nonfinite(const float* x, ptrdiff_t ldx, int m, int k) {
  uint32_t bad = 0;
  for (int i = 0; i < m; ++i) {
    const float* xr = x + i * ldx;
    for (int c = 0; c < k; ++c) {
      uint32_t b;
      std::memcpy(&b, xr + c, 4);
      bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
  }
  return bad != 0;
}

void gelu_pass(float* y, int64_t count, int max_threads) {
  constexpr int64_t kChunk = 16384;
  const int tasks = static_cast<int>((count + kChunk - 1) / kChunk);
  const int threads = static_cast<double>(count) * 64 < gemm_min_parallel_macs() ? 1 : max_threads;
  auto body = [&](int t) {
    float* __restrict v = y + t * kChunk;
    const int64_t n = std::min(kChunk, count - t * kChunk);
    for (int64_t i = 0; i < n; ++i) v[i] = gelu_approx(v[i]);
  };
  parallel_for(tasks, threads, body);
}

std::unique_ptr<PackedDenseF32> pack_dense_f32(const DenseKernel& kernel, const float* w, int n, int k) {
  auto p = std::make_unique<PackedDenseF32>();
  p->kernel = &kernel;
  p->w.n = n, p->w.k = k;
  p->w.panels = (n + kDensePanel - 1) / kDensePanel;
  p->data = AlignedArray<float>(static_cast<size_t>(p->w.panels) * k * kDensePanel);  // zero: padding columns
  float* d = p->data.data();
  for (int r = 0; r < n; ++r) {
    float* panel = d + static_cast<ptrdiff_t>(r / kDensePanel) * k * kDensePanel + r % kDensePanel;
    const float* src = w + static_cast<ptrdiff_t>(r) * k;
    for (int c = 0; c < k; ++c) panel[c * kDensePanel] = src[c];
  }
  p->w.data = d;
  return p;
}

namespace {

// y (m, n) = epilogue(x @ W.T): about 4 tasks per thread, chunks of rows (whole blocks of kDenseRows,
// at least 8 blocks each) as far as the rows go, then chunks of panels as well (a few rows: a
// decoder's token), and at least two tasks a thread (smaller chunks of rows) where that was too few.
// Rows first: a task then writes whole rows of y. Split by panels, two threads wrote the 64-byte
// pieces of the same rows at once, which share cache lines wherever a row is not a multiple of 16
// columns, and a 1x1 convolution of 3136 pixels, 16 -> 72 channels took 97 us on one thread and 135
// us on two. Inside a chunk, panels go in blocks of about 64 KiB, and each
// block runs every block of kDenseRows rows before the next: the block is read from L1/L2 by all rows
// instead of the whole weight streaming from L3 once per four rows (at 128 rows and a 384 x 384
// weight that was 32 passes over 590 KB). Each output's sum is the same either way (one kernel call
// computes it over the whole K).
void dense_run(const PackedDenseF32& p, const float* x, ptrdiff_t ldx, int m, const float* bias, Activation act,
               float* y, ptrdiff_t ldy, int max_threads) {
  const DenseF32& w = p.w;
  const double work = static_cast<double>(w.n) * w.k * m;
  const int threads = work < gemm_min_parallel_macs() ? 1 : std::max(1, std::min(max_threads, get_num_threads()));
  const int tasks = threads == 1 ? 1 : 4 * threads;
  const int row_blocks = (m + kDenseRows - 1) / kDenseRows;
  int row_chunks = std::max(1, std::min(tasks, row_blocks / 8));
  // chunks of at least 4 panels: the kernel's widest groups (4 panels for 6 rows on AVX-512) need
  // them, and one panel a task ran a 49 x 128 x 128 product (a Winograd product of a 28 x 28 image)
  // at half the kernel's speed, no faster on two threads than on one
  const int chunks = std::min((w.panels + 3) / 4, (tasks + row_chunks - 1) / row_chunks);
  if (row_chunks * chunks < 2 * threads) row_chunks = std::min(row_blocks, (2 * threads + chunks - 1) / chunks);
  // (whole groups of 4 panels per chunk, as for the blocks below)
  const int per = ((w.panels + chunks - 1) / chunks + 3) / 4 * 4;
  const int rows_per = (row_blocks + row_chunks - 1) / row_chunks * kDenseRows;
  // (one block of rows reads each panel once: then the panels go in the kernel's widest groups, whose
  // several running sums per row hide the FMA latency; in blocks of one 64 KiB panel, a single row's
  // two sums made a 1024 x 1000 classifier wait on each k's FMA)
  // (a multiple of 4 panels, the widest group of any tier (AVX-512: 6 rows x 4 panels): a block of 5
  // panels at K = 192 ran one panel in five as 6 rows x 1 panel, at half the FMA rate (7 loads for 6
  // FMAs), a fifth of a 1x1 convolution's panels and over a quarter of its time; with K over 512 a 64 KiB
  // block was one panel, and a 3 x 3 convolution of 256 -> 512 channels on 49 pixels took 2.0 ms at
  // 57 GFLOPS on AVX-512)
  const int block = m <= kDenseRows ? w.panels
                                    : std::max(1, static_cast<int>(16384 / (static_cast<int64_t>(w.k) * kDensePanel)) / 4) * 4;
  const DenseKernel& kern = *p.kernel;
  auto run = [&](int task) {
    const int c = task % chunks, rc = task / chunks;
    const int c0 = c * per, c1 = std::min(w.panels, (c + 1) * per);
    const int r0 = rc * rows_per, r1 = std::min(m, r0 + rows_per);
    for (int b0 = c0; b0 < c1; b0 += block) {
      DenseTask t{&w, b0, std::min(c1, b0 + block), 0, nullptr, ldx, bias, act, nullptr, ldy};
      for (int r = r0; r < r1; r += kDenseRows) {
        t.m = std::min(kDenseRows, r1 - r);
        t.first_pass = r == r0;
        t.x = x + r * ldx;
        t.y = y + r * ldy;
        kern.run(t);
      }
    }
  };
  parallel_for(chunks * row_chunks, threads, run);
}

AlignedArray<float>& lowrank_workspace() {
  static thread_local AlignedArray<float> ws;
  return ws;
}

}  // namespace

GemmStatus dense_f32(const PackedDenseF32& w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                     Activation act, float* y, int max_threads) {
  if (m <= 0) return GemmStatus::ok;
  if (rows_nonfinite(x, ldx, m, w.w.k)) return GemmStatus::nonfinite_input;
  dense_run(w, x, ldx, m, bias, act, y, w.w.n, max_threads);
  return GemmStatus::ok;
}

void dense_f32_unchecked(const PackedDenseF32& w, const float* x, ptrdiff_t ldx, int m, float* y, int max_threads) {
  if (m > 0) dense_run(w, x, ldx, m, nullptr, Activation::none, y, w.w.n, max_threads);
}

GemmStatus lowrank_f32(const PackedDenseF32& v, const PackedDenseF32& u, const float* x, ptrdiff_t ldx, int m,
                       const float* bias, Activation act, float* y, int max_threads) {
  if (m <= 0) return GemmStatus::ok;
  if (rows_nonfinite(x, ldx, m, v.w.k)) return GemmStatus::nonfinite_input;
  const int r = v.w.n;
  // Rows in blocks whose intermediate (rows x r floats) fits in 64 KiB, so it is still cached when
  // the second factor reads it.
  const int block = std::max(kDenseRows, (16384 / std::max(r, 1)) / kDenseRows * kDenseRows);
  AlignedArray<float>& ws = lowrank_workspace();
  const size_t need = static_cast<size_t>(std::min(block, m)) * r;
  ensure_size(ws, need);
  for (int i = 0; i < m; i += block) {
    const int rows = std::min(block, m - i);
    dense_run(v, x + i * ldx, ldx, rows, nullptr, Activation::none, ws.data(), r, max_threads);
    dense_run(u, ws.data(), r, rows, bias, act, y + static_cast<ptrdiff_t>(i) * u.w.n, u.w.n, max_threads);
  }
  return GemmStatus::ok;
}

}  // namespace edgecompress
