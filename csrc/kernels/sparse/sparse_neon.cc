// sparse_f32 on NEON: the shared source vectorized for 128-bit registers.
#include "sparse_common.h"

EC_SPARSE_KERNEL(sparse_f32_neon, "sparse_f32_neon", Isa::neon, kNeedsNeon)
