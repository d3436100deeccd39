// Peak probe of the amx tier: tdpbusd on four independent accumulator tiles (16 x 16 int32, each
// the sum of 16 x 16 x 64 u8 x s8 products), sources in the other four tiles. Written against the
// tile interface (amx_tile.h), so the C++ test runner also runs it on the tile model, which checks
// that its tile configuration and operand shapes are ones the hardware accepts.
#include "../amx_tile.h"
#include "edgecompress/peak.h"

namespace edgecompress {
namespace {

void tdpbusd_tiles(int64_t iters) {
  amx::TileConfig cfg;
  for (int t = 0; t < amx::kTiles; ++t) cfg.rows[t] = amx::kMaxRows, cfg.colsb[t] = amx::kMaxColBytes;
  amx::config_load(cfg);  // every tile zeroed
  for (int64_t it = 0; it < iters; ++it) {
    EC_TILE_DPBUSD(0, 4, 5);
    EC_TILE_DPBUSD(1, 6, 7);
    EC_TILE_DPBUSD(2, 4, 6);
    EC_TILE_DPBUSD(3, 5, 7);
    EC_TILE_DPBUSD(0, 4, 7);
    EC_TILE_DPBUSD(1, 5, 6);
    EC_TILE_DPBUSD(2, 6, 4);
    EC_TILE_DPBUSD(3, 7, 5);
  }
  amx::release();
}

}  // namespace

#if defined(EC_AMX_TILE_MODEL)
extern const PeakProbe peak_tdpbusd_tile_model = {"tdpbusd_tile_model", Isa::amx, 2.0 * 16 * 16 * 64, 8, 0u,
                                                  tdpbusd_tiles, nullptr};
#else
extern const PeakProbe peak_tdpbusd_tile = {"tdpbusd_tile", Isa::amx, 2.0 * 16 * 16 * 64, 8, kNeedsAmx, tdpbusd_tiles,
                                            peak_read_ymm};
#endif

}  // namespace edgecompress
