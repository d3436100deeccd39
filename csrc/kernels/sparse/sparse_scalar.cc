// sparse_f32 with the architecture's baseline flags: the specification every tier matches.
#include "sparse_common.h"

EC_SPARSE_KERNEL(sparse_f32_scalar, "sparse_f32_scalar", Isa::scalar, 0u)
