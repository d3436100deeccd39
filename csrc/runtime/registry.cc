// THE dispatch table: every kernel built into this binary, per family, lowest tier first. Adding a
// tier to a family is one new file and one row here; a tier without its own kernel for a family
// inherits the tier below.
#include "edgecompress/dense_f32.h"
#include "edgecompress/gemm_q4.h"
#include "edgecompress/gemm_s8.h"
#include "edgecompress/peak.h"
#include "edgecompress/sparse.h"
#include "edgecompress/sparse_s8.h"
#include "edgecompress/sparse_nm.h"

namespace edgecompress {

extern const GemmS8Kernel gemm_s8_scalar;
extern const GemmQ4Kernel gemm_q4_scalar;
extern const SparseKernel sparse_f32_scalar;
extern const DenseKernel dense_f32_scalar;
extern const SparseS8Kernel sparse_s8_scalar;
extern const SparseNmKernel sparse_nm_f32_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const GemmS8Kernel gemm_s8_avx2, gemm_s8_avxvnni, gemm_s8_avxvnni_evex, gemm_s8_avx512vnni;
extern const SparseKernel sparse_f32_avx2, sparse_f32_avx512vnni;
extern const DenseKernel dense_f32_avx2, dense_f32_avx512vnni;
extern const SparseS8Kernel sparse_s8_avx2, sparse_s8_avx512vnni;
extern const SparseNmKernel sparse_nm_f32_avx2, sparse_nm_f32_avx512vnni;
extern const GemmQ4Kernel gemm_q4_avx2, gemm_q4_avxvnni, gemm_q4_avxvnni_evex, gemm_q4_avx512vbmi, gemm_q4_avx512vnni;
extern const PeakProbe peak_fma_ymm, peak_maddwd_ymm, peak_dpbusd_ymm_vex, peak_dpbusd_ymm, peak_dpbusd_zmm, peak_fma_zmm;
#elif defined(__aarch64__)
extern const GemmS8Kernel gemm_s8_neon, gemm_s8_dotprod, gemm_s8_i8mm;
extern const GemmQ4Kernel gemm_q4_neon, gemm_q4_dotprod;
extern const SparseKernel sparse_f32_neon;
extern const DenseKernel dense_f32_neon;
extern const SparseS8Kernel sparse_s8_neon;
extern const SparseNmKernel sparse_nm_f32_neon;
extern const PeakProbe peak_fmla_q, peak_smlal_q, peak_sdot_q, peak_smmla_q;
#endif

namespace {

const GemmS8Kernel* const kGemmS8[] = {
    &gemm_s8_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    // Two builds of the 256-bit VNNI tier: the VEX encoding (AVX-VNNI CPUs) is preferred; the EVEX
    // encoding of the same source serves AVX-512 VNNI CPUs that lack AVX-VNNI.
    &gemm_s8_avx2, &gemm_s8_avxvnni, &gemm_s8_avxvnni_evex, &gemm_s8_avx512vnni,
#elif defined(__aarch64__)
    &gemm_s8_neon, &gemm_s8_dotprod, &gemm_s8_i8mm,
#endif
};
constexpr int kGemmS8Count = sizeof(kGemmS8) / sizeof(kGemmS8[0]);

// i8mm has no gemm_q4 kernel of its own: the dotprod one serves it (a GEMV-first family; smmla pays
// only for GEMM tiles).
const GemmQ4Kernel* const kGemmQ4[] = {
    &gemm_q4_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    // The VBMI build of the avx512vnni tier is listed first: where it runs, it wins.
    &gemm_q4_avx2, &gemm_q4_avxvnni, &gemm_q4_avxvnni_evex, &gemm_q4_avx512vbmi, &gemm_q4_avx512vnni,
#elif defined(__aarch64__)
    &gemm_q4_neon, &gemm_q4_dotprod,
#endif
};

// sparse_f32 has kernels for avx2, avx512vnni and neon; the tiers between inherit the one below.
const SparseKernel* const kSparseF32[] = {
    &sparse_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_f32_avx2, &sparse_f32_avx512vnni,
#elif defined(__aarch64__)
    &sparse_f32_neon,
#endif
};

// dense_f32 (float32 weights, the factors of LowRankWeight): like sparse_f32, avx2, avx512vnni, neon.
const DenseKernel* const kDenseF32[] = {
    &dense_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &dense_f32_avx2, &dense_f32_avx512vnni,
#elif defined(__aarch64__)
    &dense_f32_neon,
#endif
};

// sparse_s8 (pruned int8 weights, 1 x 4 blocks): vpdpbusd on avx512vnni; the portable kernel elsewhere.
const SparseS8Kernel* const kSparseS8[] = {
    &sparse_s8_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_s8_avx2, &sparse_s8_avx512vnni,
#elif defined(__aarch64__)
    &sparse_s8_neon,
#endif
};

// sparse_nm_f32 (N:M sparse float32 weights): avx2, avx512vnni, neon; avxvnni, dotprod and i8mm
// inherit the tier below (their instructions do not help a float product).
const SparseNmKernel* const kSparseNmF32[] = {
    &sparse_nm_f32_scalar,
#if defined(__x86_64__) || defined(_M_X64)
    &sparse_nm_f32_avx2, &sparse_nm_f32_avx512vnni,
#elif defined(__aarch64__)
    &sparse_nm_f32_neon,
#endif
};

// The highest-tier kernel at or below `cap` that runs here; earlier entries win ties.
template <class K, size_t N>
const K* select_kernel(const K* const (&list)[N], Isa cap) {
  const int cap_rank = isa_rank(cap);
  const K* best = list[0];
  int best_rank = 0;
  for (const K* k : list) {
    const int rank = isa_rank(k->isa);
    if (rank > best_rank && rank <= cap_rank && cpu_has(k->needs)) {
      best = k;
      best_rank = rank;
    }
  }
  return best;
}

const PeakProbe* const kPeaks[] = {
#if defined(__x86_64__) || defined(_M_X64)
    &peak_fma_ymm, &peak_maddwd_ymm, &peak_dpbusd_ymm_vex, &peak_dpbusd_ymm, &peak_dpbusd_zmm, &peak_fma_zmm,
#elif defined(__aarch64__)
    &peak_fmla_q, &peak_smlal_q, &peak_sdot_q, &peak_smmla_q,
#endif
    nullptr,  // keeps the array non-empty on other architectures
};

}  // namespace

int gemm_s8_kernels(const GemmS8Kernel* const** kernels) {
  *kernels = kGemmS8;
  return kGemmS8Count;
}

int peak_probes(const PeakProbe* const** probes) {
  *probes = kPeaks;
  return static_cast<int>(sizeof(kPeaks) / sizeof(kPeaks[0])) - 1;
}

const GemmS8Kernel* gemm_s8_select(Isa cap) { return select_kernel(kGemmS8, cap); }

int gemm_q4_kernels(const GemmQ4Kernel* const** kernels) {
  *kernels = kGemmQ4;
  return static_cast<int>(sizeof(kGemmQ4) / sizeof(kGemmQ4[0]));
}

const GemmQ4Kernel* gemm_q4_select(Isa cap) { return select_kernel(kGemmQ4, cap); }

int sparse_f32_kernels(const SparseKernel* const** kernels) {
  *kernels = kSparseF32;
  return static_cast<int>(sizeof(kSparseF32) / sizeof(kSparseF32[0]));
}

const SparseKernel* sparse_f32_select(Isa cap) { return select_kernel(kSparseF32, cap); }

int dense_f32_kernels(const DenseKernel* const** kernels) {
  *kernels = kDenseF32;
  return static_cast<int>(sizeof(kDenseF32) / sizeof(kDenseF32[0]));
}

const DenseKernel* dense_f32_select(Isa cap) { return select_kernel(kDenseF32, cap); }

int sparse_s8_kernels(const SparseS8Kernel* const** kernels) {
  *kernels = kSparseS8;
  return static_cast<int>(sizeof(kSparseS8) / sizeof(kSparseS8[0]));
}

const SparseS8Kernel* sparse_s8_select(Isa cap) { return select_kernel(kSparseS8, cap); }

int sparse_nm_f32_kernels(const SparseNmKernel* const** kernels) {
  *kernels = kSparseNmF32;
  return static_cast<int>(sizeof(kSparseNmF32) / sizeof(kSparseNmF32[0]));
}

const SparseNmKernel* sparse_nm_f32_select(Isa cap) { return select_kernel(kSparseNmF32, cap); }

}  // namespace edgecompress
