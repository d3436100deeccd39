// gemm_q4's amx kernel on the tile model, for the C++ test runner (see amx_tile_model.cc).
#define EC_AMX_TILE_MODEL 1
#include "../kernels/gemm_q4/gemm_q4_amx.cc"
