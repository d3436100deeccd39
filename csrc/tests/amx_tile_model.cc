// The amx kernels' sources compiled on the tile model (kernels/amx_tile_model.h) instead of the
// intrinsics, with baseline flags, for the C++ test runner: gemm_s8's and the peak probe here,
// gemm_q4's in amx_tile_model_q4.cc (one translation unit per kernel source, as in the real build).
// Each defines its kernel under a *_model name; the registry never lists them.
#define EC_AMX_TILE_MODEL 1
#include "../kernels/gemm_s8/gemm_s8_amx.cc"
#include "../kernels/peak/peak_amx.cc"

#include <random>

namespace edgecompress {
namespace {

// tdpbusd / tdpbssd on the model against a direct reading of the instructions' definitions, for tiles
// configured with fewer rows and bytes than the registers hold, accumulators near the int32 limits
// (they must wrap, never saturate), and the zeroing of what a configuration leaves out.
bool check_dot_product(int rows, int kgroups, int ncols, std::mt19937* rng, bool extremes, bool a_signed) {
  amx::TileConfig cfg;
  cfg.rows[0] = static_cast<uint8_t>(rows), cfg.colsb[0] = static_cast<uint16_t>(4 * ncols);    // C
  cfg.rows[1] = static_cast<uint8_t>(rows), cfg.colsb[1] = static_cast<uint16_t>(4 * kgroups);  // A
  cfg.rows[2] = static_cast<uint8_t>(kgroups), cfg.colsb[2] = static_cast<uint16_t>(4 * ncols);  // B
  cfg.rows[3] = 16, cfg.colsb[3] = 64;  // a full tile, to read back whole registers
  amx::config_load(cfg);
  std::uniform_int_distribution<int> byte(0, 255);
  uint8_t a[16][64], b[16][64];
  int32_t c[16][16];
  for (auto& row : a)
    for (auto& v : row) v = static_cast<uint8_t>(extremes ? 255 : byte(*rng));
  for (auto& row : b)
    for (auto& v : row) v = static_cast<uint8_t>(extremes ? 0x7f : byte(*rng));
  for (auto& row : c)
    for (auto& v : row) v = extremes ? INT32_MAX - 1000 : static_cast<int32_t>((*rng)());
  EC_TILE_LOAD(0, c, 64);
  EC_TILE_LOAD(1, a, 64);
  EC_TILE_LOAD(2, b, 64);
  if (a_signed) {
    EC_TILE_DPBSSD(0, 1, 2);
  } else {
    EC_TILE_DPBUSD(0, 1, 2);
  }
  int32_t got[16][16];
  std::memset(got, 0x5a, sizeof(got));
  EC_TILE_STORE(0, got, 64);
  bool ok = true;
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 16; ++n) {
      if (r >= rows || n >= ncols) {
        ok &= got[r][n] == 0x5a5a5a5a;  // tilestored writes only the configured part
        continue;
      }
      int64_t want = c[r][n];
      for (int k = 0; k < 4 * kgroups; ++k) {
        const int64_t av = a_signed ? int64_t{static_cast<int8_t>(a[r][k])} : int64_t{a[r][k]};
        want += av * static_cast<int8_t>(b[k / 4][4 * n + k % 4]);
      }
      ok &= got[r][n] == static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(want)));
    }
  }
  // What lies outside C's configured rows and bytes reads as zero through a full-size view of the
  // register (the model's storage; the hardware zeroes it the same way).
  const amx::TileModel& m = amx::tile_model();
  for (int r = 0; r < 16; ++r)
    for (int byte_i = 0; byte_i < 64; ++byte_i) {
      if (r < rows && byte_i < 4 * ncols) continue;
      ok &= m.data[0][r][byte_i] == 0 && m.data[1][r][byte_i] == (r < rows && byte_i < 4 * kgroups ? a[r][byte_i] : 0);
    }
  amx::release();
  if (!ok) {
    std::printf("  %s on %d rows x %d k-groups x %d columns%s differs\n", a_signed ? "tdpbssd" : "tdpbusd", rows, kgroups,
                ncols, extremes ? " (extremes)" : "");
  }
  return ok;
}

}  // namespace

bool amx_tile_model_checks() {
  std::mt19937 rng(17);
  bool ok = true;
  for (int rows : {1, 7, 16})
    for (int kgroups : {1, 5, 16})
      for (int ncols : {1, 9, 16})
        for (bool a_signed : {false, true}) ok &= check_dot_product(rows, kgroups, ncols, &rng, false, a_signed);
  ok &= check_dot_product(16, 16, 16, &rng, true, false);
  ok &= check_dot_product(16, 16, 16, &rng, true, true);
  // tilezero clears the whole register; tileloadd of fewer rows zeroes the others.
  amx::TileConfig cfg;
  cfg.rows[0] = 16, cfg.colsb[0] = 64;
  cfg.rows[1] = 3, cfg.colsb[1] = 8;
  amx::config_load(cfg);
  uint8_t ones[16][64];
  std::memset(ones, 1, sizeof(ones));
  EC_TILE_LOAD(0, ones, 64);
  EC_TILE_LOAD(1, ones, 64);
  const amx::TileModel& m = amx::tile_model();
  for (int r = 0; r < 16; ++r)
    for (int i = 0; i < 64; ++i) ok &= m.data[0][r][i] == 1 && m.data[1][r][i] == (r < 3 && i < 8 ? 1 : 0);
  EC_TILE_ZERO(0);
  for (int r = 0; r < 16; ++r)
    for (int i = 0; i < 64; ++i) ok &= m.data[0][r][i] == 0;
  amx::release();
  ok &= !amx::tile_model().configured;
  // The peak probe's configuration and operands are ones the hardware accepts (the model would
  // abort otherwise), and it leaves the tiles released.
  peak_tdpbusd_tile_model.run(2);
  ok &= !amx::tile_model().configured;
  return ok;
}

}  // namespace edgecompress
