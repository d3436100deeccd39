// The interleaved SpMV layout shared by sparse_f32 (CSR) and sparse_s8 (1 x 4 blocks): see driver.h.
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "edgecompress/driver.h"

namespace edgecompress {

// Per group of 16 rows and slice of kInterleaveSlice units, as many rounds as the spill_rank-th
// busiest of the 16 rows has units in that slice (1: the busiest; nothing spills). The order of a
// row's units inside a slice is free: any order gives the same integer sums, and float32 sums within
// the oracle's tolerance.
InterleavedLayout build_interleaved(int n, int units, const int64_t* indptr, const uint16_t* idx16, const int32_t* idx32,
                                    const void* values, int spill_rank) {
  InterleavedLayout il;
  il.groups = (n + 15) / 16;
  il.slices = (units + kInterleaveSlice - 1) / kInterleaveSlice;
  auto unit_of = [&](int64_t j) -> int64_t { return idx16 != nullptr ? idx16[j] : idx32[j]; };
  const size_t slices = static_cast<size_t>(il.slices), cells = static_cast<size_t>(il.groups) * slices;
  il.round_ptr = AlignedArray<int64_t>(cells + 1);
  int64_t* rp = il.round_ptr.data();
  std::vector<int32_t> count(16 * slices), lanes(16);
  for (int g = 0; g < il.groups; ++g) {
    std::fill(count.begin(), count.end(), 0);
    for (int l = 0; l < 16 && 16 * g + l < n; ++l)
      for (int64_t j = indptr[16 * g + l]; j < indptr[16 * g + l + 1]; ++j) ++count[l * slices + unit_of(j) / kInterleaveSlice];
    for (size_t s = 0; s < slices; ++s) {
      for (size_t l = 0; l < 16; ++l) lanes[l] = count[l * slices + s];
      std::nth_element(lanes.begin(), lanes.begin() + (spill_rank - 1), lanes.end(), std::greater<int32_t>());
      rp[g * slices + s + 1] = lanes[spill_rank - 1];
    }
  }
  rp[0] = 0;
  for (size_t c = 0; c < cells; ++c) rp[c + 1] += rp[c];
  const size_t rounds = static_cast<size_t>(rp[cells]);
  il.ridx = AlignedArray<uint8_t>(rounds * 16);  // zero-initialized: padding lanes read unit 0 with weight 0
  il.rval = AlignedArray<uint8_t>(rounds * 64);
  const uint8_t* src = static_cast<const uint8_t*>(values);
  std::vector<int64_t> next(16 * slices);  // each lane's next round per slice
  std::vector<int32_t> spill_idx;
  std::vector<uint8_t> spill_val;
  il.spill_ptr = AlignedArray<int64_t>(static_cast<size_t>(n) + 1);
  for (int g = 0; g < il.groups; ++g) {
    for (size_t l = 0; l < 16; ++l)
      for (size_t s = 0; s < slices; ++s) next[l * slices + s] = rp[g * slices + s];
    for (int l = 0; l < 16 && 16 * g + l < n; ++l) {  // rows in order, so the spill lists are CSR
      for (int64_t j = indptr[16 * g + l]; j < indptr[16 * g + l + 1]; ++j) {
        const int64_t u = unit_of(j);
        const size_t cell = g * slices + static_cast<size_t>(u / kInterleaveSlice);
        const int64_t r = next[l * slices + static_cast<size_t>(u / kInterleaveSlice)]++;
        if (r < rp[cell + 1]) {
          il.ridx.data()[16 * r + l] = static_cast<uint8_t>(u % kInterleaveSlice);
          std::memcpy(il.rval.data() + 64 * r + 4 * l, src + 4 * j, 4);
        } else {
          spill_idx.push_back(static_cast<int32_t>(u));
          spill_val.insert(spill_val.end(), src + 4 * j, src + 4 * j + 4);
        }
      }
      il.spill_ptr.data()[16 * g + l + 1] = static_cast<int64_t>(spill_idx.size());
    }
  }
  il.spill_idx = aligned_copy(spill_idx.data(), spill_idx.size());
  il.spill_val = aligned_copy(spill_val.data(), spill_val.size());
  return il;
}

}  // namespace edgecompress
