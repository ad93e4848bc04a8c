// The sparsemax threshold of a row whose logits are never stored (the fused linear loss's
// crowded rows), found by passes over the vocabulary, mirroring lib/js/math.ts. Values are
// relative to the row max, so τ (Σ max(z − τ, 0) = 1) lies in [−1, 0). A pass at a trial x
// returns c = |{z > x}|, s = Σ_{z>x} z and q = Σ_{z>x} (z − x)²; this step picks the next x.
//
// Michelot's step t = (s − 1)/c is a lower bound of τ from any x (Σ_{z>x} (z − t) = 1), equal
// to τ when {z > x} is the support, and x lies above τ exactly when t < x. The search takes up
// to kSparsemaxMichelotPasses Michelot passes (x = the lower bound; most rows end here, when a
// pass sees the same set again), then bisects the bracket [lower bound, hi) in float32 ORDER
// (the int pattern), starting from hi = −1/c₀ (c₀ = |{z > −1}| ≥ |supp|, and τ ≤ −1/|supp|).
// The bracket holds at most 31·2^23 + 1 < 2^28 floats (|τ| ≥ 2^-31 since V < 2^31), so after
// 28 probes no float32 lies strictly between its ends; earlier, the pass counts can show that
// no logit does (|{z > x}| = |{z > hi}|). Either way {z > x} is then the support, and one last
// pass at that x gives τ = (s − 1)/c exactly, the formula Michelot's fixed point uses, with q
// moved from x to τ (they differ by under one float32 step). At most 8 + 28 + 1 = 37 passes
// for any V; a loop that reaches kSparsemaxPassLimit unfinished has a bug and says so.
#pragma once

#include <stdint.h>

#include "scalar.cuh"

namespace cutloss {

constexpr int kSparsemaxMichelotPasses = 8;
constexpr int kSparsemaxPassLimit = kSparsemaxMichelotPasses + 28 + 1;

enum SparsemaxSearchPhase : int32_t { kSearchDone = 0, kSearchRunning = 1, kSearchFinal = 2 };

/** One row's search; every value relative to the row max. */
struct SparsemaxSearch {
  float tau;        // a lower bound of τ; τ itself once done
  float hi;         // a strict upper bound of τ
  float x;          // where the next pass evaluates
  float sumSqP;     // once done: Σ_{supp} (z − τ)²
  int32_t gen;      // |{z > x}| of the pass whose Michelot step gave tau (−1: none); once done, |supp|
  int32_t countHi;  // |{z > hi}|, or −1 while hi is the bound −1/c₀ no pass evaluated
  int32_t passes;
  int32_t phase;    // SparsemaxSearchPhase
};

/** A float's position in the order of floats, as an int (−0 and +0 share 0). */
CUTLOSS_HD int32_t floatOrder(float x) {
  const uint32_t b = floatBits(x);
  return (b & 0x80000000u) != 0 ? -static_cast<int32_t>(b & 0x7fffffffu) : static_cast<int32_t>(b);
}

CUTLOSS_HD float orderedFloat(int32_t o) {
  return o >= 0 ? floatFromBits(static_cast<uint32_t>(o)) : -floatFromBits(static_cast<uint32_t>(-o));
}

CUTLOSS_HD SparsemaxSearch sparsemaxSearchStart() {
  // τ ≥ −1: the max alone has mass 1 there. {z > 0} is empty.
  return SparsemaxSearch{-1.0f, 0.0f, -1.0f, 0.0f, -1, 0, 0, kSearchRunning};
}

/** Takes the sums of the pass at st.x (c ≥ 1: the max lies above every x < 0) and picks the next x. */
CUTLOSS_HD void sparsemaxSearchStep(SparsemaxSearch& st, int32_t c, float s, float q) {
  st.passes += 1;
  const float x = st.x;
  const float t = (s - 1.0f) / static_cast<float>(c);
  const bool fixedPoint = x == st.tau && c == st.gen;  // Michelot: the same set again, τ = x
  if (st.phase == kSearchFinal || fixedPoint) {
    // kept in [x, hi), where {z > τ} is the set counted (rounding could leave it)
    const float below = orderedFloat(floatOrder(st.hi) - 1);
    st.tau = fixedPoint ? x : (t >= st.hi ? below : (t < x ? x : t));
    const float d = st.tau - x;  // under one float32 step: no cancellation
    st.sumSqP = q - 2.0f * d * (s - static_cast<float>(c) * x) + static_cast<float>(c) * d * d;
    st.gen = c;
    st.phase = kSearchDone;
    return;
  }
  if (st.passes == 1) {  // x = −1: τ ≤ −1/|supp| ≤ −1/c, one float32 step up keeps it strict
    st.hi = orderedFloat(floatOrder(static_cast<float>(-1.0 / static_cast<double>(c))) + 1);
    st.countHi = -1;
  }
  if (t < x && x < st.hi) {  // x lies above τ
    st.hi = x;
    st.countHi = c;
  }
  if (x == st.tau) {  // a Michelot pass; τ never falls back (rounding cannot lower it)
    st.gen = c;
    st.tau = maxPropagatingNaN(st.tau, t);
  } else if (t > st.tau) {
    st.tau = t;
    st.gen = t >= x ? c : -1;  // only a set from below the new tau can show it is the support
  }
  const float below = orderedFloat(floatOrder(st.hi) - 1);
  const float lo = st.tau < below ? st.tau : below;
  const int32_t gap = floatOrder(st.hi) - floatOrder(lo);
  // No logit in (the pass that gave tau, hi], or no float32 strictly inside [lo, hi): either
  // way {z > lo} is the support.
  if ((st.countHi > 0 && st.gen == st.countHi) || gap <= 1) {
    st.phase = kSearchFinal;
    st.x = lo;
  } else if (st.passes < kSparsemaxMichelotPasses) {
    st.x = st.tau;
  } else {
    st.x = orderedFloat(floatOrder(lo) + gap / 2);
  }
}

}  // namespace cutloss
