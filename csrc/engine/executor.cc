// The engine's native executor (engine.h): one node after another, each spread over the thread pool.
#include "edgecompress/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <new>

#include "edgecompress/threadpool.h"
#include "edgecompress/winograd_s8.h"
#include "../kernels/common/epilogue.h"
#include "../kernels/common/vmath.h"

namespace edgecompress {
namespace engine {

namespace {

// HF-style additive mask: masked scores get the lowest float, so a row whose keys are all masked
// becomes uniform (as in torch) instead of NaN.
constexpr float kMasked = -3.40282347e38f;
// Queries per attention task: enough tasks for every thread even at batch 1.
constexpr int kQueryChunk = 64;
// Values per element-wise task.
constexpr int64_t kChunk = 16384;

struct Ctx {
  uint8_t* arena;
  const void* const* inputs;
  void* const* outputs;
  const std::vector<const void*>* constants;
  const EngineKernel* k;
  int threads;
};

template <class T>
T* at(const Ctx& c, const Ref& r) {
  uint8_t* base = nullptr;
  switch (r.space) {
    case Space::none: return nullptr;
    case Space::arena: base = c.arena; break;
    case Space::input: base = static_cast<uint8_t*>(const_cast<void*>(c.inputs[r.index])); break;
    case Space::output: base = static_cast<uint8_t*>(c.outputs[r.index]); break;
    case Space::constant: base = static_cast<uint8_t*>(const_cast<void*>((*c.constants)[r.index])); break;
  }
  return reinterpret_cast<T*>(base + r.offset);
}

RunStatus from_gemm(GemmStatus s) {
  if (s == GemmStatus::nonfinite_input) return RunStatus::nonfinite_input;
  if (s == GemmStatus::out_of_memory) return RunStatus::out_of_memory;
  return RunStatus::ok;
}

// The product of a linear or conv2d node's weight w (nd.weight, or one group's of nd.weights) with m
// rows of x (row stride ldx) into y (m, n).
RunStatus product(const Node& nd, const void* w, const float* x, ptrdiff_t ldx, int m, const float* bias,
                  Activation act, float* y, int threads) {
  switch (nd.wkind) {
    case WeightKind::s8:
      return from_gemm(gemm_s8(*static_cast<const PackedS8Weight*>(w), x, ldx, m, nd.aq, bias, act, y, nullptr,
                               threads));
    case WeightKind::q4:
      return from_gemm(gemm_q4(*static_cast<const PackedQ4Weight*>(w), x, ldx, m, nd.q4, bias, act, y, threads));
    case WeightKind::sparse_f32:
      return from_gemm(sparse_f32(*static_cast<const PackedSparseF32*>(w), x, ldx, m, bias, act, y, threads));
    case WeightKind::sparse_s8:
      return from_gemm(sparse_s8(*static_cast<const PackedSparseS8*>(w), x, ldx, m, bias, act, y, threads));
    case WeightKind::sparse_nm_f32:
      return from_gemm(sparse_nm_f32(*static_cast<const PackedSparseNmF32*>(w), x, ldx, m, bias, act, y, threads));
    case WeightKind::dense_f32:
      return from_gemm(dense_f32(*static_cast<const PackedDenseF32*>(w), x, ldx, m, bias, act, y, threads));
    case WeightKind::none: break;
  }
  return RunStatus::ok;
}

RunStatus run_linear(const Node& nd, const Ctx& c) {
  return product(nd, nd.weight, at<const float>(c, nd.in[0]), nd.i[1], static_cast<int>(nd.i[0]), at<const float>(c, nd.in[1]),
                 static_cast<Activation>(nd.i[2]), at<float>(c, nd.out[0]), c.threads);
}

Window2d window(const Node& nd) {
  Window2d p;
  p.h = static_cast<int>(nd.i[1]), p.w = static_cast<int>(nd.i[2]), p.c = static_cast<int>(nd.i[3]);
  p.kh = static_cast<int>(nd.i[6]), p.kw = static_cast<int>(nd.i[7]);
  p.sh = static_cast<int>(nd.i[8]), p.sw = static_cast<int>(nd.i[9]);
  p.pt = static_cast<int>(nd.i[10]), p.pl = static_cast<int>(nd.i[11]);
  p.dh = static_cast<int>(nd.i[12]), p.dw = static_cast<int>(nd.i[13]);
  p.wo = static_cast<int>(nd.i[5]);
  return p;
}

// Bytes of one tile of patch rows (im2col, never the whole matrix): the tile and the product's own
// packed copy of it stay in L2.
constexpr int64_t kPatchBytes = 192 * 1024;
// Every tile reads the whole weight, from L3 or memory where it is larger than L2: a larger weight
// gets tiles as large as itself, up to this (a 3 x 3 convolution of 256 -> 512 channels on 49
// pixels, in tiles of 21 rows, read its 4.7 MB float32 weight three times).
constexpr int64_t kPatchMaxBytes = 1024 * 1024;
// Bytes of a tile's output that an activation pass reads back right after its product.
constexpr int64_t kUnaryTileBytes = 128 * 1024;

// The epilogue of a convolution with a residual (conv2d's third input): the product wrote n values
// of y with their bias and no activation; the residual's values are added (the add node's binary,
// so its bits), then the node's activations in their order: ReLU (relu), then the unary pass.
void add_residual(const Ctx& c, const float* r, float* y, int64_t n, bool relu, int unary) {
  c.k->binary(0, y, r, n, y, n);
  if (relu) c.k->unary(static_cast<int>(UnaryAct::relu), y, y, n);
  if (unary >= 0) c.k->unary(unary, y, y, n);
}

thread_local AlignedArray<float> t_patch;

// n bytes from src to dst. Up to 64 (a row of 7 taps of 3 channels' codes is 21) as two moves of a
// fixed size that overlap in the middle: inline, where a library call per run of a patch row was a
// sixth of ResNet-18's int8 stem.
inline void copy_run(void* dst, const void* src, size_t n) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* s = static_cast<const unsigned char*>(src);
  if (n >= 32 && n <= 64) {
    std::memcpy(d, s, 32);
    std::memcpy(d + n - 32, s + n - 32, 32);
  } else if (n >= 16 && n < 32) {
    std::memcpy(d, s, 16);
    std::memcpy(d + n - 16, s + n - 16, 16);
  } else if (n >= 8 && n < 16) {
    std::memcpy(d, s, 8);
    std::memcpy(d + n - 8, s + n - 8, 8);
  } else {
    std::memcpy(d, s, n);
  }
}

// Rows r0 .. r0 + m - 1 of the patch matrix (row stride k): row r holds the kh * kw taps of output
// pixel r, cw values each (channels c0 .. c0 + cw of the image's p.c: one group's), `pad` outside the
// image, in (kh, kw, c) order. T: float, or the uint8 codes of a quantized image. The pixel's image,
// row and column advance with r (three divisions per row were a tenth of a 3-channel stem).
template <class T>
void patch_rows(const Window2d& p, const T* x, int ho, int64_t r0, int64_t m, int c0, int cw, T pad, T* a,
                int64_t k) {
  const int64_t per_image = static_cast<int64_t>(ho) * p.wo;
  int64_t b = r0 / per_image;
  int oh = static_cast<int>((r0 % per_image) / p.wo), ow = static_cast<int>(r0 % p.wo);
  const size_t cb = sizeof(T) * cw;
  for (int64_t r = 0; r < m; ++r) {
    T* row = a + r * k;
    const T* xb = x + b * p.h * p.w * p.c + c0;
    const int ih0 = oh * p.sh - p.pt, iw0 = ow * p.sw - p.pl;
    // a row of taps inside the image is one run of memory when the kernel is not dilated across and
    // the taps hold every channel
    const bool whole = cw == p.c && p.dw == 1 && iw0 >= 0 && iw0 + p.kw <= p.w;
    for (int i = 0; i < p.kh; ++i, row += static_cast<ptrdiff_t>(p.kw) * cw) {
      const int ih = ih0 + i * p.dh;
      if (ih < 0 || ih >= p.h) {
        std::fill(row, row + static_cast<ptrdiff_t>(p.kw) * cw, pad);
        continue;
      }
      const T* xr = xb + static_cast<ptrdiff_t>(ih) * p.w * p.c;
      if (whole) {
        copy_run(row, xr + static_cast<ptrdiff_t>(iw0) * p.c, cb * p.kw);
        continue;
      }
      for (int t = 0; t < p.kw; ++t) {
        const int iw = iw0 + t * p.dw;
        if (iw < 0 || iw >= p.w) std::fill(row + t * cw, row + (t + 1) * cw, pad);
        else copy_run(row + t * cw, xr + static_cast<ptrdiff_t>(iw) * p.c, cb);
      }
    }
    if (++ow == p.wo) {
      ow = 0;
      if (++oh == ho) oh = 0, ++b;
    }
  }
}

thread_local AlignedArray<uint8_t> t_codes, t_patch8;

// Images quantized once, each as the product would quantize its patch rows (its kernel's tier does
// it, in runs of kRun values), into int8 codes (symmetric) or uint8 ones (asymmetric): with the node's
// static scale (and zero point), or, with a dynamic one (per_image_scale in engine/ops.py), each
// image with its own scale, max |x| / 127 over the image (1 below the smallest normal float, as
// quantize_row), written to scales (one per image).
RunStatus quantize_images(const Node& nd, const Ctx& c, const float* x, int64_t images, int64_t per_image, uint8_t* q,
                          float* scales) {
  const GemmS8Kernel& k = *static_cast<const PackedS8Weight*>(nd.weight)->kernel;
  constexpr int64_t kRun = 16384;
  const int64_t runs = (per_image + kRun - 1) / kRun;
  const bool dynamic = nd.aq.scheme == ActScheme::dynamic_symmetric;
  std::atomic<bool> finite{true};
  std::vector<uint32_t> run_max;
  try {
    run_max.resize(dynamic ? static_cast<size_t>(images * runs) : 0);
  } catch (const std::bad_alloc&) {
    return RunStatus::out_of_memory;
  }
  auto run_at = [&](int t, int64_t* i, int* n) {
    *i = t / runs * per_image + t % runs * kRun;
    *n = static_cast<int>(std::min(kRun, per_image - t % runs * kRun));
  };
  if (dynamic) {  // |x| as bits: the larger float has the larger bits
    auto amax = [&](int t) {
      int64_t i;
      int n;
      run_at(t, &i, &n);
      uint32_t m = 0;
      for (int j = 0; j < n; ++j) m = std::max(m, float_bits(x[i + j]) & 0x7fffffffu);
      run_max[t] = m;
    };
    parallel_for(static_cast<int>(images * runs), c.threads, amax);
    for (int64_t b = 0; b < images; ++b) {
      const uint32_t m = *std::max_element(run_max.begin() + b * runs, run_max.begin() + (b + 1) * runs);
      if (m >= 0x7f800000u) return RunStatus::nonfinite_input;
      const float s = bits_float(m) / 127.0f;
      scales[b] = s >= 1.17549435e-38f ? s : 1.0f;
    }
  }
  auto body = [&](int t) {
    int64_t i;
    int n;
    run_at(t, &i, &n);
    ActQuant aq = nd.aq;
    if (dynamic) aq.scheme = ActScheme::static_symmetric, aq.scale = scales[t / runs];  // the same codes
    if (!k.quantize(x + i, n, aq, q + i)) finite.store(false);
  };
  parallel_for(static_cast<int>(images * runs), c.threads, body);
  return finite.load() ? RunStatus::ok : RunStatus::nonfinite_input;
}

// A grouped convolution (nd.weights: one packed weight per group) runs group after group on each tile:
// group g's patches hold its c / groups channels, its product writes its n / groups columns of the
// tile's output rows through a small buffer.
thread_local AlignedArray<float> t_group;

// A float32 convolution of an image with few channels (a network's first layer): computed directly,
// one task per output row, from the dense_f32 panels (engine_f32's conv_row); im2col patches of 3
// channels cost more to gather than their products (MobileNetV3's stem: 0.61 ms at 18 GFLOPS).
constexpr int kDirectMaxChannels = 4;

RunStatus run_conv_direct(const Node& nd, const Ctx& c, const Window2d& p, int ho, int unary) {
  const float* x = at<const float>(c, nd.in[0]);
  const float* bias = at<const float>(c, nd.in[1]);
  const float* res = at<const float>(c, nd.in[2]);
  float* y = at<float>(c, nd.out[0]);
  const DenseF32& w = static_cast<const PackedDenseF32*>(nd.weight)->w;
  const int n = w.n;
  const bool relu = static_cast<Activation>(nd.i[14] % 4) == Activation::relu;
  const int64_t in_image = static_cast<int64_t>(p.h) * p.w * p.c, row = static_cast<int64_t>(p.wo) * n;
  if (rows_nonfinite(x, in_image, static_cast<int>(nd.i[0]), static_cast<int>(in_image))) {
    return RunStatus::nonfinite_input;
  }
  auto body = [&](int t) {
    const int64_t img = t / ho;
    float* yr = y + t * row;
    c.k->conv_row(p, x + img * in_image, w.data, w.k, n, bias, relu && res == nullptr, t % ho, yr);
    if (res != nullptr) {
      add_residual(c, res + t * row, yr, row, relu, unary);
    } else if (unary >= 0) {
      c.k->unary(unary, yr, yr, row);
    }
  };
  parallel_for(static_cast<int>(nd.i[0] * ho), c.threads, body);
  return RunStatus::ok;
}

RunStatus run_conv(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const float* bias = at<const float>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const Window2d p = window(nd);
  const int ho = static_cast<int>(nd.i[4]);
  const int groups = nd.weights.empty() ? 1 : static_cast<int>(nd.weights.size());
  const int cg = p.c / groups;
  const int64_t pixels = nd.i[0] * ho * p.wo, k = static_cast<int64_t>(p.kh) * p.kw * cg, n = nd.i[15];
  const int64_t ng = n / groups;
  const float* res = at<const float>(c, nd.in[2]);
  // with a residual, ReLU follows the add: the product's epilogue has no activation
  const bool relu_after = res != nullptr && static_cast<Activation>(nd.i[14] % 4) == Activation::relu;
  const Activation act = relu_after ? Activation::none : static_cast<Activation>(nd.i[14] % 4);
  const int unary = static_cast<int>(nd.i[14] / 4) - 1;  // -1: none
  if (nd.wkind == WeightKind::dense_f32 && groups == 1 && p.c <= kDirectMaxChannels) {
    return run_conv_direct(nd, c, p, ho, unary);
  }
  // 1x1, stride 1, no padding: the patch rows are x's rows
  const bool direct = p.kh == 1 && p.kw == 1 && p.sh == 1 && p.sw == 1 && p.pt == 0 && p.pl == 0 &&
                      ho == p.h && p.wo == p.w;
  // A static input scale on an int8 weight: quantizing is element-wise, so the codes of a patch are
  // those of its taps (a padding tap's, the code of 0.0: the zero point). The image is quantized
  // once, not kh * kw times, and patches of codes go to the product as they are. Not where the taps
  // are fewer than the stride's pixels (a 1x1 stride-2 downsample reads a quarter of the image): the
  // patches of floats are quantized as the product packs them, the same codes. Without a static
  // scale (a dynamic one), every image is quantized with its own scale (quantize_images), and its
  // patches' codes go to the product, tile by tile within the image.
  const bool dynamic = !direct && nd.wkind == WeightKind::s8 && nd.aq.scheme == ActScheme::dynamic_symmetric;
  const bool codes = dynamic || (!direct && nd.wkind == WeightKind::s8 && p.kh * p.kw > p.sh * p.sw &&
                                 (nd.aq.scheme == ActScheme::static_symmetric ||
                                  nd.aq.scheme == ActScheme::static_asymmetric));
  const bool asym = nd.aq.scheme == ActScheme::static_asymmetric;
  const uint8_t* q = nullptr;
  ActQuant aq = nd.aq;
  std::vector<float> scales;
  if (codes) {
    uint8_t* qi;
    try {
      qi = ensure_size(t_codes, static_cast<size_t>(nd.i[0] * p.h * p.w * p.c));
      scales.resize(static_cast<size_t>(nd.i[0]));
    } catch (const std::bad_alloc&) {
      return RunStatus::out_of_memory;
    }
    const RunStatus qs = quantize_images(nd, c, x, nd.i[0], static_cast<int64_t>(p.h) * p.w * p.c, qi, scales.data());
    if (qs != RunStatus::ok) return qs;
    q = qi;
    aq.scheme = asym ? ActScheme::raw_u8 : ActScheme::raw_s8;
  }
  const uint8_t pad = asym ? static_cast<uint8_t>(nd.aq.zero_point) : 0;
  const int64_t bytes = codes ? 1 : 4;
  // With an activation pass after the product (SiLU, hardswish), also few enough rows that the tile's
  // output is still in L2 when the pass reads it back (1024 rows of 96 outputs, 384 KiB, were not).
  // A float32 weight larger than kPatchBytes gets tiles up to its own size (kPatchMaxBytes).
  const bool pass = unary >= 0 || res != nullptr;
  const int64_t weight_bytes = k * n * 4;
  const bool large = nd.wkind == WeightKind::dense_f32 && weight_bytes > kPatchBytes;
  const int64_t budget = large ? std::min(weight_bytes, kPatchMaxBytes) : kPatchBytes;
  const int64_t out_rows = pass ? kUnaryTileBytes * (budget / kPatchBytes) / (4 * n) : 1024;
  int64_t rows = std::max<int64_t>(8, std::min<int64_t>({1024, out_rows, budget / (bytes * k)}));
  // Enough work for the threads but fewer tiles than two a thread: smaller tiles (at least 8 rows).
  // Each thread then runs whole tiles, product and activation pass; three tiles of a 1x1 convolution
  // of 784 pixels with hardswish each ran their product on both threads and the pass on one, and
  // took longer on two threads than on one. A large float32 weight without a pass keeps its few
  // tiles, each product split over the threads (each reads a part of the weight, not all of it once
  // per tile). (An int8 one too ran ResNet-18's int8-static layer3 and layer4 in one tile each, their
  // products split inside gemm_s8 over 49 to 196 rows: 4.77 ms on two threads against 2.95.)
  if (c.threads > 1 && (pass || !large) && static_cast<double>(pixels) * k * n >= gemm_min_parallel_macs()) {
    rows = std::max<int64_t>(8, std::min(rows, (pixels + 2 * c.threads - 1) / (2 * c.threads)));
  }
  // tiles of `rows` pixels; with a scale per image, `rows` at most and each within one image
  const int64_t per_image = static_cast<int64_t>(ho) * p.wo, image_tiles = (per_image + rows - 1) / rows;
  const int tiles = static_cast<int>(dynamic ? nd.i[0] * image_tiles : (pixels + rows - 1) / rows);
  // Enough tiles: each thread takes whole tiles, each product on one thread. Few (a late, small
  // layer at batch 1): one tile after another, each product on every thread.
  const bool by_tile = tiles >= 2 * c.threads;
  std::atomic<int> failed{0};
  auto tile = [&](int t) {
    const int64_t p0 = dynamic ? t / image_tiles * per_image + t % image_tiles * rows : t * rows;
    const int64_t m = std::min(rows, dynamic ? (t / image_tiles + 1) * per_image - p0 : pixels - p0);
    ActQuant ta = aq;
    if (dynamic) ta.scale = scales[static_cast<size_t>(t / image_tiles)];
    const int threads = by_tile ? 1 : c.threads;
    const int mi = static_cast<int>(m);
    RunStatus s = RunStatus::ok;
    try {
      for (int g = 0; g < groups && s == RunStatus::ok; ++g) {
        const void* w = groups == 1 ? nd.weight : nd.weights[g];
        const float* bg = bias != nullptr ? bias + g * ng : nullptr;
        float* yg = groups == 1 ? y + p0 * n : ensure_size(t_group, static_cast<size_t>(m * ng));
        if (codes) {
          uint8_t* a = ensure_size(t_patch8, static_cast<size_t>(m * k));
          patch_rows(p, q, ho, p0, m, g * cg, cg, pad, a, k);
          s = from_gemm(gemm_s8(*static_cast<const PackedS8Weight*>(w), a, k, mi, ta, bg, act, yg, nullptr, threads));
        } else if (direct) {
          s = product(nd, w, x + p0 * p.c + g * cg, p.c, mi, bg, act, yg, threads);
        } else {
          float* a = ensure_size(t_patch, static_cast<size_t>(m * k));
          patch_rows(p, x, ho, p0, m, g * cg, cg, 0.0f, a, k);
          s = product(nd, w, a, k, mi, bg, act, yg, threads);
        }
        if (groups > 1 && s == RunStatus::ok) {
          for (int64_t r = 0; r < m; ++r) std::memcpy(y + (p0 + r) * n + g * ng, yg + r * ng, sizeof(float) * ng);
        }
      }
      if (s == RunStatus::ok && res != nullptr) {
        add_residual(c, res + p0 * n, y + p0 * n, m * n, relu_after, unary);
      } else if (s == RunStatus::ok && unary >= 0) {
        c.k->unary(unary, y + p0 * n, y + p0 * n, m * n);
      }
    } catch (const std::bad_alloc&) {
      s = RunStatus::out_of_memory;
    }
    if (s != RunStatus::ok) failed.store(static_cast<int>(s));
  };
  if (by_tile) {
    parallel_for(tiles, c.threads, tile);
  } else {
    for (int t = 0; t < tiles && failed.load() == 0; ++t) tile(t);
  }
  return static_cast<RunStatus>(failed.load());
}

// Winograd F(m x m, 3x3) (m = 2: 16 weights, m = 4: 36): a^2 products of c-long rows (a = m + 2) per
// m^2 outputs instead of m^2 of 9 c-long patch rows, 2.25 (m = 2) or 4 (m = 4) times fewer
// multiply-adds. A block of tiles holds their transformed inputs (a^2 matrices of rows x c) and
// products (a^2 of rows x n) in about kWinogradBytes, but at least kWinogradRows tiles (up to all of
// them), so a large weight (a^2 c n floats) is read by enough rows.
constexpr int64_t kWinogradBytes = 256 * 1024;
constexpr int64_t kWinogradRows = 64;
thread_local AlignedArray<float> t_wino_v, t_wino_m;

// Runs body(t0, m, threads) on the blocks of `rows` tiles (m of them from tile t0; the last block
// shorter). Enough blocks: each thread takes whole blocks (threads 1). Few: one after another, every
// step on every thread. bad_alloc in a block is out_of_memory.
template <class Body>
RunStatus run_tile_blocks(int64_t tiles, int64_t rows, int threads, const Body& body) {
  const int blocks = static_cast<int>((tiles + rows - 1) / rows);
  const bool by_block = blocks >= 2 * threads;
  std::atomic<bool> out_of_memory{false};
  auto block = [&](int b) {
    const int64_t t0 = b * rows;
    try {
      body(t0, static_cast<int>(std::min(rows, tiles - t0)), by_block ? 1 : threads);
    } catch (const std::bad_alloc&) {
      out_of_memory.store(true);
    }
  };
  if (by_block) {
    parallel_for(blocks, threads, block);
  } else {
    for (int b = 0; b < blocks && !out_of_memory.load(); ++b) block(b);
  }
  return out_of_memory.load() ? RunStatus::out_of_memory : RunStatus::ok;
}

// Tile t of tm x tm outputs (tiles numbered image after image, row after row, tw to a row): its
// image, its first output pixel's offset in y (rows of wo pixels of n channels) and how many of its
// rows and columns lie inside the output.
struct TileOut {
  int64_t img, offset;
  int rows, cols;
};
TileOut tile_out(int64_t t, int tm, int ho, int wo, int n, int tw) {
  const int64_t per_image = static_cast<int64_t>((ho + tm - 1) / tm) * tw;
  const int ty = static_cast<int>(t % per_image / tw), tx = static_cast<int>(t % tw);
  const int oh = tm * ty, ow = tm * tx;
  const int64_t out_row = static_cast<int64_t>(wo) * n, img = t / per_image;
  return {img, img * ho * out_row + oh * out_row + static_cast<int64_t>(ow) * n, std::min(tm, ho - oh),
          std::min(tm, wo - ow)};
}

// The unary pass (unary >= 0) over a Winograd tile's outputs at yo (its rows out_row apart), just written.
void unary_tile_rows(const Ctx& c, const TileOut& o, float* yo, int64_t out_row, int n, int unary) {
  if (unary < 0) return;
  for (int a = 0; a < o.rows; ++a) c.k->unary(unary, yo + a * out_row, yo + a * out_row, static_cast<int64_t>(o.cols) * n);
}

RunStatus run_winograd(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const float* bias = at<const float>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const Window2d p = window(nd);
  const int ho = static_cast<int>(nd.i[4]), n = static_cast<int>(nd.i[15]);
  const float* res = at<const float>(c, nd.in[2]);  // added in the output transform, before the ReLU
  const bool relu = static_cast<Activation>(nd.i[14] % 4) == Activation::relu;
  const int unary = static_cast<int>(nd.i[14] / 4) - 1;  // -1: none
  const int tm = nd.weights.size() == 16 ? 2 : 4, na = (tm + 2) * (tm + 2);
  const int th = (ho + tm - 1) / tm, tw = (p.wo + tm - 1) / tm;
  const int64_t per_image = static_cast<int64_t>(th) * tw, tiles = nd.i[0] * per_image;
  if (tiles == 0) return RunStatus::ok;
  const int64_t rows = std::min(tiles, std::max(kWinogradRows, kWinogradBytes / (4 * na * (p.c + n))));
  const int64_t in_image = static_cast<int64_t>(p.h) * p.w * p.c, out_row = static_cast<int64_t>(p.wo) * n;
  if (rows_nonfinite(x, in_image, static_cast<int>(nd.i[0]), static_cast<int>(in_image))) {
    return RunStatus::nonfinite_input;
  }
  return run_tile_blocks(tiles, rows, c.threads, [&](int64_t t0, int m, int threads) {
    // each of the matrices a cache line past a multiple of m rows: a power-of-two distance between
    // them would put a tile's stores in one set of L1
    const ptrdiff_t ldv = static_cast<ptrdiff_t>(m) * p.c + 16, ldm = static_cast<ptrdiff_t>(m) * n + 16;
    float* v = ensure_size(t_wino_v, static_cast<size_t>(na * ldv));
    float* mm = ensure_size(t_wino_m, static_cast<size_t>(na * ldm));
    auto in = [&](int r) {
      const int64_t t = t0 + r;
      c.k->winograd_in(p, tm, x + t / per_image * in_image, static_cast<int>(t % per_image / tw),
                       static_cast<int>(t % tw), v + static_cast<ptrdiff_t>(r) * p.c, ldv);
    };
    auto out = [&](int r) {
      const TileOut o = tile_out(t0 + r, tm, ho, p.wo, n, tw);
      float* yo = y + o.offset;
      c.k->winograd_out(tm, mm + static_cast<ptrdiff_t>(r) * n, ldm, n, bias, res != nullptr ? res + o.offset : nullptr,
                        relu, o.rows, o.cols, yo, out_row);
      unary_tile_rows(c, o, yo, out_row, n, unary);
    };
    // the a^2 products, each on one thread (with few tiles, split inside each product, every thread
    // read every weight and waited at each: a 28 x 28 image of 128 channels gained nothing from a
    // second thread)
    auto product = [&](int e) {
      dense_f32_unchecked(*static_cast<const PackedDenseF32*>(nd.weights[e]), v + e * ldv, p.c, m, mm + e * ldm, 1);
    };
    parallel_for(m, threads, in);
    parallel_for(na, threads, product);
    parallel_for(m, threads, out);
  });
}

// Integer Winograd F(2x2, 3x3) of an int8 convolution (winograd_s8.h): the images quantized once
// (conv2d's codes: a static scale, or a dynamic one per image), then per block of tiles their input transforms (16 int16
// matrices of rows x c, c rounded up to pairs), the 16 products with the transformed weights (int32)
// and the output transforms with gemm_s8's epilogue: conv2d's integers, so conv2d's floats. On the
// tiers whose int8 products multiply 16-bit values, 16 products per 4 outputs instead of 36.
thread_local AlignedArray<int16_t> t_ws8_v;
thread_local AlignedArray<int32_t> t_ws8_m;

RunStatus run_winograd_s8(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const float* bias = at<const float>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const Window2d p = window(nd);
  const int ho = static_cast<int>(nd.i[4]), n = static_cast<int>(nd.i[15]);
  const float* res = at<const float>(c, nd.in[2]);  // added in the output transform, before the ReLU
  const bool relu = static_cast<Activation>(nd.i[14] % 4) == Activation::relu;
  const int unary = static_cast<int>(nd.i[14] / 4) - 1;  // -1: none
  const PackedS8Weight& w = *static_cast<const PackedS8Weight*>(nd.weight);
  const int16_t* u = static_cast<const int16_t*>(nd.weight2);
  const WinogradS8Kernel& k = *c.k->winograd_s8;
  const int kp = (p.c + 1) / 2, panels = (n + 15) / 16, ldn = 16 * panels;
  const int th = (ho + 1) / 2, tw = (p.wo + 1) / 2;
  const int64_t per_image = static_cast<int64_t>(th) * tw, tiles = nd.i[0] * per_image;
  if (tiles == 0) return RunStatus::ok;
  const int64_t in_image = static_cast<int64_t>(p.h) * p.w * p.c, out_row = static_cast<int64_t>(p.wo) * n;
  const bool is_signed = nd.aq.scheme != ActScheme::static_asymmetric;
  const int zp = is_signed ? 0 : nd.aq.zero_point;
  uint8_t* q;
  std::vector<uint8_t> pad;
  std::vector<float> scales;  // a dynamic scheme's, one per image
  try {
    q = ensure_size(t_codes, static_cast<size_t>(nd.i[0] * in_image));
    pad.assign(static_cast<size_t>(p.c), static_cast<uint8_t>(zp));  // the code of 0.0
    scales.resize(static_cast<size_t>(nd.i[0]), nd.aq.scale);
  } catch (const std::bad_alloc&) {
    return RunStatus::out_of_memory;
  }
  const RunStatus qs = quantize_images(nd, c, x, nd.i[0], in_image, q, scales.data());
  if (qs != RunStatus::ok) return qs;
  // 16 rows of 2 kp int16 and 16 of ldn int32 per tile
  const int64_t rows = std::min(tiles, std::max(kWinogradRows, kWinogradBytes / (16 * (4 * kp + 4 * ldn))));
  return run_tile_blocks(tiles, rows, c.threads, [&](int64_t t0, int m, int threads) {
    // each matrix a cache line past a multiple of m rows, as for winograd
    const ptrdiff_t ldv = static_cast<ptrdiff_t>(m) * 2 * kp + 32, ldm = static_cast<ptrdiff_t>(m) * ldn + 16;
    int16_t* v = ensure_size(t_ws8_v, static_cast<size_t>(16 * ldv));
    int32_t* mm = ensure_size(t_ws8_m, static_cast<size_t>(16 * ldm));
    auto in = [&](int r) {
      const int64_t t = t0 + r;
      k.in(p, q + t / per_image * in_image, pad.data(), is_signed, zp, static_cast<int>(t % per_image / tw),
           static_cast<int>(t % tw), v + static_cast<ptrdiff_t>(r) * 2 * kp, ldv);
    };
    auto product = [&](int e) {
      k.gemm(m, kp, panels, v + e * ldv, 2 * kp, u + static_cast<ptrdiff_t>(e) * panels * kp * 32, mm + e * ldm, ldn);
    };
    auto out = [&](int r) {
      const TileOut o = tile_out(t0 + r, 2, ho, p.wo, n, tw);
      float* yo = y + o.offset;
      const float rs = scales[static_cast<size_t>(o.img)];
      k.out(mm + static_cast<ptrdiff_t>(r) * ldn, ldm, n, rs, w.scale.data(), !scales_normal(rs, w.scale_min, w.scale_max),
            bias, res != nullptr ? res + o.offset : nullptr, relu, o.rows, o.cols, yo, out_row);
      unary_tile_rows(c, o, yo, out_row, n, unary);
    };
    parallel_for(m, threads, in);
    parallel_for(16, threads, product);
    parallel_for(m, threads, out);
  });
}

// depthwise and pool: one task per output row of an image
void run_window(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  float* y = at<float>(c, nd.out[0]);
  const Window2d p = window(nd);
  const int ho = static_cast<int>(nd.i[4]);
  const int64_t in_image = static_cast<int64_t>(p.h) * p.w * p.c, row = static_cast<int64_t>(p.wo) * p.c;
  const bool dw = nd.op == Op::depthwise;
  const float* w = dw ? at<const float>(c, nd.in[1]) : nullptr;
  const float* bias = dw ? at<const float>(c, nd.in[2]) : nullptr;
  auto body = [&](int t) {
    const int64_t b = t / ho;
    const int oh = t % ho;
    float* yr = y + (b * ho + oh) * row;
    if (dw) {
      c.k->depthwise_row(p, x + b * in_image, w, bias, oh, yr);
      if (nd.i[14] > 0) c.k->unary(static_cast<int>(nd.i[14] - 1), yr, yr, row);
    } else {
      c.k->pool_row(p, static_cast<int>(nd.i[14]), x + b * in_image, oh, yr);
    }
  };
  parallel_for(static_cast<int>(nd.i[0] * ho), c.threads, body);
}

void run_act(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  float* y = at<float>(c, nd.out[0]);
  const int64_t n = nd.i[0];
  const int act = static_cast<int>(nd.i[1]);
  auto body = [&](int t) {
    const int64_t s = t * kChunk;
    c.k->unary(act, x + s, y + s, std::min(n, s + kChunk) - s);
  };
  parallel_for(static_cast<int>((n + kChunk - 1) / kChunk), c.threads, body);
}

// y (r2, r1) of each block = x (r1, r2) transposed. Rows of x go in strips of 8: each 8 x 8 square
// is read as 8 runs of 8 values into a local array and written as 8 runs of 8 (the compiler makes
// vector loads, shuffles and stores of it), with the strip's next lines prefetched: a value at a time,
// with 16 strided stores per square, an image that was not in cache transposed at 2-4 ns a value.
// Fewer than 8 rows (an image's 3 channels): 8 columns at a time, each row's 8 values read as one
// run and the 8 columns' R values written as one run of 8 R, R a constant (column by column, with a
// loop of r1 strided reads each, an image of 224 x 224 x 3 took 0.8 ns a value).
template <int R, class T>
void transpose_few_rows(const T* xb, T* yb, int64_t r2, int64_t j0, int64_t j1) {
  constexpr int64_t S = 8;
  int64_t j = j0;
  for (; j + S <= j1; j += S) {
    T cols[S * R];
    for (int i = 0; i < R; ++i) {
      for (int64_t a = 0; a < S; ++a) cols[a * R + i] = xb[i * r2 + j + a];
    }
    std::memcpy(yb + j * R, cols, sizeof(cols));
  }
  for (; j < j1; ++j) {
    for (int i = 0; i < R; ++i) yb[j * R + i] = xb[i * r2 + j];
  }
}

template <class T>
void transpose_blocks(const T* x, T* y, int64_t blocks, int64_t r1, int64_t r2, int threads) {
  constexpr int64_t S = 8;
  if (r1 < S) {
    const int64_t per = std::max<int64_t>(64, 16384 / std::max<int64_t>(r1, 1)), parts = (r2 + per - 1) / per;
    auto body = [&](int t) {
      const int64_t b = t / parts, j0 = (t % parts) * per, j1 = std::min(r2, j0 + per);
      const T* xb = x + b * r1 * r2;
      T* yb = y + b * r1 * r2;
      switch (r1) {
        case 1: return transpose_few_rows<1>(xb, yb, r2, j0, j1);
        case 2: return transpose_few_rows<2>(xb, yb, r2, j0, j1);
        case 3: return transpose_few_rows<3>(xb, yb, r2, j0, j1);
        case 4: return transpose_few_rows<4>(xb, yb, r2, j0, j1);
        case 5: return transpose_few_rows<5>(xb, yb, r2, j0, j1);
        case 6: return transpose_few_rows<6>(xb, yb, r2, j0, j1);
        default: return transpose_few_rows<7>(xb, yb, r2, j0, j1);
      }
    };
    parallel_for(static_cast<int>(blocks * parts), threads, body);
    return;
  }
  // Each task takes a run of strips (about 4 tasks per thread, 128 bytes of each row of y at least).
  // One strip per task, two threads wrote the two halves of the same cache lines of every row of y,
  // and a 3136 x 72 output took 94 us on one thread and 290 us on two.
  const int64_t strips = (r1 + S - 1) / S, min_per = std::max<int64_t>(1, 128 / static_cast<int64_t>(sizeof(T) * S));
  const int64_t per = std::min(strips, std::max(min_per, (blocks * strips + 4 * threads - 1) / (4 * threads) / blocks));
  const int64_t parts = (strips + per - 1) / per;
  auto strip = [&](int64_t b, int64_t i0) {
    const T* xb = x + b * r1 * r2;
    T* yb = y + b * r1 * r2;
    if (i0 + S > r1) {  // the last rows
      for (int64_t j = 0; j < r2; ++j) {
        for (int64_t i = i0; i < r1; ++i) yb[j * r1 + i] = xb[i * r2 + j];
      }
      return;
    }
    int64_t j0 = 0;
    for (; j0 + S <= r2; j0 += S) {
      T sq[S][S];
      for (int a = 0; a < S; ++a) {
        const T* src = xb + (i0 + a) * r2 + j0;
        __builtin_prefetch(src + 64);
        std::memcpy(sq[a], src, sizeof(T) * S);
      }
      for (int j = 0; j < S; ++j) {
        T row[S];
        for (int a = 0; a < S; ++a) row[a] = sq[a][j];
        std::memcpy(yb + (j0 + j) * r1 + i0, row, sizeof(T) * S);
      }
    }
    for (int64_t j = j0; j < r2; ++j) {
      for (int64_t i = i0; i < i0 + S; ++i) yb[j * r1 + i] = xb[i * r2 + j];
    }
  };
  auto body = [&](int t) {
    const int64_t b = t / parts, s0 = t % parts * per, s1 = std::min(strips, s0 + per);
    for (int64_t s = s0; s < s1; ++s) strip(b, s * S);
  };
  parallel_for(static_cast<int>(blocks * parts), threads, body);
}

void run_transpose(const Node& nd, const Ctx& c) {
  if (nd.i[3] == 8) {
    transpose_blocks(at<const int64_t>(c, nd.in[0]), at<int64_t>(c, nd.out[0]), nd.i[0], nd.i[1], nd.i[2], c.threads);
  } else {
    transpose_blocks(at<const float>(c, nd.in[0]), at<float>(c, nd.out[0]), nd.i[0], nd.i[1], nd.i[2], c.threads);
  }
}

void run_norm(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const float* r = at<const float>(c, nd.in[1]);
  const float* gamma = at<const float>(c, nd.in[2]);
  const float* beta = at<const float>(c, nd.in[3]);
  float* y = at<float>(c, nd.out[0]);
  float* sum = at<float>(c, nd.out[1]);
  const int64_t rows = nd.i[0];
  const int n = static_cast<int>(nd.i[1]);
  const bool rms = nd.i[2] != 0;
  const float eps = nd.f[0];
  const int64_t per = std::max<int64_t>(1, kChunk / n);
  const int tasks = static_cast<int>((rows + per - 1) / per);
  auto body = [&](int t) {
    const int64_t r1 = std::min(rows, (t + 1) * per);
    for (int64_t i = t * per; i < r1; ++i) {
      c.k->norm_row(x + i * n, r ? r + i * n : nullptr, gamma, beta, eps, rms, n, y + i * n, sum ? sum + i * n : nullptr);
    }
  };
  parallel_for(tasks, c.threads, body);
}

// Per-thread scratch of the attention tasks: K of one head transposed, V of one head packed (its rows
// are a whole projection row apart: at 1152 floats, 4.5 KiB, they would fall into a few L1 sets and
// evict each other), and one chunk of scores.
thread_local AlignedArray<float> t_kt, t_v, t_scores, t_mask, t_rope;

RunStatus run_attention(const Node& nd, const Ctx& c) {
  const float* q = at<const float>(c, nd.in[0]);
  const float* k = at<const float>(c, nd.in[1]);
  const float* v = at<const float>(c, nd.in[2]);
  const int64_t* mask = at<const int64_t>(c, nd.in[3]);
  float* y = at<float>(c, nd.out[0]);
  const int batch = static_cast<int>(nd.i[0]), sq = static_cast<int>(nd.i[1]), heads = static_cast<int>(nd.i[2]);
  const int kv_heads = static_cast<int>(nd.i[3]), d = static_cast<int>(nd.i[4]);
  const ptrdiff_t ldq = nd.i[5], ldk = nd.i[8], ldv = nd.i[9];
  const bool causal = nd.i[6] != 0;
  const int sk_all = static_cast<int>(nd.i[7]);
  const float scale = nd.f[0];
  const bool packed = nd.i[10] != 0;  // packed sequences: `mask` holds the offsets of their rows
  const ptrdiff_t ldy = static_cast<ptrdiff_t>(heads) * d;
  if (packed) {  // the offsets come from a value of the program: rows of sequences must lie in the q/k/v rows
    if (mask[0] < 0) return RunStatus::bad_input;
    for (int b = 0; b < batch; ++b) {
      if (mask[b + 1] < mask[b] || mask[b + 1] > sq) return RunStatus::bad_input;
    }
  }
  const int chunks = (sq + kQueryChunk - 1) / kQueryChunk;
  const int group = heads / kv_heads;
  bool oom = false;
  auto body = [&](int t) {
    const int b = t / (heads * chunks), h = (t / chunks) % heads, q0 = (t % chunks) * kQueryChunk;
    // rows of this sequence: a packed one starts at its offset and is as long as it is
    const ptrdiff_t row0 = packed ? mask[b] : static_cast<ptrdiff_t>(b) * sq;
    const int len = packed ? static_cast<int>(mask[b + 1] - mask[b]) : sq;
    const int sk = packed ? len : sk_all;
    if (q0 >= len) return;
    const int nq = std::min(kQueryChunk, len - q0);
    const int g = h / group;
    float* kt;
    float* vp;
    float* sc;
    float* madd;
    try {
      kt = ensure_size(t_kt, static_cast<size_t>(d) * sk);
      vp = ensure_size(t_v, static_cast<size_t>(d) * sk);
      sc = ensure_size(t_scores, static_cast<size_t>(nq) * sk);
      madd = ensure_size(t_mask, static_cast<size_t>(sk));
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    const ptrdiff_t krow0 = packed ? row0 : static_cast<ptrdiff_t>(b) * sk;
    const float* kb = k + krow0 * ldk + static_cast<ptrdiff_t>(g) * d;
    for (int j = 0; j < sk; ++j) {
      for (int e = 0; e < d; ++e) kt[static_cast<ptrdiff_t>(e) * sk + j] = kb[j * ldk + e];
    }
    const float* qb = q + (row0 + q0) * ldq + static_cast<ptrdiff_t>(h) * d;
    c.k->gemm_nn(nq, sk, d, scale, qb, ldq, kt, sk, sc, sk);
    // the padding mask as one additive row (0 or kMasked), or nothing when no key is padding
    bool padded = false;
    if (mask != nullptr && !packed) {
      const int64_t* mb = mask + static_cast<ptrdiff_t>(b) * sk;
      for (int j = 0; j < sk; ++j) {
        madd[j] = mb[j] != 0 ? 0.0f : kMasked;
        padded |= mb[j] == 0;
      }
    }
    for (int i = 0; i < nq; ++i) {
      float* row = sc + static_cast<ptrdiff_t>(i) * sk;
      if (padded) {
        for (int j = 0; j < sk; ++j) row[j] += madd[j];
      }
      if (causal) {  // query q0 + i sits at key position (sk - len) + q0 + i
        for (int j = sk - len + q0 + i + 1; j < sk; ++j) row[j] += kMasked;
      }
      c.k->softmax_row(row, sk);
    }
    const float* vb = v + krow0 * ldv + static_cast<ptrdiff_t>(g) * d;
    for (int j = 0; j < sk; ++j) std::memcpy(vp + static_cast<ptrdiff_t>(j) * d, vb + j * ldv, sizeof(float) * d);
    float* yb = y + (row0 + q0) * ldy + static_cast<ptrdiff_t>(h) * d;
    c.k->gemm_nn(nq, d, sk, 1.0f, sc, sk, vp, d, yb, ldy);
  };
  parallel_for(batch * heads * chunks, c.threads, body);
  return oom ? RunStatus::out_of_memory : RunStatus::ok;
}

void run_elementwise(const Node& nd, const Ctx& c) {
  const float* a = at<const float>(c, nd.in[0]);
  const float* b = at<const float>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const bool gelu = nd.op == Op::gelu;
  // blocks of a that each have their own b (i3 > 0), else one block
  const int64_t block = !gelu && nd.i[3] > 0 ? nd.i[3] : nd.i[0], blocks = nd.i[0] / block;
  const int64_t nb = gelu ? block : nd.i[1];
  // tasks start at multiples of nb, so b lines up with each task's first value
  const int64_t per = nb >= block ? kChunk : std::max<int64_t>(1, kChunk / nb) * nb;
  const int64_t per_block = (block + per - 1) / per;
  auto body = [&](int t) {
    const int64_t blk = t / per_block, s = blk * block + (t % per_block) * per;
    const int64_t len = std::min(blk * block + block, s + per) - s;
    if (gelu) {
      c.k->gelu(a + s, y + s, len);
      return;
    }
    const float* bb = nd.i[3] > 0 ? b + blk * nb : b;
    if (nb >= block) {
      c.k->binary(nd.op == Op::add ? 0 : 1, a + s, bb + (s - blk * block), len, y + s, len);
    } else {
      c.k->binary(nd.op == Op::add ? 0 : 1, a + s, bb, nb, y + s, len);
    }
    if (nd.i[2] > 0) c.k->unary(static_cast<int>(nd.i[2] - 1), y + s, y + s, len);
  };
  parallel_for(static_cast<int>(blocks * per_block), c.threads, body);
}

void run_softmax(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  float* y = at<float>(c, nd.out[0]);
  const int64_t rows = nd.i[0];
  const int n = static_cast<int>(nd.i[1]);
  const int64_t per = std::max<int64_t>(1, kChunk / n);
  auto body = [&](int t) {
    const int64_t r1 = std::min(rows, (t + 1) * per);
    for (int64_t i = t * per; i < r1; ++i) {
      if (y != x) std::memcpy(y + i * n, x + i * n, sizeof(float) * n);
      c.k->softmax_row(y + i * n, n);
    }
  };
  parallel_for(static_cast<int>((rows + per - 1) / per), c.threads, body);
}

// Row r of a packed 4-bit weight (gemm_q4.h's layout: panels of 16 rows, steps of 8 along K) as
// floats, (code - zero point) * scale, written to y or added to it.
void q4_row(const Q4Weight& w, int64_t r, int64_t k, float* y, bool add) {
  const int64_t panel = r / kQ4Panel, j = r % kQ4Panel, steps = w.kp / 8;
  const uint8_t* nib = w.nib + panel * steps * 64;
  for (int64_t e = 0; e < k; ++e) {
    const int64_t s = e / 8, i = e % 4;
    const uint8_t byte = nib[s * 64 + 4 * j + i];
    const int code = (e % 8) < 4 ? (byte & 15) : (byte >> 4);
    const int64_t at = (panel * w.groups + e / w.g) * kQ4Panel + j;
    const int zp = w.zp != nullptr ? w.zp[at] : 8;
    const float v = half_to_float(w.scale[at]) * static_cast<float>(code - zp);
    y[e] = add ? y[e] + v : v;
  }
}

RunStatus run_embedding(const Node& nd, const Ctx& c) {
  const int64_t* ids = at<const int64_t>(c, nd.in[0]);
  const int64_t count = nd.i[0], width = nd.i[1], vocab = nd.i[2];
  for (int64_t t = 0; t < count; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) return RunStatus::index_out_of_range;
  }
  float* y = at<float>(c, nd.out[0]);
  if (nd.i[3] == 0) {
    const float* table = at<const float>(c, nd.in[1]);
    for (int64_t t = 0; t < count; ++t) std::memcpy(y + t * width, table + ids[t] * width, sizeof(float) * width);
  } else if (nd.i[3] == 3) {
    const Q4Weight& hw = static_cast<const PackedQ4Weight*>(nd.weight)->w;
    const Q4Weight& lw = static_cast<const PackedQ4Weight*>(nd.weight2)->w;
    for (int64_t t = 0; t < count; ++t) {
      float* yt = y + t * width;
      q4_row(hw, ids[t], width, yt, false);
      q4_row(lw, ids[t], width, yt, true);
    }
  } else if (nd.i[3] == 2) {
    // two 4-bit tables (hi, lo: rows of width / 2 bytes, element 2j in the low nibble of byte j) and a
    // float16 scale d per 32: value = d * (16 (hi - 8) + lo)
    const uint8_t* hi = at<const uint8_t>(c, nd.in[1]);
    const uint8_t* lo = at<const uint8_t>(c, nd.in[2]);
    const uint16_t* d = at<const uint16_t>(c, nd.in[3]);
    for (int64_t t = 0; t < count; ++t) {
      const uint8_t* h = hi + ids[t] * (width / 2);
      const uint8_t* l = lo + ids[t] * (width / 2);
      const uint16_t* dr = d + ids[t] * (width / 32);
      float* yt = y + t * width;
      for (int64_t e = 0; e < width; ++e) {
        const int sh = static_cast<int>(e & 1) * 4;
        const int q = 16 * (((h[e / 2] >> sh) & 15) - 8) + ((l[e / 2] >> sh) & 15);
        yt[e] = half_to_float(dr[e / 32]) * static_cast<float>(q);
      }
    }
  } else {
    const int8_t* table = at<const int8_t>(c, nd.in[1]);
    const float* scale = at<const float>(c, nd.in[2]);
    for (int64_t t = 0; t < count; ++t) {
      const int8_t* row = table + ids[t] * width;
      const float s = scale[ids[t]];
      float* yt = y + t * width;
      for (int64_t e = 0; e < width; ++e) yt[e] = static_cast<float>(row[e]) * s;
    }
  }
  return RunStatus::ok;
}

void run_position_ids(const Node& nd, const Ctx& c) {
  const int64_t* ids = at<const int64_t>(c, nd.in[0]);
  int64_t* y = at<int64_t>(c, nd.out[0]);
  const int64_t rows = nd.i[0], cols = nd.i[1], mode = nd.i[2], base = nd.i[3];
  for (int64_t b = 0; b < rows; ++b) {
    int64_t seen = 0;
    for (int64_t s = 0; s < cols; ++s) {
      const int64_t i = b * cols + s;
      if (mode == 0) {
        y[i] = base + s;
      } else {
        seen += ids[i] != base;
        y[i] = ids[i] != base ? base + seen : base;
      }
    }
  }
}

// Sums over runs of kMeanRows positions, on the threads, then the runs' sums in order: the same bits
// on any number of threads. (One serial pass read the whole activation on one core, half of it from
// the other core's L2: EfficientNet-B0's 17 squeeze-excitation means took 0.38 ms on one thread and
// 0.53 on two.)
constexpr int64_t kMeanRows = 64;
thread_local AlignedArray<float> t_mean_sums;
thread_local AlignedArray<int64_t> t_mean_kept;

RunStatus run_mean_pool(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const int64_t* mask = at<const int64_t>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const int64_t batch = nd.i[0], seq = nd.i[1], width = nd.i[2];
  const int64_t runs = std::max<int64_t>(1, (seq + kMeanRows - 1) / kMeanRows);
  // (every task writes all of its run's sums and its count: no clearing)
  float* sums;
  int64_t* kept;
  try {
    sums = ensure_size(t_mean_sums, static_cast<size_t>(batch * runs * width));
    kept = ensure_size(t_mean_kept, static_cast<size_t>(batch * runs));
  } catch (const std::bad_alloc&) {
    return RunStatus::out_of_memory;
  }
  auto body = [&](int t) {
    const int64_t b = t / runs, s0 = t % runs * kMeanRows, s1 = std::min(seq, s0 + kMeanRows);
    float* acc = sums + t * width;
    const float* rows[kMeanRows];
    int n = 0;
    for (int64_t s = s0; s < s1; ++s) {
      if (mask == nullptr || mask[b * seq + s] != 0) rows[n++] = x + (b * seq + s) * width;
    }
    kept[t] = n;
    // 16 sums at a time kept in registers over the run's rows (the same order of additions as one
    // row after another; reading and writing the sums at every row took twice as long)
    int64_t e = 0;
    for (; e + 16 <= width; e += 16) {
      float v[16] = {};
      for (int r = 0; r < n; ++r) {
        for (int j = 0; j < 16; ++j) v[j] += rows[r][e + j];
      }
      std::memcpy(acc + e, v, sizeof(v));
    }
    for (; e < width; ++e) {
      float v = 0.0f;
      for (int r = 0; r < n; ++r) v += rows[r][e];
      acc[e] = v;
    }
  };
  // (a small input: one thread, the same sums)
  parallel_for(static_cast<int>(batch * runs), batch * seq * width < kChunk ? 1 : c.threads, body);
  for (int64_t b = 0; b < batch; ++b) {
    float* yb = y + b * width;
    std::fill(yb, yb + width, 0.0f);
    int64_t count = 0;
    for (int64_t r = 0; r < runs; ++r) {
      const float* acc = sums + (b * runs + r) * width;
      for (int64_t e = 0; e < width; ++e) yb[e] += acc[e];
      count += kept[b * runs + r];
    }
    // like sentence-transformers: the count is clamped away from 0 (an all-padding row gives zeros)
    const float inv = 1.0f / std::max(static_cast<float>(count), 1e-9f);
    for (int64_t e = 0; e < width; ++e) yb[e] *= inv;
  }
  return RunStatus::ok;
}

RunStatus run_pack(const Node& nd, const Ctx& c) {
  const int64_t* mask = at<const int64_t>(c, nd.in[0]);
  int64_t* index = at<int64_t>(c, nd.out[0]);
  int64_t* offsets = at<int64_t>(c, nd.out[1]);
  const int64_t batch = nd.i[0], seq = nd.i[1], want = nd.i[2];
  int64_t n = 0;
  offsets[0] = 0;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      if (mask[b * seq + s] == 0) continue;
      if (n == want) return RunStatus::bad_input;  // more tokens than the plan holds
      index[n++] = b * seq + s;
    }
    offsets[b + 1] = n;
  }
  return n == want ? RunStatus::ok : RunStatus::bad_input;
}

RunStatus run_gather_scatter(const Node& nd, const Ctx& c) {
  const uint8_t* x = at<const uint8_t>(c, nd.in[0]);
  const int64_t* index = at<const int64_t>(c, nd.in[1]);
  uint8_t* y = at<uint8_t>(c, nd.out[0]);
  const int64_t rows = nd.i[0], bytes = nd.i[1], n = nd.i[2];
  for (int64_t t = 0; t < n; ++t) {
    if (index[t] < 0 || index[t] >= rows) return RunStatus::index_out_of_range;
  }
  if (nd.op == Op::gather) {
    for (int64_t t = 0; t < n; ++t) std::memcpy(y + t * bytes, x + index[t] * bytes, static_cast<size_t>(bytes));
  } else {
    std::memset(y, 0, static_cast<size_t>(rows * bytes));
    for (int64_t t = 0; t < n; ++t) std::memcpy(y + index[t] * bytes, x + t * bytes, static_cast<size_t>(bytes));
  }
  return RunStatus::ok;
}

RunStatus run_rope(const Node& nd, const Ctx& c) {
  const float* x = at<const float>(c, nd.in[0]);
  const int64_t pos = *at<const int64_t>(c, nd.in[1]);
  const float* inv_freq = at<const float>(c, nd.in[2]);
  const float* gamma = at<const float>(c, nd.in[3]);
  float* y = at<float>(c, nd.out[0]);
  const int64_t rows = nd.i[0], width = nd.i[6];
  const int heads = static_cast<int>(nd.i[1] + nd.i[2]), d = static_cast<int>(nd.i[3]);
  const int half = static_cast<int>(nd.i[4] / 2), qheads = static_cast<int>(nd.i[1]);
  const bool neox = nd.i[5] != 0;
  if (pos < 0) return RunStatus::bad_input;
  auto body = [&](int t) {
    const float* xr = x + t * width;
    float* yr = y + t * width;
    if (yr != xr) std::memcpy(yr, xr, sizeof(float) * width);
    const float p = static_cast<float>(pos + t);
    float* cs = ensure_size(t_rope, 2 * static_cast<size_t>(half));
    float* sn = cs + half;
    for (int j = 0; j < half; ++j) {  // the angle in float32, as transformers computes it
      const float a = p * inv_freq[j];
      cs[j] = std::cos(a);
      sn[j] = std::sin(a);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = yr + static_cast<ptrdiff_t>(h) * d;
      if (gamma != nullptr) c.k->norm_row(v, nullptr, gamma + (h < qheads ? 0 : d), nullptr, nd.f[0], true, d, v, nullptr);
      for (int j = 0; j < half; ++j) {
        float* u0 = neox ? v + j : v + 2 * j;
        float* u1 = neox ? v + j + half : v + 2 * j + 1;
        const float x0 = *u0, x1 = *u1;
        *u0 = x0 * cs[j] - x1 * sn[j];
        *u1 = x0 * sn[j] + x1 * cs[j];
      }
    }
  };
  parallel_for(static_cast<int>(rows), c.threads, body);
  return RunStatus::ok;
}

// kv_attention of one token (decoding): its key and value are stored first (its slot held a
// position the window no longer sees, or none), then each head reads the cache where it lies: the
// scores a dot product per cached row, the output their weighted sum of rows. At most two runs of
// slots (a ring wraps once).
RunStatus decode_attention(const Node& nd, const Ctx& c, const float* qkv, float* kc, float* vc, int64_t pos, int64_t lo,
                           float* y) {
  const int heads = static_cast<int>(nd.i[1]), kv_heads = static_cast<int>(nd.i[2]), d = static_cast<int>(nd.i[3]);
  const int64_t slots = nd.i[4];
  const ptrdiff_t ldc = static_cast<ptrdiff_t>(kv_heads) * d;
  const float scale = nd.f[0];
  std::memcpy(kc + (pos % slots) * ldc, qkv + static_cast<ptrdiff_t>(heads) * d, sizeof(float) * ldc);
  std::memcpy(vc + (pos % slots) * ldc, qkv + static_cast<ptrdiff_t>(heads + kv_heads) * d, sizeof(float) * ldc);
  const int sk = static_cast<int>(pos - lo + 1);
  const int64_t first = lo % slots;
  const int run0 = static_cast<int>(std::min<int64_t>(sk, slots - first)), run1 = sk - run0;
  const int group = heads / kv_heads;
  bool oom = false;
  auto body = [&](int h) {
    const int g = h / group;
    float *sc, *tmp;
    try {
      sc = ensure_size(t_scores, static_cast<size_t>(sk) + d);
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    tmp = sc + sk;
    const float* q = qkv + static_cast<ptrdiff_t>(h) * d;
    const float* k0 = kc + first * ldc + static_cast<ptrdiff_t>(g) * d;
    const float* v0 = vc + first * ldc + static_cast<ptrdiff_t>(g) * d;
    c.k->dot_rows(k0, ldc, run0, q, d, scale, sc);
    if (run1 > 0) c.k->dot_rows(kc + static_cast<ptrdiff_t>(g) * d, ldc, run1, q, d, scale, sc + run0);
    c.k->softmax_row(sc, sk);
    float* yh = y + static_cast<ptrdiff_t>(h) * d;
    c.k->gemm_nn(1, d, run0, 1.0f, sc, run0, v0, ldc, yh, d);
    if (run1 > 0) {
      c.k->gemm_nn(1, d, run1, 1.0f, sc + run0, run1, vc + static_cast<ptrdiff_t>(g) * d, ldc, tmp, d);
      for (int e = 0; e < d; ++e) yh[e] += tmp[e];
    }
  };
  parallel_for(heads, c.threads, body);
  return oom ? RunStatus::out_of_memory : RunStatus::ok;
}

RunStatus run_kv_attention(const Node& nd, const Ctx& c) {
  const float* qkv = at<const float>(c, nd.in[0]);
  float* kc = at<float>(c, nd.in[1]);
  float* vc = at<float>(c, nd.in[2]);
  const int64_t pos = *at<const int64_t>(c, nd.in[3]);
  float* y = at<float>(c, nd.out[0]);
  const int n = static_cast<int>(nd.i[0]), heads = static_cast<int>(nd.i[1]), kv_heads = static_cast<int>(nd.i[2]);
  const int d = static_cast<int>(nd.i[3]);
  const int64_t slots = nd.i[4], window = nd.i[5];
  const ptrdiff_t ld = nd.i[6], ldc = static_cast<ptrdiff_t>(kv_heads) * d, ldy = static_cast<ptrdiff_t>(heads) * d;
  const float scale = nd.f[0];
  if (pos < 0 || (window == 0 && pos + n > slots)) return RunStatus::bad_input;
  // the cached keys any query of this call may see: [lo, pos)
  const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  if (n == 1) return decode_attention(nd, c, qkv, kc, vc, pos, lo, y);
  const int cached = static_cast<int>(pos - lo);
  const int chunks = (n + kQueryChunk - 1) / kQueryChunk;
  const int group = heads / kv_heads;
  bool oom = false;
  auto body = [&](int t) {
    const int h = t / chunks, q0 = (t % chunks) * kQueryChunk, nq = std::min(kQueryChunk, n - q0);
    const int g = h / group;
    const int sk = cached + q0 + nq;
    float *kt, *vp, *sc;
    try {
      kt = ensure_size(t_kt, static_cast<size_t>(d) * sk);
      vp = ensure_size(t_v, static_cast<size_t>(d) * sk);
      sc = ensure_size(t_scores, static_cast<size_t>(nq) * sk);
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    const float* knew = qkv + static_cast<ptrdiff_t>(heads + g) * d;
    const float* vnew = qkv + static_cast<ptrdiff_t>(heads + kv_heads + g) * d;
    for (int j = 0; j < sk; ++j) {
      const float* kr = j < cached ? kc + ((lo + j) % slots) * ldc + static_cast<ptrdiff_t>(g) * d : knew + (j - cached) * ld;
      const float* vr = j < cached ? vc + ((lo + j) % slots) * ldc + static_cast<ptrdiff_t>(g) * d : vnew + (j - cached) * ld;
      for (int e = 0; e < d; ++e) kt[static_cast<ptrdiff_t>(e) * sk + j] = kr[e];
      std::memcpy(vp + static_cast<ptrdiff_t>(j) * d, vr, sizeof(float) * d);
    }
    c.k->gemm_nn(nq, sk, d, scale, qkv + q0 * ld + static_cast<ptrdiff_t>(h) * d, ld, kt, sk, sc, sk);
    for (int i = 0; i < nq; ++i) {
      float* row = sc + static_cast<ptrdiff_t>(i) * sk;
      const int64_t p = pos + q0 + i;
      // keys after the query (the call's own later tokens) and, in a window, those too far back
      for (int j = cached + q0 + i + 1; j < sk; ++j) row[j] = kMasked;
      if (window > 0) {
        for (int j = 0; j < sk; ++j) {
          const int64_t kp = j < cached ? lo + j : pos + (j - cached);
          if (p - kp >= window) row[j] = kMasked;
        }
      }
      c.k->softmax_row(row, sk);
    }
    c.k->gemm_nn(nq, d, sk, 1.0f, sc, sk, vp, d, y + q0 * ldy + static_cast<ptrdiff_t>(h) * d, ldy);
  };
  parallel_for(heads * chunks, c.threads, body);
  if (oom) return RunStatus::out_of_memory;
  // store the call's keys and values (after the reads: in a window's ring they replace older ones)
  for (int64_t t = std::max<int64_t>(0, n - slots); t < n; ++t) {
    float* kd = kc + ((pos + t) % slots) * ldc;
    float* vd = vc + ((pos + t) % slots) * ldc;
    for (int g = 0; g < kv_heads; ++g) {
      std::memcpy(kd + static_cast<ptrdiff_t>(g) * d, qkv + t * ld + static_cast<ptrdiff_t>(heads + g) * d, sizeof(float) * d);
      std::memcpy(vd + static_cast<ptrdiff_t>(g) * d, qkv + t * ld + static_cast<ptrdiff_t>(heads + kv_heads + g) * d,
                  sizeof(float) * d);
    }
  }
  return RunStatus::ok;
}

void run_glu(const Node& nd, const Ctx& c) {
  const float* gate = at<const float>(c, nd.in[0]);
  const float* up = at<const float>(c, nd.in[1]);
  float* y = at<float>(c, nd.out[0]);
  const int64_t rows = nd.i[0], n = nd.i[1], ldg = nd.i[3], ldu = nd.i[4];
  const int act = static_cast<int>(nd.i[2]);
  const int64_t per = std::max<int64_t>(1, kChunk / n);
  auto body = [&](int t) {
    const int64_t r1 = std::min(rows, (t + 1) * per);
    for (int64_t i = t * per; i < r1; ++i) c.k->glu(act, gate + i * ldg, up + i * ldu, y + i * n, n);
  };
  parallel_for(static_cast<int>((rows + per - 1) / per), c.threads, body);
}

void run_concat(const Node& nd, const Ctx& c) {
  float* y = at<float>(c, nd.out[0]);
  const int64_t rows = nd.i[0];
  int64_t width = 0;
  for (int k = 0; k < 4; ++k) width += nd.i[1 + k];
  for (int64_t r = 0; r < rows; ++r) {
    int64_t col = 0;
    for (int k = 0; k < 4; ++k) {
      const int64_t w = nd.i[1 + k];
      if (w == 0) continue;
      std::memcpy(y + r * width + col, at<const float>(c, nd.in[k]) + r * w, sizeof(float) * w);
      col += w;
    }
  }
}

RunStatus run_node(const Node& nd, const Ctx& c) {
  switch (nd.op) {
    case Op::linear: return run_linear(nd, c);
    case Op::norm: run_norm(nd, c); return RunStatus::ok;
    case Op::attention: return run_attention(nd, c);
    case Op::gelu:
    case Op::add:
    case Op::mul: run_elementwise(nd, c); return RunStatus::ok;
    case Op::softmax: run_softmax(nd, c); return RunStatus::ok;
    case Op::embedding: return run_embedding(nd, c);
    case Op::position_ids: run_position_ids(nd, c); return RunStatus::ok;
    case Op::mean_pool: return run_mean_pool(nd, c);
    case Op::pack: return run_pack(nd, c);
    case Op::gather:
    case Op::scatter: return run_gather_scatter(nd, c);
    case Op::rope: return run_rope(nd, c);
    case Op::kv_attention: return run_kv_attention(nd, c);
    case Op::glu: run_glu(nd, c); return RunStatus::ok;
    case Op::concat: run_concat(nd, c); return RunStatus::ok;
    case Op::conv2d: return run_conv(nd, c);
    case Op::winograd: return run_winograd(nd, c);
    case Op::winograd_s8: return run_winograd_s8(nd, c);
    case Op::depthwise:
    case Op::pool: run_window(nd, c); return RunStatus::ok;
    case Op::act: run_act(nd, c); return RunStatus::ok;
    case Op::transpose: run_transpose(nd, c); return RunStatus::ok;
    case Op::count: break;
  }
  return RunStatus::ok;
}

}  // namespace

Plan::Plan(std::vector<Node> nodes, int64_t arena_bytes, std::vector<const void*> constants, const EngineKernel& kernel)
    : nodes_(std::move(nodes)), arena_bytes_(arena_bytes), constants_(std::move(constants)), kernel_(&kernel),
      arena_(static_cast<size_t>(arena_bytes)) {}

RunResult Plan::run(const void* const* inputs, void* const* outputs, int max_threads, double* node_seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  Ctx c{arena_.data(), inputs, outputs, &constants_, kernel_, max_threads};
  const PoolHold hold(max_threads);  // the pool's workers stay up between the nodes
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const RunStatus s = run_node(nodes_[i], c);
    if (node_seconds != nullptr) {
      node_seconds[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    if (s != RunStatus::ok) return {s, static_cast<int>(i)};
  }
  return {};
}

}  // namespace engine
}  // namespace edgecompress
