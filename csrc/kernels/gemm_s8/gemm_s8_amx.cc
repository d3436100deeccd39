// gemm_s8 on AMX tiles: tdpbusd (u8 x s8, 16 x 16 x 64 multiply-adds per instruction).
//
// Tile 16 x 64, four int32 accumulator tiles (tmm0-3) of 16 x 16. Per 64 values of K: one A tile of
// 16 rows x 64 u8 (tmm4) and, for each accumulator, one B tile of 16 k-blocks x 16 columns x 4 s8
// (tmm5). The weights are the avx512vnni tier's panels unchanged ([kblocks][64][4], gemm_s8.h):
// their B tiles are 64-byte slices of 256-byte rows, loaded with stride 256, so one packing serves
// both kernels and calls with few rows go to avx512vnni on the same packed weight (a 16-row tile
// would mostly multiply padding there). The activations are packed as row tiles instead, a strip
// [ceil(K / 64)][16][64] (a_kr = 64; strips are padded to 16 rows, m_align).
//
// The k-blocks beyond the last whole 64 (kblocks % 16 of them) run through a second pair of tiles
// configured for them (tmm6: A with 4 * rem bytes per row, tmm7: B with rem rows), so no panel needs
// padding to a multiple of 64 in K and no load reads past a panel. The configuration therefore
// depends on the weight's kblocks: the driver calls begin() before a worker's tiles of one call and
// end() after them (tile state is per thread, and releasing it keeps other tile users in the
// process, and the OS's context switches, from paying for it).
//
// Built twice: with the amx tier's flags on the intrinsics (the registry's kernel), and in the C++
// test runner with EC_AMX_TILE_MODEL on the tile model (amx_tile.h), under another name.
#include "../amx_tile.h"
#include "gemm_s8_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 16, kNr = 64, kKr = 4, kAKr = 64;
constexpr int kBlocksPerTile = kAKr / kKr;  // k-blocks per A tile row, rows of a B tile
constexpr size_t kPanelRowBytes = kNr * kKr;  // one k-block of a packed B panel
// Below this many rows a call runs the avx512vnni kernel on the same packed weight. A 16-row tile
// costs the same whatever rows it holds, while vpdpbusd's cost grows with the rows; the crossing is
// to be measured on an AMX machine (bench_gemm.py times both tiers), the value here is a first
// estimate. Reported by cpu_info() (edgecompress.runtime).
constexpr int kSmallMRows = 8;

// Tiles: tmm0-3 the accumulators of the four 16-column quarters, tmm4 / tmm5 the A and B tiles of
// a whole 64 of K, tmm6 / tmm7 those of the remaining k-blocks (configured only when there are any).
void begin_tiles(int kblocks) {
  amx::TileConfig cfg;
  for (int t = 0; t < 4; ++t) cfg.rows[t] = kMr, cfg.colsb[t] = 16 * 4;
  cfg.rows[4] = kMr, cfg.colsb[4] = kAKr;
  cfg.rows[5] = kBlocksPerTile, cfg.colsb[5] = 16 * kKr;
  const int rem = kblocks % kBlocksPerTile;
  if (rem != 0) {
    cfg.rows[6] = kMr, cfg.colsb[6] = static_cast<uint16_t>(rem * kKr);
    cfg.rows[7] = static_cast<uint8_t>(rem), cfg.colsb[7] = 16 * kKr;
  }
  amx::config_load(cfg);
}

void end_tiles() { amx::release(); }

// tmm0-3 += tmm a_tile . (B tile j of the panel rows at b), the B tiles loaded into tmm b_tile.
#define EC_DOT_QUARTERS(a_tile, b_tile, b)              \
  do {                                                  \
    EC_TILE_LOAD(b_tile, (b), kPanelRowBytes);          \
    EC_TILE_DPBUSD(0, a_tile, b_tile);                  \
    EC_TILE_LOAD(b_tile, (b) + 64, kPanelRowBytes);     \
    EC_TILE_DPBUSD(1, a_tile, b_tile);                  \
    EC_TILE_LOAD(b_tile, (b) + 128, kPanelRowBytes);    \
    EC_TILE_DPBUSD(2, a_tile, b_tile);                  \
    EC_TILE_LOAD(b_tile, (b) + 192, kPanelRowBytes);    \
    EC_TILE_DPBUSD(3, a_tile, b_tile);                  \
  } while (0)

void run_amx(const GemmS8Tile& t) {
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int whole = t.kblocks / kBlocksPerTile, rem = t.kblocks % kBlocksPerTile;
  constexpr size_t kATileBytes = kMr * kAKr, kBTileBytes = kBlocksPerTile * kPanelRowBytes;
  EC_TILE_ZERO(0);
  EC_TILE_ZERO(1);
  EC_TILE_ZERO(2);
  EC_TILE_ZERO(3);
  for (int c = 0; c < whole; ++c) {
    EC_TILE_LOAD(4, a + c * kATileBytes, kAKr);
    EC_DOT_QUARTERS(4, 5, t.b + c * kBTileBytes);
  }
  if (rem != 0) {
    EC_TILE_LOAD(6, a + whole * kATileBytes, kAKr);
    EC_DOT_QUARTERS(6, 7, t.b + whole * kBTileBytes);
  }
  alignas(64) int32_t out[kMr * kNr];
  EC_TILE_STORE(0, out + 0, kNr * 4);
  EC_TILE_STORE(1, out + 16, kNr * 4);
  EC_TILE_STORE(2, out + 32, kNr * 4);
  EC_TILE_STORE(3, out + 48, kNr * 4);
  finish_tile<kNr>(out, t);
}
#undef EC_DOT_QUARTERS

}  // namespace
}  // namespace edgecompress

#if defined(EC_AMX_TILE_MODEL)
// The tile model runs every row count through the tiles: no small-M kernel.
EC_GEMM_S8_KERNEL_WITH(gemm_s8_amx_model, "gemm_s8_16x64_amx_model", Isa::amx, kMr, kNr, kKr, kAKr, 1, false, kMr,
                       0u, run_amx, begin_tiles, end_tiles, 0, nullptr)
#else
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_s8_amx.cc must be compiled with the amx tier flags"
#endif
namespace edgecompress {
extern const GemmS8Kernel gemm_s8_avx512vnni;
}
EC_GEMM_S8_KERNEL_WITH(gemm_s8_amx, "gemm_s8_16x64_amx", Isa::amx, kMr, kNr, kKr, kAKr, 1, false, kMr, kNeedsAmx,
                       run_amx, begin_tiles, end_tiles, kSmallMRows, &gemm_s8_avx512vnni)
#endif
