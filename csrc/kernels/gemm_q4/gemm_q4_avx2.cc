// gemm_q4 on AVX2: vpmaddubsw + vpmaddwd over two ymm halves of a panel, 2 rows per tile (the 16
// ymm registers hold 2 rows x 2 halves of int32 and float accumulators).
#if !defined(__AVX2__) || !defined(__F16C__)
#error "gemm_q4_avx2.cc must be compiled with the avx2 tier flags"
#endif

#include "gemm_q4_x86.h"

EC_GEMM_Q4_KERNEL(gemm_q4_avx2, "gemm_q4_2x16_avx2", Isa::avx2, 2, kNeedsAvx2, (q4_tile_avx256<2, false>))
