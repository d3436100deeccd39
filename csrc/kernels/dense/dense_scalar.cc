// dense_f32 with the architecture's baseline flags.
#include "dense_common.h"

EC_DENSE_KERNEL(dense_f32_scalar, "dense_f32_scalar", Isa::scalar, 0u)
