// Exact sparsemax and entmax-1.5 thresholds of one row, as lib/js/sparse.ts computes them:
// sort the values that can be in the support (descending) and scan for the largest support
// whose threshold stays below its smallest member. Values come relative to the row max, so
// the max is 0 and always a candidate. Sums are in double: a scan is over candidates only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>

namespace cutloss::cpu {

struct SparsemaxRowThreshold {
  float tau;      // τ − max
  float support;  // |supp|
  float sumSqP;   // Σ_supp (z − τ)² = ‖p‖², for the sparsemax loss's Ω
};

/**
 * τ − max with Σ max(z_j − τ, 0) = 1, from z and its (finite) max: the values are taken as
 * rel_j = z_j − max (pass max = 0 for values already relative). candidates: scratch of n floats.
 */
inline SparsemaxRowThreshold sparsemaxThresholdOfCandidates(const float* z, int64_t n, float max, float* candidates) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; j++) {
    const float rel = z[j] - max;
    if (rel > -1.0f) candidates[count++] = rel;  // τ ≥ max − 1: nothing lower is in the support
  }
  std::sort(candidates, candidates + count, std::greater<float>());
  double cum = 0.0;
  double tau = static_cast<double>(candidates[0]) - 1.0;
  int64_t support = 1;
  for (int64_t k = 0; k < count; k++) {
    cum += candidates[k];
    const double t = (cum - 1.0) / static_cast<double>(k + 1);
    if (candidates[k] > t) {
      tau = t;
      support = k + 1;
    } else {
      break;  // the condition fails for every larger support once it fails
    }
  }
  double sumSqP = 0.0;
  for (int64_t k = 0; k < support; k++) sumSqP += (candidates[k] - tau) * (candidates[k] - tau);
  return SparsemaxRowThreshold{static_cast<float>(tau), static_cast<float>(support), static_cast<float>(sumSqP)};
}

/**
 * entmax-1.5's τ for u = (x − max)/2: p_j = max(u_j − τ, 0)², Σ p = 1. For a support of the k
 * largest, τ is the smaller root of k τ² − 2τ Σu + Σu² − 1 = 0; τ ≥ −1, so u ≤ −1 never counts.
 */
inline float entmaxThresholdOfCandidates(const float* u, int64_t n, float* candidates) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; j++) {
    if (u[j] > -1.0f) candidates[count++] = u[j];
  }
  std::sort(candidates, candidates + count, std::greater<float>());
  double cum = 0.0, cumSq = 0.0;
  double tau = std::nan("");
  for (int64_t k = 1; k <= count; k++) {
    const double uk = candidates[k - 1];
    cum += uk;
    cumSq += uk * uk;
    const double mean = cum / static_cast<double>(k);
    const double delta = std::max((1.0 - (cumSq / static_cast<double>(k) - mean * mean) * k) / static_cast<double>(k), 0.0);
    const double t = mean - std::sqrt(delta);
    if (t <= uk) {
      tau = t;  // holds for a prefix of k: the support
    } else {
      break;
    }
  }
  return static_cast<float>(tau);
}

}  // namespace cutloss::cpu
