// Harmonic logits (Baek et al. 2025), mirroring lib/js/math.ts: the raw logit of row i and
// class j is −(n/2)·log d²_ij with d²_ij = ‖e_i − w_j‖², so softmax gives p ∝ d^(−n). The
// GEMM gives e_i·w_j; the squared norms r_i = ‖e_i‖², c_j = ‖w_j‖² come once per call.
// d² is floored at FLT_MIN: a class at distance 0 gets the finite logit n·43.67 (not +inf),
// so the label there takes p = 1 (loss 0, zero gradient) whenever every other class is far
// enough that Σ_j (FLT_MIN/d²_j)^(n/2) vanishes; for small n it may not (the floor caps the
// label's logit), and the loss is then small but not 0. Never NaN.
#pragma once

#include "scalar.cuh"

namespace cutloss {

/** FLT_MIN = 2^-126: the smallest d² the logit resolves; d² below it counts as 0. */
CUTLOSS_HD float harmonicFloor() { return floatFromBits(0x00800000u); }

/** d²_ij = max(r_i + c_j − 2·e_i·w_j, 0) (rounding can leave it negative); NaN stays NaN. */
CUTLOSS_HD float harmonicSqDistance(float rowSq, float colSq, float dot) {
  return reluPropagatingNaN(rowSq + colSq - 2.0f * dot);
}

/** The raw logit −(n/2)·log max(d², FLT_MIN). */
CUTLOSS_HD float harmonicLogit(float sqDistance, float exponent) {
  return -0.5f * exponent * logf(maxPropagatingNaN(sqDistance, harmonicFloor()));
}

/**
 * H = n·g/d² from g = dloss/dlogit: then dE_i = Σ_j H_ij·w_j − e_i·Σ_j H_ij and
 * dW_j = Σ_i H_ij·e_i − w_j·Σ_i H_ij. 0 where d² is below the floor (the logit is constant
 * there); n·g first, so a tiny d² never meets g = 0 as ∞·0.
 */
CUTLOSS_HD float harmonicGrad(float g, float sqDistance, float exponent) {
  return sqDistance < harmonicFloor() ? 0.0f : exponent * g / sqDistance;
}

}  // namespace cutloss
