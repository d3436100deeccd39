// Loop nest of the gemm_q4 family.
//
// Weights are packed once, tensor by tensor, into 16-column panels (gemm_q4.h): the packed arrays are
// the same size as the canonical ones and no temporary copy is made. Each call prepares the
// activations (int8 mode: quantized per row and group), then runs tiles of kernel.mr rows x one
// panel with the whole K, each ending in the fused epilogue. Tasks are (block of rows) x (chunk of
// panels); with M <= mr (GEMV) they split N only, so each weight byte is streamed once.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>

#include "../kernels/gemm_q4/gemm_q4_common.h"
#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

std::unique_ptr<PackedQ4Weight> pack_q4_weight(const GemmQ4Kernel& kernel, const uint8_t* qweight, int n, int k,
                                               int g, const uint16_t* scale, const uint8_t* zp,
                                               const float* codebook, bool per_channel) {
  auto p = std::make_unique<PackedQ4Weight>();
  Q4Weight& w = p->w;
  p->kernel = &kernel;
  w.n = n, w.k = k, w.g = g;
  w.groups = static_cast<int>((static_cast<int64_t>(k) + g - 1) / g);
  w.kp = w.groups * g;
  w.panels = static_cast<int>((static_cast<int64_t>(n) + kQ4Panel - 1) / kQ4Panel);
  const size_t steps = static_cast<size_t>(w.kp) / 8, row_bytes = static_cast<size_t>(w.kp) / 2;
  p->nib = AlignedArray<uint8_t>(static_cast<size_t>(w.panels) * steps * 64);
  p->scale = AlignedArray<uint16_t>(static_cast<size_t>(w.panels) * w.groups * kQ4Panel);
  if (zp != nullptr) p->zp = AlignedArray<uint8_t>(static_cast<size_t>(w.panels) * w.groups * kQ4Panel);
  for (int col = 0; col < n; ++col) {
    const int panel = col / kQ4Panel, j = col % kQ4Panel;
    const uint8_t* src = qweight + static_cast<size_t>(col) * row_bytes;
    uint8_t* dst = p->nib.data() + static_cast<size_t>(panel) * steps * 64 + 4 * j;
    for (size_t s = 0; s < steps; ++s) {
      // Codes k = 8s .. 8s+7 are source bytes 4s .. 4s+3 (two codes each, low nibble first).
      const uint8_t* b = src + 4 * s;
      const uint8_t c[8] = {static_cast<uint8_t>(b[0] & 15), static_cast<uint8_t>(b[0] >> 4),
                            static_cast<uint8_t>(b[1] & 15), static_cast<uint8_t>(b[1] >> 4),
                            static_cast<uint8_t>(b[2] & 15), static_cast<uint8_t>(b[2] >> 4),
                            static_cast<uint8_t>(b[3] & 15), static_cast<uint8_t>(b[3] >> 4)};
      for (int i = 0; i < 4; ++i) dst[s * 64 + i] = static_cast<uint8_t>(c[i] | (c[4 + i] << 4));
    }
    for (int gi = 0; gi < w.groups; ++gi) {
      const size_t at = (static_cast<size_t>(panel) * w.groups + gi) * kQ4Panel + j;
      const uint16_t h = scale[static_cast<size_t>(col) * w.groups + gi];
      p->scale.data()[at] = h;
      p->scale_absmax = std::max(p->scale_absmax, std::fabs(half_to_float(h)));
      if (zp != nullptr) p->zp.data()[at] = zp[static_cast<size_t>(col) * w.groups + gi];
    }
  }
  if (codebook != nullptr) {
    const int tables = per_channel ? w.panels * kQ4Panel : 1;
    p->table_i8 = AlignedArray<int8_t>(static_cast<size_t>(tables) * 16);
    p->table_scale = AlignedArray<float>(static_cast<size_t>(tables));
    p->table_f32 = AlignedArray<float>(static_cast<size_t>(tables) * 16);
    const int real = per_channel ? n : 1;
    for (int t = 0; t < real; ++t) {
      const float* src = codebook + static_cast<size_t>(t) * 16;
      ActQuant aq;  // dynamic symmetric: the oracle's codebook_int8
      int32_t zp_unused;
      quantize_row(src, 16, aq, 0, reinterpret_cast<uint8_t*>(p->table_i8.data() + t * 16), p->table_scale.data() + t,
                   &zp_unused);
      std::memcpy(p->table_f32.data() + t * 16, src, 16 * sizeof(float));
    }
    for (int t = real; t < tables; ++t) p->table_scale.data()[t] = 1.0f;
    w.per_channel = per_channel;
    w.table_i8 = p->table_i8.data();
    w.table_scale = p->table_scale.data();
    w.table_f32 = p->table_f32.data();
  }
  w.nib = p->nib.data();
  w.scale = p->scale.data();
  w.zp = zp != nullptr ? p->zp.data() : nullptr;
  return p;
}

namespace {

struct Q4Workspace {
  AlignedArray<int8_t> xq;
  AlignedArray<float> xf, sx;
  AlignedArray<int32_t> sumq;
};

Q4Workspace& q4_workspace() {
  static thread_local Q4Workspace ws;
  return ws;
}

int ceil_div(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) + b - 1) / b); }

constexpr double kRowF64Limit = 18446744073709551616.0;  // 2^64, as ROW_F64_LIMIT in the oracle
constexpr size_t kRowBlockBytes = 512 * 1024;            // prepared activations a task keeps in L2

// The oracle's float64 path for one row whose scale products could overflow float32.
void q4_row_f64(const PackedQ4Weight& p, const int8_t* xq, const float* sx, const float* bias, Activation act,
                float* y) {
  const Q4Weight& w = p.w;
  alignas(64) int8_t c[kQ4Panel * 128];
  for (int panel = 0; panel < w.panels; ++panel) {
    double acc[kQ4Panel] = {};
    const uint16_t* sw = q4_panel_scale(w, panel);
    for (int gi = 0; gi < w.groups; ++gi) {
      q4_decode_group_i8(w, panel, gi, c);
      for (int j = 0; j < kQ4Panel; ++j) {
        int64_t dot = 0;
        for (int kk = 0; kk < w.g; ++kk) dot += static_cast<int64_t>(xq[gi * w.g + kk]) * c[j * w.g + kk];
        acc[j] += static_cast<double>(dot) * static_cast<double>(sx[gi]) *
                  static_cast<double>(half_to_float(sw[gi * kQ4Panel + j]));
      }
    }
    for (int j = 0; j < kQ4Panel && panel * kQ4Panel + j < w.n; ++j) {
      const int col = panel * kQ4Panel + j;
      double v = acc[j];
      if (w.table_i8 != nullptr) v *= static_cast<double>(w.table_scale[w.per_channel ? col : 0]);
      y[col] = bias_act(static_cast<float>(v), bias, col, act);
    }
  }
}

}  // namespace

GemmStatus gemm_q4(const PackedQ4Weight& p, const float* x, ptrdiff_t ldx, int m, Q4Compute compute,
                   const float* bias, Activation act, float* y, int max_threads) {
  const Q4Weight& w = p.w;
  if (m <= 0) return GemmStatus::ok;
  // A tile kernel hands calls with few rows to its small-M kernel (the packed layout is every tier's).
  const GemmQ4Kernel* const small = p.kernel->small_m;
  const GemmQ4Kernel& kern = small != nullptr && m < p.kernel->small_m_rows && cpu_has(small->needs) ? *small : *p.kernel;
  const int mr = kern.mr, n = w.n;
  const bool int8 = compute == Q4Compute::int8;
  const ptrdiff_t ldq = w.kp, lds = w.groups;
  Q4Workspace& ws = q4_workspace();
  int8_t* xq = nullptr;
  float *xf = nullptr, *sx = nullptr;
  int32_t* sumq = nullptr;
  if (int8) {
    xq = ensure_size(ws.xq, static_cast<size_t>(m) * ldq);
    sx = ensure_size(ws.sx, static_cast<size_t>(m) * lds);
    sumq = ensure_size(ws.sumq, static_cast<size_t>(m) * lds);
  } else {
    xf = ensure_size(ws.xf, static_cast<size_t>(m) * ldq);
  }
  const double macs = static_cast<double>(m) * n * w.k, min_macs = gemm_min_parallel_macs();
  const int threads = macs < min_macs ? 1 : std::max(1, std::min(max_threads, get_num_threads()));

  // 1. Activations, in blocks of mr rows.
  const int tiles = ceil_div(m, mr);
  std::atomic<bool> finite{true};
  auto prepare = [&](int tile) {
    const int r0 = tile * mr, rows = std::min(mr, m - r0);
    const bool ok = kern.prepare(w, compute, x + r0 * ldx, ldx, rows, int8 ? xq + r0 * ldq : nullptr,
                                 int8 ? nullptr : xf + r0 * ldq, int8 ? sx + r0 * lds : nullptr,
                                 int8 ? sumq + r0 * lds : nullptr);
    if (!ok) finite.store(false);
  };
  parallel_for(tiles, static_cast<double>(m) * w.k * 8 < min_macs ? 1 : threads, prepare);
  if (!finite.load()) return GemmStatus::nonfinite_input;

  // 2. Tiles: (block of row tiles) x (chunk of panels).
  const size_t tile_bytes = static_cast<size_t>(mr) * ldq * (int8 ? 1 : 4);
  const int block_tiles = std::max<int>(1, static_cast<int>(kRowBlockBytes / tile_bytes));
  int m_blocks = ceil_div(tiles, block_tiles);
  const int n_chunks = threads == 1 ? 1 : std::min(w.panels, std::max(1, ceil_div(4 * threads, m_blocks)));
  const int tiles_per_block = ceil_div(tiles, m_blocks);
  m_blocks = ceil_div(tiles, tiles_per_block);
  const int panels_per_chunk = ceil_div(w.panels, n_chunks);
  auto run_task = [&](int task) {
    const int mb = task / n_chunks, nc = task % n_chunks;
    const int t_end = std::min(tiles, (mb + 1) * tiles_per_block);
    const int p_end = std::min(w.panels, (nc + 1) * panels_per_chunk);
    Q4Tile t;
    t.w = &w;
    t.compute = compute;
    t.act = act;
    t.x.ldx = ldq;
    t.x.lds = lds;
    for (int panel = nc * panels_per_chunk; panel < p_end; ++panel) {
      const int c0 = panel * kQ4Panel;
      t.panel = panel;
      t.n = std::min(kQ4Panel, n - c0);
      t.bias = bias != nullptr ? bias + c0 : nullptr;
      for (int tile = mb * tiles_per_block; tile < t_end; ++tile) {
        const int r0 = tile * mr;
        t.rows = std::min(mr, m - r0);
        if (int8) {
          t.x.xq = xq + r0 * ldq;
          t.x.sx = sx + r0 * lds;
          t.x.sumq = sumq + r0 * lds;
        } else {
          t.x.xf = xf + r0 * ldq;
        }
        t.y = y + static_cast<size_t>(r0) * n + c0;
        t.ldy = n;
        kern.run(t);
      }
    }
    if (kern.end != nullptr) kern.end();
  };
  parallel_for(m_blocks * n_chunks, threads, run_task);

  // 3. The rare rows whose scale products could overflow float32: the oracle's float64 path.
  if (int8) {
    for (int r = 0; r < m; ++r) {
      float smax = 0.0f;
      for (int gi = 0; gi < w.groups; ++gi) smax = std::max(smax, sx[r * lds + gi]);
      if (static_cast<double>(smax) * p.scale_absmax >= kRowF64Limit) {
        q4_row_f64(p, xq + r * ldq, sx + r * lds, bias, act, y + static_cast<size_t>(r) * n);
      }
    }
  }
  return GemmStatus::ok;
}

}  // namespace edgecompress
