// engine_f32 on AVX-512: 512-bit vectors.
#if !defined(__AVX512F__)
#error "engine_avx512.cc must be compiled with the avx512 tier flags"
#endif
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 headers (see gemm_q4_avx512vnni.cc)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define EC_ENGINE_WIDTH 16
#include "engine_impl.h"

EC_ENGINE_KERNEL(engine_f32_avx512, "engine_f32_avx512", Isa::avx512, kNeedsAvx512, winograd_s8_avx512)
