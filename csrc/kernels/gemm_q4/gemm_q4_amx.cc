// gemm_q4 on AMX tiles, int8 mode: 16 rows x one 16-column panel per tile, one group of K at a time.
//
// A panel's codes are decoded once per worker and call into int8 B tiles in L1/L2 ([Kp / 4][16][4]:
// k-block rows of 16 columns x 4 k, which is the packed nibbles' own order, low and high nibbles
// apart), holding what the oracle multiplies (code - zero point, or the codebook's integer entry), so
// every weight form (symmetric, asymmetric, per-tensor and per-channel codebooks) runs the same tile
// loop and the row tiles of a task reuse them. The activations need no repacking: an A tile is 16
// rows of the prepared int8 activations (row stride Kp), both sides are signed, so tdpbssd
// multiplies them with no shift to undo. Per
// group (or per 64 of K for g = 128, two chunks into one accumulator) the int32 dot products are
// exact; the group's scales are applied in the oracle's order, acc + float(dot) * (sx * scale), so
// the results are the oracle's bits as on every tier.
//
// The tile configuration depends on the rows of the tile (the last one may be partial: loading 16
// rows there would read past the activations) and on the group size, so it is loaded when either
// changes. end() releases the tiles and forgets the decoded panel after each worker's tiles of a
// call: no state outlives a call (another tile user on the thread, or a freed weight whose address
// is reused, cannot meet a stale configuration or panel).
//
// The float mode takes the portable float tiles, 4 rows at a time; calls with at most 4 rows go to
// the avx512vnni tier's VBMI kernel (small_m), where a 16-row tile would mostly multiply padding.
//
// Built twice, like gemm_s8_amx.cc: on the intrinsics (amx tier flags) and on the tile model.
#include <cstdlib>

#include "../amx_tile.h"
#include "gemm_q4_common.h"

namespace edgecompress {
namespace {

constexpr int kMr = 16;
constexpr int kSmallMRows = 5;  // calls with fewer rows (M <= 4, the GEMV and decode case) go to small_m

// Runs a portable tile (at most kQ4MaxRows rows) over the tile's rows, kQ4MaxRows at a time.
template <void (*kTile)(const Q4Tile&)>
void in_row_blocks(const Q4Tile& t) {
  for (int r0 = 0; r0 < t.rows; r0 += kQ4MaxRows) {
    Q4Tile s = t;
    s.rows = t.rows - r0 < kQ4MaxRows ? t.rows - r0 : kQ4MaxRows;
    if (t.x.xq != nullptr) {
      s.x.xq = t.x.xq + r0 * t.x.ldx, s.x.sx = t.x.sx + r0 * t.x.lds, s.x.sumq = t.x.sumq + r0 * t.x.lds;
    }
    if (t.x.xf != nullptr) s.x.xf = t.x.xf + r0 * t.x.ldx;
    s.y = t.y + r0 * t.ldy;
    kTile(s);
  }
}

struct Q4AmxState {
  bool configured = false;
  int rows = 0, kchunk = 0;
  const Q4Weight* w = nullptr;  // whose panel `codes` holds
  int panel = -1;
  int8_t* codes = nullptr;      // [kp / 4][16][4]
  size_t capacity = 0;
  ~Q4AmxState() { std::free(codes); }
};

Q4AmxState& amx_state() {
  static thread_local Q4AmxState s;
  return s;
}

// The panel's B tiles, decoded once per worker and call (or null when out of memory).
const int8_t* panel_codes(Q4AmxState& s, const Q4Weight& w, int panel) {
  if (s.w == &w && s.panel == panel) return s.codes;
  const size_t bytes = static_cast<size_t>(w.kp) * kQ4Panel;
  if (bytes > s.capacity) {
    std::free(s.codes);
    s.codes = static_cast<int8_t*>(std::malloc(bytes));
    s.capacity = s.codes != nullptr ? bytes : 0;
    if (s.codes == nullptr) return nullptr;
  }
  // A 64-byte step of nibbles is two B tile rows already: its low nibbles are k-block 2s (byte 4j + i:
  // column j, k = 8s + i), its high nibbles k-block 2s + 1 (q4_code). Each becomes the integer the
  // oracle multiplies (q4_decode_group_i8): code - zero point, or the codebook's entry.
  const uint8_t* nib = q4_panel_nib(w, panel);
  const uint8_t* zp = q4_panel_zp(w, panel);
  const int8_t* tables = w.table_i8 == nullptr ? nullptr : w.table_i8 + (w.per_channel ? panel * kQ4Panel * 16 : 0);
  const int steps_per_group = w.g / 8;
  for (int st = 0; st < w.kp / 8; ++st) {
    const uint8_t* b = nib + static_cast<size_t>(st) * 64;
    int8_t* lo = s.codes + static_cast<size_t>(st) * 128;
    int8_t* hi = lo + 64;
    if (tables != nullptr) {
      for (int x = 0; x < 64; ++x) {
        const int8_t* table = tables + (w.per_channel ? (x / 4) * 16 : 0);
        lo[x] = table[b[x] & 15], hi[x] = table[b[x] >> 4];
      }
    } else {
      int8_t z[64];  // each byte's zero point: its column's, for this group
      const uint8_t* group_zp = zp != nullptr ? zp + (st / steps_per_group) * kQ4Panel : nullptr;
      for (int x = 0; x < 64; ++x) z[x] = static_cast<int8_t>(group_zp != nullptr ? group_zp[x / 4] : 8);
      for (int x = 0; x < 64; ++x) {
        lo[x] = static_cast<int8_t>((b[x] & 15) - z[x]);
        hi[x] = static_cast<int8_t>((b[x] >> 4) - z[x]);
      }
    }
  }
  s.w = &w, s.panel = panel;
  return s.codes;
}

// tmm0: int32 accumulators (rows x 16); tmm1: rows x kchunk activations; tmm2: kchunk / 4 k-blocks of
// the panel's codes.
void configure(Q4AmxState& s, int rows, int kchunk) {
  if (s.configured && s.rows == rows && s.kchunk == kchunk) return;
  amx::TileConfig cfg;
  cfg.rows[0] = static_cast<uint8_t>(rows), cfg.colsb[0] = 64;
  cfg.rows[1] = static_cast<uint8_t>(rows), cfg.colsb[1] = static_cast<uint16_t>(kchunk);
  cfg.rows[2] = static_cast<uint8_t>(kchunk / 4), cfg.colsb[2] = 64;
  amx::config_load(cfg);
  s.configured = true, s.rows = rows, s.kchunk = kchunk;
}

void end_tiles() {
  Q4AmxState& s = amx_state();
  if (s.configured) amx::release();
  s.configured = false;
  s.w = nullptr, s.panel = -1;
}

void tile_int8(const Q4Tile& t) {
  const Q4Weight& w = *t.w;
  Q4AmxState& s = amx_state();
  const int8_t* codes = panel_codes(s, w, t.panel);
  if (codes == nullptr) return in_row_blocks<q4_tile_generic_int8>(t);  // no memory for the decoded panel
  const int g = w.g, kchunk = g < 64 ? g : 64, chunks = g / kchunk, rows = t.rows;
  configure(s, rows, kchunk);
  const uint16_t* sw16 = q4_panel_scale(w, t.panel);
  const ptrdiff_t ldx = t.x.ldx, lds = t.x.lds;
  alignas(64) float acc[kMr * kQ4Panel];
  alignas(64) int32_t dot[kMr * kQ4Panel];
  for (int i = 0; i < rows * kQ4Panel; ++i) acc[i] = 0.0f;
  for (int gi = 0; gi < w.groups; ++gi) {
    EC_TILE_ZERO(0);
    for (int c = 0; c < chunks; ++c) {
      const ptrdiff_t k0 = static_cast<ptrdiff_t>(gi) * g + c * kchunk;
      EC_TILE_LOAD(1, t.x.xq + k0, ldx);
      EC_TILE_LOAD(2, codes + k0 * kQ4Panel, 64);
      EC_TILE_DPBSSD(0, 1, 2);
    }
    EC_TILE_STORE(0, dot, 64);
    float sw[kQ4Panel];
    for (int j = 0; j < kQ4Panel; ++j) sw[j] = half_to_float(sw16[gi * kQ4Panel + j]);
    for (int r = 0; r < rows; ++r) {
      const float sx = t.x.sx[r * lds + gi];
      float* a = acc + r * kQ4Panel;
      const int32_t* d = dot + r * kQ4Panel;
      for (int j = 0; j < kQ4Panel; ++j) a[j] = a[j] + static_cast<float>(d[j]) * (sx * sw[j]);
    }
  }
  q4_store(t, acc);
}

void run_amx(const Q4Tile& t) {
  if (t.compute == Q4Compute::int8) return tile_int8(t);
  in_row_blocks<q4_tile_generic_f32>(t);
}

}  // namespace
}  // namespace edgecompress

#if defined(EC_AMX_TILE_MODEL)
namespace edgecompress {
// The tile model runs every row count through the tiles: no small-M kernel.
extern const GemmQ4Kernel gemm_q4_amx_model = {"gemm_q4_16x16_amx_model", Isa::amx, kMr, 0u, q4_prepare, run_amx,
                                               end_tiles, 0, nullptr};
}  // namespace edgecompress
#else
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VNNI__)
#error "gemm_q4_amx.cc must be compiled with the amx tier flags"
#endif
namespace edgecompress {
extern const GemmQ4Kernel gemm_q4_avx512vbmi;
extern const GemmQ4Kernel gemm_q4_amx = {"gemm_q4_16x16_amx", Isa::amx, kMr, kNeedsAmx, q4_prepare, run_amx, end_tiles,
                                         kSmallMRows, &gemm_q4_avx512vbmi};
}  // namespace edgecompress
#endif
