// winograd_s8 on AVX-512 (BW): 512-bit vpmaddwd products, 12 rows x 16 outputs per micro-kernel.
#if !defined(__AVX512BW__)
#error "winograd_s8_avx512.cc must be compiled with the avx512 tier flags"
#endif
#define EC_WS8_LANES 32
#define EC_WS8_TIER 2
#include "winograd_s8_impl.h"

EC_WINOGRAD_S8_KERNEL(winograd_s8_avx512, "winograd_s8_avx512", Isa::avx512, kNeedsAvx512)
