// sparse_f32 on AVX-512: the shared source vectorized for 512-bit registers (one zmm per 16 lanes).
#if !defined(__AVX512F__)
#error "sparse_avx512vnni.cc must be compiled with the avx512vnni tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "sparse_common.h"

EC_SPARSE_KERNEL(sparse_f32_avx512vnni, "sparse_f32_avx512vnni", Isa::avx512vnni, kNeedsAvx512Vnni)
