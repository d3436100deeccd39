// sparse_nm_f32 with the architecture's baseline flags: the specification every tier matches. It
// reads each kept value's position straight from its chunk's position block (sparse_nm.h) and sums
// value * x[group * m + position] in order.
#include "sparse_nm_common.h"

namespace edgecompress {
namespace {

void nm_scalar(const SparseNmTask& t) {
  const SparseNmF32& w = *t.w;
  const int bits = w.group == 8 ? 4 : 2, dwords = w.meta_bytes();
  const ptrdiff_t chunks = w.chunks;
  for (int p = t.p0; p < t.p1; ++p) {
    float sums[kNmRows][kNmPanel] = {};
    for (int j = 0; j < kNmPanel; ++j) {
      for (ptrdiff_t c = 0; c < chunks; ++c) {
        const ptrdiff_t block = p * chunks + c;  // chunk c of the panel
        const float* vals = w.values + (block * kNmPanel + j) * kNmChunk;
        const uint8_t* pos_block = w.meta + block * kNmPanel * dwords;
        for (int l = 0; l < kNmChunk; ++l) {
          const int pos = (pos_block[4 * (l % dwords) + j] >> (bits * (l / dwords))) & (w.group - 1);
          const ptrdiff_t col = (c * kNmChunk + l) / w.kept * w.group + pos;
          for (int i = 0; i < t.m; ++i) sums[i][j] += vals[l] * t.x[i * t.ldx + col];
        }
      }
    }
    nm_store(t, p, 0, t.m, sums);
  }
}

}  // namespace
}  // namespace edgecompress

EC_SPARSE_NM_KERNEL(sparse_nm_f32_scalar, "sparse_nm_f32_scalar", Isa::scalar, 0u, nm_scalar)
