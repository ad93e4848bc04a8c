// The shared formulas of cuda/math/, compiled for the CPU kernels so that their loops
// vectorize. Every formula stays the one definition in cuda/math/; what changes here is the
// elementary functions under it:
//   - expf, logf, log1pf and tanhf are replaced by branch-free versions (Cephes' polynomials,
//     within 1–2 ulp of the C library, with the same results for ±inf, NaN, 0 and overflow)
//     that the compiler inlines into SIMD loops; libm's are opaque calls that stop
//     vectorization.
//     Inside namespace cutloss an unqualified expf finds cutloss::expf before ::expf.
//     expNonPositive, for the exponentials of values shifted by their row max, is cheaper still.
//   - CUTLOSS_HD becomes `static inline`, so this translation unit's copies of the shared
//     functions have internal linkage and never merge with the emulator's (which call libm).
// Include this, not cuda/math/math.cuh, and include it before any other cuda/ header.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../cuda/math/scalar.cuh"

namespace cutloss {

/** The exponential's constants, shared with the AVX-512 version (kept_exp_avx512.cc). */
namespace expConstants {
constexpr float kShifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;  // ln2 = kLn2Hi + kLn2Lo, kLn2Hi exact in few bits
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
constexpr float kNonPositiveFloor = -86.0f;  // expNonPositive's 0 below, 2^n normal above
}  // namespace expConstants

/** n = x/ln2 rounded to an integer (x within the clamps below). */
static inline float expExponent(float x) {
  using namespace expConstants;
  return (x * kLog2e + kShifter) - kShifter;
}

/** e^r for x = n·ln2 + r (Cody–Waite, ln2 in two parts): Cephes' degree-7 polynomial in r. */
static inline float expMantissa(float x, float n) {
  using namespace expConstants;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = kPoly[0];
  for (int k = 1; k < 6; k++) p = p * r + kPoly[k];
  return p * (r * r) + r + 1.0f;
}

/** e^x: 2^n·e^r, with 2^n applied in two normal steps. */
static inline float expf(float x) {
  // The clamp keeps n in range; e^89 still overflows to +inf and e^-104 underflows to 0. NaN passes.
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  float n = expExponent(xc);
  const float p = expMantissa(xc, n);
  n = n == n ? n : 0.0f;  // p is already NaN; keep the integer conversion defined
  const int32_t ni = static_cast<int32_t>(n);
  const int32_t n1 = ni >> 1;  // 2^n = 2^n1 · 2^n2 with both factors normal for n in [-150, 129]
  const int32_t n2 = ni - n1;
  return p * floatFromBits(static_cast<uint32_t>(n1 + 127) << 23) * floatFromBits(static_cast<uint32_t>(n2 + 127) << 23);
}

/**
 * e^x for x ≤ 0 up to rounding (an exponent shifted by a max at least as large): bit for bit
 * expf for x ≥ −86, 0 below (where expf gives less than e^-86 ≈ 2^-124), NaN for NaN. The
 * scale 2^n is added to the exponent field in one step, which for n ≥ −124 stays in the
 * normal range; expf's two-step scaling, kept for its full range, costs more in hot loops.
 * Arguments above 88 are outside its contract (it gives e^88).
 */
static inline float expNonPositive(float x) {
  constexpr float kFloor = expConstants::kNonPositiveFloor;
  float xc = x < kFloor ? kFloor : x;
  xc = xc > 88.0f ? 88.0f : xc;
  float n = expExponent(xc);
  const float p = expMantissa(xc, n);
  n = n == n ? n : 0.0f;  // p is already NaN; keep the integer conversion defined
  const uint32_t scaleBits = static_cast<uint32_t>(static_cast<int32_t>(n)) << 23;
  return x < kFloor ? 0.0f : floatFromBits(floatBits(p) + scaleBits);
}
#define CUTLOSS_HAS_EXP_NON_POSITIVE 1

/** log x: x = m·2^e with m in [√½, √2), a degree-9 polynomial for log m; IEEE results for 0, < 0, inf, NaN. */
static inline float logf(float x) {
  const bool subnormal = x < 1.17549435e-38f;  // scaled up first (0 and negatives are fixed below)
  const float xs = subnormal ? x * 8388608.0f : x;  // 2^23
  const uint32_t u = floatBits(xs);
  int32_t e = static_cast<int32_t>((u >> 23) & 0xffu) - 126 - (subnormal ? 23 : 0);
  float m = floatFromBits((u & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  float r = (m + y) + 0.693359375f * fe;
  r = x == positiveInfinity() ? x : r;
  r = x == 0.0f ? negativeInfinity() : r;
  r = x < 0.0f ? quietNaN() : r;
  return x != x ? x : r;
}

/** log(1 + x) = log u + (x − (u − 1))/u with u = 1 + x rounded (the correction restores what rounding lost). */
static inline float log1pf(float x) {
  const float u = 1.0f + x;
  const float d = u - 1.0f;
  float r = logf(u) + (x - d) / u;
  r = d == 0.0f ? x : r;  // |x| below half an ulp of 1: log1p(x) = x
  r = u == 0.0f ? negativeInfinity() : r;
  return u == positiveInfinity() ? u : r;
}

/** tanh x: Cephes' odd polynomial below |x| = 0.625, 1 − 2/(e^{2|x|} + 1) above; ±1 at ±inf, NaN stays. */
static inline float tanhf(float x) {
  const float a = x < 0.0f ? -x : x;
  float big = 1.0f - 2.0f / (expf(a + a) + 1.0f);
  big = x < 0.0f ? -big : big;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  return a < 0.625f ? small : big;
}

}  // namespace cutloss

#undef CUTLOSS_HD
#define CUTLOSS_HD static inline

#include "../../cuda/math/math.cuh"
