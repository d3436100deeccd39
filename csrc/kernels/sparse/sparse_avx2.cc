// sparse_f32 on AVX2: the shared source vectorized for 256-bit registers (vgatherdps for CSR).
#if !defined(__AVX2__)
#error "sparse_avx2.cc must be compiled with the avx2 tier flags"
#endif
#include "sparse_common.h"

EC_SPARSE_KERNEL(sparse_f32_avx2, "sparse_f32_avx2", Isa::avx2, kNeedsAvx2)
