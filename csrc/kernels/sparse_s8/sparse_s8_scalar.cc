// sparse_s8 with the architecture's baseline flags: the portable kernel.
#include "edgecompress/cpu.h"
#include "sparse_s8_common.h"

namespace edgecompress {
extern const SparseS8Kernel sparse_s8_scalar = {"sparse_s8_scalar", Isa::scalar, 0u, false, false, s8_generic, s8_finish_generic,
                                    s8_pack_strip<false>};
}
