// CPU feature detection. Reads CPUID/XGETBV on x86-64, getauxval on Linux/aarch64 and sysctl on
// macOS/arm64; it never executes an instruction the CPU may lack.
#pragma once

#include <cstdint>
#include <string>

#include "edgecompress/isa.h"

namespace edgecompress {

struct CpuFeatures {
  const char* arch = "unknown";
  std::string model;  // brand string when the CPU reports one
  // x86-64 (each flag already includes the OS support for its register state)
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avxvnni = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false, avx512vnni = false;
  bool avx512vbmi = false;
  bool amx_tile = false, amx_int8 = false;  // CPUID and XCR0 tile state; usable only when amx_unusable is empty
  // Why the amx tier cannot run here, or empty when it can: besides the CPU and XCR0, Linux grants
  // the tile data state to a process only on request (amx_unusable_reason).
  std::string amx_unusable;
  // aarch64
  bool neon = false, dotprod = false, i8mm = false, sve = false;
  uint32_t bits = 0;  // CpuFeature bits of the flags above
};

// Feature bits. Every kernel and probe declares, as plain data, the features its translation unit's
// compiler flags allow the compiler to use; it runs only where cpu_has() says all are present. The
// check itself runs in baseline code, never in a tier's translation unit.
enum CpuFeature : uint32_t {
  kAvx2 = 1u << 0, kFma = 1u << 1, kF16c = 1u << 2, kBmi2 = 1u << 3,  // kBmi2 means BMI1 and BMI2
  kAvxVnni = 1u << 4,
  kAvx512F = 1u << 5, kAvx512Bw = 1u << 6, kAvx512Dq = 1u << 7, kAvx512Vl = 1u << 8, kAvx512Vnni = 1u << 9,
  kAvx512Vbmi = 1u << 10,
  kAmxTile = 1u << 11, kAmxInt8 = 1u << 12,  // set only when the OS granted the tile data state
  kNeon = 1u << 16, kDotprod = 1u << 17, kI8mm = 1u << 18,
};
// What each tier's flags enable (CMakeLists.txt, EC_FLAGS_<tier>).
constexpr uint32_t kNeedsAvx2 = kAvx2 | kFma | kF16c | kBmi2;
constexpr uint32_t kNeedsAvxVnni = kNeedsAvx2 | kAvxVnni;
constexpr uint32_t kNeedsAvx512 = kNeedsAvx2 | kAvx512F | kAvx512Bw | kAvx512Dq | kAvx512Vl;
constexpr uint32_t kNeedsAvx512Vnni = kNeedsAvx512 | kAvx512Vnni;
constexpr uint32_t kNeedsAvx512Vbmi = kNeedsAvx512Vnni | kAvx512Vbmi;  // a second build of the tier
constexpr uint32_t kNeedsAmx = kNeedsAvx512Vnni | kAmxTile | kAmxInt8;
constexpr uint32_t kNeedsNeon = kNeon;
constexpr uint32_t kNeedsDotprod = kNeon | kDotprod;
constexpr uint32_t kNeedsI8mm = kNeon | kDotprod | kI8mm;

// The Linux permission request for the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM).
enum class AmxPermission { not_needed, granted, refused, forced_refusal };

// Environment variable that makes detection act as if the OS refused the tile data permission
// (tests of the fallback on AMX machines).
constexpr const char* kAmxDenyEnv = "EDGECOMPRESS_AMX_DENY";

// Why the amx tier cannot run on a CPU with these findings, or "" when it can. `error` is the
// errno text of a refused request. Pure, so the tests check each case on any machine.
std::string amx_unusable_reason(bool cpuid_tile, bool cpuid_int8, bool os_tile_state, AmxPermission permission,
                                const char* error = "");

// Detected once, on first use.
const CpuFeatures& cpu_features();

// Whether the running CPU (and OS) has every feature in `needs`.
bool cpu_has(uint32_t needs);

// Whether the running CPU (and OS) can execute the instructions of a tier's kernels, counting every
// build of the tier (see isa.h). When it cannot and `why` is given, says what is missing.
bool isa_supported(Isa isa, std::string* why = nullptr);

// The same for a CPU with the CpuFeature bits `cpu_bits` (a model of a CPU, for tests).
bool isa_supported_for(Isa isa, uint32_t cpu_bits, std::string* why = nullptr);

}  // namespace edgecompress
