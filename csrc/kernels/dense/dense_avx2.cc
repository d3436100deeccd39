// dense_f32 on AVX2 + FMA: the shared source vectorized for 256-bit registers.
#if !defined(__AVX2__)
#error "dense_avx2.cc must be compiled with the avx2 tier flags"
#endif
#include "dense_common.h"

EC_DENSE_KERNEL(dense_f32_avx2, "dense_f32_avx2", Isa::avx2, kNeedsAvx2)
