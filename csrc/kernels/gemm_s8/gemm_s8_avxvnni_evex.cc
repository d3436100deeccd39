// The EVEX build of the 256-bit VNNI tier (see gemm_s8_avxvnni.cc).
#define EC_VNNI_EVEX 1
#include "gemm_s8_avxvnni.cc"
