// dense_f32 on NEON: the shared source vectorized for 128-bit registers (fmla).
#include "dense_common.h"

EC_DENSE_KERNEL(dense_f32_neon, "dense_f32_neon", Isa::neon, kNeedsNeon)
