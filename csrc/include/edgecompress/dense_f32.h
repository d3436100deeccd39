// The dense_f32 kernel family: y = x @ W.T (+ bias, activation) for a float32 weight W (N, K), a few
// rows of x at a time. It serves LowRankWeight: one call per factor, the r-long intermediate kept in
// a small buffer that stays in L1 between the two calls.
//
// Packed layout: panels of kDensePanel = 16 output columns; panel p holds, for k = 0..K-1, the 16
// values W[16p + i][k] (zero past N), so a panel streams once per call while x stays in L1.
// Results are float32 sums in k order (with FMA where the tier has it): within the worst-case
// bound of float32 sums, gamma(K + 2) * (|x| @ |W|.T) of the exact product (reference/rounding.py).
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"
#include "edgecompress/types.h"

namespace edgecompress {

constexpr int kDensePanel = 16;
constexpr int kDenseRows = 6;  // rows of x per kernel call

struct DenseF32 {
  int n = 0, k = 0, panels = 0;
  const float* data = nullptr;  // panels * k * kDensePanel
};

// Panels [p0, p1) for m <= kDenseRows rows of x (row stride ldx); y has row stride ldy.
struct DenseTask {
  const DenseF32* w;
  int p0, p1;
  int m;
  const float* x;
  ptrdiff_t ldx;
  const float* bias;  // n values or null
  Activation act;
  float* y;
  ptrdiff_t ldy;
  // the panels' first pass (the first rows to read them): prefetch their rows ahead, as the weight
  // may come from memory; later rows read them from L1/L2, where the prefetches only cost issue slots
  bool first_pass = true;
};

struct DenseKernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  void (*run)(const DenseTask& task);
};

}  // namespace edgecompress
