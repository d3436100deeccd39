// gemm_q4 on 256-bit VNNI: vpdpbusd ymm over two halves of a panel, 2 rows per tile.
// Built twice like gemm_s8_avxvnni.cc: VEX (-mavxvnni) and, with EC_VNNI_EVEX, EVEX (AVX-512 VNNI + VL).
#if defined(EC_VNNI_EVEX)
#if !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
#error "the EVEX build of gemm_q4_avxvnni.cc needs AVX-512 VNNI and VL flags"
#endif
#define EC_KERNEL_VAR gemm_q4_avxvnni_evex
#define EC_KERNEL_NAME "gemm_q4_2x16_avxvnni_evex"
#define EC_KERNEL_NEEDS kNeedsAvx512Vnni
#else
#if !defined(__AVXVNNI__) || !defined(__AVX2__)
#error "gemm_q4_avxvnni.cc must be compiled with the avxvnni tier flags"
#endif
#define EC_KERNEL_VAR gemm_q4_avxvnni
#define EC_KERNEL_NAME "gemm_q4_2x16_avxvnni"
#define EC_KERNEL_NEEDS kNeedsAvxVnni
#endif

#include "gemm_q4_x86.h"

EC_GEMM_Q4_KERNEL(EC_KERNEL_VAR, EC_KERNEL_NAME, Isa::avxvnni, 2, EC_KERNEL_NEEDS, (q4_tile_avx256<2, true>))
