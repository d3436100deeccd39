// In-place accumulation for the x86 gemm_s8 kernels: vpdpbusd (acc += sum of 4 u8 x s8 products
// per int32 lane) and, for AVX2 without VNNI, vpmaddwd + vpaddd (acc += sum of 2 int16 products).
//
// GCC models these as three-operand operations and, in unrolled loops, often writes the result to a
// fresh register and copies it back (an extra vmovdqa per instruction, sometimes a spill), which
// costs up to half the issue bandwidth. Inline asm with a read-write accumulator keeps the
// accumulation in place.
// Internal linkage: see common/act_quant.h.
#pragma once

#include <immintrin.h>

namespace edgecompress {
namespace {

#if defined(__AVX2__)
inline __m256i madd256(__m256i acc, __m256i a_s16, __m256i b_s16) {
  __m256i t;
  __asm__("vpmaddwd %2, %1, %0" : "=x"(t) : "x"(a_s16), "xm"(b_s16));
  __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(t));
  return acc;
}
#endif

#if defined(__AVX512VNNI__)
inline __m512i dpbusd512(__m512i acc, __m512i a_u8, __m512i b_s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a_u8), "vm"(b_s8));
  return acc;
}
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && (defined(EC_VNNI_EVEX) || !defined(__AVXVNNI__))
#define EC_HAS_DPBUSD256 1
inline __m256i dpbusd256(__m256i acc, __m256i a_u8, __m256i b_s8) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a_u8), "vm"(b_s8));
  return acc;
}
#elif defined(__AVXVNNI__)
#define EC_HAS_DPBUSD256 1
inline __m256i dpbusd256(__m256i acc, __m256i a_u8, __m256i b_s8) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(a_u8), "xm"(b_s8));
  return acc;
}
#endif

}  // namespace
}  // namespace edgecompress
