// The kernel registry: every kernel family, one row each. The registry (runtime/registry.cc), the
// bindings and, through them, Python (_core.families()) learn the families from this table only.
//
// A row is X(family, Kernel): the family's name, the prefix of its functions here and in Python,
// and the struct its kernels share (declared in the family's header). For each row the registry
// defines
//   int <family>_kernels(const Kernel* const** kernels)  every kernel built into this binary,
//                                                         lowest tier first; returns their count
//   const Kernel* <family>_select(Isa cap)               the highest tier at or below `cap` whose
//                                                         build runs on this CPU (never null: the
//                                                         scalar kernel runs everywhere)
//   const Kernel* <family>_select_for(Isa cap, uint32_t cpu_bits)
//                                                         the same for a CPU with the CpuFeature
//                                                         bits `cpu_bits` (a model of a CPU, for tests)
// Adding a family is one row here, one list in registry.cc and its kernels.
#pragma once

#include "edgecompress/dense_f32.h"
#include "edgecompress/engine_ops.h"
#include "edgecompress/gemm_q4.h"
#include "edgecompress/gemm_s8.h"
#include "edgecompress/isa.h"
#include "edgecompress/sparse.h"
#include "edgecompress/sparse_nm.h"
#include "edgecompress/sparse_s8.h"

#define EC_KERNEL_FAMILIES(X)      \
  X(gemm_s8, GemmS8Kernel)         \
  X(gemm_q4, GemmQ4Kernel)         \
  X(sparse_f32, SparseKernel)      \
  X(sparse_s8, SparseS8Kernel)     \
  X(sparse_nm_f32, SparseNmKernel) \
  X(dense_f32, DenseKernel)        \
  X(engine_f32, EngineKernel)

namespace edgecompress {

#define EC_DECLARE_FAMILY(family, Kernel)                           \
  int family##_kernels(const Kernel* const** kernels);           \
  const Kernel* family##_select_for(Isa cap, uint32_t cpu_bits); \
  const Kernel* family##_select(Isa cap);
EC_KERNEL_FAMILIES(EC_DECLARE_FAMILY)
#undef EC_DECLARE_FAMILY

}  // namespace edgecompress
