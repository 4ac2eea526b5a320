#pragma once
// The CPU kernels' hand-written AVX2 paths (gathers, mostly). The portable build has no -march, so those
// functions carry target("avx2,fma") attributes and the kernels choose them at run time with the checks
// below; elsewhere (other architectures, nvcc) DTC_X86_GATHER is 0 and only the portable loops exist.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#include <immintrin.h>
#define DTC_X86_GATHER 1
#else
#define DTC_X86_GATHER 0
#endif

namespace dtc::simd {
#if DTC_X86_GATHER
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

inline bool cpu_has_avx2_fma() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return has;
}
#endif
}  // namespace dtc::simd
