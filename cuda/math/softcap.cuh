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

/**
 * The shift a row's effective logits are formed relative to: its largest capped logit where that
 * is finite (the rows of ±inf and NaN keep their rules unshifted), else 0.
 */
CUTLOSS_HD float effectiveShift(float cappedMax) {
  return cappedMax > negativeInfinity() && cappedMax < positiveInfinity() ? cappedMax : 0.0f;
}

/**
 * effectiveLogit(x) − shift/T, formed as (softcap(x) − shift)·(1/T): the difference is taken
 * before ÷T, so it neither rounds at |x| ≫ 1 (x/T first would cost |x/T|·2^-24) nor overflows
 * where |x|/T > FLT_MAX. Softmax, its losses and sparsemax are invariant to the shift; lse
 * adds shift/T back.
 */
CUTLOSS_HD float shiftedEffectiveLogit(float x, float cap, float invTemperature, float shift) {
  return ((cap > 0.0f ? cap * tanhf(x / cap) : x) - shift) * invTemperature;
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
