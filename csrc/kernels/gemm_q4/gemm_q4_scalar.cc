// Scalar gemm_q4 kernel: the portable tiles of gemm_q4_common.h, the specification the SIMD tiers
// match. Built with the architecture's baseline flags only.
#include "gemm_q4_common.h"

EC_GEMM_Q4_KERNEL(gemm_q4_scalar, "gemm_q4_scalar", Isa::scalar, 4, 0u, q4_tile_generic_int8)
