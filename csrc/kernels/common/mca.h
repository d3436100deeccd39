// Loop markers for benchmarks/arm_model.py, which runs llvm-mca (a static model of a core's
// pipelines) on the compiled inner loops of the ARM kernels: no ARM machine times them.
//
// EC_MCA_LOOP(name, rows, mode) placed right before a loop emits an assembler comment; the script
// compiles the kernel with -S -DEC_MCA_MARKERS and takes the first loop after the comment that holds
// vector instructions (from a label to the branch back to it). The comment sits outside the loop, so
// the loop's own code is unchanged (a volatile asm inside a loop would stop the vectorizer); the
// script checks that the same loop appears in the build without markers. Empty in every shipped
// build: EC_MCA_MARKERS is only ever defined by the script.
#pragma once

#if defined(EC_MCA_MARKERS) && defined(__aarch64__)
#define EC_MCA_LOOP(name, rows, mode) __asm__ volatile("// ec-mca-loop " name " %c0 %c1" ::"i"(rows), "i"(mode))
#else
#define EC_MCA_LOOP(name, rows, mode) ((void)0)
#endif
