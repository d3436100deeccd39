// Scalar gemm_s8 kernel: the specification every SIMD tier must match bit for bit. Built with the
// architecture's baseline flags only, so it runs on every CPU of the architecture.
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 4, kNr = 8, kKr = 4;

void run_scalar(const GemmS8Tile& t) {
  const uint8_t* a = static_cast<const uint8_t*>(t.a);  // u8 domain, one byte per element
  uint32_t acc[kMr * kNr] = {};
  for (int kb = 0; kb < t.kblocks; ++kb) {
    const uint8_t* ak = a + static_cast<size_t>(kb) * t.a_rows * kKr;
    const int8_t* bk = t.b + static_cast<size_t>(kb) * kNr * kKr;
    for (int r = 0; r < t.m; ++r) {
      for (int c = 0; c < kNr; ++c) {
        int32_t dot = 0;  // at most 4 * 255 * 128 in magnitude
        for (int j = 0; j < kKr; ++j) dot += static_cast<int32_t>(ak[r * kKr + j]) * bk[c * kKr + j];
        acc[r * kNr + c] += static_cast<uint32_t>(dot);  // wraps like the SIMD accumulators
      }
    }
  }
  int32_t out[kMr * kNr];
  for (int i = 0; i < kMr * kNr; ++i) out[i] = static_cast<int32_t>(acc[i]);
  finish_tile<kNr>(out, t);
}

}  // namespace
}  // namespace edgecompress

EC_GEMM_S8_KERNEL(gemm_s8_scalar, "gemm_s8_4x8_scalar", Isa::scalar, kMr, kNr, kKr, 1, false, 1, 0u,
                  run_scalar)
