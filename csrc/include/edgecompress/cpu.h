// CPU feature detection. Reads CPUID/XGETBV on x86-64, getauxval on Linux/aarch64 and sysctl on
// macOS/arm64; it never executes an instruction the CPU may lack.
#pragma once

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
  bool amx_tile = false, amx_int8 = false;  // reported only; the amx tier is not built yet
  // aarch64
  bool neon = false, dotprod = false, i8mm = false, sve = false;
};

// Detected once, on first use.
const CpuFeatures& cpu_features();

// Whether the running CPU (and OS) can execute the instructions of a tier's kernels, counting every
// build of the tier (see isa.h). When it cannot and `why` is given, says what is missing.
bool isa_supported(Isa isa, std::string* why = nullptr);

}  // namespace edgecompress
