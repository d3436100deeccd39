// dense_f32 on AVX-512: one zmm per panel row of 16 weights.
#if !defined(__AVX512F__)
#error "dense_avx512.cc must be compiled with the avx512 tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "dense_common.h"

EC_DENSE_KERNEL(dense_f32_avx512, "dense_f32_avx512", Isa::avx512, kNeedsAvx512)
