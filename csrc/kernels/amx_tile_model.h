// An exact C++ model of the AMX tile registers and of the instructions amx_tile.h exposes, for the
// test build of the amx kernels (EC_AMX_TILE_MODEL; see amx_tile.h). It follows the pseudocode of
// the Intel SDM for palette 1:
//   - 8 tile registers of 16 rows x 64 bytes, per thread; ldtilecfg sets each one's rows and bytes
//     per row (colsb) and zeroes every tile; palette 0 (like tilerelease) returns to the init state;
//   - tileloadd reads rows x colsb bytes at base + row * stride and zeroes the rest of the register;
//     tilestored writes rows x colsb bytes;
//   - tdpbusd adds, for each of C's rows and 4-byte columns, the dot products of 4 u8 from A with
//     4 s8 from B over A's colsb / 4 groups, in int32 with wrap-around, and zeroes the rest of C;
//     tdpbssd the same with s8 from A.
// Where the hardware faults (#GP for a bad configuration, #UD for an unconfigured tile or operand
// shapes that do not fit), the model prints why and aborts, so a kernel bug fails the test loudly.
// Memory is read and written exactly where the hardware would, so AddressSanitizer sees overruns.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace edgecompress {
namespace {
namespace amx {

struct TileModel {
  bool configured = false;
  int rows[kTiles] = {}, colsb[kTiles] = {};
  uint8_t data[kTiles][kMaxRows][kMaxColBytes] = {};
};

inline TileModel& tile_model() {
  static thread_local TileModel m;
  return m;
}

[[noreturn]] inline void model_fault(const char* what, int tile) {
  std::fprintf(stderr, "AMX tile model: %s (tile %d): the hardware would fault here\n", what, tile);
  std::abort();
}

inline void config_load(const TileConfig& c) {
  TileModel& m = tile_model();
  if (c.palette == 0) {
    m = TileModel{};
    return;
  }
  if (c.palette != 1) model_fault("ldtilecfg: palette other than 0 or 1", -1);
  if (c.start_row != 0) model_fault("ldtilecfg: start_row set (only an interrupted tileloadd resumes there)", -1);
  for (uint8_t r : c.reserved) {
    if (r != 0) model_fault("ldtilecfg: reserved bytes set", -1);
  }
  for (int t = 0; t < 16; ++t) {
    const bool named = t < kTiles;
    if (!named && (c.rows[t] != 0 || c.colsb[t] != 0)) model_fault("ldtilecfg: a tile beyond tmm7 configured", t);
    if (c.rows[t] > kMaxRows || c.colsb[t] > kMaxColBytes) model_fault("ldtilecfg: rows > 16 or colsb > 64", t);
    if ((c.rows[t] == 0) != (c.colsb[t] == 0)) model_fault("ldtilecfg: rows and colsb not both zero or both set", t);
  }
  m.configured = true;
  for (int t = 0; t < kTiles; ++t) m.rows[t] = c.rows[t], m.colsb[t] = c.colsb[t];
  std::memset(m.data, 0, sizeof(m.data));
}

inline void release() { tile_model() = TileModel{}; }

// The model of one register, after checking that it may be used.
inline TileModel& usable(int t) {
  TileModel& m = tile_model();
  if (!m.configured) model_fault("tile instruction without a tile configuration", t);
  if (m.rows[t] == 0) model_fault("tile instruction on an unconfigured tile", t);
  return m;
}

template <int T>
void zero() {
  static_assert(T >= 0 && T < kTiles, "tmm0..tmm7");
  std::memset(usable(T).data[T], 0, sizeof(TileModel::data[T]));
}

template <int T>
void load(const void* base, size_t stride) {
  static_assert(T >= 0 && T < kTiles, "tmm0..tmm7");
  TileModel& m = usable(T);
  std::memset(m.data[T], 0, sizeof(m.data[T]));
  for (int r = 0; r < m.rows[T]; ++r) {
    std::memcpy(m.data[T][r], static_cast<const uint8_t*>(base) + r * stride, static_cast<size_t>(m.colsb[T]));
  }
}

template <int T>
void store(void* base, size_t stride) {
  static_assert(T >= 0 && T < kTiles, "tmm0..tmm7");
  TileModel& m = usable(T);
  for (int r = 0; r < m.rows[T]; ++r) {
    std::memcpy(static_cast<uint8_t*>(base) + r * stride, m.data[T][r], static_cast<size_t>(m.colsb[T]));
  }
}

// tdpbusd (kASigned false) and tdpbssd (true): B's bytes are always signed.
template <int C, int A, int B, bool kASigned>
void dot_product() {
  static_assert(C >= 0 && C < kTiles && A >= 0 && A < kTiles && B >= 0 && B < kTiles, "tmm0..tmm7");
  static_assert(C != A && C != B && A != B, "tdpbusd needs three distinct tiles");
  usable(C), usable(A);
  TileModel& m = usable(B);
  if (m.colsb[A] % 4 != 0 || m.colsb[A] / 4 != m.rows[B]) model_fault("tdpbusd: A's colsb / 4 != B's rows", A);
  if (m.colsb[C] != m.colsb[B]) model_fault("tdpbusd: C's colsb != B's colsb", C);
  if (m.rows[C] != m.rows[A]) model_fault("tdpbusd: C's rows != A's rows", C);
  if (m.colsb[C] % 4 != 0) model_fault("tdpbusd: C's colsb not a multiple of 4", C);
  uint8_t out[kMaxRows][kMaxColBytes] = {};
  for (int r = 0; r < m.rows[C]; ++r) {
    for (int n = 0; n < m.colsb[C] / 4; ++n) {
      uint32_t acc;
      std::memcpy(&acc, &m.data[C][r][4 * n], 4);
      for (int k = 0; k < m.colsb[A] / 4; ++k) {
        int32_t dot = 0;  // four products of at most 255 * 128 in magnitude
        for (int i = 0; i < 4; ++i) {
          const uint8_t a = m.data[A][r][4 * k + i];
          dot += (kASigned ? static_cast<int32_t>(static_cast<int8_t>(a)) : static_cast<int32_t>(a)) *
                 static_cast<int8_t>(m.data[B][k][4 * n + i]);
        }
        acc += static_cast<uint32_t>(dot);  // int32 wrap-around, never saturation
      }
      std::memcpy(&out[r][4 * n], &acc, 4);
    }
  }
  std::memcpy(m.data[C], out, sizeof(out));
}

}  // namespace amx
}  // namespace
}  // namespace edgecompress

#define EC_TILE_ZERO(t) ::edgecompress::amx::zero<t>()
#define EC_TILE_LOAD(t, base, stride) ::edgecompress::amx::load<t>(base, stride)
#define EC_TILE_STORE(t, base, stride) ::edgecompress::amx::store<t>(base, stride)
#define EC_TILE_DPBUSD(c, a, b) ::edgecompress::amx::dot_product<c, a, b, false>()
#define EC_TILE_DPBSSD(c, a, b) ::edgecompress::amx::dot_product<c, a, b, true>()
