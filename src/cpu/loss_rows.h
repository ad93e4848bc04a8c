// One row of a loss, forward and backward, on the CPU: the row's reduced statistics
// (RowStats: online log-sum-exp, label logit, the sums the options need, the sparsemax
// threshold), its loss (rowLoss), and, given the row's reduction scales, its gradient
// dloss/dx written in place or elsewhere (rowGrad, gradCoefficient, effectiveSlope): all of
// cuda/math/loss.cuh, as cuda/cross_entropy.cu does it a block per row. The row is read from
// memory once; the later passes find it in cache. Shared by crossEntropy (rows of the logits)
// and linearCrossEntropy (rows of a chunk of E·Wᵀ + b).
//
// Two shapes of the loops: kPlain (no softcap, temperature 1, no class weights, no label
// smoothing, no squentropy: the common case, with the fewest operations per element), and
// the general one, which forms the effective logits z = softcap(x)/T into scratch once and
// reads class weights from an array (all ones when the caller has none).
// Include after cpu_math.h.
#pragma once

#include <cstdint>

#include "rows.h"
#include "sparse_threshold.h"

namespace cutloss::cpu {

struct LossRowResult {
  float lse;
  float weighted;    // F·C (0 for an ignored row)
  float unweighted;  // U
};

/** What every row of one call shares. */
struct LossCall {
  LossParams p;
  LossConstants k;
  const float* weights;  // class weights, or all ones (general loops only)
  bool plain;            // the kPlain loops apply
  /** Scale-relative filterEps of the backward blocks (0 = keep everything). */
  float filterEps;
};

inline LossCall makeLossCall(const LossParams& p, const float* ones, float filterEps) {
  LossCall c;
  c.p = p;
  c.k = LossConstants{p.vocab, p.normalizer, p.smoothing, p.focalGamma, p.polyEpsilon, p.zLoss, p.squentropy,
                      p.generalizedCE};
  c.plain = p.softcap == 0.0f && p.invTemperature == 1.0f && p.classWeights == nullptr && p.smoothing == 0.0f &&
            p.squentropy == 0.0f;
  c.weights = p.classWeights != nullptr ? p.classWeights : ones;
  c.filterEps = filterEps;
  return c;
}

/** Per-row inputs and outputs besides the row itself. */
struct LossRowIO {
  int32_t label;
  float scaleWeighted;    // s_W
  float scaleUnweighted;  // s_U
  float* z;               // scratch [V] (general loops)
  float* candidates;      // scratch [V] (sparsemax)
  float* grad;            // dloss/dx [V] (may be the row itself), or null: forward only
  uint8_t* blockFlags;    // [ceil(V / kFilterBlockCols)]: set where a block holds |dloss/dz| ≥ filterEps·scale
  const void* next;       // the row to prefetch while this one is computed, or null
  int64_t nextBytes;      // its size in bytes
  PendingRowStore* store;  // the previous row's gradient, written while this row's exponentials run; or null
};

/**
 * The row's gradient grad[j] = coef(j)·slope(j), with coef(j) = dloss/dz_j and slope(j) =
 * dz_j/dx_j. With blockFlags, in blocks of kFilterBlockCols columns, marking each block that
 * holds a |dloss/dz| ≥ threshold.
 */
template <class Coef, class Slope>
CUTLOSS_CPU_INLINE void writeRowGrad(int n, float threshold, uint8_t* blockFlags, float* grad, Coef coef, Slope slope) {
  if (blockFlags == nullptr) {
#pragma omp simd
    for (int j = 0; j < n; j++) grad[j] = coef(j) * slope(j);
    return;
  }
  for (int b0 = 0; b0 < n; b0 += static_cast<int>(kFilterBlockCols)) {
    const int b1 = b0 + kFilterBlockCols < n ? b0 + static_cast<int>(kFilterBlockCols) : n;
    int significant = 0;
#pragma omp simd reduction(| : significant)
    for (int j = b0; j < b1; j++) {
      const float c = coef(j);
      significant |= !(fabsf(c) < threshold);  // NaN counts as large: never filtered
      grad[j] = c * slope(j);
    }
    if (significant) blockFlags[b0 / kFilterBlockCols] = 1;
  }
}

template <int kNormalizer, bool kPlain>
CUTLOSS_CPU_INLINE LossRowResult lossRow(const LossCall& c, const float* x, int n, const LossRowIO& io) {
  const LossParams& p = c.p;
  const int32_t t = io.label;
  const bool ignored = t == p.ignoreIndex;
  const bool isClass = t >= 0 && t < n;
  const float* w = c.weights;

  // ---- effective logits. Under a temperature, softmax and sparsemax rows (invariant to a
  // shift; squentropy's z² is not) are formed relative to their largest capped logit
  // (shiftedEffectiveLogit): x/T rounded first would cost |x/T|·2^-24 of every gap, or overflow.
  const float* z = x;
  float rowShift = 0.0f;  // RowStats::shift
  const bool shifted = !kPlain && shiftedBeforeTemperature(kNormalizer, p.squentropy, p.invTemperature);
  if (!kPlain) {
    specialize(p.softcap > 0.0f, [&](auto) CUTLOSS_CPU_LAMBDA {
      if (shifted) {
#pragma omp simd
        for (int j = 0; j < n; j++) io.z[j] = effectiveLogit(x[j], p.softcap, 1.0f);
        rowShift = effectiveShift(rowMax(io.z, n));
#pragma omp simd
        for (int j = 0; j < n; j++) io.z[j] = shiftedEffectiveLogit(io.z[j], 0.0f, p.invTemperature, rowShift);
      } else {
#pragma omp simd
        for (int j = 0; j < n; j++) io.z[j] = effectiveLogit(x[j], p.softcap, p.invTemperature);
      }
    });
    z = io.z;
  }

  // ---- forward: the row's sums, each a pass over the row (in cache after the first)
  // A softmax row whose gradient is wanted pays one exponential per element, not two: its
  // e^(z − max) are kept in the gradient row (in cache) and the backward scales them by 1/Σ.
  // Not where the gradient overwrites x while effectiveSlope still reads it (softcap on; z is
  // then scratch, x is not read again otherwise), nor for a row whose max is not finite (the
  // online path below handles ±inf and NaN).
  const float zLabel = isClass ? z[t] : quietNaN();  // before the kept pass may overwrite z (grad == x)
  // label smoothing's (α/V)·Σ_j w_j (zMax − z_j), before the kept pass may overwrite x: a shifted row's
  // gaps come from its capped logits, (max c − c_j)/T, as its z_j overflow where c spans ±1.7e38
  const bool smoothing = !kPlain && p.smoothing > 0.0f;
  float spreadGap = 0.0f;
  float zMax = quietNaN();  // the row's max of z where a pass below already found it
  if (smoothing) {
    const float spreadScale = p.smoothing / static_cast<float>(n);
    // without class weights w is all ones: not read (a row past the L2 cache streams every array it reads)
    specialize(p.classWeights != nullptr, [&](auto weighted) CUTLOSS_CPU_LAMBDA {
      const auto weight = [&](int j) CUTLOSS_CPU_LAMBDA { return decltype(weighted)::value ? w[j] : 1.0f; };
      if (shifted) {
        spreadGap = p.invTemperature * blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA {
          return weight(j) * scaledGap(rowShift, effectiveLogit(x[j], p.softcap, 1.0f), spreadScale);
        });
      } else {
        zMax = rowMax(z, n);
        spreadGap = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return weight(j) * scaledGap(zMax, z[j], spreadScale); });
      }
    });
  }
  float* kept = nullptr;
  LseState lse;
  if (kNormalizer == kNormalizerSoftmax && io.grad != nullptr && (kPlain || io.grad != x || p.softcap == 0.0f)) {
    const float rowMaxValue = zMax == zMax ? zMax : rowMax(z, n);
    if (!infiniteMax(rowMaxValue) && rowMaxValue == rowMaxValue) {
      kept = io.grad;
      const float sum = keptExpSumOfRow(z, n, rowMaxValue, kept, io.next, io.nextBytes, io.store);
      lse = LseState{rowMaxValue, sum};
    }
  }
  if (kept == nullptr) lse = rowLse(z, n);
  const float m = lse.max;
  const float sumExp = lse.sum;
  const bool squentropy = !kPlain && p.squentropy != 0.0f;
  const float sumSq = squentropy ? blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return j != t ? z[j] * z[j] : 0.0f; }) : 0.0f;
  const bool stable = kNormalizer == kNormalizerStablemax;
  const float stableScale = stable ? stablemaxSumScale(m) : 1.0f;  // S may overflow; S·scale cannot
  const float stableSum = stable ? blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return stablemaxS(z[j]) * stableScale; }) : 0.0f;
  // Gumbel's Σ_{j≠t} ψ(z_j) takes RowStats::stableSum's slot
  const float gumbelSum = kNormalizer == kNormalizerGumbel
      ? blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return j != t ? gumbelPsi(z[j]) : 0.0f; }) : 0.0f;
  const float sumWLogS = stable && smoothing ? blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return w[j] * stablemaxLogS(z[j]); }) : 0.0f;
  RowStats st;
  st.lse = lseValue(LseState{m, sumExp}) + rowShift * p.invTemperature;
  st.logSum = logf(sumExp);
  st.zLabel = zLabel;
  st.spreadGap = spreadGap;
  st.sumSqOthers = sumSq;
  st.stableSum = kNormalizer == kNormalizerGumbel ? gumbelSum : stableSum;
  st.sumWeightedLogS = sumWLogS;
  st.zMax = m;
  st.tau = 0.0f;
  st.omega = 0.0f;
  st.support = 0.0f;
  st.shift = rowShift;
  if (kNormalizer == kNormalizerSparsemax) {
    if (m > negativeInfinity() && m < positiveInfinity()) {
      const SparsemaxRowThreshold th = sparsemaxThresholdOfCandidates(z, n, m, io.candidates);
      st.tau = th.tau;
      st.support = th.support;
      st.omega = th.tau + 0.5f * (1.0f + th.sumSqP);
    } else {
      st.tau = quietNaN();
      st.omega = quietNaN();
    }
  }

  LossRowResult result{st.lse, 0.0f, 0.0f};
  if (ignored) {
    if (io.grad != nullptr) {
      for (int j = 0; j < n; j++) io.grad[j] = 0.0f;
    }
    return result;
  }
  const float wLabel = isClass ? (kPlain ? 1.0f : w[t]) : quietNaN();
  const RowLoss rl = rowLoss(c.k, st, wLabel, p.sumWeights);
  result.weighted = rl.weighted;
  result.unweighted = rl.unweighted;
  if (io.grad == nullptr) return result;

  // ---- backward: dloss/dx_j = gradCoefficient(z_j)·dz_j/dx_j
  RowGrad rg = rowGrad(c.k, st, rl, wLabel, io.scaleWeighted, io.scaleUnweighted);
  rg.normalizer = kNormalizer;  // a constant, so gradCoefficient's branches fold away
  const float threshold = filterThreshold(c.filterEps, rowGradScale(io.scaleWeighted, io.scaleUnweighted));
  uint8_t* flags = c.filterEps > 0.0f ? io.blockFlags : nullptr;
  const float invSum = kept != nullptr ? 1.0f / lse.sum : 0.0f;
  // the row-constant branches: whether e^(z − max) was kept; gradCoefficient's lse, squentropy's
  // coefficient, sparsemax's label in the support; effectiveSlope's softcap
  specialize(kept != nullptr, [&](auto keptTag) CUTLOSS_CPU_LAMBDA {
    specialize(infiniteMax(rg.lse), [&](auto) CUTLOSS_CPU_LAMBDA {
      specialize(rg.sqCoef != 0.0f, [&](auto) CUTLOSS_CPU_LAMBDA {
        specialize(kNormalizer == kNormalizerSparsemax && rg.labelInSupport, [&](auto) CUTLOSS_CPU_LAMBDA {
          const auto coefficient = [&](int j, float wK) CUTLOSS_CPU_LAMBDA {
            if constexpr (decltype(keptTag)::value) {
              return gradCoefficientGivenSoftmax(rg, z[j], kept[j] * invSum, j == t, wK);
            } else {
              return gradCoefficient(rg, z[j], j == t, wK);
            }
          };
          if (kPlain) {
            writeRowGrad(n, threshold, flags, io.grad, [&](int j) CUTLOSS_CPU_LAMBDA { return coefficient(j, 1.0f); },
                         [](int) CUTLOSS_CPU_LAMBDA { return 1.0f; });
          } else {
            specialize(p.softcap > 0.0f, [&](auto) CUTLOSS_CPU_LAMBDA {
              writeRowGrad(n, threshold, flags, io.grad, [&](int j) CUTLOSS_CPU_LAMBDA { return coefficient(j, w[j]); },
                           [&](int j) CUTLOSS_CPU_LAMBDA { return effectiveSlope(x[j], p.softcap, p.invTemperature); });
            });
          }
        });
      });
    });
  });
  return result;
}

/** lossRow with the normalizer and loop shape chosen at run time. */
CUTLOSS_CPU_INLINE LossRowResult lossRowAny(const LossCall& c, const float* x, int n, const LossRowIO& io) {
  switch (c.p.normalizer) {
    case kNormalizerStablemax:
      return c.plain ? lossRow<kNormalizerStablemax, true>(c, x, n, io) : lossRow<kNormalizerStablemax, false>(c, x, n, io);
    case kNormalizerSparsemax:
      return c.plain ? lossRow<kNormalizerSparsemax, true>(c, x, n, io) : lossRow<kNormalizerSparsemax, false>(c, x, n, io);
    case kNormalizerGumbel:
      return c.plain ? lossRow<kNormalizerGumbel, true>(c, x, n, io) : lossRow<kNormalizerGumbel, false>(c, x, n, io);
    default:
      return c.plain ? lossRow<kNormalizerSoftmax, true>(c, x, n, io) : lossRow<kNormalizerSoftmax, false>(c, x, n, io);
  }
}

}  // namespace cutloss::cpu
