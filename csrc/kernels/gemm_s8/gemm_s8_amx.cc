// gemm_s8 on AMX tiles: tdpbusd (u8 x s8, 16 x 16 x 64 multiply-adds per instruction).
//
// Tile 16 x 64, four int32 accumulator tiles (tmm0-3) of 16 x 16. Per 64 values of K: one A tile of
// 16 rows x 64 u8 and, for each accumulator, one B tile of 16 k-blocks x 16 columns x 4 s8. The
// weights are the avx512vnni tier's panels unchanged ([kblocks][64][4], gemm_s8.h): their B tiles
// are 64-byte slices of 256-byte rows, loaded with stride 256, so one packing serves both kernels
// and calls with few rows go to avx512vnni on the same packed weight (a 16-row tile would mostly
// multiply padding there). The activations are packed as row tiles instead, a strip
// [ceil(K / 64)][16][64] (a_kr = 64; strips are padded to 16 rows, m_align).
//
// The last 64 of K may hold fewer than 16 k-blocks. Its A tile is zero past K (pack_a pads to
// a_kr), so the B rows beyond the panel's k-blocks, whatever they hold, add nothing; the packed
// weight has zeroed slack after its last panel for them (pack_s8_weight: a_kr / kr - 1 k-blocks),
// so no load leaves it. One tile configuration thus serves every shape. A and B loads alternate
// between two tiles each (tmm4 / tmm7 and tmm5 / tmm6), so a load need not wait for the tdpbusd
// that still reads the tile's previous contents.
//
// Tile state is per thread: the driver calls begin() before a worker's tiles of one call and end()
// after them (releasing it keeps the OS's context switches, and other tile users in the process,
// from carrying it).
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

void begin_tiles(int /*kblocks: one configuration for every K*/) {
  amx::TileConfig cfg;
  for (int t = 0; t < amx::kTiles; ++t) cfg.rows[t] = kMr, cfg.colsb[t] = amx::kMaxColBytes;
  amx::config_load(cfg);  // tmm0-3: C (16 x 16 int32), tmm4 / tmm7: A, tmm5 / tmm6: B (16 k-blocks)
}

void end_tiles() { amx::release(); }

// tmm0-3 += tmm a_tile (loaded from a) . the four B tiles of the panel rows at b.
#define EC_AMX_CHUNK(a_tile, a, b)                     \
  do {                                                 \
    EC_TILE_LOAD(a_tile, (a), kAKr);                   \
    EC_TILE_LOAD(5, (b), kPanelRowBytes);              \
    EC_TILE_DPBUSD(0, a_tile, 5);                      \
    EC_TILE_LOAD(6, (b) + 64, kPanelRowBytes);         \
    EC_TILE_DPBUSD(1, a_tile, 6);                      \
    EC_TILE_LOAD(5, (b) + 128, kPanelRowBytes);        \
    EC_TILE_DPBUSD(2, a_tile, 5);                      \
    EC_TILE_LOAD(6, (b) + 192, kPanelRowBytes);        \
    EC_TILE_DPBUSD(3, a_tile, 6);                      \
  } while (0)

void run_amx(const GemmS8Tile& t) {
  const uint8_t* a = static_cast<const uint8_t*>(t.a);
  const int chunks = (t.kblocks + kBlocksPerTile - 1) / kBlocksPerTile;
  constexpr size_t kATileBytes = kMr * kAKr, kBTileBytes = kBlocksPerTile * kPanelRowBytes;
  EC_TILE_ZERO(0);
  EC_TILE_ZERO(1);
  EC_TILE_ZERO(2);
  EC_TILE_ZERO(3);
  int c = 0;
  for (; c + 1 < chunks; c += 2) {
    EC_AMX_CHUNK(4, a + c * kATileBytes, t.b + c * kBTileBytes);
    EC_AMX_CHUNK(7, a + (c + 1) * kATileBytes, t.b + (c + 1) * kBTileBytes);
  }
  if (c < chunks) EC_AMX_CHUNK(4, a + c * kATileBytes, t.b + c * kBTileBytes);
  alignas(64) int32_t out[kMr * kNr];
  EC_TILE_STORE(0, out + 0, kNr * 4);
  EC_TILE_STORE(1, out + 16, kNr * 4);
  EC_TILE_STORE(2, out + 32, kNr * 4);
  EC_TILE_STORE(3, out + 48, kNr * 4);
  finish_tile<kNr>(out, t);
}
#undef EC_AMX_CHUNK

}  // namespace
}  // namespace edgecompress

#if defined(EC_AMX_TILE_MODEL)
// The tile model runs every row count through the tiles: no small-M kernel.
EC_GEMM_S8_KERNEL_WITH(gemm_s8_amx_model, "gemm_s8_16x64_amx_model", Isa::amx, kMr, kNr, kKr, kAKr, 1, false, kMr,
                       0u, run_amx, begin_tiles, end_tiles, 0, nullptr, false)
#else
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_s8_amx.cc must be compiled with the amx tier flags"
#endif
namespace edgecompress {
extern const GemmS8Kernel gemm_s8_avx512vnni;
}
EC_GEMM_S8_KERNEL_WITH(gemm_s8_amx, "gemm_s8_16x64_amx", Isa::amx, kMr, kNr, kKr, kAKr, 1, false, kMr, kNeedsAmx,
                       run_amx, begin_tiles, end_tiles, kSmallMRows, &gemm_s8_avx512vnni, false)
#endif
