// sparse_s8 on AVX2 (vectorized by the compiler; no dot-product instruction without saturation): the portable kernel.
#include "edgecompress/cpu.h"
#include "sparse_s8_common.h"

namespace edgecompress {
extern const SparseS8Kernel sparse_s8_avx2 = {"sparse_s8_avx2", Isa::avx2, kNeedsAvx2, false, false, s8_generic, s8_finish_generic,
                                    s8_pack_strip<false>};
}
