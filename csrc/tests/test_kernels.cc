// Dependency-free test runner of the kernel registry. Runs natively and under qemu-aarch64.
//
// Every kernel built into the binary that can run on this CPU goes through the shared shape sweep
// (the same shapes as tests/sweeps.py) and adversarial extremes, through the real driver (packing,
// blocking, threads):
//   - raw int32 results (int8 and uint8 activations) equal an int64 reference, bit for bit;
//   - float results (every activation scheme, bias, relu/gelu) equal the scalar kernel's bit for bit;
//   - guard regions around every output stay untouched;
//   - with two threads the parallel paths run even for small shapes, and several callers at once,
//     while the pool is being resized, get the serial results.
// Kernels this CPU cannot run are listed as skipped with the reason. Exits non-zero on any failure.
#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <memory>
#include <utility>
#include <string>
#include <thread>
#include <vector>

#include "edgecompress/cpu.h"
#include "edgecompress/driver.h"
#include "edgecompress/gemm_q4.h"
#include "edgecompress/gemm_s8.h"
#include "edgecompress/sparse.h"
#include "edgecompress/sparse_s8.h"
#include "edgecompress/sparse_nm.h"
#include "edgecompress/dense_f32.h"
#include "edgecompress/engine.h"
#include "edgecompress/winograd_s8.h"
#include "edgecompress/engine_ops.h"
#include "edgecompress/registry.h"
#include "edgecompress/threadpool.h"

using namespace edgecompress;

#if defined(EC_AMX_TILE_MODEL_BUILT)
// The amx kernels on the tile model (tests/amx_tile_model.cc), and the model's own checks.
namespace edgecompress {
extern const GemmS8Kernel gemm_s8_amx_model;
extern const GemmQ4Kernel gemm_q4_amx_model;
bool amx_tile_model_checks();
}  // namespace edgecompress
#endif

namespace {

struct Shape {
  int m, k, n;
};

std::vector<Shape> sweep() {
  std::vector<Shape> s;
  for (int m = 1; m <= 17; ++m) {
    s.push_back({m, m, m});
    s.push_back({m, 17, 33});
    s.push_back({m, 64, 65});
  }
  for (int v : {31, 32, 33, 63, 64, 65, 127, 128, 129}) {
    s.push_back({v, v, v});
    s.push_back({v, 128, 17});
  }
  s.push_back({1, 8191, 17});   // deep K
  s.push_back({5, 8191, 33});
  s.push_back({17, 8191, 9});
  s.push_back({1, 1024, 1024}); // GEMV
  s.push_back({4, 512, 257});
  s.push_back({9, 100, 1});     // odd N
  s.push_back({3, 37, 67});
  s.push_back({33, 129, 95});
  return s;
}

constexpr int kGuard = 64;
constexpr int32_t kSentinel = 0x5a5a5a5a;

// An output buffer with guard regions on both sides.
template <class T>
struct Guarded {
  std::vector<T> buf;
  explicit Guarded(size_t n) : buf(n + 2 * kGuard) {
    for (T& v : buf) std::memcpy(&v, &kSentinel, sizeof(T));
  }
  T* data() { return buf.data() + kGuard; }
  bool guards_intact() const {
    for (size_t i = 0; i < buf.size(); ++i) {
      if (i >= kGuard && i < buf.size() - kGuard) continue;
      int32_t v;
      std::memcpy(&v, &buf[i], sizeof(v));
      if (v != kSentinel) return false;
    }
    return true;
  }
};

struct Failures {
  int count = 0;
  void fail(const GemmS8Kernel& k, const Shape& s, const char* what) {
    if (++count <= 20) std::printf("  FAIL %s (%d, %d, %d): %s\n", k.name, s.m, s.k, s.n, what);
  }
};

std::vector<int32_t> reference(const std::vector<int8_t>& w, const void* a, bool a_signed, const Shape& s) {
  std::vector<int32_t> y(static_cast<size_t>(s.m) * s.n);
  for (int i = 0; i < s.m; ++i)
    for (int j = 0; j < s.n; ++j) {
      int64_t acc = 0;
      for (int p = 0; p < s.k; ++p) {
        const int64_t av = a_signed ? static_cast<const int8_t*>(a)[i * s.k + p] : static_cast<const uint8_t*>(a)[i * s.k + p];
        acc += av * w[static_cast<size_t>(j) * s.k + p];
      }
      y[static_cast<size_t>(i) * s.n + j] = static_cast<int32_t>(acc);
    }
  return y;
}

// Integer results against the int64 reference.
void check_int(const GemmS8Kernel& kern, const Shape& s, const std::vector<int8_t>& w, const std::vector<int8_t>& a_s8,
               const std::vector<uint8_t>& a_u8, Failures* f) {
  const float one = 1.0f;
  auto packed = pack_s8_weight(kern, w.data(), s.n, s.k, &one, 1);
  for (int pass = 0; pass < 2; ++pass) {
    const bool is_signed = pass == 0;
    const void* a = is_signed ? static_cast<const void*>(a_s8.data()) : static_cast<const void*>(a_u8.data());
    ActQuant aq;
    aq.scheme = is_signed ? ActScheme::raw_s8 : ActScheme::raw_u8;
    Guarded<int32_t> y(static_cast<size_t>(s.m) * s.n);
    if (gemm_s8(*packed, a, s.k, s.m, aq, nullptr, Activation::none, nullptr, y.data(), get_num_threads()) != GemmStatus::ok) {
      f->fail(kern, s, "raw int8 input reported as bad");
    }
    const std::vector<int32_t> ref = reference(w, a, is_signed, s);
    if (std::memcmp(ref.data(), y.data(), ref.size() * 4) != 0) f->fail(kern, s, is_signed ? "int32 (s8 activations)" : "int32 (u8 activations)");
    if (!y.guards_intact()) f->fail(kern, s, "write outside the int32 result");
  }
}

// Float results (quantization + epilogue) against the scalar kernel.
void check_float(const GemmS8Kernel& kern, const GemmS8Kernel& scalar, const Shape& s, const std::vector<int8_t>& w,
                 const std::vector<float>& scale, const std::vector<float>& x, const std::vector<float>& bias, Failures* f) {
  auto pk = pack_s8_weight(kern, w.data(), s.n, s.k, scale.data(), s.n);
  auto ps = pack_s8_weight(scalar, w.data(), s.n, s.k, scale.data(), s.n);
  const ActQuant schemes[] = {{ActScheme::dynamic_symmetric, 1.0f, 0},
                              {ActScheme::dynamic_asymmetric, 1.0f, 0},
                              {ActScheme::static_symmetric, 0.02f, 0},
                              {ActScheme::static_asymmetric, 0.03f, 117}};
  const Activation acts[] = {Activation::none, Activation::relu, Activation::gelu};
  for (int si = 0; si < 4; ++si) {
    const Activation act = acts[si % 3];
    const float* b = si % 2 ? bias.data() : nullptr;
    Guarded<float> y(static_cast<size_t>(s.m) * s.n), want(static_cast<size_t>(s.m) * s.n);
    const GemmStatus s1 = gemm_s8(*pk, x.data(), s.k, s.m, schemes[si], b, act, y.data(), nullptr, get_num_threads());
    const GemmStatus s2 = gemm_s8(*ps, x.data(), s.k, s.m, schemes[si], b, act, want.data(), nullptr, 1);
    if (s1 != GemmStatus::ok || s2 != GemmStatus::ok) f->fail(kern, s, "finite input reported as bad");
    if (std::memcmp(y.data(), want.data(), static_cast<size_t>(s.m) * s.n * 4) != 0) f->fail(kern, s, "float output differs from the scalar kernel");
    if (!y.guards_intact()) f->fail(kern, s, "write outside the float result");
  }
  // NaN in the input is reported, not computed on.
  std::vector<float> bad = x;
  bad[bad.size() / 2] = NAN;
  Guarded<float> y(static_cast<size_t>(s.m) * s.n);
  if (gemm_s8(*pk, bad.data(), s.k, s.m, ActQuant{}, nullptr, Activation::none, y.data(), nullptr, get_num_threads()) !=
      GemmStatus::nonfinite_input) {
    f->fail(kern, s, "NaN input not reported");
  }
}

void check_kernel(const GemmS8Kernel& kern, const GemmS8Kernel& scalar, Failures* f) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> w8(-127, 127), s8(-128, 127), u8(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Shape& s : sweep()) {
    std::vector<int8_t> w(static_cast<size_t>(s.n) * s.k), a_s8(static_cast<size_t>(s.m) * s.k);
    std::vector<uint8_t> a_u8(a_s8.size());
    for (auto& v : w) v = static_cast<int8_t>(w8(rng));
    for (auto& v : a_s8) v = static_cast<int8_t>(s8(rng));
    for (auto& v : a_u8) v = static_cast<uint8_t>(u8(rng));
    check_int(kern, s, w, a_s8, a_u8, f);
    std::vector<float> x(a_s8.size()), scale(s.n), bias(s.n);
    for (auto& v : x) v = normal(rng);
    for (auto& v : scale) v = 0.01f + 0.001f * std::fabs(normal(rng));
    for (auto& v : bias) v = normal(rng);
    check_float(kern, scalar, s, w, scale, x, bias, f);
  }
  // Extremes: every product at its largest magnitude, K = 8192, all sign patterns.
  for (int pattern = 0; pattern < 4; ++pattern) {
    const Shape s{3, 8192, 37};
    std::vector<int8_t> w(static_cast<size_t>(s.n) * s.k, pattern & 1 ? -127 : 127);
    std::vector<int8_t> a_s8(static_cast<size_t>(s.m) * s.k, pattern & 2 ? -128 : 127);
    std::vector<uint8_t> a_u8(a_s8.size(), pattern & 2 ? 255 : 0);
    check_int(kern, s, w, a_s8, a_u8, f);
  }
}

// Several callers at once while the pool is being resized: every result must equal the serial one.
// parallel_for runs every index exactly once, whatever the pool's size and the count of tasks
// (fewer tasks than threads, parts of unequal size), nested calls included (they run serially).
bool check_parallel_for() {
  bool ok = true;
  for (int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    for (int n : {1, 2, 3, 5, 7, 64, 1001}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
      std::atomic<int> inner{0};
      auto body = [&](int i) {
        runs[static_cast<size_t>(i)].fetch_add(1);
        if (i == n / 2) {
          auto nested = [&](int) { inner.fetch_add(1); };
          parallel_for(4, threads, nested);
        }
      };
      parallel_for(n, threads, body);
      for (int i = 0; i < n; ++i) {
        if (runs[static_cast<size_t>(i)].load() != 1) {
          std::printf("  FAIL parallel_for(%d) on %d threads: task %d ran %d times\n", n, threads, i,
                      runs[static_cast<size_t>(i)].load());
          ok = false;
          break;
        }
      }
      if (inner.load() != 4) {
        std::printf("  FAIL parallel_for(%d) on %d threads: a nested call ran %d of 4 tasks\n", n, threads, inner.load());
        ok = false;
      }
    }
  }
  set_num_threads(2);
  return ok;
}

bool check_concurrent_callers(const GemmS8Kernel& kern) {
  const Shape shapes[] = {{1, 512, 300}, {7, 256, 129}, {64, 384, 200}, {130, 128, 64}};
  std::mt19937 rng(99);
  std::uniform_int_distribution<int> w8(-127, 127);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Case {
    Shape s;
    std::unique_ptr<PackedS8Weight> w;
    std::vector<float> x, want;
  };
  std::vector<Case> cases;
  set_num_threads(1);
  for (const Shape& s : shapes) {
    std::vector<int8_t> w(static_cast<size_t>(s.n) * s.k);
    for (auto& v : w) v = static_cast<int8_t>(w8(rng));
    const float one = 0.01f;
    Case c{s, pack_s8_weight(kern, w.data(), s.n, s.k, &one, 1), std::vector<float>(static_cast<size_t>(s.m) * s.k),
           std::vector<float>(static_cast<size_t>(s.m) * s.n)};
    for (auto& v : c.x) v = normal(rng);
    gemm_s8(*c.w, c.x.data(), s.k, s.m, ActQuant{}, nullptr, Activation::relu, c.want.data(), nullptr, 1);
    cases.push_back(std::move(c));
  }
  std::atomic<int> mismatches{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&, t] {
      std::vector<float> y;
      for (int i = 0; i < 40; ++i) {
        const Case& c = cases[(t + i) % cases.size()];
        y.assign(c.want.size(), -1.0f);
        gemm_s8(*c.w, c.x.data(), c.s.k, c.s.m, ActQuant{}, nullptr, Activation::relu, y.data(), nullptr, 4);
        if (std::memcmp(y.data(), c.want.data(), y.size() * 4) != 0) ++mismatches;
      }
    });
  }
  std::thread resizer([&] {
    for (int i = 0; !done.load(); ++i) set_num_threads(1 + i % 3);
  });
  for (std::thread& t : callers) t.join();
  done = true;
  resizer.join();
  set_num_threads(2);
  return mismatches.load() == 0;
}

// --- gemm_q4 -------------------------------------------------------------------------------------

// float32 -> float16 bits, round to nearest even (normal range only; test scales stay in it).
uint16_t to_half(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((b >> 23) & 0xff) - 127 + 15;
  uint32_t mant = b & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

enum class Q4Kind { sym, asym, book_tensor, book_channel };

struct Q4Case {
  Shape s;
  int g;
  Q4Kind kind;
};

std::vector<Q4Case> q4_cases() {
  std::vector<Q4Case> c;
  const int gs[3] = {32, 64, 128};
  int i = 0;
  for (const Shape& s : sweep()) {
    c.push_back({s, gs[i % 3], static_cast<Q4Kind>(i % 4)});
    ++i;
  }
  for (int g : gs)
    for (int kind = 0; kind < 4; ++kind) c.push_back({{5, 257, 33}, g, static_cast<Q4Kind>(kind)});
  return c;
}

struct Q4Data {
  std::vector<uint8_t> qweight, zp;
  std::vector<uint16_t> scale;
  std::vector<float> codebook, x, bias;
};

Q4Data q4_data(const Q4Case& c, std::mt19937& rng) {
  const int groups = (c.s.k + c.g - 1) / c.g, kp = groups * c.g;
  Q4Data d;
  std::uniform_int_distribution<int> byte(0, 255), nib(0, 15);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), pos(0.001f, 2.0f);
  d.qweight.resize(static_cast<size_t>(c.s.n) * kp / 2);
  for (auto& v : d.qweight) v = static_cast<uint8_t>(byte(rng));
  d.scale.resize(static_cast<size_t>(c.s.n) * groups);
  for (auto& v : d.scale) v = to_half(u(rng) * 0.1f);
  if (c.kind == Q4Kind::asym) {
    d.zp.resize(static_cast<size_t>(c.s.n) * groups);
    for (auto& v : d.zp) v = static_cast<uint8_t>(nib(rng));
  }
  if (c.kind == Q4Kind::book_tensor || c.kind == Q4Kind::book_channel) {
    d.codebook.resize(c.kind == Q4Kind::book_tensor ? 16 : static_cast<size_t>(c.s.n) * 16);
    for (auto& v : d.codebook) v = u(rng);
  }
  d.x.resize(static_cast<size_t>(c.s.m) * c.s.k);
  for (auto& v : d.x) v = u(rng) * pos(rng);
  // Extremes: a zero row and a row with one huge value (its group quantizes to mostly zeros).
  if (c.s.m > 2) {
    for (int i = 0; i < c.s.k; ++i) d.x[i] = 0.0f;
    d.x[static_cast<size_t>(c.s.k)] = 3.0e4f;
  }
  d.bias.resize(static_cast<size_t>(c.s.n));
  for (auto& v : d.bias) v = u(rng);
  return d;
}

struct Q4Failures {
  int count = 0;
  void fail(const GemmQ4Kernel& k, const Q4Case& c, const char* what) {
    if (++count <= 20)
      std::printf("  FAIL %s (%d, %d, %d) g=%d kind=%d: %s\n", k.name, c.s.m, c.s.k, c.s.n, c.g, static_cast<int>(c.kind), what);
  }
};

void check_q4_kernel(const GemmQ4Kernel& kern, const GemmQ4Kernel& scalar, Q4Failures* f) {
  std::mt19937 rng(7);
  for (const Q4Case& c : q4_cases()) {
    const Q4Data d = q4_data(c, rng);
    const bool book = !d.codebook.empty();
    const bool per_channel = d.codebook.size() > 16;
    auto pw = pack_q4_weight(kern, d.qweight.data(), c.s.n, c.s.k, c.g, d.scale.data(), d.zp.empty() ? nullptr : d.zp.data(),
                             book ? d.codebook.data() : nullptr, per_channel);
    auto ps = pack_q4_weight(scalar, d.qweight.data(), c.s.n, c.s.k, c.g, d.scale.data(), d.zp.empty() ? nullptr : d.zp.data(),
                             book ? d.codebook.data() : nullptr, per_channel);
    const size_t ny = static_cast<size_t>(c.s.m) * c.s.n;
    for (Q4Compute compute : {Q4Compute::int8, Q4Compute::float32}) {
      for (int variant = 0; variant < 2; ++variant) {
        const float* bias = variant ? d.bias.data() : nullptr;
        const Activation act = variant ? Activation::gelu : Activation::none;
        Guarded<float> y(ny), ref(ny);
        if (gemm_q4(*pw, d.x.data(), c.s.k, c.s.m, compute, bias, act, y.data(), 64) != GemmStatus::ok ||
            gemm_q4(*ps, d.x.data(), c.s.k, c.s.m, compute, bias, act, ref.data(), 1) != GemmStatus::ok) {
          f->fail(kern, c, "status not ok");
          continue;
        }
        if (!y.guards_intact()) f->fail(kern, c, "wrote outside the output");
        for (size_t i = 0; i < ny; ++i) {
          const float a = y.data()[i], b = ref.data()[i];
          const bool same = compute == Q4Compute::int8 ? std::memcmp(&a, &b, 4) == 0
                                                        : std::fabs(a - b) <= 1e-5f * (1.0f + std::fabs(b));
          if (!same) {
            f->fail(kern, c, compute == Q4Compute::int8 ? "int8 mode differs from the scalar kernel"
                                                         : "float mode beyond tolerance of the scalar kernel");
            break;
          }
        }
      }
    }
    // NaN in x is refused, in both modes.
    std::vector<float> bad(d.x);
    bad[bad.size() / 2] = NAN;
    std::vector<float> y(ny);
    for (Q4Compute compute : {Q4Compute::int8, Q4Compute::float32}) {
      if (gemm_q4(*pw, bad.data(), c.s.k, c.s.m, compute, nullptr, Activation::none, y.data(), 64) != GemmStatus::nonfinite_input)
        f->fail(kern, c, "NaN input not reported");
    }
  }
}

// --- sparse_f32 ---------------------------------------------------------------------------------

// Every sparse kernel against a float64 dense reference, within the oracle's tolerance
// (1e-5 * |x| @ |W|.T), for CSR and both BSR block heights over the sweep at 0-100% sparsity.
bool check_sparse_kernel(const SparseKernel& kern) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), p01(0.0f, 1.0f);
  const float sparsities[5] = {0.0f, 0.5f, 0.9f, 0.99f, 1.0f};
  int failures = 0, i = 0;
  for (const Shape& s : sweep()) {
    for (int r : {1, 4, 8}) {
      const float sparsity = sparsities[(i++) % 5];
      const int block_rows = (s.n + r - 1) / r;
      std::vector<float> w(static_cast<size_t>(block_rows) * r * s.k, 0.0f);
      std::vector<int64_t> indptr(block_rows + 1, 0);
      std::vector<int32_t> idx32;
      std::vector<uint16_t> idx16;
      std::vector<float> vals;
      for (int b = 0; b < block_rows; ++b) {
        for (int c = 0; c < s.k; ++c) {
          if (p01(rng) < sparsity) continue;
          idx32.push_back(c), idx16.push_back(static_cast<uint16_t>(c));
          for (int q = 0; q < r; ++q) {
            const float v = b * r + q < s.n ? u(rng) : 0.0f;
            vals.push_back(v);
            w[(static_cast<size_t>(b) * r + q) * s.k + c] = v;
          }
        }
        indptr[b + 1] = static_cast<int64_t>(idx32.size());
      }
      std::vector<float> x(static_cast<size_t>(s.m) * s.k), bias(s.n);
      for (auto& v : x) v = u(rng);
      for (auto& v : bias) v = u(rng);
      const bool use16 = (i % 2) == 0;
      auto pw = pack_sparse_f32(kern, s.n, s.k, r, indptr.data(), use16 ? static_cast<const void*>(idx16.data()) : idx32.data(),
                                use16, vals.data());
      Guarded<float> y(static_cast<size_t>(s.m) * s.n);
      if (sparse_f32(*pw, x.data(), s.k, s.m, bias.data(), Activation::relu, y.data(), 64) != GemmStatus::ok) ++failures;
      if (!y.guards_intact()) ++failures;
      for (int a = 0; a < s.m && failures < 5; ++a)
        for (int c = 0; c < s.n; ++c) {
          double ref = bias[c], mag = std::fabs(bias[c]);
          for (int q = 0; q < s.k; ++q) {
            ref += static_cast<double>(x[static_cast<size_t>(a) * s.k + q]) * w[static_cast<size_t>(c) * s.k + q];
            mag += std::fabs(static_cast<double>(x[static_cast<size_t>(a) * s.k + q]) * w[static_cast<size_t>(c) * s.k + q]);
          }
          ref = ref > 0 ? ref : 0;
          if (std::fabs(y.data()[static_cast<size_t>(a) * s.n + c] - ref) > 1e-5 * mag + 1e-30) {
            if (++failures <= 3) std::printf("  FAIL %s (%d, %d, %d) r=%d: %g vs %g\n", kern.name, s.m, s.k, s.n, r,
                                             y.data()[static_cast<size_t>(a) * s.n + c], ref);
            break;
          }
        }
      std::vector<float> bad(x);
      bad[bad.size() / 2] = NAN;
      std::vector<float> y2(static_cast<size_t>(s.m) * s.n);
      if (sparse_f32(*pw, bad.data(), s.k, s.m, nullptr, Activation::none, y2.data(), 64) != GemmStatus::nonfinite_input) ++failures;
    }
  }
  return failures == 0;
}

// Packing is plain C++ whatever the kernel's tier, so every kernel's packed size is checked here,
// even one this CPU cannot run: a nearly empty CSR weight must pack to about its own size (the
// interleaved layout's table of cells once grew with N * K: 64 MB here).
bool check_sparse_packed_size(const SparseKernel& kern) {
  const int n = 65536, k = 65536;
  std::vector<int64_t> indptr(n + 1);
  std::vector<uint16_t> idx(n);
  std::vector<float> vals(n, 1.0f);
  for (int i = 0; i < n; ++i) indptr[i + 1] = i + 1, idx[i] = static_cast<uint16_t>((i * 7919) % k);
  auto pw = pack_sparse_f32(kern, n, k, 1, indptr.data(), idx.data(), true, vals.data());
  const size_t csr = indptr.size() * 8 + idx.size() * 2 + vals.size() * 4;
  if (pw->nbytes() <= 2 * csr) return true;
  std::printf("  FAIL %s: one nonzero per row of (%d, %d) packs to %zu bytes, its CSR arrays are %zu\n", kern.name, n, k,
              pw->nbytes(), csr);
  return false;
}

// --- sparse_s8 ----------------------------------------------------------------------------------

// Every sparse_s8 kernel against the dense int8 path on the same weight (zeros where no block is
// stored): the results must be equal bit for bit (same activation quantization, exact integer sums,
// same epilogue), at 0-100% block sparsity over the sweep, with extreme weights and activations.
bool check_sparse_s8_kernel(const SparseS8Kernel& kern) {
  const GemmS8Kernel* const* dense;
  gemm_s8_kernels(&dense);
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), p01(0.0f, 1.0f);
  std::uniform_int_distribution<int> q(-127, 127);
  const float sparsities[5] = {0.0f, 0.5f, 0.9f, 0.99f, 1.0f};
  int failures = 0, i = 0;
  for (const Shape& s : sweep()) {
    const float sparsity = sparsities[(i++) % 5];
    const int kblocks = (s.k + 3) / 4;
    std::vector<int8_t> wd(static_cast<size_t>(s.n) * s.k, 0), vals;
    std::vector<int64_t> indptr(s.n + 1, 0);
    std::vector<uint16_t> idx16;
    std::vector<int32_t> idx32;
    for (int r = 0; r < s.n; ++r) {
      for (int kb = 0; kb < kblocks; ++kb) {
        if (p01(rng) < sparsity) continue;
        idx16.push_back(static_cast<uint16_t>(kb)), idx32.push_back(kb);
        for (int e = 0; e < 4; ++e) {
          const int c = 4 * kb + e;
          const int8_t v = c < s.k ? static_cast<int8_t>(i % 7 == 0 ? 127 * (e % 2 ? 1 : -1) : q(rng)) : 0;
          vals.push_back(v);
          if (c < s.k) wd[static_cast<size_t>(r) * s.k + c] = v;
        }
      }
      indptr[r + 1] = static_cast<int64_t>(idx32.size());
    }
    std::vector<float> x(static_cast<size_t>(s.m) * s.k), bias(s.n), scale(s.n);
    for (auto& v : x) v = i % 5 == 0 ? (u(rng) > 0 ? 1e3f : -1e3f) : u(rng);
    for (auto& v : bias) v = u(rng);
    for (auto& v : scale) v = 0.01f * (1.5f + u(rng));
    const bool use16 = (i % 2) == 0;
    auto ps = pack_sparse_s8(kern, s.n, s.k, indptr.data(), use16 ? static_cast<const void*>(idx16.data()) : idx32.data(),
                             use16, vals.data(), scale.data(), s.n);
    auto pd = pack_s8_weight(*dense[0], wd.data(), s.n, s.k, scale.data(), s.n);
    for (Activation act : {Activation::none, Activation::gelu}) {
      Guarded<float> y(static_cast<size_t>(s.m) * s.n);
      std::vector<float> want(static_cast<size_t>(s.m) * s.n);
      if (sparse_s8(*ps, x.data(), s.k, s.m, bias.data(), act, y.data(), 64) != GemmStatus::ok) ++failures;
      if (gemm_s8(*pd, x.data(), s.k, s.m, ActQuant{}, bias.data(), act, want.data(), nullptr, 64) != GemmStatus::ok) ++failures;
      if (!y.guards_intact()) ++failures;
      if (std::memcmp(y.data(), want.data(), want.size() * sizeof(float)) != 0) {
        if (++failures <= 3) std::printf("  FAIL %s (%d, %d, %d) sparsity %.2f: differs from the dense int8 path\n", kern.name,
                                         s.m, s.k, s.n, sparsity);
      }
    }
    std::vector<float> bad(x);
    bad[bad.size() / 2] = NAN;
    std::vector<float> y2(static_cast<size_t>(s.m) * s.n);
    if (sparse_s8(*ps, bad.data(), s.k, s.m, nullptr, Activation::none, y2.data(), 64) != GemmStatus::nonfinite_input) ++failures;
  }
  return failures == 0;
}


// --- engine_f32 and the engine's executor ---------------------------------------------------------

// |got - want| <= tol * scale + tol at each of n values; prints the first misses.
int misses(const char* what, const float* got, const std::vector<double>& want, double scale, double tol) {
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= tol * (scale + 1.0))) {
      if (++bad <= 3) std::printf("  FAIL %s at %zu: %.9g vs %.9g\n", what, i, got[i], want[i]);
    }
  }
  return bad;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// One attention head group in float64: qkv (b, s, (h + 2 kv) d), mask (b, s) -> (b, s, h d).
std::vector<double> attention_ref(const std::vector<float>& qkv, const std::vector<int64_t>& mask, int b, int s, int h,
                                  int kv, int d, bool causal, double scale) {
  const int w = (h + 2 * kv) * d;
  std::vector<double> y(static_cast<size_t>(b) * s * h * d);
  for (int bi = 0; bi < b; ++bi)
    for (int hi = 0; hi < h; ++hi)
      for (int i = 0; i < s; ++i) {
        const int g = hi / (h / kv);
        std::vector<double> p(s);
        double mx = -1e300;
        for (int j = 0; j < s; ++j) {
          double dot = 0;
          for (int e = 0; e < d; ++e) dot += double(qkv[(bi * s + i) * w + hi * d + e]) * qkv[(bi * s + j) * w + (h + g) * d + e];
          dot *= scale;
          if (mask[bi * s + j] == 0) dot += -3.4028234663852886e38;
          if (causal && j > i) dot += -3.4028234663852886e38;
          p[j] = dot;
          mx = std::max(mx, dot);
        }
        double sum = 0;
        for (int j = 0; j < s; ++j) sum += p[j] = std::exp(p[j] - mx);
        for (int e = 0; e < d; ++e) {
          double acc = 0;
          for (int j = 0; j < s; ++j) acc += p[j] / sum * qkv[(bi * s + j) * w + (h + kv + g) * d + e];
          y[((bi * s + i) * h + hi) * d + e] = acc;
        }
      }
  return y;
}

// The decoder's ops through the executor: glu against float64; rope then kv_attention fed one token a
// call (the caches carried between calls, a sliding-window ring that wraps) equal to one call over the
// whole sequence; positions past a full cache refused; the 4-bit-halves embedding exact.
// The CNN kernels of engine_f32 (unary activations, depthwise_row, pool_row) against float64
// references, output rows in guarded buffers; and a conv2d node of a plan (its patch tiles and the
// dense_f32 product) against the direct convolution, with padding, stride 2 and dilation.
bool check_window_ops(const EngineKernel& k) {
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int bad = 0;
  {
    const int n = 45;
    std::vector<float> x(n), y(n);
    for (auto& e : x) e = 5 * nd(rng);
    for (int act = 0; act < static_cast<int>(UnaryAct::count); ++act) {
      k.unary(act, x.data(), y.data(), n);
      std::vector<double> want(n);
      for (int i = 0; i < n; ++i) {
        const double v = x[i], r6 = std::min(std::max(v + 3, 0.0), 6.0);
        const double vals[] = {std::max(v, 0.0), std::min(std::max(v, 0.0), 6.0), v / (1 + std::exp(-v)), v * r6 / 6,
                               r6 / 6, 1 / (1 + std::exp(-v))};
        want[i] = vals[act];
      }
      char what[32];
      std::snprintf(what, sizeof what, "unary %d", act);
      bad += misses(what, y.data(), want, max_abs(want), 2e-6);
    }
  }
  // (h, w, c, kh, kw, sh, sw, pt, pl, dh, dw)
  const int cases[][11] = {{1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1}, {7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1},
                           {12, 10, 37, 3, 3, 2, 2, 1, 1, 1, 1}, {9, 8, 16, 5, 3, 2, 1, 2, 1, 2, 1},
                           {4, 23, 19, 3, 3, 1, 1, 1, 1, 1, 1},   // these two: interior runs of 8, 4, 2, 1
                           {3, 13, 70, 3, 3, 1, 1, 1, 1, 1, 1},   // pixels, channel blocks of 8, 4, 2, 1 vectors;
                           {5, 30, 21, 5, 5, 1, 1, 2, 2, 1, 1},   // these three: runs of 8 pixels with the
                           {6, 40, 13, 3, 3, 2, 2, 1, 1, 1, 1},   // image columns shared (5x5 and 3x3,
                           {7, 41, 9, 5, 5, 2, 2, 2, 2, 1, 1}};   // stride 1 and 2), a tail of channels
  for (const auto& cs : cases) {
    Window2d p{cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7], cs[8], cs[9], cs[10], 0};
    const int ho = (p.h + 2 * p.pt - p.dh * (p.kh - 1) - 1) / p.sh + 1;
    p.wo = (p.w + 2 * p.pl - p.dw * (p.kw - 1) - 1) / p.sw + 1;
    std::vector<float> x(static_cast<size_t>(p.h) * p.w * p.c), w(static_cast<size_t>(p.kh) * p.kw * p.c), bias(p.c);
    for (auto& e : x) e = nd(rng);
    for (auto& e : w) e = nd(rng);
    for (auto& e : bias) e = nd(rng);
    for (int oh = 0; oh < ho; ++oh) {
      const size_t row = static_cast<size_t>(p.wo) * p.c;
      std::vector<double> dw(row), mx(row), avg(row), avg_in(row);
      for (int ow = 0; ow < p.wo; ++ow)
        for (int j = 0; j < p.c; ++j) {
          double s = bias[j], m = -INFINITY, t = 0;
          int taps = 0;
          for (int i = 0; i < p.kh; ++i)
            for (int q = 0; q < p.kw; ++q) {
              const int ih = oh * p.sh - p.pt + i * p.dh, iw = ow * p.sw - p.pl + q * p.dw;
              if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
              const double v = x[(static_cast<size_t>(ih) * p.w + iw) * p.c + j];
              s += v * w[(static_cast<size_t>(i) * p.kw + q) * p.c + j], m = std::max(m, v), t += v, ++taps;
            }
          const size_t e = static_cast<size_t>(ow) * p.c + j;
          dw[e] = s, mx[e] = m, avg[e] = t / (p.kh * p.kw), avg_in[e] = taps ? t / taps : 0.0;
        }
      Guarded<float> y(row);
      k.depthwise_row(p, x.data(), w.data(), bias.data(), oh, y.data());
      bad += misses("depthwise_row", y.data(), dw, max_abs(dw), 1e-5) + !y.guards_intact();
      const std::vector<double>* want[3] = {&mx, &avg, &avg_in};
      for (int mode = 0; mode < 3; ++mode) {
        Guarded<float> z(row);
        k.pool_row(p, mode, x.data(), oh, z.data());
        bad += misses("pool_row", z.data(), *want[mode], max_abs(*want[mode]), 1e-6) + !z.guards_intact();
      }
    }
  }
  return bad == 0;
}

// The convolution nodes' reference: the direct convolution of x (b, h, w, c) with w (n rows of kh, kw,
// c / g taps: g groups, output n reads group n / (n / g)), stride s, padding pt (top) and pl (left),
// dilation d, to (b, ho, wo, n), in float64, then ReLU.
struct ConvShape {
  int b, h, w, c, n, g, kh, kw, s, pt, pl, d, ho, wo;
};

// ReLU(conv + bias + res), res (laid out as the output) when given.
std::vector<double> direct_conv(const ConvShape& q, const std::vector<float>& x, const std::vector<float>& w,
                                const std::vector<float>& bias, const std::vector<float>* res = nullptr) {
  const int cg = q.c / q.g, ng = q.n / q.g;
  std::vector<double> want(static_cast<size_t>(q.b) * q.ho * q.wo * q.n);
  for (int b = 0; b < q.b; ++b)
    for (int oh = 0; oh < q.ho; ++oh)
      for (int ow = 0; ow < q.wo; ++ow)
        for (int n = 0; n < q.n; ++n) {
          double s = bias[n];
          const int c0 = n / ng * cg;
          for (int i = 0; i < q.kh; ++i)
            for (int t = 0; t < q.kw; ++t) {
              const int ih = oh * q.s - q.pt + i * q.d, iw = ow * q.s - q.pl + t * q.d;
              if (ih < 0 || ih >= q.h || iw < 0 || iw >= q.w) continue;
              for (int c = 0; c < cg; ++c)
                s += static_cast<double>(x[((static_cast<size_t>(b) * q.h + ih) * q.w + iw) * q.c + c0 + c]) *
                     w[((static_cast<size_t>(n) * q.kh + i) * q.kw + t) * cg + c];
            }
          const size_t o = ((static_cast<size_t>(b) * q.ho + oh) * q.wo + ow) * q.n + n;
          want[o] = std::max(s + (res != nullptr ? (*res)[o] : 0.0f), 0.0);
        }
  return want;
}

// A plan of one convolution node (op, its ints, its packed weights: one, or a list) on x (an input),
// bias (a constant) and a residual res (a second input, when given); runs it into y and returns its
// status.
engine::RunStatus run_conv_plan(const EngineKernel& k, engine::Op op, const int64_t (&ints)[16],
                                const std::vector<std::unique_ptr<PackedDenseF32>>& packed, bool list,
                                const std::vector<float>& x, const std::vector<float>& bias, Guarded<float>& y,
                                const std::vector<float>* res = nullptr) {
  using engine::Space;
  std::vector<engine::Node> nodes(1);
  engine::Node& nd = nodes[0];
  nd.op = op;
  nd.in[0] = {Space::input, 0, 0}, nd.in[1] = {Space::constant, 0, 0};
  if (res != nullptr) nd.in[2] = {Space::input, 1, 0};
  nd.out[0] = {Space::output, 0, 0};
  std::copy(ints, ints + 16, nd.i);
  nd.wkind = engine::WeightKind::dense_f32, nd.weight = packed[0].get();
  if (list) {
    for (const auto& pw : packed) nd.weights.push_back(pw.get());
  }
  engine::Plan plan(nodes, 0, std::vector<const void*>{bias.data()}, k);
  const void* ins[2] = {x.data(), res != nullptr ? res->data() : nullptr};
  void* outs[1] = {y.data()};
  return plan.run(ins, outs, 64, nullptr).status;
}

// A conv2d node (2 images 11 x 13 x 6 -> 9 channels, 3 x 3, stride 2, padding 1, dilation 2) run by a
// plan on dense_f32 weights against the direct convolution: whole, in 3 groups (2 channels in, 3 out
// each: one packed weight per group), and on 3 channels (engine_f32's conv_row, no patches).
bool check_conv_node(const EngineKernel& k, const DenseKernel& dense) {
  std::mt19937 rng(19);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int B = 2, H = 11, W = 13, N = 9, KH = 3, KW = 3, S = 2, P = 1, D = 2;
  const int HO = (H + 2 * P - D * (KH - 1) - 1) / S + 1, WO = (W + 2 * P - D * (KW - 1) - 1) / S + 1;
  int bad = 0;
  // (channels, groups): patches and the product; 3 groups; 3 channels (computed directly, conv_row)
  for (const auto& cg_pair : {std::pair<int, int>{6, 1}, {6, 3}, {3, 1}}) {
    const int C = cg_pair.first, G = cg_pair.second;
    const int CG = C / G, NG = N / G;
    // the rows of every group's weight one after another: row n holds group n / NG's taps (kh, kw, c)
    std::vector<float> x(static_cast<size_t>(B) * H * W * C), w(static_cast<size_t>(N) * KH * KW * CG), bias(N);
    for (auto& e : x) e = nd(rng);
    for (auto& e : w) e = nd(rng);
    for (auto& e : bias) e = nd(rng);
    std::vector<std::unique_ptr<PackedDenseF32>> packed;
    for (int g = 0; g < G; ++g) packed.push_back(pack_dense_f32(dense, w.data() + static_cast<size_t>(g) * NG * KH * KW * CG,
                                                                NG, KH * KW * CG));
    const int64_t ints[16] = {B, H, W, C, HO, WO, KH, KW, S, S, P, P, D, D, static_cast<int64_t>(Activation::relu), N};
    std::vector<float> r(static_cast<size_t>(B) * HO * WO * N);
    for (auto& e : r) e = nd(rng);
    // with a residual: sigmoid(ReLU(conv + bias + r)), the node's ReLU and unary pass after the add
    const int64_t res_ints[16] = {B, H, W, C, HO, WO, KH, KW, S, S, P, P, D, D,
                                  static_cast<int64_t>(Activation::relu) + 4 * (1 + static_cast<int>(UnaryAct::sigmoid)), N};
    for (const bool with_res : {false, true}) {
      Guarded<float> y(static_cast<size_t>(B) * HO * WO * N);
      bad += run_conv_plan(k, engine::Op::conv2d, with_res ? res_ints : ints, packed, G > 1, x, bias, y,
                           with_res ? &r : nullptr) != engine::RunStatus::ok;
      std::vector<double> want =
          direct_conv({B, H, W, C, N, G, KH, KW, S, P, P, D, HO, WO}, x, w, bias, with_res ? &r : nullptr);
      if (with_res) {
        for (double& v : want) v = 1 / (1 + std::exp(-v));
      }
      const std::string what = std::string(G > 1 ? "grouped conv2d node" : C <= 4 ? "direct conv2d node" : "conv2d node") +
                               (with_res ? " + residual, sigmoid" : "");
      bad += misses(what.c_str(), y.data(), want, max_abs(want), 1e-5) + !y.guards_intact();
    }
  }
  return bad == 0;
}

// A winograd node (Winograd F(m x m, 3x3), m = 2 and 4) run by a plan on the transformed dense_f32
// weights against the direct 3x3 convolution: 2 images 9 x 11 x 10 -> 19 channels (channels that fill
// no vector of 8 or 16), padding 1 on top and bottom, 2 left and 1 right (last tiles partly outside
// the output), then one 40 x 40 image in several blocks of tiles; ReLU, then the sigmoid of the unary
// pass. NaN in the image is refused.
bool check_winograd_node(const EngineKernel& k, const DenseKernel& dense) {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  const double G4[6][3] = {{0.25, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                           {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
  int bad = 0;
  // (images, h, w, c, n, pt = pb, pl, pr, unary act + 1)
  const int cases[][9] = {{2, 9, 11, 10, 19, 1, 2, 1, 0}, {1, 40, 40, 8, 8, 1, 1, 1, 1 + static_cast<int>(UnaryAct::sigmoid)}};
  for (const int tm : {2, 4}) {
    const int A = tm + 2;
    for (const auto& cs : cases) {
      const int B = cs[0], H = cs[1], W = cs[2], C = cs[3], N = cs[4], P = cs[5], PL = cs[6], PR = cs[7];
      const int HO = H + 2 * P - 2, WO = W + PL + PR - 2;
      std::vector<float> x(static_cast<size_t>(B) * H * W * C), w(static_cast<size_t>(N) * 9 * C), bias(N);
      for (auto& e : x) e = nd(rng);
      for (auto& e : w) e = nd(rng);
      for (auto& e : bias) e = nd(rng);
      std::vector<std::unique_ptr<PackedDenseF32>> packed;
      std::vector<float> u(static_cast<size_t>(N) * C);
      for (int a = 0; a < A; ++a)
        for (int b = 0; b < A; ++b) {
          for (int n = 0; n < N; ++n)
            for (int c = 0; c < C; ++c) {
              double s = 0;
              for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) {
                  const double ga = tm == 2 ? G2[a][i] : G4[a][i], gb = tm == 2 ? G2[b][j] : G4[b][j];
                  s += ga * w[((static_cast<size_t>(n) * 3 + i) * 3 + j) * C + c] * gb;
                }
              u[static_cast<size_t>(n) * C + c] = static_cast<float>(s);
            }
          packed.push_back(pack_dense_f32(dense, u.data(), N, C));
        }
      const int64_t ints[16] = {B, H, W, C, HO, WO, 3, 3, 1, 1, P, PL, 1, 1,
                                static_cast<int64_t>(Activation::relu) + 4 * cs[8], N};
      std::vector<float> r(static_cast<size_t>(B) * HO * WO * N);
      for (auto& e : r) e = nd(rng);
      for (const bool with_res : {false, true}) {  // with a residual: ReLU(conv + bias + r), then the unary
        Guarded<float> y(static_cast<size_t>(B) * HO * WO * N);
        bad += run_conv_plan(k, engine::Op::winograd, ints, packed, true, x, bias, y, with_res ? &r : nullptr) !=
               engine::RunStatus::ok;
        std::vector<double> want =
            direct_conv({B, H, W, C, N, 1, 3, 3, 1, P, PL, 1, HO, WO}, x, w, bias, with_res ? &r : nullptr);
        if (cs[8]) {
          for (double& v : want) v = 1 / (1 + std::exp(-v));
        }
        // F(4x4) rounds about ten times more than the direct sums (its transforms scale by up to 8 and 1/6)
        const std::string what = std::string(tm == 2 ? "winograd F(2x2) node" : "winograd F(4x4) node") +
                                 (with_res ? " + residual" : "");
        bad += misses(what.c_str(), y.data(), want, max_abs(want), tm == 2 ? 1e-5 : 5e-5) + !y.guards_intact();
      }
      x[x.size() / 2] = NAN;
      Guarded<float> y(static_cast<size_t>(B) * HO * WO * N);
      bad += run_conv_plan(k, engine::Op::winograd, ints, packed, true, x, bias, y) != engine::RunStatus::nonfinite_input;
    }
  }
  return bad == 0;
}

// A winograd_s8 node (integer Winograd F(2x2, 3x3), engine kernel k's winograd_s8 tier) against the
// conv2d node on the same packed int8 weight (the scalar gemm_s8 kernel s8): the same bits, since the
// integer sums are the same and the epilogue is the product's. Asymmetric codes (zero point 128)
// with ReLU over 2 images 9 x 11 x 10 -> 19 (odd channel pairs, a part-filled panel, padding 2 on
// the left: last tiles partly outside); symmetric codes with the sigmoid of the unary pass over
// 40 x 40 x 33 (several blocks of tiles); the largest exact channel count with every code 255 - 0
// against weights of +-127, 4 times the sums just below 2^31; a dynamic scale per image over 3
// images of different ranges (conv2d's per-image codes too). NaN in the image is refused.
bool check_winograd_s8_node(const EngineKernel& k, const GemmS8Kernel& s8) {
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> wd(-127, 127);
  const int G2[4][3] = {{2, 0, 0}, {1, 1, 1}, {1, -1, 1}, {0, 0, 2}};
  int bad = 0;
  // (images, h, w, c, n, pt = pb, pl, pr, scheme, unary act + 1, extremes)
  const int cases[][11] = {
      {2, 9, 11, 10, 19, 1, 2, 1, static_cast<int>(ActScheme::static_asymmetric), 0, 0},
      {1, 40, 40, 33, 16, 1, 1, 1, static_cast<int>(ActScheme::static_symmetric), 1 + static_cast<int>(UnaryAct::sigmoid), 0},
      {1, 4, 4, kWinogradS8MaxChannels, 16, 1, 1, 1, static_cast<int>(ActScheme::static_asymmetric), 0, 1},
      {3, 7, 6, 24, 20, 1, 1, 0, static_cast<int>(ActScheme::dynamic_symmetric), 0, 0}};
  for (const auto& cs : cases) {
    const int B = cs[0], H = cs[1], W = cs[2], C = cs[3], N = cs[4], P = cs[5], PL = cs[6], PR = cs[7];
    const int HO = H + 2 * P - 2, WO = W + PL + PR - 2, KP = (C + 1) / 2, PANELS = (N + 15) / 16;
    const bool extremes = cs[10] != 0;
    std::vector<float> x(static_cast<size_t>(B) * H * W * C), bias(N), scale(N);
    std::vector<int8_t> w(static_cast<size_t>(N) * 9 * C);
    for (size_t i = 0; i < x.size(); ++i) {  // images of different ranges (a dynamic scale per image)
      x[i] = extremes ? 100.0f : nd(rng) * static_cast<float>(1 + 4 * (i / (static_cast<size_t>(H) * W * C)));
    }
    for (size_t i = 0; i < w.size(); ++i) w[i] = extremes ? (i / (9 * C) % 2 ? -127 : 127) : static_cast<int8_t>(wd(rng));
    for (auto& e : bias) e = nd(rng);
    for (auto& e : scale) e = 0.01f * (1.0f + std::fabs(nd(rng)));
    auto packed = pack_s8_weight(s8, w.data(), N, 9 * C, scale.data(), N);
    // U[e] = (2G) g (2G)^T in the node's layout [16][panels][c pairs][16][2]
    std::vector<int16_t> u(static_cast<size_t>(16) * PANELS * KP * 32, 0);
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b)
        for (int n = 0; n < N; ++n)
          for (int c = 0; c < C; ++c) {
            int v = 0;
            for (int i = 0; i < 3; ++i)
              for (int j = 0; j < 3; ++j) v += G2[a][i] * w[(static_cast<size_t>(n) * 9 + i * 3 + j) * C + c] * G2[b][j];
            u[((((static_cast<size_t>(4 * a + b) * PANELS + n / 16) * KP + c / 2) * 16 + n % 16) * 2 + c % 2)] =
                static_cast<int16_t>(v);
          }
    std::vector<engine::Node> nodes(1);
    engine::Node& nd0 = nodes[0];
    nd0.in[0] = {engine::Space::input, 0, 0}, nd0.in[1] = {engine::Space::constant, 0, 0};
    nd0.out[0] = {engine::Space::output, 0, 0};
    const int64_t ints[16] = {B, H, W, C, HO, WO, 3, 3, 1, 1, P, PL, 1, 1,
                              static_cast<int64_t>(Activation::relu) * (cs[9] == 0) + 4 * cs[9], N};
    std::copy(ints, ints + 16, nd0.i);
    nd0.wkind = engine::WeightKind::s8, nd0.weight = packed.get();
    nd0.aq.scheme = static_cast<ActScheme>(cs[8]);
    nd0.aq.scale = extremes ? 0.25f : 0.02f;
    nd0.aq.zero_point = cs[8] == static_cast<int>(ActScheme::static_asymmetric) && !extremes ? 128 : 0;
    const size_t ny = static_cast<size_t>(B) * HO * WO * N;
    std::vector<float> r(ny);
    for (auto& e : r) e = nd(rng) * 4;
    auto run = [&](engine::Op op, float* y, bool with_res) {
      nodes[0].op = op;
      nodes[0].weight2 = op == engine::Op::winograd_s8 ? u.data() : nullptr;
      nodes[0].in[2] = with_res ? engine::Ref{engine::Space::input, 1, 0} : engine::Ref{};
      engine::Plan plan(nodes, 0, std::vector<const void*>{bias.data()}, k);
      const void* ins[2] = {x.data(), r.data()};
      void* outs[1] = {y};
      return plan.run(ins, outs, 64, nullptr).status;
    };
    // with a residual: added in the output transform, in conv2d after its product; the same bits
    for (const bool with_res : {false, true}) {
      Guarded<float> y(ny), want(ny);
      bad += run(engine::Op::winograd_s8, y.data(), with_res) != engine::RunStatus::ok;
      bad += run(engine::Op::conv2d, want.data(), with_res) != engine::RunStatus::ok;
      int differ = 0;
      for (size_t i = 0; i < ny; ++i) differ += std::memcmp(y.data() + i, want.data() + i, 4) != 0;
      if (differ != 0 || !y.guards_intact()) {
        std::printf("  FAIL winograd_s8 node (%d x %d x %d -> %d%s): %d outputs differ from conv2d's\n", H, W, C, N,
                    with_res ? ", residual" : "", differ);
        ++bad;
      }
    }
    x[x.size() / 2] = NAN;
    Guarded<float> y(ny);
    bad += run(engine::Op::winograd_s8, y.data(), false) != engine::RunStatus::nonfinite_input;
  }
  return bad == 0;
}

bool check_decoder_ops(const EngineKernel& k) {
  using engine::Space;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int bad = 0;
  for (int act = 0; act < 2; ++act) {
    const int n = 37;
    std::vector<float> g(n), u(n), y(n);
    std::vector<double> want(n);
    for (int i = 0; i < n; ++i) g[i] = 4 * nd(rng), u[i] = nd(rng);
    k.glu(act, g.data(), u.data(), y.data(), n);
    for (int i = 0; i < n; ++i) {
      const double x = g[i];
      const double a = act == 0 ? x / (1 + std::exp(-x))
                                : 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
      want[i] = a * u[i];
    }
    bad += misses(act ? "glu gelu_tanh" : "glu silu", y.data(), want, max_abs(want), 2e-6);
  }
  const int H = 4, KV = 2, D = 8, W = (H + 2 * KV) * D, N = 13;
  std::vector<float> x(N * W), freq(D / 2), gamma(2 * D);
  for (auto& e : x) e = nd(rng);
  for (auto& e : gamma) e = 1 + 0.3f * nd(rng);
  for (int j = 0; j < D / 2; ++j) freq[j] = static_cast<float>(std::pow(10000.0, -2.0 * j / D));
  for (int window : {0, 4}) {
    // node 0: rope (neox, per-head norms) into the arena; node 1: kv_attention into the output
    auto plan_for = [&](int tokens, int slots) {
      std::vector<engine::Node> nodes(2);
      nodes[0].op = engine::Op::rope;
      nodes[0].in[0] = {Space::input, 0, 0}, nodes[0].in[1] = {Space::input, 1, 0};
      nodes[0].in[2] = {Space::constant, 0, 0}, nodes[0].in[3] = {Space::constant, 1, 0};
      nodes[0].out[0] = {Space::arena, 0, 0};
      const int64_t ri[7] = {tokens, H, KV, D, D, 1, W};
      std::copy(ri, ri + 7, nodes[0].i);
      nodes[0].f[0] = 1e-6f;
      nodes[1].op = engine::Op::kv_attention;
      nodes[1].in[0] = {Space::arena, 0, 0}, nodes[1].in[1] = {Space::input, 2, 0};
      nodes[1].in[2] = {Space::input, 3, 0}, nodes[1].in[3] = {Space::input, 1, 0};
      nodes[1].out[0] = {Space::output, 0, 0};
      const int64_t ai[7] = {tokens, H, KV, D, slots, window, W};
      std::copy(ai, ai + 7, nodes[1].i);
      nodes[1].f[0] = 0.35f;
      return std::make_unique<engine::Plan>(nodes, 4 * tokens * W, std::vector<const void*>{freq.data(), gamma.data()}, k);
    };
    // one call over all N tokens (a cache of N slots)
    std::vector<float> kc(N * KV * D), vc(N * KV * D), whole(N * H * D);
    int64_t pos = 0;
    {
      auto plan = plan_for(N, N);
      const void* ins[4] = {x.data(), &pos, kc.data(), vc.data()};
      void* outs[1] = {whole.data()};
      if (plan->run(ins, outs, 64, nullptr).status != engine::RunStatus::ok) ++bad;
    }
    // one token per call, the window's layers in a ring of `window` slots
    const int slots = window ? window : N;
    std::vector<float> kr(slots * KV * D), vr(slots * KV * D), steps(N * H * D);
    auto step = plan_for(1, slots);
    for (pos = 0; pos < N; ++pos) {
      const void* ins[4] = {x.data() + pos * W, &pos, kr.data(), vr.data()};
      void* outs[1] = {steps.data() + pos * H * D};
      if (step->run(ins, outs, 64, nullptr).status != engine::RunStatus::ok) ++bad;
    }
    std::vector<double> want(whole.begin(), whole.end());
    bad += misses(window ? "kv_attention ring vs whole" : "kv_attention steps vs whole", steps.data(), want,
                  max_abs(want), 1e-5);
    if (window == 0) {  // the cache is full: one more position is refused
      pos = N;
      const void* ins[4] = {x.data(), &pos, kr.data(), vr.data()};
      void* outs[1] = {steps.data()};
      const engine::RunResult rr = step->run(ins, outs, 64, nullptr);
      if (rr.status != engine::RunStatus::bad_input || rr.node != 1) ++bad;
    }
  }
  // embedding from 4-bit halves: d (16 (hi - 8) + lo), 2 rows of 64 values
  {
    const int R = 2, C = 64;
    std::vector<uint8_t> hi(R * C / 2), lo(R * C / 2);
    std::vector<uint16_t> d = {0x3c00, 0x3800, 0x4000, 0xb400};  // 1, 0.5, 2, -0.25
    for (auto& b : hi) b = static_cast<uint8_t>(rng());
    for (auto& b : lo) b = static_cast<uint8_t>(rng());
    std::vector<engine::Node> nodes(1);
    nodes[0].op = engine::Op::embedding;
    nodes[0].in[0] = {Space::input, 0, 0}, nodes[0].in[1] = {Space::constant, 0, 0};
    nodes[0].in[2] = {Space::constant, 1, 0}, nodes[0].in[3] = {Space::constant, 2, 0};
    nodes[0].out[0] = {Space::output, 0, 0};
    nodes[0].i[0] = 3, nodes[0].i[1] = C, nodes[0].i[2] = R, nodes[0].i[3] = 2;
    engine::Plan plan(nodes, 0, {hi.data(), lo.data(), d.data()}, k);
    std::vector<int64_t> ids = {1, 0, 1};
    std::vector<float> y(3 * C);
    const void* ins[1] = {ids.data()};
    void* outs[1] = {y.data()};
    if (plan.run(ins, outs, 64, nullptr).status != engine::RunStatus::ok) ++bad;
    const double scales[4] = {1, 0.5, 2, -0.25};
    std::vector<double> want(3 * C);
    for (int t = 0; t < 3; ++t)
      for (int e = 0; e < C; ++e) {
        const int r = static_cast<int>(ids[t]), sh = (e & 1) * 4;
        const int q = 16 * (((hi[r * C / 2 + e / 2] >> sh) & 15) - 8) + ((lo[r * C / 2 + e / 2] >> sh) & 15);
        want[t * C + e] = scales[r * 2 + e / 32] * q;
      }
    bad += misses("embedding (4-bit halves)", y.data(), want, 0.0, 0.0);
  }
  return bad == 0;
}

// Each op of the family against float64 over sizes that are not multiples of any vector width, then
// a small program through the executor (embedding -> attention with padding, causal and grouped
// heads -> a dense_f32 linear -> LayerNorm with the residual -> mean pool) against float64, run
// twice with the same bits, and an out-of-range token id refused by status.
bool check_engine_kernel(const EngineKernel& k) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int bad = 0;
  for (int n : {1, 7, 33, 100, 384, 513}) {
    std::vector<float> x(n), r(n), g(n), be(n), y(n), sum(n);
    for (int i = 0; i < n; ++i) x[i] = 3 * nd(rng), r[i] = nd(rng), g[i] = nd(rng), be[i] = nd(rng);
    std::vector<double> want(n), v(n);
    // gelu (erf form)
    k.gelu(x.data(), y.data(), n);
    for (int i = 0; i < n; ++i) want[i] = 0.5 * x[i] * std::erfc(-x[i] / std::sqrt(2.0));
    bad += misses("gelu", y.data(), want, 0.0, 1e-6);
    // softmax
    std::copy(x.begin(), x.end(), y.begin());
    k.softmax_row(y.data(), n);
    double mx = -1e300, tot = 0;
    for (int i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
    for (int i = 0; i < n; ++i) tot += want[i] = std::exp(double(x[i]) - mx);
    for (int i = 0; i < n; ++i) want[i] /= tot;
    bad += misses("softmax", y.data(), want, 0.0, 1e-6);
    // LayerNorm and RMSNorm of x + r, with the sum
    for (int rms = 0; rms < 2; ++rms) {
      k.norm_row(x.data(), r.data(), g.data(), rms ? nullptr : be.data(), 1e-5f, rms != 0, n, y.data(), sum.data());
      double mean = 0, var = 0;
      for (int i = 0; i < n; ++i) v[i] = double(float(x[i] + r[i])), mean += rms ? 0 : v[i] / n;
      for (int i = 0; i < n; ++i) var += (v[i] - mean) * (v[i] - mean) / n;
      for (int i = 0; i < n; ++i) want[i] = (v[i] - mean) / std::sqrt(var + 1e-5) * g[i] + (rms ? 0 : be[i]);
      bad += misses(rms ? "rmsnorm" : "layernorm", y.data(), want, max_abs(want), 1e-5);
      bad += misses("norm sum", sum.data(), v, 0.0, 0.0);
    }
    // add with a broadcast operand
    const int nb = std::max(1, n / 3);
    k.binary(0, x.data(), r.data(), nb, y.data(), n);
    for (int i = 0; i < n; ++i) want[i] = double(float(x[i] + r[i % nb]));
    bad += misses("add", y.data(), want, 0.0, 0.0);
  }
  for (int m : {1, 3, 5, 17}) for (int n : {1, 9, 16, 33}) for (int kk : {1, 8, 37}) {
    std::vector<float> a(m * kk), b(kk * n), c(m * n);
    for (auto& e : a) e = nd(rng);
    for (auto& e : b) e = nd(rng);
    k.gemm_nn(m, n, kk, 0.5f, a.data(), kk, b.data(), n, c.data(), n);
    std::vector<double> want(m * n);
    double mag = 0;
    for (int i = 0; i < m; ++i) for (int j = 0; j < n; ++j) {
      double acc = 0, am = 0;
      for (int p = 0; p < kk; ++p) acc += double(a[i * kk + p]) * b[p * n + j], am += std::fabs(a[i * kk + p] * b[p * n + j]);
      want[i * n + j] = 0.5 * acc;
      mag = std::max(mag, am);
    }
    bad += misses("gemm_nn", c.data(), want, mag, 1e-6);
  }
  // The program: batch 2, seq 5 (row 1 padded after 3 tokens), 4 query heads and 2 kv heads of 3.
  const int B = 2, S = 5, H = 4, KV = 2, D = 3, V = 11, W = (H + 2 * KV) * D, HD = H * D;
  std::vector<float> table(V * W), lw(HD * HD), gamma(HD), beta(HD);
  for (auto* vec : {&table, &lw, &gamma, &beta}) for (auto& e : *vec) e = nd(rng);
  std::vector<int64_t> ids = {1, 4, 9, 10, 0, 3, 3, 7, 2, 2}, mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  auto pw = pack_dense_f32(*dense_f32_select(k.isa), lw.data(), HD, HD);
  using engine::Ref;
  using engine::Space;
  const int64_t qkv_at = 0, att_at = 4 * B * S * W, lin_at = att_at + 4 * B * S * HD, ln_at = lin_at + 4 * B * S * HD;
  std::vector<engine::Node> nodes(5);
  nodes[0].op = engine::Op::embedding;
  nodes[0].in[0] = {Space::input, 0, 0}, nodes[0].in[1] = {Space::constant, 0, 0}, nodes[0].out[0] = {Space::arena, 0, qkv_at};
  nodes[0].i[0] = B * S, nodes[0].i[1] = W, nodes[0].i[2] = V;
  for (int causal = 0; causal < 2; ++causal) {
    nodes[1].op = engine::Op::attention;
    nodes[1].in[0] = {Space::arena, 0, qkv_at}, nodes[1].in[1] = {Space::arena, 0, qkv_at + 4 * H * D};
    nodes[1].in[2] = {Space::arena, 0, qkv_at + 4 * (H + KV) * D}, nodes[1].in[3] = {Space::input, 1, 0};
    nodes[1].out[0] = {Space::arena, 0, att_at};
    const int64_t ai[10] = {B, S, H, KV, D, W, causal, S, W, W};
    std::copy(ai, ai + 10, nodes[1].i);
    nodes[1].f[0] = 0.5f;
    nodes[2].op = engine::Op::linear, nodes[2].wkind = engine::WeightKind::dense_f32, nodes[2].weight = pw.get();
    nodes[2].in[0] = {Space::arena, 0, att_at}, nodes[2].out[0] = {Space::arena, 0, lin_at};
    nodes[2].i[0] = B * S, nodes[2].i[1] = HD;
    nodes[3].op = engine::Op::norm;
    nodes[3].in[0] = {Space::arena, 0, lin_at}, nodes[3].in[1] = {Space::arena, 0, att_at};
    nodes[3].in[2] = {Space::constant, 1, 0}, nodes[3].in[3] = {Space::constant, 2, 0}, nodes[3].out[0] = {Space::arena, 0, ln_at};
    nodes[3].i[0] = B * S, nodes[3].i[1] = HD, nodes[3].f[0] = 1e-5f;
    nodes[4].op = engine::Op::mean_pool;
    nodes[4].in[0] = {Space::arena, 0, ln_at}, nodes[4].in[1] = {Space::input, 1, 0}, nodes[4].out[0] = {Space::output, 0, 0};
    nodes[4].i[0] = B, nodes[4].i[1] = S, nodes[4].i[2] = HD;
    engine::Plan plan(nodes, ln_at + 4 * B * S * HD, {table.data(), gamma.data(), beta.data()}, k);
    std::vector<float> out(B * HD, -1.0f), again(B * HD);
    const void* ins[2] = {ids.data(), mask.data()};
    void* outs[1] = {out.data()};
    if (plan.run(ins, outs, 64, nullptr).status != engine::RunStatus::ok) ++bad;
    outs[0] = again.data();
    if (plan.run(ins, outs, 64, nullptr).status != engine::RunStatus::ok || std::memcmp(out.data(), again.data(), 4 * out.size())) ++bad;
    // float64 reference of the same program
    std::vector<float> qkv(B * S * W);
    for (int t = 0; t < B * S; ++t) std::copy(&table[ids[t] * W], &table[ids[t] * W] + W, &qkv[t * W]);
    std::vector<double> att = attention_ref(qkv, mask, B, S, H, KV, D, causal != 0, 0.5), want(B * HD, 0.0);
    for (int b = 0; b < B; ++b) {
      int kept = 0;
      for (int s2 = 0; s2 < S; ++s2) {
        const int t = b * S + s2;
        std::vector<double> v(HD);
        double mean = 0, var = 0;
        for (int o = 0; o < HD; ++o) {
          double acc = 0;
          for (int p = 0; p < HD; ++p) acc += att[t * HD + p] * lw[o * HD + p];
          v[o] = acc + att[t * HD + o];
          mean += v[o] / HD;
        }
        for (int o = 0; o < HD; ++o) var += (v[o] - mean) * (v[o] - mean) / HD;
        if (!mask[t]) continue;
        ++kept;
        for (int o = 0; o < HD; ++o) want[b * HD + o] += (v[o] - mean) / std::sqrt(var + 1e-5) * gamma[o] + beta[o];
      }
      for (int o = 0; o < HD; ++o) want[b * HD + o] /= kept;
    }
    bad += misses(causal ? "program (causal)" : "program", out.data(), want, max_abs(want), 1e-4);
    // The same attention on packed sequences (pack -> gather -> attention -> scatter) gives the
    // padded one's rows at the tokens and zeros at the padding.
    {
      const int T = 8;  // tokens of `mask`
      const int64_t e_at = 0, idx_at = 4 * B * S * W, off_at = idx_at + 8 * T, rows_at = off_at + 8 * (B + 1);
      const int64_t patt_at = rows_at + 4 * T * W, att2_at = patt_at + 4 * T * HD;
      std::vector<engine::Node> pk(6), pd(2);
      pk[0] = nodes[0];
      pk[0].out[0] = {Space::arena, 0, e_at};
      pk[1].op = engine::Op::pack, pk[1].in[0] = {Space::input, 1, 0};
      pk[1].out[0] = {Space::arena, 0, idx_at}, pk[1].out[1] = {Space::arena, 0, off_at};
      pk[1].i[0] = B, pk[1].i[1] = S, pk[1].i[2] = T;
      pk[2].op = engine::Op::gather, pk[2].in[0] = {Space::arena, 0, e_at}, pk[2].in[1] = {Space::arena, 0, idx_at};
      pk[2].out[0] = {Space::arena, 0, rows_at}, pk[2].i[0] = B * S, pk[2].i[1] = 4 * W, pk[2].i[2] = T;
      pk[3] = nodes[1];
      pk[3].in[0] = {Space::arena, 0, rows_at}, pk[3].in[1] = {Space::arena, 0, rows_at + 4 * H * D};
      pk[3].in[2] = {Space::arena, 0, rows_at + 4 * (H + KV) * D}, pk[3].in[3] = {Space::arena, 0, off_at};
      pk[3].out[0] = {Space::arena, 0, patt_at};
      pk[3].i[1] = T, pk[3].i[7] = T, pk[3].i[10] = 1;
      pk[4].op = engine::Op::scatter, pk[4].in[0] = {Space::arena, 0, patt_at}, pk[4].in[1] = {Space::arena, 0, idx_at};
      pk[4].out[0] = {Space::output, 0, 0}, pk[4].i[0] = B * S, pk[4].i[1] = 4 * HD, pk[4].i[2] = T;
      pk.resize(5);
      pd[0] = nodes[0];
      pd[1] = nodes[1];
      pd[1].out[0] = {Space::output, 0, 0};
      pd.resize(2);
      engine::Plan packed_plan(pk, att2_at, {table.data(), gamma.data(), beta.data()}, k);
      engine::Plan padded_plan(pd, att_at, {table.data(), gamma.data(), beta.data()}, k);
      std::vector<float> yp(B * S * HD, -1.0f), yd(B * S * HD);
      const void* ins2[2] = {ids.data(), mask.data()};
      void* op[1] = {yp.data()};
      void* od[1] = {yd.data()};
      if (packed_plan.run(ins2, op, 64, nullptr).status != engine::RunStatus::ok) ++bad;
      if (padded_plan.run(ins2, od, 64, nullptr).status != engine::RunStatus::ok) ++bad;
      std::vector<double> want(B * S * HD);
      for (int t = 0; t < B * S; ++t)
        for (int o = 0; o < HD; ++o) want[t * HD + o] = mask[t] ? yd[t * HD + o] : 0.0;
      bad += misses(causal ? "packed attention (causal)" : "packed attention", yp.data(), want, max_abs(want), 1e-6);
      std::vector<int64_t> more = mask;
      more[8] = 1;  // a token the plan was not made for
      const void* ins3[2] = {ids.data(), more.data()};
      if (packed_plan.run(ins3, op, 64, nullptr).status != engine::RunStatus::bad_input) ++bad;
    }
    std::vector<int64_t> bad_ids = ids;
    bad_ids[7] = V;
    const void* bad_ins[2] = {bad_ids.data(), mask.data()};
    const engine::RunResult rr = plan.run(bad_ins, outs, 64, nullptr);
    if (rr.status != engine::RunStatus::index_out_of_range || rr.node != 0) ++bad;
  }
  const DenseKernel* const* dense = nullptr;
  dense_f32_kernels(&dense);  // the first: the scalar product under the conv2d node
  const GemmS8Kernel* const* s8 = nullptr;
  gemm_s8_kernels(&s8);  // the first: the scalar int8 product
  return bad == 0 && check_decoder_ops(k) && check_window_ops(k) && check_conv_node(k, *dense[0]) &&
         check_winograd_node(k, *dense[0]) && check_winograd_s8_node(k, *s8[0]);
}

// --- dense_f32 and the low-rank product -------------------------------------------------------

// |got - ref| <= tol * mag + tiny at every element of a (m, n) result; prints the first misses.
int count_misses(const char* what, const Shape& s, const float* got, const std::vector<double>& ref,
                 const std::vector<double>& mag, double tol) {
  int misses = 0;
  for (size_t e = 0; e < ref.size(); ++e) {
    if (std::fabs(got[e] - ref[e]) > tol * mag[e] + 1e-30) {
      if (++misses <= 3) std::printf("  FAIL %s (%d, %d, %d) at %zu: %g vs %g\n", what, s.m, s.k, s.n, e, got[e], ref[e]);
    }
  }
  return misses;
}

// Every dense kernel against float64 references over the sweep: the plain product (relu, bias) within
// 1e-5 * (|x| @ |W|.T), and the low-rank product with ranks 1, 16 and 37 within 2e-5 of its magnitude.
bool check_dense_kernel(const DenseKernel& kern) {
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  int failures = 0, i = 0;
  auto fill = [&](size_t n) { std::vector<float> v(n); for (auto& e : v) e = u(rng); return v; };
  for (const Shape& s : sweep()) {
    const size_t mn = static_cast<size_t>(s.m) * s.n;
    std::vector<float> x = fill(static_cast<size_t>(s.m) * s.k), w = fill(static_cast<size_t>(s.n) * s.k), bias = fill(s.n);
    auto pw = pack_dense_f32(kern, w.data(), s.n, s.k);
    Guarded<float> y(mn);
    if (dense_f32(*pw, x.data(), s.k, s.m, bias.data(), Activation::relu, y.data(), 64) != GemmStatus::ok) ++failures;
    if (!y.guards_intact()) ++failures;
    std::vector<double> ref(mn), mag(mn);
    for (int a = 0; a < s.m; ++a)
      for (int c = 0; c < s.n; ++c) {
        double r = bias[c], g = std::fabs(bias[c]);
        for (int q = 0; q < s.k; ++q) {
          const double p = static_cast<double>(x[static_cast<size_t>(a) * s.k + q]) * w[static_cast<size_t>(c) * s.k + q];
          r += p, g += std::fabs(p);
        }
        ref[static_cast<size_t>(a) * s.n + c] = r > 0 ? r : 0, mag[static_cast<size_t>(a) * s.n + c] = g;
      }
    failures += count_misses(kern.name, s, y.data(), ref, mag, 1e-5);
    const int rank = (const int[]){1, 16, 37}[(i++) % 3];
    std::vector<float> vf = fill(static_cast<size_t>(rank) * s.k), uf = fill(static_cast<size_t>(s.n) * rank);
    auto pv = pack_dense_f32(kern, vf.data(), rank, s.k);
    auto pu = pack_dense_f32(kern, uf.data(), s.n, rank);
    Guarded<float> z(mn);
    if (lowrank_f32(*pv, *pu, x.data(), s.k, s.m, bias.data(), Activation::none, z.data(), 64) != GemmStatus::ok) ++failures;
    if (!z.guards_intact()) ++failures;
    for (int a = 0; a < s.m; ++a) {
      std::vector<double> t(rank), tm(rank);
      for (int j = 0; j < rank; ++j)
        for (int q = 0; q < s.k; ++q) {
          const double p = static_cast<double>(x[static_cast<size_t>(a) * s.k + q]) * vf[static_cast<size_t>(j) * s.k + q];
          t[j] += p, tm[j] += std::fabs(p);
        }
      for (int c = 0; c < s.n; ++c) {
        double r = bias[c], g = std::fabs(bias[c]);
        for (int j = 0; j < rank; ++j) r += t[j] * uf[static_cast<size_t>(c) * rank + j], g += tm[j] * std::fabs(uf[static_cast<size_t>(c) * rank + j]);
        ref[static_cast<size_t>(a) * s.n + c] = r, mag[static_cast<size_t>(a) * s.n + c] = g;
      }
    }
    failures += count_misses(kern.name, s, z.data(), ref, mag, 2e-5);
    std::vector<float> bad(x);
    bad[bad.size() / 2] = NAN;
    std::vector<float> y2(mn);
    if (dense_f32(*pw, bad.data(), s.k, s.m, nullptr, Activation::none, y2.data(), 64) != GemmStatus::nonfinite_input) ++failures;
    if (lowrank_f32(*pv, *pu, bad.data(), s.k, s.m, nullptr, Activation::none, y2.data(), 64) != GemmStatus::nonfinite_input) ++failures;
  }
  return failures == 0;
}

// --- sparse_nm_f32 -----------------------------------------------------------------------------

// A random weight with the n:m pattern and its canonical arrays (sparse_nm.h): in each group, `kept`
// distinct random positions in increasing order, each holding a nonzero with probability `density`
// (so groups with fewer nonzeros store zeros too); row n / 2 is all zero.
struct NmWeight {
  std::vector<float> dense, values;
  std::vector<uint8_t> meta;
};

NmWeight nm_weight(const Shape& s, int kept, int group, float density, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), p01(0.0f, 1.0f);
  const int groups = (s.k + group - 1) / group, row_values = groups * kept, bits = group == 8 ? 4 : 2;
  const int row_meta = (row_values * bits + 7) / 8;
  NmWeight w;
  w.dense.assign(static_cast<size_t>(s.n) * s.k, 0.0f);
  w.values.assign(static_cast<size_t>(s.n) * row_values, 0.0f);
  w.meta.assign(static_cast<size_t>(s.n) * row_meta, 0);
  std::vector<int> order(group);
  for (int r = 0; r < s.n; ++r)
    for (int g = 0; g < groups; ++g) {
      for (int i = 0; i < group; ++i) order[i] = i;
      for (int i = group - 1; i > 0; --i) std::swap(order[i], order[std::uniform_int_distribution<int>(0, i)(rng)]);
      std::sort(order.begin(), order.begin() + kept);
      for (int q = 0; q < kept; ++q) {
        const int pos = order[q], col = g * group + pos, j = g * kept + q;
        const float v = col < s.k && r != s.n / 2 && p01(rng) < density ? u(rng) : 0.0f;
        w.values[static_cast<size_t>(r) * row_values + j] = v;
        if (col < s.k) w.dense[static_cast<size_t>(r) * s.k + col] = v;
        w.meta[static_cast<size_t>(r) * row_meta + j * bits / 8] |= static_cast<uint8_t>(pos << (j * bits % 8));
      }
    }
  return w;
}

// Every sparse_nm kernel against a float64 dense reference within 1e-5 * (|x| @ |W|.T), for the
// three patterns over the sweep at densities 1 (every kept slot nonzero) to 0 (an all-zero weight),
// with and without bias + relu; NaN and Inf in x are refused.
bool check_nm_kernel(const SparseNmKernel& kern) {
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int patterns[3][2] = {{2, 4}, {1, 4}, {4, 8}};
  const float densities[4] = {1.0f, 0.7f, 0.3f, 0.0f};
  int failures = 0, i = 0;
  for (const Shape& s : sweep()) {
    for (const auto& pat : patterns) {
      const NmWeight w = nm_weight(s, pat[0], pat[1], densities[(i++) % 4], rng);
      auto pw = pack_sparse_nm_f32(kern, s.n, s.k, pat[0], pat[1], w.values.data(), w.meta.data());
      std::vector<float> x(static_cast<size_t>(s.m) * s.k), bias(s.n);
      for (auto& v : x) v = u(rng);
      for (auto& v : bias) v = u(rng);
      const bool epilogue = i % 2 == 0;
      const size_t mn = static_cast<size_t>(s.m) * s.n;
      Guarded<float> y(mn);
      if (sparse_nm_f32(*pw, x.data(), s.k, s.m, epilogue ? bias.data() : nullptr,
                        epilogue ? Activation::relu : Activation::none, y.data(), 64) != GemmStatus::ok) ++failures;
      if (!y.guards_intact()) ++failures;
      std::vector<double> ref(mn), mag(mn);
      for (int a = 0; a < s.m; ++a)
        for (int c = 0; c < s.n; ++c) {
          double r = epilogue ? bias[c] : 0.0, g = std::fabs(r);
          for (int q = 0; q < s.k; ++q) {
            const double p = static_cast<double>(x[static_cast<size_t>(a) * s.k + q]) * w.dense[static_cast<size_t>(c) * s.k + q];
            r += p, g += std::fabs(p);
          }
          ref[static_cast<size_t>(a) * s.n + c] = epilogue && r < 0 ? 0.0 : r, mag[static_cast<size_t>(a) * s.n + c] = g;
        }
      const std::string what = std::string(kern.name) + " " + std::to_string(pat[0]) + ":" + std::to_string(pat[1]);
      failures += count_misses(what.c_str(), s, y.data(), ref, mag, 1e-5);
      for (float bad_value : {NAN, INFINITY}) {
        std::vector<float> bad(x);
        bad[bad.size() / 2] = bad_value;
        std::vector<float> y2(mn);
        if (sparse_nm_f32(*pw, bad.data(), s.k, s.m, nullptr, Activation::none, y2.data(), 64) != GemmStatus::nonfinite_input)
          ++failures;
      }
    }
  }
  return failures == 0;
}

// Why a kernel this CPU cannot run is skipped: what its tier needs, or, where the CPU runs the tier
// through another build (e.g. avxvnni on AVX-512 VNNI), that this build is not the one.
template <class K>
std::string skip_reason(const K& k) {
  std::string why;
  if (isa_supported(k.isa, &why)) why = std::string("this CPU runs tier ") + isa_name(k.isa) + " through another build";
  return why;
}

// The registry's choice on models of CPUs (their feature bits), whatever CPU runs the test: each
// family's tier under a cap, and which tiers each model supports. The float families (sparse_f32,
// sparse_nm_f32, dense_f32, engine_f32) need no integer dot product: their AVX-512 kernels run on
// AVX-512 CPUs without VNNI, while an AVX-VNNI CPU without AVX-512 never gets them.
bool check_selection_on_cpu_models() {
  struct Model {
    const char* name;
    uint32_t bits;
    Isa cap, gemm, sparse_s8, floats;  // gemm: gemm_s8 and gemm_q4
  };
  int failures = 0;
  auto expect = [&](const Model& m, const char* family, Isa got, Isa want) {
    if (got == want) return;
    std::printf("  %s: %s picks tier %s, expected %s\n", m.name, family, isa_name(got), isa_name(want));
    ++failures;
  };
  auto expect_support = [&](const char* model, uint32_t bits, Isa tier, bool want, const char* why_wanted) {
    std::string why;
    const bool got = isa_supported_for(tier, bits, &why);
    if (got == want && (want || why == why_wanted)) return;
    std::printf("  %s: tier %s supported %d (%s), expected %d\n", model, isa_name(tier), got, why.c_str(), want);
    ++failures;
  };
#if defined(__x86_64__) || defined(_M_X64)
  const Isa top = Isa::amx;
  const Model models[] = {
      {"Sapphire Rapids (AMX)", kNeedsAmx, top, Isa::amx, Isa::avx512vnni, Isa::avx512},
      {"Sapphire Rapids, tile permission refused", kNeedsAvx512Vnni, top, Isa::avx512vnni, Isa::avx512vnni, Isa::avx512},
      {"Sapphire Rapids capped at avx512vnni", kNeedsAmx, Isa::avx512vnni, Isa::avx512vnni, Isa::avx512vnni, Isa::avx512},
      {"Zen 3 (AVX2)", kNeedsAvx2, top, Isa::avx2, Isa::avx2, Isa::avx2},
      {"Alder Lake (AVX-VNNI, no AVX-512)", kNeedsAvxVnni, top, Isa::avxvnni, Isa::avx2, Isa::avx2},
      {"Skylake-X (AVX-512 F/BW/DQ/VL, no VNNI)", kNeedsAvx512, top, Isa::avx2, Isa::avx2, Isa::avx512},
      {"Cascade Lake (AVX-512 VNNI)", kNeedsAvx512Vnni, top, Isa::avx512vnni, Isa::avx512vnni, Isa::avx512},
      {"Cascade Lake capped at avx512", kNeedsAvx512Vnni, Isa::avx512, Isa::avxvnni, Isa::avx2, Isa::avx512},
      {"Cascade Lake capped at avxvnni", kNeedsAvx512Vnni, Isa::avxvnni, Isa::avxvnni, Isa::avx2, Isa::avx2},
  };
  expect_support("Zen 3", kNeedsAvx2, Isa::avx512, false, "this CPU lacks AVX-512 F/BW/DQ/VL");
  expect_support("Alder Lake", kNeedsAvxVnni, Isa::avxvnni, true, "");
  expect_support("Alder Lake", kNeedsAvxVnni, Isa::avx512, false, "this CPU lacks AVX-512 F/BW/DQ/VL");
  expect_support("Skylake-X", kNeedsAvx512, Isa::avx512, true, "");
  expect_support("Skylake-X", kNeedsAvx512, Isa::avxvnni, false, "this CPU lacks AVX-VNNI (or AVX-512 F/BW/DQ/VL/VNNI)");
  expect_support("Skylake-X", kNeedsAvx512, Isa::avx512vnni, false, "this CPU lacks AVX-512 F/BW/DQ/VL/VNNI");
  expect_support("Skylake-X without DQ", kNeedsAvx512 & ~kAvx512Dq, Isa::avx512, false, "this CPU lacks AVX-512 F/BW/DQ/VL");
  expect_support("Cascade Lake", kNeedsAvx512Vnni, Isa::avx512, true, "");
  expect_support("Cascade Lake", kNeedsAvx512Vnni, Isa::avx512vnni, true, "");
  expect_support("Cascade Lake", kNeedsAvx512Vnni, Isa::amx, false,
                 "this CPU lacks usable AMX-TILE and AMX-INT8 (with AVX-512 F/BW/DQ/VL/VNNI)");
  expect_support("Sapphire Rapids", kNeedsAmx, Isa::amx, true, "");
  // Why AMX is unusable, from what detection finds (CPUID, XCR0, the Linux permission request).
  auto expect_amx = [&](const char* model, std::string got, const std::string& want) {
    if (got == want) return;
    std::printf("  %s: AMX unusable because '%s', expected '%s'\n", model, got.c_str(), want.c_str());
    ++failures;
  };
  expect_amx("Zen 4", amx_unusable_reason(false, false, false, AmxPermission::not_needed),
             "this CPU lacks AMX-TILE and AMX-INT8");
  expect_amx("AMX-TILE without AMX-INT8", amx_unusable_reason(true, false, true, AmxPermission::not_needed),
             "this CPU lacks AMX-TILE and AMX-INT8");
  expect_amx("Sapphire Rapids, OS without tile state", amx_unusable_reason(true, true, false, AmxPermission::not_needed),
             "the OS does not enable the AMX tile state (XCR0 bits 17 and 18)");
  expect_amx("Sapphire Rapids in a container that refuses", amx_unusable_reason(true, true, true, AmxPermission::refused,
             "Operation not permitted"),
             "the OS refused the AMX tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM: Operation not permitted)");
  expect_amx("Sapphire Rapids with EDGECOMPRESS_AMX_DENY", amx_unusable_reason(true, true, true,
             AmxPermission::forced_refusal), "the AMX tile data permission was refused (forced by EDGECOMPRESS_AMX_DENY)");
  expect_amx("Sapphire Rapids", amx_unusable_reason(true, true, true, AmxPermission::granted), "");
  // A tile kernel's small-M kernel reads the same packed panels, from a lower tier.
  const GemmQ4Kernel* const* q4;
  for (int i = 0, n = gemm_q4_kernels(&q4); i < n; ++i) {
    const GemmQ4Kernel* small = q4[i]->small_m;
    if (small != nullptr && (isa_rank(small->isa) >= isa_rank(q4[i]->isa) || q4[i]->small_m_rows <= 1)) {
      std::printf("  %s: small-M kernel %s does not fit\n", q4[i]->name, small->name);
      ++failures;
    }
  }
  const GemmS8Kernel* const* gemm;
  for (int i = 0, n = gemm_s8_kernels(&gemm); i < n; ++i) {
    const GemmS8Kernel* small = gemm[i]->small_m;
    if (small != nullptr && (small->nr != gemm[i]->nr || small->kr != gemm[i]->kr || isa_rank(small->isa) >= isa_rank(gemm[i]->isa) ||
                             gemm[i]->small_m_rows <= 1)) {
      std::printf("  %s: small-M kernel %s does not fit\n", gemm[i]->name, small->name);
      ++failures;
    }
  }
#elif defined(__aarch64__)
  const Isa top = Isa::i8mm;
  const Model models[] = {
      {"Cortex-A53 (NEON)", kNeedsNeon, top, Isa::neon, Isa::neon, Isa::neon},
      {"Cortex-A76 (dot product)", kNeedsDotprod, top, Isa::dotprod, Isa::neon, Isa::neon},
  };
  expect_support("Cortex-A53", kNeedsNeon, Isa::dotprod, false, "this CPU lacks the dot-product extension (SDOT)");
#else
  const Model models[] = {{"any", 0, Isa::scalar, Isa::scalar, Isa::scalar, Isa::scalar}};
  (void)expect_support;
#endif
  for (const Model& m : models) {
    expect(m, "gemm_s8", gemm_s8_select_for(m.cap, m.bits)->isa, m.gemm);
    expect(m, "gemm_q4", gemm_q4_select_for(m.cap, m.bits)->isa, m.gemm);
    expect(m, "sparse_s8", sparse_s8_select_for(m.cap, m.bits)->isa, m.sparse_s8);
    expect(m, "sparse_f32", sparse_f32_select_for(m.cap, m.bits)->isa, m.floats);
    expect(m, "sparse_nm_f32", sparse_nm_f32_select_for(m.cap, m.bits)->isa, m.floats);
    expect(m, "dense_f32", dense_f32_select_for(m.cap, m.bits)->isa, m.floats);
    expect(m, "engine_f32", engine_f32_select_for(m.cap, m.bits)->isa, m.floats);
  }
  return failures == 0;
}

}  // namespace

int main() {
  const GemmS8Kernel* const* kernels;
  const int count = gemm_s8_kernels(&kernels);
  const GemmS8Kernel& scalar = *kernels[0];
  std::printf("edgecompress kernel tests on %s %s\n", cpu_features().arch, cpu_features().model.c_str());
  int passed = 0, failed = 0, skipped = 0;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    // With two threads, even the small shapes of the sweep take the parallel paths.
    set_gemm_s8_min_parallel_macs(threads > 1 ? 0.0 : 1e300);
    for (int i = 0; i < count; ++i) {
      const GemmS8Kernel& k = *kernels[i];
      if (!cpu_has(k.needs)) {
        if (threads == 1) std::printf("SKIP %s: %s\n", k.name, skip_reason(k).c_str());
        ++skipped;
        continue;
      }
      Failures f;
      check_kernel(k, scalar, &f);
      std::printf("%s %s (%d thread%s)\n", f.count ? "FAIL" : "PASS", k.name, threads, threads > 1 ? "s" : "");
      f.count ? ++failed : ++passed;
    }
  }
#if defined(EC_AMX_TILE_MODEL_BUILT)
  // The amx kernel's source on the tile model, on every x86 machine (the real kernel above runs only
  // where the CPU has AMX and the OS granted the tile state).
  const bool model_ok = amx_tile_model_checks();
  std::printf("%s AMX tile model against its specification\n", model_ok ? "PASS" : "FAIL");
  model_ok ? ++passed : ++failed;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    set_gemm_s8_min_parallel_macs(threads > 1 ? 0.0 : 1e300);
    Failures f;
    check_kernel(gemm_s8_amx_model, scalar, &f);
    std::printf("%s %s (%d thread%s, tile model)\n", f.count ? "FAIL" : "PASS", gemm_s8_amx_model.name, threads,
                threads > 1 ? "s" : "");
    f.count ? ++failed : ++passed;
  }
#endif
  const GemmQ4Kernel* const* q4;
  const int q4_count = gemm_q4_kernels(&q4);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    set_gemm_s8_min_parallel_macs(threads > 1 ? 0.0 : 1e300);
    for (int i = 0; i < q4_count; ++i) {
      const GemmQ4Kernel& k = *q4[i];
      if (!cpu_has(k.needs)) {
        if (threads == 1) std::printf("SKIP %s: %s\n", k.name, skip_reason(k).c_str());
        ++skipped;
        continue;
      }
      Q4Failures f;
      check_q4_kernel(k, *q4[0], &f);
      std::printf("%s %s (%d thread%s)\n", f.count ? "FAIL" : "PASS", k.name, threads, threads > 1 ? "s" : "");
      f.count ? ++failed : ++passed;
    }
#if defined(EC_AMX_TILE_MODEL_BUILT)
    Q4Failures f;
    check_q4_kernel(gemm_q4_amx_model, *q4[0], &f);
    std::printf("%s %s (%d thread%s, tile model)\n", f.count ? "FAIL" : "PASS", gemm_q4_amx_model.name, threads,
                threads > 1 ? "s" : "");
    f.count ? ++failed : ++passed;
#endif
  }
  const SparseKernel* const* sk;
  const int sk_count = sparse_f32_kernels(&sk);
  const DenseKernel* const* dk;
  const int dk_count = dense_f32_kernels(&dk);
  const SparseS8Kernel* const* s8k;
  const int s8k_count = sparse_s8_kernels(&s8k);
  const SparseNmKernel* const* nk;
  const int nk_count = sparse_nm_f32_kernels(&nk);
  const EngineKernel* const* ek;
  const int ek_count = engine_f32_kernels(&ek);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    set_gemm_s8_min_parallel_macs(threads > 1 ? 0.0 : 1e300);
    auto report = [&](auto* k, auto check) {
      if (!cpu_has(k->needs)) {
        if (threads == 1) std::printf("SKIP %s: %s\n", k->name, skip_reason(*k).c_str());
        ++skipped;
        return;
      }
      const bool ok = check(*k);
      std::printf("%s %s (%d thread%s)\n", ok ? "PASS" : "FAIL", k->name, threads, threads > 1 ? "s" : "");
      ok ? ++passed : ++failed;
    };
    for (int i = 0; i < sk_count; ++i) report(sk[i], check_sparse_kernel);
    for (int i = 0; i < dk_count; ++i) report(dk[i], check_dense_kernel);
    for (int i = 0; i < s8k_count; ++i) report(s8k[i], check_sparse_s8_kernel);
    for (int i = 0; i < nk_count; ++i) report(nk[i], check_nm_kernel);
    for (int i = 0; i < ek_count; ++i) report(ek[i], check_engine_kernel);
  }
  for (int i = 0; i < sk_count; ++i) {
    const bool ok = check_sparse_packed_size(*sk[i]);
    std::printf("%s %s (packed size of a nearly empty CSR weight)\n", ok ? "PASS" : "FAIL", sk[i]->name);
    ok ? ++passed : ++failed;
  }
  set_gemm_s8_min_parallel_macs(0.0);
  for (int i = 0; i < count; ++i) {
    if (!cpu_has(kernels[i]->needs)) continue;
    const bool ok = check_concurrent_callers(*kernels[i]);
    std::printf("%s %s (concurrent callers, pool resized meanwhile)\n", ok ? "PASS" : "FAIL", kernels[i]->name);
    ok ? ++passed : ++failed;
  }
#if defined(EC_AMX_TILE_MODEL_BUILT)
  {
    const bool ok = check_concurrent_callers(gemm_s8_amx_model);
    std::printf("%s %s (concurrent callers, pool resized meanwhile, tile model)\n", ok ? "PASS" : "FAIL",
                gemm_s8_amx_model.name);
    ok ? ++passed : ++failed;
  }
#endif
  const bool pool_ok = check_parallel_for();
  std::printf("%s parallel_for: each task once (1, 2, 3, 5 threads)\n", pool_ok ? "PASS" : "FAIL");
  pool_ok ? ++passed : ++failed;
  const bool models_ok = check_selection_on_cpu_models();
  std::printf("%s registry choice on models of CPUs\n", models_ok ? "PASS" : "FAIL");
  models_ok ? ++passed : ++failed;
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed == 0 && passed > 0 ? 0 : 1;
}
