// winograd_s8 with the architecture's baseline flags: plain C++ products (the transforms in vectors
// of 8 int16, which the baseline has on x86-64 and aarch64 alike).
#define EC_WS8_LANES 8
#define EC_WS8_TIER 0
#include "winograd_s8_impl.h"

EC_WINOGRAD_S8_KERNEL(winograd_s8_scalar, "winograd_s8_scalar", Isa::scalar, 0u)
