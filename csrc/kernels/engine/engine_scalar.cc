// engine_f32 with the architecture's baseline flags, one float at a time in the
// source (the compiler may still vectorize the element-wise loops).
#define EC_ENGINE_WIDTH 1
#include "engine_impl.h"

EC_ENGINE_KERNEL(engine_f32_scalar, "engine_f32_scalar", Isa::scalar, 0u, winograd_s8_scalar)
