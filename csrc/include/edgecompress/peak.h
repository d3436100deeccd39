// Peak probes: tight loops of one instruction on independent registers (instruction throughput of
// one core) and a streaming read (read bandwidth at a working-set size), so benchmarks can quote
// every figure as a share of the machine's limit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "edgecompress/cpu.h"
#include "edgecompress/isa.h"

namespace edgecompress {

struct PeakProbe {
  const char* name;         // e.g. "vpdpbusd_zmm": instruction and register width
  Isa isa;
  double ops_per_instr;     // arithmetic operations per instruction (a multiply-add counts 2)
  int instr_per_iter;       // measured instructions per iteration of `run`
  uint32_t needs;           // CpuFeature bits its compiler flags enable (cpu.h)
  // Executes `iters` x instr_per_iter of the instruction, on independent registers.
  void (*run)(int64_t iters);
  // Reads `bytes` (a multiple of 256) from `buf` once, with the widest loads of the tier.
  uint64_t (*read)(const void* buf, size_t bytes);
};

int peak_probes(const PeakProbe* const** probes);

#if defined(__x86_64__) || defined(_M_X64)
// The 256-bit streaming read of the ymm probes (peak_avx2.cc; every ymm tier has AVX2).
uint64_t peak_read_ymm(const void* buf, size_t bytes);
#elif defined(__aarch64__)
// The 128-bit streaming read every ARM probe uses (peak_neon.cc).
uint64_t peak_read_q(const void* buf, size_t bytes);
#endif

}  // namespace edgecompress
