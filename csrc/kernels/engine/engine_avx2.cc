// engine_f32 on AVX2 + FMA: 256-bit vectors.
#if !defined(__AVX2__)
#error "engine_avx2.cc must be compiled with the avx2 tier flags"
#endif
#define EC_ENGINE_WIDTH 8
#include "engine_impl.h"

EC_ENGINE_KERNEL(engine_f32_avx2, "engine_f32_avx2", Isa::avx2, kNeedsAvx2, winograd_s8_avx2)
