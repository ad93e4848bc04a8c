// Margin softmax at the label (CosFace / ArcFace; README "Margin softmax"), mirroring
// lib/js/math.ts. The engines see raw logits x = s·c with c the cosine of unit rows, and at the
// label column only they use s·φ(x/s) instead, with
//   φ(c) = cos(θ + m2) − m = c·cos m2 − sin θ·sin m2 − m,  θ = acos(clamp(c, −1, 1)),
// and where θ + m2 > π (c < −cos m2) insightface's monotone continuation c − m2·sin m2 − m (it
// steps up by 1 − cos m2 − m2·sin m2 at the threshold; cos(θ + m2) would turn back up there).
// φ'(c) = cos m2 + c·sin m2 / sin θ; at |c| = 1, where sin θ = 0, sin θ is floored at its value
// for the float32 just below 1 (≈ 3.45e-4), so the slope stays finite.
#pragma once

#include "scalar.cuh"

namespace cutloss {

/** The label-logit map's constants; scale 0 = off (every logit is used as it is). */
struct LabelMargin {
  float scale = 0.0f;       // s
  float margin = 0.0f;      // m, subtracted from the cosine (CosFace)
  float cosAngular = 1.0f;  // cos m2 (ArcFace's angular margin m2)
  float sinAngular = 0.0f;  // sin m2
  float continuation = 0.0f;  // m2·sin m2, what the continuation subtracts
};

/** sin θ's floor in φ': sqrt(1 − c²) at c = 1 − 2^-24. */
constexpr float kMarginSinFloor = 3.4526698e-4f;

CUTLOSS_HD float marginClampCosine(float c) { return c < -1.0f ? -1.0f : c > 1.0f ? 1.0f : c; }  // NaN stays NaN

/** φ(c). */
CUTLOSS_HD float marginPhi(const LabelMargin& lm, float c) {
  const float cc = marginClampCosine(c);
  if (lm.sinAngular == 0.0f) return cc - lm.margin;
  if (cc < -lm.cosAngular) return cc - lm.continuation - lm.margin;
  const float sinTheta = sqrtf(fmaxf((1.0f - cc) * (1.0f + cc), 0.0f));  // factored: exact near |c| = 1
  return cc * lm.cosAngular - sinTheta * lm.sinAngular - lm.margin;
}

/** φ'(c). */
CUTLOSS_HD float marginPhiSlope(const LabelMargin& lm, float c) {
  const float cc = marginClampCosine(c);
  if (lm.sinAngular == 0.0f || cc < -lm.cosAngular) return 1.0f;
  const float sinTheta = fmaxf(sqrtf(fmaxf((1.0f - cc) * (1.0f + cc), 0.0f)), kMarginSinFloor);
  return lm.cosAngular + cc * lm.sinAngular / sinTheta;
}

/** The label's raw logit x = s·c → s·φ(c); x itself when the map is off. */
CUTLOSS_HD float marginLabelLogit(const LabelMargin& lm, float x) {
  return lm.scale > 0.0f ? lm.scale * marginPhi(lm, x / lm.scale) : x;
}

/** d(marginLabelLogit)/dx = φ'(x/s); 1 when the map is off. */
CUTLOSS_HD float marginLabelSlope(const LabelMargin& lm, float x) {
  return lm.scale > 0.0f ? marginPhiSlope(lm, x / lm.scale) : 1.0f;
}

}  // namespace cutloss
