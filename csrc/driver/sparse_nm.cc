// Loop nest of the sparse_nm_f32 family: packing the canonical rows into panels of chunks, padding x
// to whole chunk spans, splitting the panels over the thread pool and, for more than kNmRows rows of
// x, blocking so that each tile of W is reused from cache by every block of rows of x.
#include <algorithm>
#include <cstring>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

std::unique_ptr<PackedSparseNmF32> pack_sparse_nm_f32(const SparseNmKernel& kernel, int n, int k, int kept, int group,
                                                      const float* values, const uint8_t* meta) {
  auto p = std::make_unique<PackedSparseNmF32>();
  SparseNmF32& w = p->w;
  p->kernel = &kernel;
  w.n = n, w.k = k, w.kept = kept, w.group = group;
  const ptrdiff_t row_values = (static_cast<ptrdiff_t>(k) + group - 1) / group * kept;
  const ptrdiff_t row_meta = (row_values * (group == 8 ? 4 : 2) + 7) / 8;
  w.chunks = static_cast<int>((row_values + kNmChunk - 1) / kNmChunk);
  w.panels = (n + kNmPanel - 1) / kNmPanel;
  const ptrdiff_t chunks = w.chunks, dwords = w.meta_bytes();
  const int bits = group == 8 ? 4 : 2;
  // Zero-initialized: padding values (a row's last chunk, the rows of the last panel past n) are
  // zeros at position 0.
  p->values = AlignedArray<float>(static_cast<size_t>(w.panels) * chunks * kNmPanel * kNmChunk);
  p->meta = AlignedArray<uint8_t>(static_cast<size_t>(w.panels) * chunks * kNmPanel * dwords);
  for (ptrdiff_t r = 0; r < n; ++r) {
    const ptrdiff_t panel = r / kNmPanel, row = r % kNmPanel;
    const uint8_t* src_meta = meta + r * row_meta;
    for (ptrdiff_t c = 0; c < chunks; ++c) {
      const ptrdiff_t block = panel * chunks + c;
      const ptrdiff_t nv = std::min<ptrdiff_t>(kNmChunk, row_values - c * kNmChunk);
      std::memcpy(p->values.data() + (block * kNmPanel + row) * kNmChunk, values + r * row_values + c * kNmChunk,
                  nv * sizeof(float));
      // Value l's position goes to byte `row` of dword l % D, at bit bits * (l / D) (sparse_nm.h).
      uint8_t* dst = p->meta.data() + block * kNmPanel * dwords;
      for (ptrdiff_t l = 0; l < nv; ++l) {
        const ptrdiff_t j = c * kNmChunk + l;  // value j of the row
        const int pos = (src_meta[j * bits / 8] >> (j * bits % 8)) & (group - 1);
        dst[4 * (l % dwords) + row] |= static_cast<uint8_t>(pos << (bits * (l / dwords)));
      }
    }
  }
  w.values = p->values.data();
  w.meta = p->meta.data();
  return p;
}

namespace {

AlignedArray<float>& padded_x_workspace() {
  static thread_local AlignedArray<float> ws;
  return ws;
}

// Panels of W per tile when x has more than kNmRows rows: about 128 KiB of packed weight, which
// stays in L2 while every block of kNmRows rows of x streams past it.
constexpr size_t kNmTileBytes = 128 * 1024;

}  // namespace

GemmStatus sparse_nm_f32(const PackedSparseNmF32& p, const float* x, ptrdiff_t ldx, int m, const float* bias,
                         Activation act, float* y, int max_threads) {
  const SparseNmF32& w = p.w;
  if (m <= 0) return GemmStatus::ok;
  if (rows_nonfinite(x, ldx, m, w.k)) return GemmStatus::nonfinite_input;
  // x padded with zeros to whole chunk spans (the kernels read whole spans; 0 * 0 in the padding).
  const ptrdiff_t ldp = static_cast<ptrdiff_t>(w.chunks) * w.span();
  AlignedArray<float>& ws = padded_x_workspace();
  const size_t need = static_cast<size_t>(m) * ldp;
  float* xp = ensure_size(ws, need);
  for (ptrdiff_t i = 0; i < m; ++i) {
    std::memcpy(xp + i * ldp, x + i * ldx, static_cast<size_t>(w.k) * sizeof(float));
    std::memset(xp + i * ldp + w.k, 0, static_cast<size_t>(ldp - w.k) * sizeof(float));
  }
  const double work = static_cast<double>(w.n) * w.chunks * kNmChunk * m;
  const int threads = work < gemm_min_parallel_macs() ? 1 : std::max(1, std::min(max_threads, get_num_threads()));
  const int parts = std::min(w.panels, threads == 1 ? 1 : 8 * threads);
  const int per = (w.panels + parts - 1) / parts;
  const size_t panel_bytes = static_cast<size_t>(w.chunks) * kNmPanel * (kNmChunk * sizeof(float) + w.meta_bytes());
  const int tile = m <= kNmRows ? w.panels : static_cast<int>(std::max<size_t>(1, kNmTileBytes / panel_bytes));
  const SparseNmKernel& kern = *p.kernel;
  auto run = [&](int part) {
    const int p_end = std::min(w.panels, (part + 1) * per);
    for (int p0 = part * per; p0 < p_end;) {
      const int p1 = p_end - p0 <= tile ? p_end : p0 + tile;
      for (int i = 0; i < m; i += kNmRows) {
        const SparseNmTask t{&w,  p0,  p1, std::min(kNmRows, m - i), xp + i * ldp, ldp,
                             bias, kernel_activation(act), y + static_cast<ptrdiff_t>(i) * w.n, w.n};
        kern.run(t);
      }
      p0 = p1;
    }
  };
  parallel_for(parts, threads, run);
  if (act == Activation::gelu) gelu_pass(y, static_cast<int64_t>(m) * w.n, threads);
  return GemmStatus::ok;
}

}  // namespace edgecompress
