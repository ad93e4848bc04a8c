// StableMax's s(x) (Prieto et al. 2025), mirroring lib/js/math.ts: x + 1 for x >= 0 and
// 1 / (1 − x) for x < 0. Positive, monotone, C1 at 0, and linear growth, so large logits
// never overflow; their row sum is kept scaled by stablemaxSumScale (float64 in JS needs none).
#pragma once

#include "scalar.cuh"

namespace cutloss {

CUTLOSS_HD float stablemaxS(float x) { return x >= 0.0f ? x + 1.0f : 1.0f / (1.0f - x); }

/** log s(x) without forming s(x) (keeps precision near 0 and for huge |x|). */
CUTLOSS_HD float stablemaxLogS(float x) { return x >= 0.0f ? log1pf(x) : -log1pf(-x); }

/** s'(x): 1 for x >= 0, s(x)² for x < 0. */
CUTLOSS_HD float stablemaxDs(float x) {
  if (x >= 0.0f) return 1.0f;
  const float s = 1.0f / (1.0f - x);
  return s * s;
}

/** s'(x) / s(x), the derivative of log s(x). */
CUTLOSS_HD float stablemaxDlogS(float x) { return x >= 0.0f ? 1.0f / (x + 1.0f) : 1.0f / (1.0f - x); }

/**
 * The power of two a row's sum Σ s(z) is accumulated times, about 1/s(zMax) (s is monotone):
 * each scaled term is at most 4, so the sum stays below 4·V whatever the logits, where S itself
 * overflows float32 once two logits reach 1.7e38; the scaling is exact. 1 where zMax is not finite.
 */
CUTLOSS_HD float stablemaxSumScale(float zMax) {
  if (!(zMax > negativeInfinity() && zMax < positiveInfinity())) return 1.0f;
  int e = static_cast<int>((floatBits(stablemaxS(zMax)) >> 23) & 0xffu);  // biased exponent
  e = e < 1 ? 1 : e > 253 ? 253 : e;
  return floatFromBits(static_cast<uint32_t>(254 - e) << 23);  // 2^(127 − e)
}

/**
 * A running sum kept times stablemaxSumScale(fromZMax), moved to the scale of a larger max toZMax:
 * the ratio of two powers of two, ≤ 1, so the terms the larger max makes negligible may underflow
 * and nothing overflows.
 */
CUTLOSS_HD float stablemaxRescale(float scaledSum, float fromZMax, float toZMax) {
  if (scaledSum == 0.0f || fromZMax == toZMax) return scaledSum;
  return scaledSum * (stablemaxSumScale(toZMax) / stablemaxSumScale(fromZMax));
}

/** s'(x)/S given the row's scaled sum S·scale, formed as (s'/s)·(s·scale)/(S·scale): nothing overflows or underflows early. */
CUTLOSS_HD float stablemaxDsOverSum(float x, float scaledSum, float scale) {
  if (x >= 0.0f) return scale / scaledSum;  // s' = 1
  const float s = 1.0f / (1.0f - x);
  return s * ((s * scale) / scaledSum);  // s' = s²
}

/**
 * log(s(x)/S) given the row's scale, logScaledSum = log(S·scale) and logScale = log(scale): the
 * log of s(x)·scale, which lies in (0, 4], minus that of S·scale (log s(x) − log S would cancel
 * at |x| ≫ 1), or, where s(x)·scale is subnormal (x far below the max, the result large), the
 * plain difference.
 */
CUTLOSS_HD float stablemaxLogRatio(float x, float scale, float logScaledSum, float logScale) {
  const float s = stablemaxS(x) * scale;
  return s >= 1.17549435e-38f ? logf(s) - logScaledSum : stablemaxLogS(x) - (logScaledSum - logScale);
}

/**
 * S (or its scaled S·scale) of a row whose max is zMax, or NaN where the row has no finite distribution: a
 * +inf logit (S = inf) or every logit −inf (S = 0), as softmax (minusLse).
 */
CUTLOSS_HD float stablemaxRowSum(float sum, float zMax) {
  return zMax > negativeInfinity() && zMax < positiveInfinity() ? sum : quietNaN();
}

}  // namespace cutloss
