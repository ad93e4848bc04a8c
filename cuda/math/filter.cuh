// Gradient filtering's f32 default, shared by every backend (lib/js/math.ts mirrors it as
// FILTER_ROW_MASS): entries with |∂loss_i/∂z_ij| below kFilterRowMass·s_i/V (s_i the row's
// gradient scale) are dropped, so a row's dropped entries sum to under kFilterRowMass·s_i:
// float32 rounding of the exact gradient's scale.
// A row's thresholds are relative to its gradient scale max(|s_W|, |s_U|) (the reduction's
// weights of its loss terms, README "Losses").
#pragma once

#include "scalar.cuh"

namespace cutloss {

constexpr double kFilterRowMass = 0x1p-24;

/** The row's gradient scale, max(|s_W|, |s_U|): what filterEps is relative to. */
CUTLOSS_HD float rowGradScale(float scaleWeighted, float scaleUnweighted) {
  return fmaxf(fabsf(scaleWeighted), fabsf(scaleUnweighted));
}

/** eps·scale; ∞ where the scale is 0 (the row has no gradient to keep). eps 0 keeps everything. */
CUTLOSS_HD float filterThreshold(float eps, float scale) { return scale == 0.0f ? positiveInfinity() : eps * scale; }

}  // namespace cutloss
