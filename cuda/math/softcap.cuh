// Softcap c·tanh(x / c) and the loss's logit pipeline x → softcap → ÷ temperature, with
// their slopes, mirroring lib/js/math.ts.
#pragma once

#include "scalar.cuh"

namespace cutloss {

CUTLOSS_HD float softcap(float x, float cap) { return cap * tanhf(x / cap); }

CUTLOSS_HD float softcapSlope(float x, float cap) {
  const float t = tanhf(x / cap);
  return 1.0f - t * t;
}

/** Raw logit → effective logit: softcap (cap 0 = off), then ÷ temperature. */
CUTLOSS_HD float effectiveLogit(float x, float cap, float invTemperature) {
  return (cap > 0.0f ? cap * tanhf(x / cap) : x) * invTemperature;
}

/** dz/dx of effectiveLogit. */
CUTLOSS_HD float effectiveSlope(float x, float cap, float invTemperature) {
  if (cap > 0.0f) {
    const float t = tanhf(x / cap);
    return (1.0f - t * t) * invTemperature;
  }
  return invTemperature;
}

}  // namespace cutloss
