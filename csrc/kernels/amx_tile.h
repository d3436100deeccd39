// The thin tile interface every AMX kernel is written against: load a tile configuration
// (amx::config_load), zero, load and store a tile, tdpbusd / tdpbssd (EC_TILE_*), release
// (amx::release).
// The tile operations are macros over literal register numbers, which the instructions encode as
// immediates.
//
// Normally it maps to the AMX intrinsics, and only a translation unit built with the amx tier's
// flags may include it. With EC_AMX_TILE_MODEL defined, the same kernel source compiles against
// amx_tile_model.h, an exact C++ model of the registers and instructions, with baseline flags: the
// C++ test runner runs the amx kernels through it on every machine (QEMU does not emulate AMX).
// Internal linkage, as everything in kernels/common/.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgecompress {
namespace {
namespace amx {

constexpr int kTiles = 8, kMaxRows = 16, kMaxColBytes = 64;

// The 64-byte operand of ldtilecfg (palette 1): rows and bytes per row of each tile register.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

}  // namespace amx
}  // namespace
}  // namespace edgecompress

#if defined(EC_AMX_TILE_MODEL)
#include "amx_tile_model.h"
#else
#if !defined(__AMX_TILE__) || !defined(__AMX_INT8__)
#error "amx_tile.h must be compiled with the amx tier flags (or EC_AMX_TILE_MODEL for the tile model)"
#endif
#include <immintrin.h>

namespace edgecompress {
namespace {
namespace amx {

// Not _tile_loadconfig: GCC 12's builtin does not tell the optimizer that it reads the 64 bytes, so
// the stores that fill a local TileConfig were removed as dead, ldtilecfg loaded palette 1 with no
// rows, and the first tile instruction raised SIGILL. The asm names the whole struct as its input.
inline void config_load(const TileConfig& c) { __asm__ volatile("ldtilecfg %0" : : "m"(c)); }
inline void release() { _tile_release(); }

}  // namespace amx
}  // namespace
}  // namespace edgecompress

// Tile registers are literal numbers 0-7: GCC's intrinsics paste them into the instruction's text.
#define EC_TILE_ZERO(t) _tile_zero(t)
#define EC_TILE_LOAD(t, base, stride) _tile_loadd(t, base, stride)
#define EC_TILE_STORE(t, base, stride) _tile_stored(t, base, stride)
// tmm c += tmm a (u8, rows x 4K bytes) . tmm b (s8, K rows of 4-byte groups), int32 with wrap-around.
#define EC_TILE_DPBUSD(c, a, b) _tile_dpbusd(c, a, b)
// The same with signed bytes on both sides (tdpbssd).
#define EC_TILE_DPBSSD(c, a, b) _tile_dpbssd(c, a, b)
#endif
