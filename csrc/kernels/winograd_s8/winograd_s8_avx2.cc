// winograd_s8 on AVX2: vpmaddwd products, 6 rows x 16 outputs per micro-kernel.
#if !defined(__AVX2__)
#error "winograd_s8_avx2.cc must be compiled with the avx2 tier flags"
#endif
#define EC_WS8_LANES 16
#define EC_WS8_TIER 1
#include "winograd_s8_impl.h"

EC_WINOGRAD_S8_KERNEL(winograd_s8_avx2, "winograd_s8_avx2", Isa::avx2, kNeedsAvx2)
