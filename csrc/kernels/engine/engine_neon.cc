// engine_f32 on NEON: 128-bit vectors.
#define EC_ENGINE_WIDTH 4
#include "engine_impl.h"

EC_ENGINE_KERNEL(engine_f32_neon, "engine_f32_neon", Isa::neon, kNeedsNeon, winograd_s8_neon)
