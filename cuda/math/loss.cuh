// The per-row loss and gradient epilogues of README "Losses", mirroring lib/js/math.ts:
//   a_j = (1 − α)·w_t·[j = t] + (α/V)·w_j,  C = Σ_j a_j·ℓ_j,  F = (1 − p_t)^γ,
//   U = ε·(1 − p_t) + λ·lse² + σ·Σ_{j≠t} z_j² / (V − 1),  loss = F·C + U.
// Generalized CE (q > 0; Zhang & Sabuncu 2018) replaces C by w_t·(1 − p_t^q)/q, whose gradient is
// CE's scaled by p_t^q (∂p_t^q = q·p_t^q·∂log p_t): only softmax and stablemax, no α, no focal.
// A kernel reduces a row to RowStats once; rowLoss turns them into the row's loss, rowGrad
// into the few per-row constants that gradCoefficient needs for each element. fp32 here,
// float64 in the reference.
#pragma once

#include "lse.cuh"
#include "scalar.cuh"
#include "stablemax.cuh"

namespace cutloss {

constexpr int kNormalizerSoftmax = 0;
constexpr int kNormalizerStablemax = 1;
constexpr int kNormalizerSparsemax = 2;
constexpr int kNormalizerGumbel = 3;

// Gumbel optimized loss (Alexandridis et al. 2022): p_j = exp(−exp(−z_j)) per class, unnormalized,
// and the binary cross-entropy of the one-hot target: ℓ = u_t + Σ_{j≠t} ψ(z_j), u = exp(−z).

/**
 * log(sinh(u/2)/(u/2)) = u²/24 − u⁴/2880 + u⁶/181440 − u⁸/9676800 + …: float32 precision for
 * 0 ≤ u ≤ ln 2 (the next term is 5e-11 there). Polynomials instead of expm1f keep the CPU's row
 * loops vectorizable (cpu_math.h inlines expf and log1pf, not expm1f) and cost less on the GPU.
 */
CUTLOSS_HD float gumbelSmallU(float u) {
  const float v = u * u;
  return v * (1.0f / 24.0f + v * (-1.0f / 2880.0f + v * (1.0f / 181440.0f - v * (1.0f / 9676800.0f))));
}

/**
 * ψ(z) = −log(1 − exp(−u)), u = exp(−z), the loss of a non-target class. For u ≤ ln 2 it is
 * z − log((1 − e^{−u})/u) = z + u/2 − log(sinh(u/2)/(u/2)): no cancellation, and ψ ≈ z where
 * exp(−z) underflows; above, log1p(−e^{−u}) is accurate (e^{−u} < ½).
 */
CUTLOSS_HD float gumbelPsi(float z) {
  const float u = expf(-z);
  if (u <= 0.693147182f) return z + 0.5f * u - gumbelSmallU(u);
  return -log1pf(-expf(-u));
}

/** ψ'(z) = p·u/(1 − p) = u/(e^u − 1) = e^{−u/2}·(u/2)/sinh(u/2): 1 as u → 0, 0 once e^u overflows. */
CUTLOSS_HD float gumbelPsiSlope(float z) {
  const float u = expf(-z);
  if (u <= 0.693147182f) return expf(-0.5f * u - gumbelSmallU(u));
  if (u == positiveInfinity()) return 0.0f;
  return u / (expf(u) - 1.0f);  // e^u ≥ 2: the difference loses nothing
}

struct LossConstants {
  int vocab;
  int normalizer;     // kNormalizer*
  float smoothing;    // α
  float focalGamma;   // γ
  float polyEpsilon;  // ε
  float zLoss;        // λ
  float squentropy;   // σ: 1 or 0
  float generalizedCE = 0.0f;  // q of generalized CE in (0, 1]; 0 = off (plain C)
};

/** What the forward pass reduces for each row (only the fields its options need). */
struct RowStats {
  float lse;              // log Σ exp(z)
  float logSum;           // log Σ exp(z − zMax): z − lse is formed as (z − zMax) − logSum (see minusLse)
  float zLabel;           // z_t
  float spreadGap;        // (α/V)·Σ_j w_j (zMax − z_j) (smoothing): terms ≥ 0, so Σ_j w_j ℓ_j never cancels at |z| ≫ 1
  float sumSqOthers;      // Σ_{j≠t} z_j² (squentropy)
  float stableSum;        // the normalizer's own row sum: S·stablemaxSumScale(zMax) = Σ s(z_j)·scale (stablemax); Σ_{j≠t} ψ(z_j) (gumbel)
  float sumWeightedLogS;  // Σ_j w_j log s(z_j)
  // Sparsemax values are kept relative to the row max m, so huge logits lose no precision.
  // A kernel may form a row's logits relative to a shift (shiftedEffectiveLogit; not with
  // squentropy, whose z² needs the logits themselves): zLabel, zMax, logSum, tau
  // and omega are then of the shifted logits; lse is not.
  float zMax;     // m
  float tau;      // τ − m
  float omega;    // Ω − m = (τ − m) + ½(1 + Σ_supp (z − τ)²)
  float support;  // |supp|
  float shift;    // what the capped logits were shifted by before ÷T (0: not shifted); float32 kernels only
};

/**
 * (m − z)·scale for z ≤ m (scale = α/V: a term of RowStats::spreadGap), from the scaled values
 * where m − z exceeds float32 (logits of both signs past 1.7e38): the loss may still hold it.
 */
CUTLOSS_HD float scaledGap(float m, float z, float scale) {
  const float d = m - z;
  return d < positiveInfinity() ? d * scale : m * scale - z * scale;
}

/**
 * Whether a row's effective logits are formed relative to its largest capped logit
 * (shiftedEffectiveLogit): under a temperature, for the losses invariant to a shift (softmax,
 * sparsemax; not squentropy's z²). x/T formed first would round every gap at |x| ≫ 1, or overflow.
 */
CUTLOSS_HD bool shiftedBeforeTemperature(int normalizer, float squentropy, float invTemperature) {
  return invTemperature != 1.0f && squentropy == 0.0f &&
         (normalizer == kNormalizerSoftmax || normalizer == kNormalizerSparsemax);
}

struct RowLoss {
  float loss;
  float weighted;    // F·C, the part reduced by the summed target weights
  float unweighted;  // U
  float pLabel;      // p_t under the normalizer
  float oneMinusPLabel;
  float focal;       // F
  float ce;          // C
  float targetMass;  // Σ_j a_j
  float gceScale;    // p_t^q under generalized CE (what scales C's gradient), else 1
};

CUTLOSS_HD RowLoss rowLoss(const LossConstants& k, const RowStats& st, float wLabel, float sumWeights) {
  const float alpha = k.smoothing;
  const float keep = (1.0f - alpha) * wLabel;
  const float spread = alpha / static_cast<float>(k.vocab);
  const float targetMass = keep + spread * sumWeights;
  // ℓ_t and Σ_j w_j ℓ_j are formed as differences first (lse − z_t, not lse·a − z_t·a) so a row
  // of huge logits keeps the precision of its gap.
  float labelLoss, pLabel, oneMinusPLabel;
  float spreadLoss = 0.0f;  // (α/V)·Σ_j w_j ℓ_j
  if (k.normalizer == kNormalizerStablemax) {
    // S and s_t both times the row's scale: S itself may overflow float32
    const float scale = stablemaxSumScale(st.zMax);
    const float S = stablemaxRowSum(st.stableSum, st.zMax);
    const float logScale = logf(scale);
    const float logS = logf(S) - logScale;
    labelLoss = -stablemaxLogRatio(st.zLabel, scale, logf(S), logScale);
    if (alpha > 0.0f) spreadLoss = spread * (sumWeights * logS - st.sumWeightedLogS);
    const float sLabel = stablemaxS(st.zLabel) * scale;
    pLabel = sLabel / S;
    oneMinusPLabel = (S - sLabel) / S;
  } else if (k.normalizer == kNormalizerGumbel) {
    // no label smoothing (lib/options.ts rejects it): u_t + Σ_{j≠t} ψ(z_j)
    const float uLabel = expf(-st.zLabel);
    labelLoss = uLabel + st.stableSum;
    pLabel = expf(-uLabel);
    oneMinusPLabel = -expm1f(-uLabel);
  } else if (k.normalizer == kNormalizerSparsemax) {
    labelLoss = st.omega - (st.zLabel - st.zMax);
    if (alpha > 0.0f) spreadLoss = spread * (sumWeights * st.omega) + st.spreadGap;  // ℓ_j = Ω − z_j
    pLabel = maxPropagatingNaN(st.zLabel - st.zMax - st.tau, 0.0f);
    oneMinusPLabel = 1.0f - pLabel;
  } else {
    const float logP = minusLse(st.zLabel, st.zMax, st.logSum);  // z_t − lse without rounding lse
    labelLoss = -logP;
    if (alpha > 0.0f) spreadLoss = spread * (sumWeights * st.logSum) + st.spreadGap;  // ℓ_j = lse − z_j
    pLabel = expf(logP);
    oneMinusPLabel = -expm1f(logP);  // accurate when p_t ≈ 1
  }
  float ce = keep * labelLoss + spreadLoss;
  float gceScale = 1.0f;
  if (k.generalizedCE > 0.0f) {
    // (1 − p_t^q)/q as −expm1(−q·ℓ_t)/q: no cancellation as q → 0 (→ ℓ_t, CE) or p_t → 1.
    const float qLoss = k.generalizedCE * labelLoss;
    ce = keep * (-expm1f(-qLoss) / k.generalizedCE);
    gceScale = expf(-qLoss);
  }
  const float focal = k.focalGamma == 0.0f ? 1.0f : powf(oneMinusPLabel, k.focalGamma);
  float unweighted = 0.0f;
  if (k.polyEpsilon != 0.0f) unweighted += k.polyEpsilon * oneMinusPLabel;
  if (k.zLoss != 0.0f) unweighted += k.zLoss * st.lse * st.lse;
  if (k.squentropy != 0.0f && k.vocab > 1) unweighted += (k.squentropy * st.sumSqOthers) / static_cast<float>(k.vocab - 1);
  const float weighted = focal * ce;
  return RowLoss{weighted + unweighted, weighted, unweighted, pLabel, oneMinusPLabel, focal, ce, targetMass, gceScale};
}

/**
 * Per-row constants of the gradient dloss/dz_k, given the row's reduction scales
 * (sWeighted for F·C, sUnweighted for U). See gradCoefficient for their use.
 */
struct RowGrad {
  int normalizer;
  float lse;
  float logSum;
  float pLabel;
  float mass;        // s_W·F·G·Σa_j  (G: p_t^q under generalized CE, else 1)
  float keep;        // s_W·F·G·(1 − α)·w_t   (a_t's label part)
  float spread;      // s_W·F·G·α/V           (times w_k)
  float kappa;       // s_W·C·F' − s_U·ε    (times ∂p_t/∂z_k)
  float zCoef;       // s_U·2λ·lse          (times softmax_k)
  float sqCoef;      // s_U·2σ/(V − 1)      (times z_k, k ≠ t)
  float stableSum;    // S·stableScale
  float stableScale;  // stablemaxSumScale(zMax)
  float dlogSLabel;  // s'(z_t)/s(z_t)
  float zMax;
  float tau;         // relative to zMax
  bool labelInSupport;
  float invSupport;
};

CUTLOSS_HD RowGrad rowGrad(const LossConstants& k, const RowStats& st, const RowLoss& r, float wLabel, float sWeighted,
                           float sUnweighted) {
  const float g = k.focalGamma;
  const float omp = r.oneMinusPLabel;
  // F' = −γ(1 − p_t)^(γ−1); at p_t = 1 its product with ∂p_t/∂z (also 0 there) has limit 0 unless γ = 1.
  const float dFocal = g == 0.0f ? 0.0f : omp > 0.0f ? -g * powf(omp, g - 1.0f) : g == 1.0f ? -1.0f : 0.0f;
  // C·F' multiplies ∂p_t/∂z, which carries a factor p_t, and C·p_t → 0 as p_t → 0 (ℓ·e^−ℓ): at
  // p_t = 0 (a −inf label logit, C = +inf) the term takes that limit, 0, instead of ∞·0 = NaN.
  const float focalTerm = dFocal == 0.0f || r.pLabel == 0.0f ? 0.0f : sWeighted * r.ce * dFocal;
  const float sWF = sWeighted * r.focal * r.gceScale;
  RowGrad rg;
  rg.normalizer = k.normalizer;
  rg.lse = st.lse;
  rg.logSum = st.logSum;
  rg.pLabel = r.pLabel;
  rg.mass = sWF * r.targetMass;
  rg.keep = sWF * (1.0f - k.smoothing) * wLabel;
  rg.spread = (sWF * k.smoothing) / static_cast<float>(k.vocab);
  rg.kappa = focalTerm - sUnweighted * k.polyEpsilon;
  // guarded: lse may be ±inf where the logits ÷ T overflow while the row's gaps do not
  rg.zCoef = k.zLoss == 0.0f ? 0.0f : sUnweighted * 2.0f * k.zLoss * st.lse;
  rg.sqCoef = k.vocab > 1 ? (sUnweighted * 2.0f * k.squentropy) / static_cast<float>(k.vocab - 1) : 0.0f;
  rg.stableSum = stablemaxRowSum(st.stableSum, st.zMax);
  rg.stableScale = k.normalizer == kNormalizerStablemax ? stablemaxSumScale(st.zMax) : 1.0f;
  rg.dlogSLabel = stablemaxDlogS(st.zLabel);
  rg.zMax = st.zMax;
  rg.tau = st.tau;
  rg.labelInSupport = st.zLabel - st.zMax > st.tau;
  rg.invSupport = st.support > 0.0f ? 1.0f / st.support : 0.0f;
  return rg;
}

/**
 * dloss/dz_k for one element of a row (isLabel: k = t; wK: class weight of k), given its
 * softmax_k = exp(z − lse): a kernel that kept e^(z − max) from its forward pass passes that
 * times 1/Σ instead of paying a second exponential.
 */
CUTLOSS_HD float gradCoefficientGivenSoftmax(const RowGrad& rg, float z, float softmaxK, bool isLabel, float wK) {
  float d = rg.zCoef * softmaxK;
  if (!isLabel && rg.sqCoef != 0.0f) d += rg.sqCoef * z;  // guarded: 0·(−inf) would be NaN
  const float target = rg.spread * wK + (isLabel ? rg.keep : 0.0f);  // a_k
  if (rg.normalizer == kNormalizerGumbel) {
    // ∂u_t/∂z_t = −u_t; ∂ψ(z_k)/∂z_k = ψ'(z_k); keep = s_W·w_t
    d += isLabel ? -rg.keep * expf(-z) : rg.keep * gumbelPsiSlope(z);
  } else if (rg.normalizer == kNormalizerSoftmax) {
    // ∂C = Σa·p_k − a_k; ∂p_t = p_t(δ_tk − p_k)
    d += rg.mass * softmaxK - target + rg.kappa * rg.pLabel * ((isLabel ? 1.0f : 0.0f) - softmaxK);
  } else if (rg.normalizer == kNormalizerStablemax) {
    // ∂C = Σa·s'_k/S − a_k·s'_k/s_k; ∂p_t = p_t(δ_tk·s'_t/s_t − s'_k/S). a_k is multiplied by
    // s'/s itself, not by (1 − s'/s) after subtracting a_k: that difference of two near-equal
    // terms cost 2^-24/(s'/s) relative, 2e-4 at logits of 1e4.
    const float dsOverS = stablemaxDsOverSum(z, rg.stableSum, rg.stableScale);
    const float dlogS = stablemaxDlogS(z);
    d += rg.mass * dsOverS - target * dlogS;
    d += rg.kappa * rg.pLabel * ((isLabel ? rg.dlogSLabel : 0.0f) - dsOverS);
  } else {
    // sparsemax: ∂C = Σa·p_k − a_k; ∂p_t = [t, k ∈ supp](δ_tk − 1/|supp|)
    const float u = z - rg.zMax - rg.tau;  // z − τ, formed relative to the max
    const bool inSupport = u > 0.0f;
    d += rg.mass * reluPropagatingNaN(u) - target;  // a row without a finite max has τ NaN: a NaN row
    if (rg.labelInSupport && inSupport) d += rg.kappa * ((isLabel ? 1.0f : 0.0f) - rg.invSupport);
  }
  return d;
}

/** dloss/dz_k for one element of a row (isLabel: k = t; wK: class weight of k). */
CUTLOSS_HD float gradCoefficient(const RowGrad& rg, float z, bool isLabel, float wK) {
  // Gumbel's own terms need no softmax_k (only zLoss's does): one exponential less per element
  const bool softmaxUsed = rg.normalizer != kNormalizerGumbel || rg.zCoef != 0.0f;
  return gradCoefficientGivenSoftmax(rg, z, softmaxUsed ? expMinusLse(z, rg.zMax, rg.logSum) : 0.0f, isLabel, wK);
}

}  // namespace cutloss
