// The interleaved SpMV layout shared by sparse_f32 (CSR) and sparse_s8 (1 x 4 blocks): see driver.h.
#include <algorithm>
#include <cstring>
#include <vector>

#include "edgecompress/driver.h"

namespace edgecompress {

// Per group of 16 rows and slice of kInterleaveSlice units, as many rounds as the busiest of the 16
// rows has units in that slice. The order of a row's units inside a slice is free: any order gives
// the same integer sums, and float32 sums within the oracle's tolerance.
InterleavedLayout build_interleaved(int n, int units, const int64_t* indptr, const uint16_t* idx16, const int32_t* idx32,
                                    const void* values) {
  InterleavedLayout il;
  il.groups = (n + 15) / 16;
  il.slices = (units + kInterleaveSlice - 1) / kInterleaveSlice;
  auto unit_of = [&](int64_t j) -> int64_t { return idx16 != nullptr ? idx16[j] : idx32[j]; };
  const size_t slices = static_cast<size_t>(il.slices), cells = static_cast<size_t>(il.groups) * slices;
  il.round_ptr = AlignedArray<int64_t>(cells + 1);
  int64_t* rp = il.round_ptr.data();
  std::vector<int32_t> count(16 * slices);
  for (int g = 0; g < il.groups; ++g) {  // rounds per cell: the largest count of the group's rows
    std::fill(count.begin(), count.end(), 0);
    for (int l = 0; l < 16 && 16 * g + l < n; ++l)
      for (int64_t j = indptr[16 * g + l]; j < indptr[16 * g + l + 1]; ++j) ++count[l * slices + unit_of(j) / kInterleaveSlice];
    for (size_t s = 0; s < slices; ++s) {
      int32_t most = 0;
      for (size_t l = 0; l < 16; ++l) most = std::max(most, count[l * slices + s]);
      rp[g * slices + s + 1] = most;
    }
  }
  rp[0] = 0;
  for (size_t c = 0; c < cells; ++c) rp[c + 1] += rp[c];
  const size_t rounds = static_cast<size_t>(rp[cells]);
  il.ridx = AlignedArray<uint8_t>(rounds * 16);  // zero-initialized: padding lanes read unit 0 with weight 0
  il.rval = AlignedArray<uint8_t>(rounds * 64);
  const uint8_t* src = static_cast<const uint8_t*>(values);
  std::vector<int64_t> next(16 * slices);  // each lane's next round per slice
  for (int g = 0; g < il.groups; ++g) {
    for (size_t l = 0; l < 16; ++l)
      for (size_t s = 0; s < slices; ++s) next[l * slices + s] = rp[g * slices + s];
    for (int l = 0; l < 16 && 16 * g + l < n; ++l) {
      for (int64_t j = indptr[16 * g + l]; j < indptr[16 * g + l + 1]; ++j) {
        const int64_t u = unit_of(j);
        const size_t r = static_cast<size_t>(next[l * slices + u / kInterleaveSlice]++);
        il.ridx.data()[16 * r + l] = static_cast<uint8_t>(u % kInterleaveSlice);
        std::memcpy(il.rval.data() + 64 * r + 4 * l, src + 4 * j, 4);
      }
    }
  }
  return il;
}

}  // namespace edgecompress
