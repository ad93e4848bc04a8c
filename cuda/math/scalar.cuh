// The spelling shared by every header in cuda/math/: functions are inline on the host and
// __host__ __device__ under nvcc, so the same formulas serve the CUDA kernels, their SIMT
// emulation (g++) and the native CPU backend. IEEE helpers here keep JavaScript's semantics
// where C's differ (Math.max propagates NaN, fmaxf does not).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define CUTLOSS_HD __host__ __device__ __forceinline__
#else
#define CUTLOSS_HD inline
#endif

namespace cutloss {

CUTLOSS_HD uint32_t floatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

CUTLOSS_HD float floatFromBits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

CUTLOSS_HD float positiveInfinity() { return floatFromBits(0x7f800000u); }
CUTLOSS_HD float negativeInfinity() { return floatFromBits(0xff800000u); }
CUTLOSS_HD float quietNaN() { return floatFromBits(0x7fc00000u); }

CUTLOSS_HD bool isNaN(float x) { return x != x; }

/** Math.max(a, b): NaN if either is NaN. */
CUTLOSS_HD float maxPropagatingNaN(float a, float b) { return (a > b || isNaN(a)) ? a : b; }

/** Math.min(a, b): NaN if either is NaN. */
CUTLOSS_HD float minPropagatingNaN(float a, float b) { return (a < b || isNaN(a)) ? a : b; }

/** Math.max(x, 0): a NaN stays NaN (fmaxf would return 0). */
CUTLOSS_HD float reluPropagatingNaN(float x) { return x > 0.0f || isNaN(x) ? x : 0.0f; }

}  // namespace cutloss
