// The engine_f32 kernel family: the float32 operations of an engine program between its products
// (normalization, softmax, GELU, element-wise ops and the small products inside attention). One
// source (kernels/engine/engine_impl.h) written for a vector of W floats, built per tier with that
// tier's flags: scalar W = 1, avx2 W = 8, avx512 W = 16, neon W = 4.
//
// Results: float32 arithmetic with multiply-adds fused where the tier has them, so tiers agree
// within float32 rounding (the numpy oracles in reference/engine.py have tolerances), not bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"

namespace edgecompress {

// Element-wise activations of the unary pass (and the codes of the engine's act op).
enum class UnaryAct : int { relu = 0, relu6, silu, hardswish, hardsigmoid, sigmoid, count };

// One sliding 2-D window over a channels-last image (h rows, w columns, c channels): kernel kh x kw,
// strides sh, sw, padding pt (top), pl (left) of zeros (the bottom and right follow from wo and the
// rows asked for), dilations dh, dw; wo output columns.
struct Window2d {
  int h, w, c, kh, kw, sh, sw, pt, pl, dh, dw, wo;
};

struct WinogradS8Kernel;

struct EngineKernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  // y = norm(x + r) * gamma + beta over one row of n: LayerNorm (mean and variance), or RMSNorm
  // (rms == true: no mean, no beta). r, beta may be null; sum, when given, receives x + r.
  // y may alias x or r.
  void (*norm_row)(const float* x, const float* r, const float* gamma, const float* beta, float eps, bool rms, int n,
                   float* y, float* sum);
  // x = softmax(x) over one row of n, in place (max subtracted first).
  void (*softmax_row)(float* x, int n);
  // y = gelu(x) (erf form), n values; y may alias x.
  void (*gelu)(const float* x, float* y, int64_t n);
  // y[i] = a[i] + b[i % nb] (op 0) or a[i] * b[i % nb] (op 1), n values; y may alias a.
  void (*binary)(int op, const float* a, const float* b, int64_t nb, float* y, int64_t n);
  // y = act(gate) * up over n values: act 0 SiLU (x * sigmoid(x)), 1 GELU in its tanh form (the gated
  // feed-forward of Llama and Gemma). y may alias gate or up.
  void (*glu)(int act, const float* gate, const float* up, float* y, int64_t n);
  // y[r] = alpha * dot(a row r, x) for `rows` rows of n floats (row stride lda): the scores of one
  // query against cached keys, read where they lie.
  void (*dot_rows)(const float* a, ptrdiff_t lda, int rows, const float* x, int n, float alpha, float* y);
  // c (m, n) = alpha * a (m, k) @ b (k, n): row strides lda, ldb, ldc; c is overwritten.
  void (*gemm_nn)(int m, int n, int k, float alpha, const float* a, ptrdiff_t lda, const float* b, ptrdiff_t ldb,
                  float* c, ptrdiff_t ldc);
  // y = act(x) over n values (UnaryAct); y may alias x.
  void (*unary)(int act, const float* x, float* y, int64_t n);
  // Output row oh (p.wo pixels of p.c channels) of a depthwise convolution of x (one image): channel
  // j of pixel (oh, ow) is bias[j] + the sum over the taps (i, t) inside the image, in order, of
  // x[oh sh - pt + i dh][ow sw - pl + t dw][j] * w[i][t][j]. w: (kh, kw, c); bias may be null.
  void (*depthwise_row)(const Window2d& p, const float* x, const float* w, const float* bias, int oh, float* y);
  // Output row oh of a pooling of x (one image) over the same windows: mode 0 the maximum of the taps
  // inside the image, 1 their mean over kh * kw (padding counted as zeros), 2 their mean over the taps
  // inside the image.
  void (*pool_row)(const Window2d& p, int mode, const float* x, int oh, float* y);
  // Output row oh (p.wo pixels of n channels) of a convolution of x (one image) computed directly,
  // without patches (for few input channels: an image's first layer): channel j of pixel (oh, ow) is
  // bias[j] + the sum over the taps (i, t) inside the image and their channels c of x[..][..][c] times
  // the weight at k = (i * kw + t) * c + c, read from dense_f32 panels w ([ceil(n / 16)][k][16],
  // columns past n zero), then ReLU when relu. bias (n values) may be null.
  void (*conv_row)(const Window2d& p, const float* x, const float* w, int k, int n, const float* bias, bool relu,
                   int oh, float* y);
  // Winograd F(m x m, 3x3), m = 2 or 4, for a 3x3 convolution of stride 1, not dilated (p.kh = p.kw
  // = 3), on tiles of a = m + 2 input pixels: tile (ty, tx) of x (one image), whose m x m outputs
  // start at row m ty, column m tx, reads the a x a input pixels from row m ty - p.pt, column
  // m tx - p.pl (zero outside the image) and writes its transform B^T d B: value e = a i + t of
  // channel j to v[e * ld + j] (a^2 rows of p.c).
  void (*winograd_in)(const Window2d& p, int m, const float* x, int ty, int tx, float* v, ptrdiff_t ld);
  // The outputs of one tile from its a^2 products mm[e * ld + j] (j < n: each e's product of the
  // tile's row of v with the transformed weights G g G^T): A^T mm A + bias (n values; may be null),
  // then ReLU when relu; output (r, t) for r < rows, t < cols at y + r * ldy + t * n. Transforms
  // (Lavin and Gray's): m = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
  // G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1], A^T = [1 1 1 0; 0 1 -1 -1]. m = 4: B^T = [4 0 -5 0 1 0;
  // 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1], G = [1/4 0 0;
  // -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1], A^T = [1 1 1 1 1 0;
  // 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
  // res (may be null): a residual, laid out as y, added after the bias and before the ReLU.
  void (*winograd_out)(int m, const float* mm, ptrdiff_t ld, int n, const float* bias, const float* res, bool relu,
                       int rows, int cols, float* y, ptrdiff_t ldy);
  // The integer Winograd F(2x2, 3x3) of int8 convolutions with a static input scale (winograd_s8.h),
  // of the same tier (an integer family: built without fused multiply-adds, unlike this one).
  const WinogradS8Kernel* winograd_s8;
};

}  // namespace edgecompress
