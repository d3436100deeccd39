// The EVEX build of the 256-bit VNNI tier (see gemm_q4_avxvnni.cc).
#define EC_VNNI_EVEX 1
#include "gemm_q4_avxvnni.cc"
