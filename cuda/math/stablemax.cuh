// StableMax's s(x) (Prieto et al. 2025), mirroring lib/js/math.ts: x + 1 for x >= 0 and
// 1 / (1 − x) for x < 0. Positive, monotone, C1 at 0, and linear growth, so large logits
// never overflow.
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
 * S = Σ s(z) of a row whose max is zMax, or NaN where the row has no finite distribution: a
 * +inf logit (S = inf) or every logit −inf (S = 0), as softmax (minusLse).
 */
CUTLOSS_HD float stablemaxRowSum(float sum, float zMax) {
  return zMax > negativeInfinity() && zMax < positiveInfinity() ? sum : quietNaN();
}

}  // namespace cutloss
