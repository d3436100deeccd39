// CPU feature detection and the ISA ladder of the build architecture.
#include "edgecompress/cpu.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace edgecompress {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
constexpr Isa kLadder[] = {Isa::scalar, Isa::avx2, Isa::avxvnni, Isa::avx512, Isa::avx512vnni, Isa::amx};
#elif defined(__aarch64__)
constexpr Isa kLadder[] = {Isa::scalar, Isa::neon, Isa::dotprod, Isa::i8mm};
#else
constexpr Isa kLadder[] = {Isa::scalar};
#endif
constexpr int kLadderSize = sizeof(kLadder) / sizeof(kLadder[0]);

constexpr const char* kNames[] = {"scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "amx", "neon", "dotprod", "i8mm"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<int>(Isa::count), "one name per tier");

#if defined(__x86_64__) || defined(_M_X64)
// XGETBV through its encoding, so this file needs no -mxsave; called only when CPUID reports OSXSAVE.
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux gives a process the 8 KiB tile data state only on request (kernel 5.16+); without it the
// first tile instruction faults. Containers and VMs may refuse. Asked once, during detection, before
// any kernel can run: the permission is per process, so every thread started later has it.
AmxPermission request_amx_permission(std::string* error) {
  const char* deny = std::getenv(kAmxDenyEnv);
  if (deny != nullptr && *deny != '\0' && std::strcmp(deny, "0") != 0) return AmxPermission::forced_refusal;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtileData = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0) return AmxPermission::granted;
  *error = std::strerror(errno);
  return AmxPermission::refused;
#else
  (void)error;
  return AmxPermission::not_needed;
#endif
}

void detect(CpuFeatures* f) {
  f->arch = "x86_64";
  f->amx_unusable = amx_unusable_reason(false, false, false, AmxPermission::not_needed);
  unsigned a, b, c, d;
  if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002u + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4), std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4), std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    const char* s = brand;
    while (*s == ' ') ++s;
    f->model = s;
  }
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return;
  __cpuid(1, a, b, c, d);
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  const bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return;
  const uint64_t xcr0 = xgetbv0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_tile = (xcr0 & 0x60000) == 0x60000;  // XTILECFG, XTILEDATA
  if (!os_ymm || max_leaf < 7) return;
  unsigned b7, c7, d7, a71 = 0, unused;
  __cpuid_count(7, 0, a, b7, c7, d7);
  const unsigned max_sub7 = a;
  if (max_sub7 >= 1) __cpuid_count(7, 1, a71, unused, unused, unused);
  f->avx2 = (b7 >> 5) & 1;
  f->fma = fma;
  f->f16c = f16c;
  f->bmi2 = ((b7 >> 3) & 1) && ((b7 >> 8) & 1);  // BMI1 and BMI2
  f->avxvnni = f->avx2 && ((a71 >> 4) & 1);
  if (os_zmm) {
    f->avx512f = (b7 >> 16) & 1;
    f->avx512dq = (b7 >> 17) & 1;
    f->avx512bw = (b7 >> 30) & 1;
    f->avx512vl = (b7 >> 31) & 1;
    f->avx512vnni = f->avx512f && ((c7 >> 11) & 1);
    f->avx512vbmi = f->avx512f && ((c7 >> 1) & 1);
  }
  const bool cpuid_tile = (d7 >> 24) & 1, cpuid_int8 = (d7 >> 25) & 1;
  f->amx_tile = os_tile && cpuid_tile;
  f->amx_int8 = os_tile && cpuid_int8;
  std::string error;
  const AmxPermission permission = f->amx_tile && f->amx_int8 ? request_amx_permission(&error) : AmxPermission::not_needed;
  f->amx_unusable = amx_unusable_reason(cpuid_tile, cpuid_int8, os_tile, permission, error.c_str());
}
#elif defined(__aarch64__)
void detect(CpuFeatures* f) {
  f->arch = "aarch64";
  f->neon = true;  // Advanced SIMD is part of every AArch64 Linux/macOS platform
#if defined(__linux__)
  // No brand string on Linux/aarch64: name the core by its implementer and part numbers.
  if (FILE* info = std::fopen("/proc/cpuinfo", "r")) {
    char line[256];
    std::string implementer, part;
    while (std::fgets(line, sizeof(line), info) != nullptr && (implementer.empty() || part.empty())) {
      const char* colon = std::strchr(line, ':');
      if (colon == nullptr) continue;
      std::string value(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t\n") + 1);
      if (std::strncmp(line, "CPU implementer", 15) == 0) implementer = value;
      if (std::strncmp(line, "CPU part", 8) == 0) part = value;
    }
    std::fclose(info);
    if (!part.empty()) f->model = "implementer " + implementer + " part " + part;
  }
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  f->neon = (hw >> 1) & 1;      // HWCAP_ASIMD
  f->dotprod = (hw >> 20) & 1;  // HWCAP_ASIMDDP
  f->sve = (hw >> 22) & 1;      // HWCAP_SVE
  f->i8mm = (hw2 >> 13) & 1;    // HWCAP2_I8MM
#elif defined(__APPLE__)
  auto flag = [](const char* name) {
    int v = 0;
    size_t len = sizeof(v);
    return sysctlbyname(name, &v, &len, nullptr, 0) == 0 && v != 0;
  };
  f->dotprod = flag("hw.optional.arm.FEAT_DotProd");
  f->i8mm = flag("hw.optional.arm.FEAT_I8MM");
  char brand[128] = {};
  size_t len = sizeof(brand) - 1;
  if (sysctlbyname("machdep.cpu.brand_string", brand, &len, nullptr, 0) == 0) f->model = brand;
#endif
}
#else
void detect(CpuFeatures* f) { f->arch = "unknown"; }
#endif

}  // namespace

std::string amx_unusable_reason(bool cpuid_tile, bool cpuid_int8, bool os_tile_state, AmxPermission permission,
                                const char* error) {
  if (!cpuid_tile || !cpuid_int8) return "this CPU lacks AMX-TILE and AMX-INT8";
  if (!os_tile_state) return "the OS does not enable the AMX tile state (XCR0 bits 17 and 18)";
  if (permission == AmxPermission::refused) {
    return std::string("the OS refused the AMX tile data permission (arch_prctl ARCH_REQ_XCOMP_PERM: ") + error + ")";
  }
  if (permission == AmxPermission::forced_refusal) {
    return std::string("the AMX tile data permission was refused (forced by ") + kAmxDenyEnv + ")";
  }
  return "";
}

int isa_ladder(const Isa** tiers) {
  *tiers = kLadder;
  return kLadderSize;
}

int isa_rank(Isa isa) {
  for (int i = 0; i < kLadderSize; ++i) {
    if (kLadder[i] == isa) return i;
  }
  return -1;
}

const char* isa_name(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < static_cast<int>(Isa::count) ? kNames[i] : "unknown";
}

bool isa_from_name(const char* name, Isa* out) {
  for (int i = 0; i < kLadderSize; ++i) {
    if (std::strcmp(name, isa_name(kLadder[i])) == 0) {
      *out = kLadder[i];
      return true;
    }
  }
  return false;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
    detect(&f);
    const bool amx = f.amx_tile && f.amx_int8 && f.amx_unusable.empty();
    const bool flags[] = {f.avx2,     f.fma,      f.f16c,     f.bmi2,        f.avxvnni,   f.avx512f, f.avx512bw,
                          f.avx512dq, f.avx512vl, f.avx512vnni, f.avx512vbmi, amx,         amx};
    for (unsigned i = 0; i < sizeof(flags); ++i) f.bits |= flags[i] ? 1u << i : 0u;
    f.bits |= (f.neon ? kNeon : 0u) | (f.dotprod ? kDotprod : 0u) | (f.i8mm ? kI8mm : 0u);
    return f;
  }();
  return features;
}

bool cpu_has(uint32_t needs) { return (cpu_features().bits & needs) == needs; }

bool isa_supported(Isa isa, std::string* why) {
  if (isa_supported_for(isa, cpu_features().bits, why)) return true;
  // An AMX CPU may still be unable to run the tier (OS state, permission): say which.
  if (isa == Isa::amx && why != nullptr && cpu_has(kNeedsAvx512Vnni) && !cpu_features().amx_unusable.empty()) {
    *why = cpu_features().amx_unusable;
  }
  return false;
}

bool isa_supported_for(Isa isa, uint32_t cpu_bits, std::string* why) {
  if (isa_rank(isa) < 0) {
    if (why != nullptr) *why = std::string(isa_name(isa)) + " is not a tier of " + cpu_features().arch;
    return false;
  }
  // Each tier's builds (two for avxvnni: VEX, or EVEX on AVX-512 CPUs) and what they need.
  uint32_t builds[2] = {0, 0};
  const char* missing = "";
  switch (isa) {
    case Isa::avx2: builds[0] = kNeedsAvx2, missing = "AVX2, FMA, F16C and BMI1/2"; break;
    case Isa::avxvnni:
      builds[0] = kNeedsAvxVnni, builds[1] = kNeedsAvx512Vnni;
      missing = "AVX-VNNI (or AVX-512 F/BW/DQ/VL/VNNI)";
      break;
    case Isa::avx512: builds[0] = kNeedsAvx512, missing = "AVX-512 F/BW/DQ/VL"; break;
    case Isa::avx512vnni: builds[0] = kNeedsAvx512Vnni, missing = "AVX-512 F/BW/DQ/VL/VNNI"; break;
    case Isa::amx: builds[0] = kNeedsAmx, missing = "usable AMX-TILE and AMX-INT8 (with AVX-512 F/BW/DQ/VL/VNNI)"; break;
    case Isa::neon: builds[0] = kNeedsNeon, missing = "Advanced SIMD (NEON)"; break;
    case Isa::dotprod: builds[0] = kNeedsDotprod, missing = "the dot-product extension (SDOT)"; break;
    case Isa::i8mm: builds[0] = kNeedsI8mm, missing = "the int8 matrix-multiply extension (SMMLA)"; break;
    default: return true;  // scalar
  }
  auto has = [cpu_bits](uint32_t needs) { return (cpu_bits & needs) == needs; };
  if (has(builds[0]) || (builds[1] != 0 && has(builds[1]))) return true;
  if (why != nullptr) *why = std::string("this CPU lacks ") + missing;
  return false;
}

}  // namespace edgecompress
