// ISA tiers: the rungs of each architecture's ladder, lowest first.
//
// A tier names a kernel design point (e.g. "256-bit VNNI"), not one instruction encoding: the
// avxvnni tier runs on CPUs with AVX-VNNI (VEX encoding) and on CPUs with AVX-512 VNNI + VL (the same
// 256-bit kernel, EVEX encoded). The registry decides which build of a tier serves a CPU.
//
// x86-64 runs scalar -> avx2 -> avxvnni -> avx512 -> avx512vnni -> amx. avx512 (F/BW/DQ/VL) holds the
// 512-bit float kernels, which need no VNNI: AVX-512 CPUs without VNNI (Skylake-X) run them, and
// avx512vnni inherits them. An AVX-VNNI CPU without AVX-512 (Alder Lake) stops at avxvnni. amx (tile
// registers, tdpbusd; Sapphire Rapids and later) needs the OS to grant the tile state as well (cpu.h).
#pragma once

#include <cstdint>

namespace edgecompress {

enum class Isa : int {
  scalar = 0,
  // x86-64
  avx2,
  avxvnni,
  avx512,
  avx512vnni,
  amx,
  // aarch64
  neon,
  dotprod,
  i8mm,
  count
};

// Tiers of the architecture this binary was built for, lowest first.
int isa_ladder(const Isa** tiers);

// Position of `isa` on this architecture's ladder, or -1 when it is not on it.
int isa_rank(Isa isa);

const char* isa_name(Isa isa);

// Returns false when `name` is not a tier of this architecture.
bool isa_from_name(const char* name, Isa* out);

}  // namespace edgecompress
