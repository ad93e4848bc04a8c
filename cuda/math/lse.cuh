// Online log-sum-exp (Milakov & Gimelshein 2018), mirroring lib/js/math.ts. A partial
// reduction is (max, sum of exp(x − max)); merging rescales both sums to the larger max, so
// threads, warps and tiles can be reduced in any order.
// The optional invT keeps a state of logits before a temperature, (max x, Σ exp((x − max)·invT)):
// the lse of x·invT without forming x·invT, whose rounding would cost |x·invT|·2^-24 of every
// gap (or overflow) where |x| ≫ 1. invT = 1 is the plain state, bit for bit.
#pragma once

#include "scalar.cuh"

namespace cutloss {

// A plain aggregate (no member initializers), so it may live in __shared__ memory.
struct LseState {
  float max;
  float sum;
};

CUTLOSS_HD LseState lseEmpty() { return LseState{negativeInfinity(), 0.0f}; }

/** sum·exp((from − to)·invT), with an empty partial (sum 0, max −inf) staying 0 instead of NaN. */
CUTLOSS_HD float lseRescale(float sum, float from, float to, float invT = 1.0f) {
  return sum == 0.0f ? 0.0f : sum * expf((from - to) * invT);
}

#if !defined(CUTLOSS_HAS_EXP_NON_POSITIVE)
/**
 * e^x for an x shifted by a max at least as large (x ≤ 0 up to rounding, or NaN). A build may
 * supply a cheaper one for that range (src/cpu/cpu_math.h).
 */
CUTLOSS_HD float expNonPositive(float x) { return expf(x); }
#endif

/** exp((x − max)·invT), defined for the infinite maxima a row of ±inf produces. */
CUTLOSS_HD float expShifted(float x, float max, float invT = 1.0f) {
  if (max == positiveInfinity() || max == negativeInfinity()) return x == max ? 1.0f : 0.0f;
  return expNonPositive((x - max) * invT);
}

CUTLOSS_HD LseState mergeLse(LseState a, LseState b, float invT = 1.0f) {
  const float max = maxPropagatingNaN(a.max, b.max);
  if (max == negativeInfinity()) return LseState{max, 0.0f};
  return LseState{max, lseRescale(a.sum, a.max, max, invT) + lseRescale(b.sum, b.max, max, invT)};
}

/**
 * One element into a running state: mergeLse(s, {x, 1}) with a single exp (the online
 * recurrence). The sums may differ from mergeLse's only where the max is infinite, where
 * lseValue does not read them.
 */
CUTLOSS_HD LseState lsePush(LseState s, float x, float invT = 1.0f) {
  if (x > s.max) return LseState{x, lseRescale(s.sum, s.max, x, invT) + 1.0f};
  if (x <= s.max) return LseState{s.max, s.sum + expShifted(x, s.max, invT)};
  return LseState{quietNaN(), quietNaN()};  // x or the max is NaN
}

/** log-sum-exp of a finished state: −inf for an empty row, ±inf passes through. */
CUTLOSS_HD float lseValue(LseState s) {
  if (s.max == positiveInfinity() || s.max == negativeInfinity()) return s.max;
  return s.max + logf(s.sum);
}

// x − lse and exp(x − lse) for a row's lse = max + log(sum), with the max cancelled first:
// (x − max) − log(sum). In fp32 the rounding of lse itself would cost |lse|·2^-24 (5e-4 at
// logits of 1e4); this keeps full precision. logSum = log(sum) is the row's constant.

// A row whose max is +inf (an infinite logit) or −inf (every entry −inf or masked) has no
// finite distribution: both give NaN for the whole row, as PyTorch (inf − inf, 0/0).

/** x − lseValue(s), given logSum = log(s.sum). */
CUTLOSS_HD float minusLse(float x, float max, float logSum) {
  if (max == positiveInfinity() || max == negativeInfinity()) return quietNaN();
  return (x - max) - logSum;
}

/** expShifted(x, lseValue(s)), given logSum = log(s.sum). */
CUTLOSS_HD float expMinusLse(float x, float max, float logSum) {
  if (max == positiveInfinity() || max == negativeInfinity()) return quietNaN();
  return expNonPositive((x - max) - logSum);
}

}  // namespace cutloss
