// Compile-time unrolling every kernel family shares (internal linkage: see act_quant.h).
#pragma once

namespace edgecompress {
namespace {

// Dispatches a runtime row count 1..kMax to f(Rows<M>{}), so micro-kernels keep their tile in registers.
template <int N>
struct Rows {
  static constexpr int value = N;
};

template <int kMax, int M = 1, class F>
inline void with_rows(int m, F&& f) {
  if constexpr (M <= kMax) {
    if (m == M) return f(Rows<M>{});
    with_rows<kMax, M + 1>(m, f);
  }
}

// Calls f(Rows<I>{}) for I = 0..N-1, so lane numbers derived from I are constant expressions.
template <int N, int I = 0, class F>
__attribute__((always_inline)) inline void unroll(F&& f) {
  if constexpr (I < N) {
    f(Rows<I>{});
    unroll<N, I + 1>(f);
  }
}

// Independent accumulator sets along K for a tile of M rows with `per_row` accumulators each: enough
// chains in flight to hide the dot-product latency when M is small (the GEMV case).
constexpr int k_unroll(int m, int per_row, int chains) {
  const int u = chains / (m * per_row);
  return u < 1 ? 1 : (u > 4 ? 4 : u);
}

}  // namespace
}  // namespace edgecompress
