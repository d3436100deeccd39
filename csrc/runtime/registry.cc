// THE dispatch table: every kernel built into this binary, per family (registry.h lists the
// families), lowest tier first. Adding a tier to a family is one new file and one row here; a tier
// without its own kernel for a family inherits the tier below.
#include "edgecompress/registry.h"

#include "edgecompress/cpu.h"
#include "edgecompress/peak.h"

namespace edgecompress {

extern const GemmS8Kernel gemm_s8_scalar;
extern const GemmQ4Kernel gemm_q4_scalar;
extern const SparseKernel sparse_f32_scalar;
extern const DenseKernel dense_f32_scalar;
extern const SparseS8Kernel sparse_s8_scalar;
extern const SparseNmKernel sparse_nm_f32_scalar;
extern const EngineKernel engine_f32_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const GemmS8Kernel gemm_s8_avx2, gemm_s8_avxvnni, gemm_s8_avxvnni_evex, gemm_s8_avx512vnni, gemm_s8_amx;
extern const SparseKernel sparse_f32_avx2, sparse_f32_avx512;
extern const DenseKernel dense_f32_avx2, dense_f32_avx512;
extern const SparseS8Kernel sparse_s8_avx2, sparse_s8_avx512vnni;
extern const SparseNmKernel sparse_nm_f32_avx2, sparse_nm_f32_avx512;
extern const EngineKernel engine_f32_avx2, engine_f32_avx512;
extern const GemmQ4Kernel gemm_q4_avx2, gemm_q4_avxvnni, gemm_q4_avxvnni_evex, gemm_q4_avx512vbmi, gemm_q4_avx512vnni,
    gemm_q4_amx;
extern const PeakProbe peak_fma_ymm, peak_maddwd_ymm, peak_dpbusd_ymm_vex, peak_dpbusd_ymm, peak_dpbusd_zmm, peak_fma_zmm,
    peak_tdpbusd_tile;
#elif defined(__aarch64__)
extern const GemmS8Kernel gemm_s8_neon, gemm_s8_dotprod, gemm_s8_i8mm;
extern const GemmQ4Kernel gemm_q4_neon, gemm_q4_dotprod;
extern const SparseKernel sparse_f32_neon;
extern const DenseKernel dense_f32_neon;
extern const SparseS8Kernel sparse_s8_neon;
extern const SparseNmKernel sparse_nm_f32_neon;
extern const EngineKernel engine_f32_neon;
extern const PeakProbe peak_fmla_q, peak_smlal_q, peak_sdot_q, peak_smmla_q;
#endif

namespace {

const GemmS8Kernel* const gemm_s8_list[] = {
    &gemm_s8_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    // Two builds of the 256-bit VNNI tier: the VEX encoding (AVX-VNNI CPUs) is preferred; the EVEX
    // encoding of the same source serves AVX-512 VNNI CPUs that lack AVX-VNNI.
    // amx hands calls with few rows to avx512vnni (its small_m kernel, gemm_s8.h).
    &gemm_s8_avx2, &gemm_s8_avxvnni, &gemm_s8_avxvnni_evex, &gemm_s8_avx512vnni, &gemm_s8_amx,
#elif defined(__aarch64__)
    &gemm_s8_neon, &gemm_s8_dotprod, &gemm_s8_i8mm,
#endif
};

// i8mm has no gemm_q4 kernel of its own: the dotprod one serves it (a GEMV-first family; smmla pays
// only for GEMM tiles).
const GemmQ4Kernel* const gemm_q4_list[] = {
    &gemm_q4_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    // The VBMI build of the avx512vnni tier is listed first: where it runs, it wins.
    // amx hands calls with at most 4 rows to the VBMI build of avx512vnni (its small_m kernel).
    &gemm_q4_avx2, &gemm_q4_avxvnni, &gemm_q4_avxvnni_evex, &gemm_q4_avx512vbmi, &gemm_q4_avx512vnni, &gemm_q4_amx,
#elif defined(__aarch64__)
    &gemm_q4_neon, &gemm_q4_dotprod,
#endif
};

// sparse_f32 has kernels for avx2, avx512 and neon; the tiers between and above inherit the one below
// (avx512vnni's instructions do not help a float product).
const SparseKernel* const sparse_f32_list[] = {
    &sparse_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_f32_avx2, &sparse_f32_avx512,
#elif defined(__aarch64__)
    &sparse_f32_neon,
#endif
};

// dense_f32 (float32 weights, the factors of LowRankWeight): like sparse_f32, avx2, avx512, neon.
const DenseKernel* const dense_f32_list[] = {
    &dense_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &dense_f32_avx2, &dense_f32_avx512,
#elif defined(__aarch64__)
    &dense_f32_neon,
#endif
};

// sparse_s8 (pruned int8 weights, 1 x 4 blocks): vpdpbusd on avx512vnni; the portable kernel elsewhere.
const SparseS8Kernel* const sparse_s8_list[] = {
    &sparse_s8_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_s8_avx2, &sparse_s8_avx512vnni,
#elif defined(__aarch64__)
    &sparse_s8_neon,
#endif
};

// sparse_nm_f32 (N:M sparse float32 weights): avx2, avx512, neon; avxvnni, avx512vnni, dotprod and
// i8mm inherit the tier below (their instructions do not help a float product).
const SparseNmKernel* const sparse_nm_f32_list[] = {
    &sparse_nm_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_nm_f32_avx2, &sparse_nm_f32_avx512,
#elif defined(__aarch64__)
    &sparse_nm_f32_neon,
#endif
};

// engine_f32 (the engine's float ops between products): avx2, avx512, neon, like dense_f32.
const EngineKernel* const engine_f32_list[] = {
    &engine_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &engine_f32_avx2, &engine_f32_avx512,
#elif defined(__aarch64__)
    &engine_f32_neon,
#endif
};

// The highest-tier kernel at or below `cap` that a CPU with the features `cpu_bits` runs; earlier
// entries win ties.
template <class K, size_t N>
const K* select_kernel(const K* const (&list)[N], Isa cap, uint32_t cpu_bits) {
  const int cap_rank = isa_rank(cap);
  const K* best = list[0];
  int best_rank = 0;
  for (const K* k : list) {
    const int rank = isa_rank(k->isa);
    if (rank > best_rank && rank <= cap_rank && (k->needs & cpu_bits) == k->needs) {
      best = k;
      best_rank = rank;
    }
  }
  return best;
}

const PeakProbe* const kPeaks[] = {
#if defined(__x86_64__) || defined(_M_X64)
    &peak_fma_ymm, &peak_maddwd_ymm, &peak_dpbusd_ymm_vex, &peak_dpbusd_ymm, &peak_dpbusd_zmm, &peak_fma_zmm,
    &peak_tdpbusd_tile,
#elif defined(__aarch64__)
    &peak_fmla_q, &peak_smlal_q, &peak_sdot_q, &peak_smmla_q,
#endif
    nullptr,  // keeps the array non-empty on other architectures
};

}  // namespace

int peak_probes(const PeakProbe* const** probes) {
  *probes = kPeaks;
  return static_cast<int>(sizeof(kPeaks) / sizeof(kPeaks[0])) - 1;
}

// Each family's functions (registry.h), from its list above.
#define EC_DEFINE_FAMILY(family, Kernel)                                        \
  int family##_kernels(const Kernel* const** kernels) {                         \
    *kernels = family##_list;                                                   \
    return static_cast<int>(sizeof(family##_list) / sizeof(family##_list[0])); \
  }                                                                             \
  const Kernel* family##_select_for(Isa cap, uint32_t cpu_bits) {              \
    return select_kernel(family##_list, cap, cpu_bits);                         \
  }                                                                             \
  const Kernel* family##_select(Isa cap) { return family##_select_for(cap, cpu_features().bits); }
EC_KERNEL_FAMILIES(EC_DEFINE_FAMILY)
#undef EC_DEFINE_FAMILY

}  // namespace edgecompress
