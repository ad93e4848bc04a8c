// A row's forward sums over some of its classes, their merge, and the RowStats they finish
// into: what a pass that meets a row a tile of classes at a time keeps (the GPU's linear
// cross-entropy, cuda/linear_cross_entropy.cu, and the CPU's vocabulary tiles,
// src/cpu/linear_cross_entropy.cc). Logits enter as capped logits c = softcap(x), before ÷T:
// the lse state is kept in c (lse.cuh's invT) and rowStatsOfSums forms the row's z = c/T frame
// (with the shift of shiftedBeforeTemperature), so no gap is rounded at |c/T| ≫ 1.
// JS reduces whole rows in float64 and needs no merge: no mirror in lib/js/math.ts.
#pragma once

#include "loss.cuh"
#include "lse.cuh"
#include "softcap.cuh"
#include "stablemax.cuh"

namespace cutloss {

// A plain aggregate, as it lives in __shared__.
struct TileRowSums {
  LseState lse;          // of c, with invT
  float cLabel;          // c_t (0 where the label is not among the classes)
  float weightedGap;     // (α/V)·Σ_j w_j (lse.max − c_j) (smoothing): terms ≥ 0, moved with the max, never cancelled
  float sumW;            // Σ_j w_j of the classes summed (smoothing): what a larger max moves weightedGap by
  float sumSqOthers;     // Σ_{j≠t} z_j² (squentropy, never shifted)
  float stableSum;       // StableMax: Σ s(z_j)·stablemaxSumScale(lse.max·invT); Gumbel: Σ_{j≠t} ψ(z_j)
  float sumWeightedLogS;
};

CUTLOSS_HD TileRowSums emptyTileRowSums() { return TileRowSums{lseEmpty(), 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}; }

/** (α/V)·Σ w (from − c) over classes of weight sumW, moved to a max `to` ≥ from (nothing where no class was summed). */
CUTLOSS_HD float moveGap(float gap, float sumW, float from, float to, float spreadScale) {
  return sumW == 0.0f ? gap : gap + scaledGap(to, from, spreadScale) * sumW;
}

/** Which sums a call's options need, and their constants. */
struct TileSumOptions {
  float invT;
  float spreadScale;  // α/V
  bool smoothing;
  bool squentropy;
  bool stable;  // stableSum is StableMax's, so it moves with the max's scale
  bool gumbel;
};

CUTLOSS_HD TileSumOptions tileSumOptions(int normalizer, float smoothing, float squentropy, float invTemperature, int vocab) {
  return TileSumOptions{invTemperature, smoothing / static_cast<float>(vocab), smoothing > 0.0f, squentropy != 0.0f,
                        normalizer == kNormalizerStablemax, normalizer == kNormalizerGumbel};
}

/** The merge of two rows' sums over disjoint classes: associative, so any tree of merges in a fixed order. */
CUTLOSS_HD TileRowSums combineTileRowSums(const TileSumOptions& o, TileRowSums a, TileRowSums b) {
  const LseState lse = mergeLse(a.lse, b.lse, o.invT);
  const float stableSum = o.stable ? stablemaxRescale(a.stableSum, a.lse.max * o.invT, lse.max * o.invT) +
                                         stablemaxRescale(b.stableSum, b.lse.max * o.invT, lse.max * o.invT)
                                   : a.stableSum + b.stableSum;
  const float gap = moveGap(a.weightedGap, a.sumW, a.lse.max, lse.max, o.spreadScale) +
                    moveGap(b.weightedGap, b.sumW, b.lse.max, lse.max, o.spreadScale);
  return TileRowSums{lse, a.cLabel + b.cLabel, gap, a.sumW + b.sumW, a.sumSqOthers + b.sumSqOthers, stableSum,
                     a.sumWeightedLogS + b.sumWeightedLogS};
}

/**
 * Capped logit c of class weight w into sums whose lse state already holds the max `cMax` of
 * the classes summed (its exp sum formed apart, one exp per class): every sum but the lse's.
 * stableScale = stablemaxSumScale(cMax·invT).
 */
CUTLOSS_HD void addToTileRowSums(const TileSumOptions& o, TileRowSums& s, float c, float cMax, float stableScale, bool isLabel,
                                 float w) {
  const float z = c * o.invT;  // the unshifted normalizers' own z
  if (isLabel) s.cLabel = c;
  if (o.smoothing) {
    s.weightedGap += w * scaledGap(cMax, c, o.spreadScale);
    s.sumW += w;
  }
  if (o.squentropy && !isLabel) s.sumSqOthers += z * z;
  if (o.stable) {
    s.stableSum += stablemaxS(z) * stableScale;
    if (o.smoothing) s.sumWeightedLogS += w * stablemaxLogS(z);
  }
  if (o.gumbel && !isLabel) s.stableSum += gumbelPsi(z);  // Gumbel's row sum takes stableSum's slot
}

/** A row's merged sums → its RowStats in the z = (c − shift)/T frame (sparsemax's τ, Ω and support left 0). */
CUTLOSS_HD RowStats rowStatsOfSums(const TileRowSums& s, int normalizer, float squentropy, float invT) {
  const float cMax = s.lse.max;
  const float shift = shiftedBeforeTemperature(normalizer, squentropy, invT) ? effectiveShift(cMax) : 0.0f;
  RowStats st;
  st.zMax = (cMax - shift) * invT;
  st.lse = lseValue(LseState{st.zMax, s.lse.sum}) + shift * invT;  // the state's sum is already Σ exp(z − zMax)
  st.logSum = logf(s.lse.sum);
  st.zLabel = (s.cLabel - shift) * invT;
  st.spreadGap = s.weightedGap * invT;
  st.sumSqOthers = s.sumSqOthers;
  st.stableSum = s.stableSum;  // StableMax's: already times stablemaxSumScale(zMax) (never shifted)
  st.sumWeightedLogS = s.sumWeightedLogS;
  st.tau = 0.0f;
  st.omega = 0.0f;
  st.support = 0.0f;
  st.shift = shift;
  return st;
}

}  // namespace cutloss
