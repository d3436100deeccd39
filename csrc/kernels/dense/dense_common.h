// The dense_f32 kernel, written once with GCC/Clang vector extensions and compiled by each tier's
// translation unit with that tier's flags and -ffp-contract=fast (see sparse_common.h).
//
// Per group of PW panels and M rows: M x PW running sums of 16 lanes; each k loads PW panel rows of 16
// weights and broadcasts x[m][k]. PW is chosen so that the sums fill about kDfSums of the tier's
// registers (AVX2: 6 rows x 2 vectors, with 2 weight vectors and a broadcast: 15 of 16; AVX-512: 6 rows
// x 4 panels, 29 of 32: twice the FMAs of 6 x 2 per broadcast and per k's loop overhead; with blocks
// of whole groups and prefetches on the first pass only, a 1x1 convolution 24 -> 144 on 784 pixels
// went from 100 to 140 GFLOPS on a Sapphire Rapids core).
#pragma once

#include <cstring>

#include "../common/epilogue.h"
#include "../common/mca.h"
#include "../common/unroll.h"
#include "edgecompress/dense_f32.h"

#pragma GCC diagnostic ignored "-Wpsabi"  // vectors wider than a tier's registers: internal linkage

namespace edgecompress {
namespace {

#if defined(__AVX512F__)
constexpr int kDfLanes = 16;
#elif defined(__AVX2__)
constexpr int kDfLanes = 8;
#else
constexpr int kDfLanes = 4;
#endif
// The tier's register (one panel row is kDfVecs of them): wider generic vectors were split badly
// by GCC 12 on AVX2 (8x slower), so the code works in native widths.
typedef float df_vec __attribute__((vector_size(4 * kDfLanes)));
constexpr int kDfVecs = kDensePanel / kDfLanes;

#if defined(__AVX512F__)
constexpr int kDfSums = 24;  // of 32 registers: with a group's 4 weight vectors and a broadcast, 29
#else
constexpr int kDfSums = 12;  // of 16
#endif

constexpr int df_group(int m) {
  const int pw = kDfSums / (kDfVecs * m);
  return pw < 1 ? 1 : (pw > 4 ? 4 : pw);
}

// The k loop of df_sums. Prefetch: the first pass over the panels (DenseTask::first_pass) prefetches
// their rows 24 k ahead (within the weight): a weight streamed from memory (Winograd F(2x2) products
// of 512 channels on a 7 x 7 image) came at about 7.5 GB/s without it, 10 with it. Later passes find
// the rows in L1/L2 and skip the prefetches, which cost a 1x1 convolution 192 -> 1152 on 784 pixels
// an eighth of its speed.
template <int M, int PW, int LV, bool Prefetch>
__attribute__((always_inline)) inline void df_loop(const DenseTask& t, int p, df_vec (&acc)[M][(PW - 1) * kDfVecs + LV]) {
  const DenseF32& w = *t.w;
  const ptrdiff_t pstride = static_cast<ptrdiff_t>(w.k) * kDensePanel;
  const float* __restrict wp = w.data + p * pstride;
  constexpr int V = (PW - 1) * kDfVecs + LV;  // registers of one row's sums
  unroll<M>([&](auto m) { unroll<V>([&](auto j) { acc[m.value][j.value] = df_vec{}; }); });
  if constexpr (LV == kDfVecs && !Prefetch) EC_MCA_LOOP("dense_f32", M, PW);  // the steady state's loop
  for (int k = 0; k < w.k; ++k) {
    if constexpr (Prefetch) {
      const int kf = k + 24 < w.k ? k + 24 : w.k - 1;
      unroll<PW>([&](auto j) { __builtin_prefetch(wp + j.value * pstride + kf * kDensePanel); });
    }
    df_vec wv[V];
    unroll<V>([&](auto j) {
      constexpr int panel = j.value / kDfVecs, part = j.value % kDfVecs;
      std::memcpy(&wv[j.value], wp + panel * pstride + k * kDensePanel + part * kDfLanes, sizeof(df_vec));
    });
    unroll<M>([&](auto m) {
      const float xv = t.x[m.value * t.ldx + k];
      unroll<V>([&](auto j) { acc[m.value][j.value] = acc[m.value][j.value] + wv[j.value] * xv; });
    });
  }
}

// The running sums of M rows times V vectors of panels p .. (the k loop).
template <int M, int PW, int LV>
__attribute__((always_inline)) inline void df_sums(const DenseTask& t, int p,
                                                   df_vec (&acc)[M][(PW - 1) * kDfVecs + LV]) {
  if (t.first_pass) {
    df_loop<M, PW, LV, true>(t, p, acc);
  } else {
    df_loop<M, PW, LV, false>(t, p, acc);
  }
}

// The common case: every vector of the group holds columns of y, only its last vector maybe fewer
// than kDfLanes (`tail` of them: n not a multiple of 16, 24 of a 96 -> 24 projection), bias (B) and
// ReLU (R) known here, so that the sums go from registers to y (at K = 16 the sums' round trip
// through the stack, and the epilogue's branches, cost a third of the products' time; a group ending
// in a part of a panel went that way, and a 1x1 convolution 96 -> 24 ran at 70 GFLOPS where 24 -> 144
// ran at 140).
template <int M, int PW, bool B, bool R, bool Tail>
void df_group_whole(const DenseTask& t, int p, int tail) {
  constexpr int V = PW * kDfVecs;
  df_vec acc[M][V];
  df_sums<M, PW, kDfVecs>(t, p, acc);
  df_vec b[V];
  unroll<V>([&](auto j) {
    const float* bj = t.bias + p * kDensePanel + j.value * kDfLanes;
    if (!B) {
      b[j.value] = df_vec{};
    } else if (!Tail || j.value < V - 1) {
      std::memcpy(&b[j.value], bj, sizeof(df_vec));
    } else {  // the bias has only `tail` values left
      b[j.value] = df_vec{};
      std::memcpy(&b[j.value], bj, sizeof(float) * tail);
    }
  });
  unroll<M>([&](auto m) {
    float* yr = t.y + m.value * t.ldy + p * kDensePanel;
    unroll<V>([&](auto j) {
      df_vec v = acc[m.value][j.value];
      if (B) v = v + b[j.value];
      if (R) v = v > df_vec{} ? v : df_vec{};
      if (!Tail || j.value < V - 1) {
        std::memcpy(yr + j.value * kDfLanes, &v, sizeof(v));
      } else {
        std::memcpy(yr + j.value * kDfLanes, &v, sizeof(float) * tail);
      }
    });
  });
}

template <int M, int PW, bool Tail>
void df_group_act(const DenseTask& t, int p, int tail) {
  if (t.bias == nullptr) {
    return t.act == Activation::relu ? df_group_whole<M, PW, false, true, Tail>(t, p, tail)
                                     : df_group_whole<M, PW, false, false, Tail>(t, p, tail);
  }
  return t.act == Activation::relu ? df_group_whole<M, PW, true, true, Tail>(t, p, tail)
                                   : df_group_whole<M, PW, true, false, Tail>(t, p, tail);
}

// M rows times panels p .. p + PW - 1, of whose last panel only its first LV vectors (the columns
// the weight has: n not a multiple of the panel width) are computed.
template <int M, int PW, int LV = kDfVecs>
void df_group_run(const DenseTask& t, int p) {
  const DenseF32& w = *t.w;
  // columns of y in the group's last vector (LV == kDfVecs: the last panel's last vector)
  const int tail = w.n - (p + PW) * kDensePanel + kDfLanes;
  if (LV == kDfVecs && tail > 0 && t.act != Activation::gelu) {
    // the common case, with its branches decided once per call rather than per vector
    return tail >= kDfLanes ? df_group_act<M, PW, false>(t, p, kDfLanes) : df_group_act<M, PW, true>(t, p, tail);
  }
  constexpr int V = (PW - 1) * kDfVecs + LV;  // registers of one row's sums
  df_vec acc[M][V];
  df_sums<M, PW, LV>(t, p, acc);
  // The other cases through memory: the vector a panel's last columns end in (n not a multiple of
  // the tier's lanes), and GELU (a row pass that vectorizes, where a per-value call with its branches
  // did not). The rows go in a loop: unrolled too, they made the compiler spill running sums inside
  // the k loop.
  alignas(64) float sums[kDensePanel] = {};  // (only a panel's columns are read)
  for (int m = 0; m < M; ++m) {
    unroll<PW>([&](auto ji) {
      constexpr int j = ji.value;
      const int c0 = (p + j) * kDensePanel;
      const int cols = w.n - c0 < kDensePanel ? w.n - c0 : kDensePanel;
      float* __restrict yr = t.y + m * t.ldy + c0;
      constexpr int live = V - j * kDfVecs < kDfVecs ? V - j * kDfVecs : kDfVecs;  // this panel's vectors
      if (t.act == Activation::gelu) {
        std::memcpy(sums, &acc[m][j * kDfVecs], sizeof(df_vec) * live);
        bias_act_row(sums, cols, t.bias != nullptr ? t.bias + c0 : nullptr, t.act);
        for (int i = 0; i < cols; ++i) yr[i] = sums[i];
        return;
      }
      unroll<live>([&](auto qi) {
        constexpr int q = qi.value;
        const int c = q * kDfLanes;  // the vector's first column in the panel
        df_vec v = acc[m][j * kDfVecs + q];
        if (c + kDfLanes <= cols) {
          if (t.bias != nullptr) {
            df_vec b;
            std::memcpy(&b, t.bias + c0 + c, sizeof(b));
            v = v + b;
          }
          if (t.act == Activation::relu) v = v > df_vec{} ? v : df_vec{};
          std::memcpy(yr + c, &v, sizeof(v));
        } else if (c < cols) {
          std::memcpy(sums, &v, sizeof(v));
          for (int i = 0; i < kDfLanes && c + i < cols; ++i) yr[c + i] = bias_act(sums[i], t.bias, c0 + c + i, t.act);
        }
      });
    });
  }
}

// The weight's last panel when its columns fill only `live` < kDfVecs of the panel's vectors (n = 72
// on AVX2: 4 panels of 16 and one of 8): the empty vectors' products are skipped.
template <int M, int LV = 1>
void df_last(const DenseTask& t, int p, int live) {
  if constexpr (LV < kDfVecs) {
    if (live == LV) return df_group_run<M, 1, LV>(t, p);
    df_last<M, LV + 1>(t, p, live);
  }
}

template <int M>
void df_rows(const DenseTask& t) {
  constexpr int PW = df_group(M);
  const int last = t.w->panels - 1;
  const int live = (t.w->n - last * kDensePanel + kDfLanes - 1) / kDfLanes;  // vectors of the last panel
  const int full = live == kDfVecs ? t.p1 : (t.p1 < last ? t.p1 : last);    // panels before a part-empty one
  int p = t.p0;
  for (; p + PW <= full; p += PW) df_group_run<M, PW>(t, p);
  if constexpr (PW > 2) {
    for (; p + 2 <= full; p += 2) df_group_run<M, 2>(t, p);
  }
  for (; p < full; ++p) df_group_run<M, 1>(t, p);
  if (p < t.p1) df_last<M>(t, p, live);
}

void df_run(const DenseTask& t) {
  switch (t.m) {
    case 1: return df_rows<1>(t);
    case 2: return df_rows<2>(t);
    case 3: return df_rows<3>(t);
    case 4: return df_rows<4>(t);
    case 5: return df_rows<5>(t);
    default: return df_rows<6>(t);
  }
}

}  // namespace
}  // namespace edgecompress

#define EC_DENSE_KERNEL(var, name, isa, needs) \
  namespace edgecompress {                     \
  extern const DenseKernel var = {name, isa, needs, df_run}; \
  }
