// The winograd_s8 kernel family: integer Winograd F(2x2, 3x3) for an int8 3x3 convolution of stride
// 1, not dilated, whose activations are quantized once per image, with a static scale or a dynamic
// one of the image's own (the engine's winograd_s8 node). It pays on
// the tiers whose int8 products multiply 16-bit values (scalar, AVX2 without VNNI, NEON without
// dotprod): 16 products of c-long rows per 2 x 2 outputs instead of 36, at the same instruction cost.
//
// Exact, bit for bit the integers of conv2d's int8 product: with the weight transform scaled by 2,
// U = (2G) g (2G)^T (integers, |U| <= 9 * 127 = 1143) and V = B^T d B (|V| <= 4 * 255), the outputs
// A^T (U . V) A are 4 times the convolution's integer sums, computed in int32 with two's-complement
// wrap-around. Where 4 |sum| < 2^31 (c <= kWinogradS8MaxChannels) the wrapped result is the true one.
// Transforms (Lavin and Gray's): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
// 2G = [2 0 0; 1 1 1; 1 -1 1; 0 0 2], A^T = [1 1 1 0; 0 1 -1 -1].
//
// Layouts. The transformed image of a tile: 16 rows (e = 4 a + b) of c values rounded up to pairs
// (the padding value 0), int16. The transformed weight of position e: panels of 16 outputs,
// [panels][c pairs][16][2] int16 (outputs >= n and the padding channel zero); the 16 positions'
// weights one after another. Products: int32 rows of panels * 16 outputs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/engine_ops.h"
#include "edgecompress/isa.h"

namespace edgecompress {

// 4 * 9 * c * 255 * 127 < 2^31 (uint8 codes less their zero point: |d| <= 255).
constexpr int kWinogradS8MaxChannels = 1841;

struct WinogradS8Kernel {
  const char* name;
  Isa isa;
  uint32_t needs;
  // The input transform of tile (ty, tx) of one image's codes q (p.h x p.w pixels of p.c): the 4 x 4
  // pixels from row 2 ty - p.pt, column 2 tx - p.pl, d = code - zp (int8 codes when is_signed, zp
  // 0), pixels outside the image read from pad (p.c codes of the value 0.0). Writes the 16 rows of
  // B^T d B: row e at v + e * ld (p.c values, then a 0 when p.c is odd).
  void (*in)(const Window2d& p, const uint8_t* q, const uint8_t* pad, bool is_signed, int zp, int ty, int tx,
             int16_t* v, ptrdiff_t ld);
  // c (m, 16 panels) = a (m, 2 kp) @ b (one position's weight: panels of [kp][16][2]), in int32
  // with wrap-around; rows of a and c at strides lda, ldc.
  void (*gemm)(int m, int kp, int panels, const int16_t* a, ptrdiff_t lda, const int16_t* b, int32_t* c,
               ptrdiff_t ldc);
  // The outputs of one tile from its 16 products mm[e * ld + j] (j < n): q = (A^T mm A) / 4, the
  // convolution's integer sums, then as gemm_s8's epilogue: float32(q) * (rs * cs[j]) (or in float64
  // when wide: some scale product is not a normal float), + bias[j] (bias may be null), ReLU when
  // res[...] (res may be null: a residual laid out as y), ReLU when relu. Output (r, t) for r < rows,
  // t < cols at y + r * ldy + t * n.
  void (*out)(const int32_t* mm, ptrdiff_t ld, int n, float rs, const float* cs, bool wide, const float* bias,
              const float* res, bool relu, int rows, int cols, float* y, ptrdiff_t ldy);
};

}  // namespace edgecompress
