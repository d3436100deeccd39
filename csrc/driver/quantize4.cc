// The clipping search of 4-bit quantization (Int4Weight.from_float(method="mse")): for each group of g
// weights and each of r candidate scales, the squared error of the group quantized at that scale;
// the index of the smallest (the first of equals) is kept. Its numpy specification is
// edgecompress.reference.quantize4.best_candidates; this is the same arithmetic in the same order,
// so both pick the same candidate bit for bit.
//
// Why native: the search quantizes every weight r = 26 times; in numpy each of those passes streams
// the weight through memory several times, and int4 compression of a BERT-base-sized model took
// 8-14x as long as int8's.
//
// Portable C++ (no tier flags): the inner loop runs over 8 lanes of partial sums, which the compiler
// vectorizes at the baseline ISA. Rounding is (x + 1.5 * 2^23) - 1.5 * 2^23 on a value already clipped
// to the code range, which is round-half-to-even (numpy's rint) for |x| < 2^22, and clipping before
// rounding equals clipping after it because the bounds are integers.
#include <cstddef>
#include <cstdint>

#include "edgecompress/driver.h"
#include "edgecompress/threadpool.h"

namespace edgecompress {

namespace {

constexpr int kLanes = 8;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23

// Squared error of g weights quantized at scale s with codes clipped to [lo, hi] (minus the zero point).
float group_error(const float* w, int g, float s, float lo, float hi) {
  const float div = s != 0.0f ? s : 1.0f;  // a zero scale: every code times 0
  float part[kLanes] = {};
  for (int t = 0; t < g; t += kLanes) {
    for (int u = 0; u < kLanes; ++u) {
      float x = w[t + u] / div;
      x = x < lo ? lo : x;
      x = x > hi ? hi : x;
      x = (x + kRound) - kRound;
      const float d = x * s - w[t + u];
      part[u] += d * d;
    }
  }
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

}  // namespace

void int4_best_candidates(const float* w, int64_t groups, int g, int r, const float* scale, const float* lo,
                          const float* hi, int32_t* best, int max_threads) {
  constexpr int64_t kChunk = 256;  // groups per task
  const int64_t tasks = (groups + kChunk - 1) / kChunk;
  auto body = [&](int task) {
    const int64_t end = (task + 1) * kChunk < groups ? (task + 1) * kChunk : groups;
    for (int64_t i = task * kChunk; i < end; ++i) {
      const float* wi = w + i * g;
      const int64_t c = i * r;
      int32_t best_j = 0;
      float best_err = group_error(wi, g, scale[c], lo[c], hi[c]);
      for (int j = 1; j < r; ++j) {
        const float err = group_error(wi, g, scale[c + j], lo[c + j], hi[c + j]);
        if (err < best_err) best_err = err, best_j = j;
      }
      best[i] = best_j;
    }
  };
  parallel_for(static_cast<int>(tasks), max_threads, body);
}

}  // namespace edgecompress
