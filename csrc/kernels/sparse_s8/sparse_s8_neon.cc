// sparse_s8 on NEON (vectorized by the compiler): the portable kernel.
#include "edgecompress/cpu.h"
#include "sparse_s8_common.h"

namespace edgecompress {
extern const SparseS8Kernel sparse_s8_neon = {"sparse_s8_neon", Isa::neon, kNeedsNeon, false, false, s8_generic, s8_finish_generic,
                                    s8_pack_strip<false>};
}
