// gemm_q4 on AVX-512 VNNI: one zmm per 16-column panel, vpdpbusd with embedded activation broadcast.
// Up to 4 rows per tile; one row uses 4 accumulator chains (see gemm_q4_x86.h).
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_q4_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif

// GCC 12's AVX-512 intrinsic headers start some conversions from a self-initialized "undefined"
// vector, which -Wuninitialized reports at every inlined use (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "gemm_q4_x86.h"

#if !defined(EC_Q4_AVX512_VAR)
#define EC_Q4_AVX512_VAR gemm_q4_avx512vnni
#define EC_Q4_AVX512_NAME "gemm_q4_4x16_avx512vnni"
#define EC_Q4_AVX512_NEEDS kNeedsAvx512Vnni
#endif

EC_GEMM_Q4_KERNEL(EC_Q4_AVX512_VAR, EC_Q4_AVX512_NAME, Isa::avx512vnni, 4, EC_Q4_AVX512_NEEDS, q4_tile_avx512<4>)
