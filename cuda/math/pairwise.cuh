// Per-element math of the pairwise sigmoid loss (SigLIP) and the spherical Z-loss, shared by
// the CUDA kernels, their emulation and the CPU backend; lib/js/pairMath.ts mirrors it.
#pragma once

#include "scalar.cuh"

namespace cutloss {

/** softplus(v) = log(1 + e^v) without overflow: max(v, 0) + log1p(e^−|v|). */
CUTLOSS_HD float softplusStable(float v) { return fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))); }

/** σ(u) = 1/(1 + e^−u) from the side where the exponential cannot overflow. */
CUTLOSS_HD float sigmoidStable(float u) {
  if (u >= 0.0f) return 1.0f / (1.0f + expf(-u));
  const float e = expf(u);
  return e / (1.0f + e);
}

/**
 * One pair of the sigmoid loss at logit u = t·s + b: the loss −log σ(z·u) = softplus(−z·u)
 * with z = +1 on the diagonal (a matching pair), −1 elsewhere, and dloss/du = σ(u) − [diagonal].
 */
struct PairTerm {
  float loss;
  float dLogit;
};
CUTLOSS_HD PairTerm sigmoidPairTerm(float u, bool diagonal) {
  return PairTerm{softplusStable(diagonal ? -u : u), sigmoidStable(u) - (diagonal ? 1.0f : 0.0f)};
}

/**
 * The spherical Z-loss of one row at its z-normalized label logit z̃ (de Brébisson & Vincent
 * 2016): (1/a)·softplus(a·(b − z̃)), and its derivative −σ(a·(b − z̃)) with respect to z̃.
 */
CUTLOSS_HD PairTerm zscoreLossTerm(float zt, float a, float b) {
  const float v = a * (b - zt);
  return PairTerm{softplusStable(v) / a, -sigmoidStable(v)};
}

}  // namespace cutloss
