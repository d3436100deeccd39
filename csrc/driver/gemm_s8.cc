// Loop nest of the gemm_s8 family.
//
// Weights are packed once into panels of nr columns (gemm_s8.h). Each call quantizes the activations
// into strips of mr rows, then runs the micro-kernel over (strip, panel) tiles with the full K in
// registers, so every tile ends in the fused epilogue. Work is cut into tasks of (block of strips) x
// (chunk of panels): a block of strips small enough to stay in L2 is reused across the panels of a
// chunk, and a panel (nr x K bytes) across the strips of a block. With one strip (M <= mr, the GEMV
// case) the tasks split N only and each weight byte is streamed once.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

// Arrays of 2 MiB and more (packed weights that stream from memory) start on a 2 MiB boundary and
// ask for 2 MiB pages where the kernel allows it (Linux transparent huge pages, "madvise" mode): one
// TLB entry per 2 MiB instead of 512. Without them a streaming GEMV stayed well below the read
// bandwidth that numpy's arrays (which ask for huge pages too) reach.
constexpr size_t kHugePage = size_t{2} << 20;

template <class T>
AlignedArray<T>::AlignedArray(size_t n) : n_(n) {
  if (n == 0) return;
  const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
  const bool huge = bytes >= kHugePage;
  void* p = nullptr;
  if (posix_memalign(&p, huge ? kHugePage : 64, bytes) != 0) throw std::bad_alloc();
  p_ = static_cast<T*>(p);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(static_cast<void*>(p_), bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  std::memset(static_cast<void*>(p_), 0, bytes);
}

template <class T>
AlignedArray<T>& AlignedArray<T>::operator=(AlignedArray&& o) noexcept {
  if (this != &o) {
    std::free(p_);
    p_ = o.p_, n_ = o.n_;
    o.p_ = nullptr, o.n_ = 0;
  }
  return *this;
}

template <class T>
AlignedArray<T>::~AlignedArray() {
  std::free(p_);
}

template class AlignedArray<int8_t>;
template class AlignedArray<uint8_t>;
template class AlignedArray<int16_t>;
template class AlignedArray<uint16_t>;
template class AlignedArray<int32_t>;
template class AlignedArray<int64_t>;
template class AlignedArray<float>;

std::unique_ptr<PackedS8Weight> pack_s8_weight(const GemmS8Kernel& kernel, const int8_t* w, int n, int k,
                                               const float* scale, int scale_len) {
  auto p = std::make_unique<PackedS8Weight>();
  const int nr = kernel.nr, kr = kernel.kr;
  p->kernel = &kernel;
  p->n = n;
  p->k = k;
  p->kblocks = static_cast<int>((static_cast<int64_t>(k) + kr - 1) / kr);
  p->panels = static_cast<int>((static_cast<int64_t>(n) + nr - 1) / nr);
  // A kernel whose A strips hold a_kr > kr values of K per unit reads B a whole unit at a time: the
  // k-blocks past the last panel's K it may read (against zero activations) are zeroed slack.
  const size_t slack = static_cast<size_t>(kernel.a_kr / kr - 1) * nr * kr;
  p->data = AlignedArray<int8_t>(static_cast<size_t>(p->panels) * p->kblocks * nr * kr + slack);
  p->colsum = AlignedArray<int32_t>(static_cast<size_t>(p->panels) * nr);
  p->scale = AlignedArray<float>(static_cast<size_t>(p->panels) * nr);
  for (int col = 0; col < n; ++col) {
    const int8_t* src = w + static_cast<size_t>(col) * k;
    int8_t* dst = p->data.data() + static_cast<size_t>(col / nr) * p->kblocks * nr * kr + (col % nr) * kr;
    int32_t sum = 0;
    for (int kb = 0; kb < p->kblocks; ++kb) {
      const int len = std::min(kr, k - kb * kr);
      std::memcpy(dst + static_cast<size_t>(kb) * nr * kr, src + kb * kr, static_cast<size_t>(len));
    }
    for (int i = 0; i < k; ++i) sum += src[i];
    p->colsum.data()[col] = sum;
    p->scale.data()[col] = scale[scale_len == 1 ? 0 : col];
  }
  p->scale_min = *std::min_element(p->scale.data(), p->scale.data() + n);
  p->scale_max = *std::max_element(p->scale.data(), p->scale.data() + n);
  return p;
}

namespace {

// Per-thread buffers, grown on demand and kept: a call allocates nothing once warm.
struct Workspace {
  AlignedArray<uint8_t> a;       // packed strips (the caller's)
  AlignedArray<float> row_scale;  // (m)
  AlignedArray<int32_t> row_offset;
  AlignedArray<uint8_t> scratch;  // one quantized row (each thread's)
};

Workspace& workspace() {
  static thread_local Workspace ws;
  return ws;
}

int ceil_div(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) + b - 1) / b); }  // no overflow near INT_MAX

std::atomic<double> g_min_parallel_macs{1 << 18};
// Bytes of packed activations a block of strips may take (kept in L2 across panels).
constexpr size_t kStripBlockBytes = 256 * 1024;

}  // namespace

void set_gemm_s8_min_parallel_macs(double macs) { g_min_parallel_macs.store(macs); }
double gemm_min_parallel_macs() { return g_min_parallel_macs.load(std::memory_order_relaxed); }

GemmStatus gemm_s8(const PackedS8Weight& w, const void* x, ptrdiff_t ldx, int m, const ActQuant& aq,
                   const float* bias, Activation act, float* y, int32_t* y_i32, int max_threads) {
  if (m <= 0) return GemmStatus::ok;
  // A tile kernel hands calls with few rows to its small-M kernel, which reads the same panels.
  const GemmS8Kernel* const small = w.kernel->small_m;
  const GemmS8Kernel& kern = small != nullptr && m < w.kernel->small_m_rows && cpu_has(small->needs) ? *small : *w.kernel;
  const int n = w.n, k = w.k, kblocks = w.kblocks, nr = kern.nr, kr = kern.kr, mr = kern.mr;
  const size_t a_k = static_cast<size_t>(ceil_div(k, kern.a_kr)) * kern.a_kr;  // K as the strips hold it
  const bool raw = aq.scheme == ActScheme::raw_s8 || aq.scheme == ActScheme::raw_u8;
  const size_t x_elem = raw ? 1 : 4;
  // Rows are spread evenly over the strips (M = 8 with mr = 6 gives 4 + 4, not 6 + 2): a short
  // strip streams the weight panel for few rows.
  const int strips = ceil_div(m, mr);
  const int rps = ceil_div(m, strips);  // rows per strip, <= mr
  const int strip_rows_max = ceil_div(rps, kern.m_align) * kern.m_align;
  const size_t strip_bytes = a_k * strip_rows_max * kern.a_bytes;

  Workspace& ws = workspace();
  uint8_t* a = ensure_size(ws.a, strip_bytes * strips);
  float* row_scale = ensure_size(ws.row_scale, static_cast<size_t>(m));
  int32_t* row_offset = ensure_size(ws.row_offset, static_cast<size_t>(m));

  const double macs = static_cast<double>(m) * n * k, min_macs = g_min_parallel_macs.load(std::memory_order_relaxed);
  const int threads = macs < min_macs ? 1 : std::max(1, std::min(max_threads, get_num_threads()));

  // 1. Quantize and pack the activations, strip by strip.
  std::atomic<int> status{static_cast<int>(GemmStatus::ok)};
  auto pack_strip = [&](int s) {
    const int r0 = s * rps, rows = std::min(rps, m - r0);
    uint8_t* scratch;
    try {
      scratch = ensure_size(workspace().scratch, a_k);
    } catch (const std::bad_alloc&) {  // never let an exception out of a pool task
      status.store(static_cast<int>(GemmStatus::out_of_memory));
      return;
    }
    const void* xs = static_cast<const uint8_t*>(x) + static_cast<size_t>(r0) * ldx * x_elem;
    if (!kern.pack_a(xs, ldx, rows, k, aq, a + s * strip_bytes, row_scale + r0, row_offset + r0, scratch)) {
      status.store(static_cast<int>(GemmStatus::nonfinite_input));
    }
  };
  parallel_for(strips, static_cast<double>(m) * k * 4 < min_macs ? 1 : threads, pack_strip);
  if (status.load() != static_cast<int>(GemmStatus::ok)) return static_cast<GemmStatus>(status.load());

  // 2. Tiles: tasks = (block of strips) x (chunk of panels). Blocks of strips stay in L2; when N
  // has too few panels to keep every thread busy, M is cut into more blocks as well.
  int block_strips = std::max<int>(1, static_cast<int>(kStripBlockBytes / strip_bytes));
  int m_blocks = ceil_div(strips, block_strips);
  const int n_chunks = threads == 1 ? 1 : std::min(w.panels, std::max(1, ceil_div(4 * threads, m_blocks)));
  if (threads > 1 && m_blocks * n_chunks < 2 * threads && strips > m_blocks) {
    m_blocks = std::min(strips, ceil_div(2 * threads, n_chunks));
    block_strips = ceil_div(strips, m_blocks);
    m_blocks = ceil_div(strips, block_strips);
  }
  const int panels_per_chunk = ceil_div(w.panels, n_chunks);
  const size_t panel_bytes = static_cast<size_t>(kblocks) * nr * kr;
  auto run_task = [&](int task) {
    const int mb = task / n_chunks, nc = task % n_chunks;
    const int s_end = std::min(strips, (mb + 1) * block_strips);
    const int p_end = std::min(w.panels, (nc + 1) * panels_per_chunk);
    if (kern.begin != nullptr) kern.begin(kblocks);
    GemmS8Tile t;
    t.kblocks = kblocks;
    t.act = act;
    t.col_scale_min = w.scale_min;
    t.col_scale_max = w.scale_max;
    for (int p = nc * panels_per_chunk; p < p_end; ++p) {
      const int c0 = p * nr;
      t.b = w.data.data() + p * panel_bytes;
      t.n = std::min(nr, n - c0);
      t.colsum = w.colsum.data() + c0;
      t.col_scale = w.scale.data() + c0;
      t.bias = bias != nullptr ? bias + c0 : nullptr;
      for (int s = mb * block_strips; s < s_end; ++s) {
        const int r0 = s * rps;
        t.m = std::min(rps, m - r0);
        t.a_rows = ceil_div(t.m, kern.m_align) * kern.m_align;
        t.a = a + s * strip_bytes;
        t.row_offset = row_offset + r0;
        t.row_scale = row_scale + r0;
        t.y = y != nullptr ? y + static_cast<size_t>(r0) * n + c0 : nullptr;
        t.y_i32 = y_i32 != nullptr ? y_i32 + static_cast<size_t>(r0) * n + c0 : nullptr;
        t.ldy = n;
        kern.run(t);
      }
    }
    if (kern.end != nullptr) kern.end();
  };
  parallel_for(m_blocks * n_chunks, threads, run_task);
  return GemmStatus::ok;
}

}  // namespace edgecompress
