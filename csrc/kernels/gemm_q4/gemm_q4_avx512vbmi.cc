// The avx512vnni tier of gemm_q4 built with AVX-512 VBMI as well (Ice Lake, Zen 4 and later): a
// codebook lookup is one vpermb per nibble half instead of a mask and a vpshufb. Same source as
// gemm_q4_avx512vnni.cc; the registry prefers this build where the CPU has VBMI.
#if !defined(__AVX512VBMI__)
#error "gemm_q4_avx512vbmi.cc must be compiled with the avx512vbmi flags"
#endif
#define EC_Q4_AVX512_VAR gemm_q4_avx512vbmi
#define EC_Q4_AVX512_NAME "gemm_q4_4x16_avx512vnni_vbmi"
#define EC_Q4_AVX512_NEEDS kNeedsAvx512Vbmi
#include "gemm_q4_avx512vnni.cc"
