// winograd_s8 on NEON: vmlal products, 4 rows x 16 outputs per micro-kernel.
#define EC_WS8_LANES 8
#define EC_WS8_TIER 3
#include "winograd_s8_impl.h"

EC_WINOGRAD_S8_KERNEL(winograd_s8_neon, "winograd_s8_neon", Isa::neon, kNeedsNeon)
