// Sparse normalizers on the CPU: sparsemax (Martins & Astudillo 2016) and entmax-1.5 (Peters
// et al. 2019), forward and vector-Jacobian product, with exact thresholds as lib/js/sparse.ts
// finds them: values relative to the row max (rows of ±3e38 keep their gaps), and only the
// candidates that can be in the support sorted (within 1 of the max for sparsemax, where
// τ ≥ max − 1; within 2 for entmax-1.5, where τ ≥ −1 on the halved scale).
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include <algorithm>
#include <functional>

#include "rows.h"
#include "sparse_threshold.h"

namespace cutloss::cpu {

namespace {

/** Row r relative to its max into rel; returns the max (NaN if any element is NaN). */
CUTLOSS_CPU_INLINE float relativeRow(const float* x, int n, float scale, float* rel) {
  const float m = rowMax(x, n);
#pragma omp simd
  for (int j = 0; j < n; j++) rel[j] = (x[j] - m) * scale;
  return m;
}

/** rel = (x − max)·scale in rel; returns τ (NaN for a row whose max is not finite). */
CUTLOSS_CPU_INLINE float rowThreshold(const float* x, int n, bool entmax, float* rel, float* candidates) {
  const float m = relativeRow(x, n, entmax ? 0.5f : 1.0f, rel);
  if (!(m > negativeInfinity() && m < positiveInfinity())) return quietNaN();
  return entmax ? entmaxThresholdOfCandidates(rel, n, candidates) : sparsemaxThresholdOfCandidates(rel, n, 0.0f, candidates).tau;
}

CUTLOSS_CPU_CLONES void sparseRows(const HostMatrix& x, bool entmax, float* y, float* widened, float* candidates,
                                   int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    float* yr = y + r * n;
    const float tau = rowThreshold(rowF32(x, r, widened), n, entmax, yr, candidates);
    if (entmax) {
#pragma omp simd
      for (int j = 0; j < n; j++) {
        const float d = reluPropagatingNaN(yr[j] - tau);
        yr[j] = d * d;
      }
    } else {
#pragma omp simd
      for (int j = 0; j < n; j++) yr[j] = reluPropagatingNaN(yr[j] - tau);
    }
  }
}

/**
 * sparsemax: dx_k = [k ∈ supp]·(dy_k − mean over supp of dy);
 * entmax-1.5: dx_k = √y_k·dy_k − √y_k·Σ_j √y_j dy_j / Σ_j √y_j.
 */
CUTLOSS_CPU_CLONES void sparseBackwardRows(const HostMatrix& x, const float* dy, bool entmax, float* dx, float* widened,
                                           float* candidates, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    float* out = dx + r * n;
    const float* g = dy + r * n;
    const float tau = rowThreshold(rowF32(x, r, widened), n, entmax, out, candidates);
    if (entmax) {
      const float a = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return reluPropagatingNaN(out[j] - tau); });  // Σ √y_j
      const float b = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return reluPropagatingNaN(out[j] - tau) * g[j]; });
      const float q = b / a;
#pragma omp simd
      for (int j = 0; j < n; j++) out[j] = reluPropagatingNaN(out[j] - tau) * (g[j] - q);
    } else if (tau != tau) {  // a row without a finite distribution (+inf, NaN, all −inf): NaN, as its forward
      for (int j = 0; j < n; j++) out[j] = quietNaN();
    } else {
      const float a = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return out[j] > tau ? g[j] : 0.0f; });
      const float b = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return out[j] > tau ? 1.0f : 0.0f; });  // |supp|, exact below 2^24
      const float mean = b > 0.0f ? a / b : 0.0f;
#pragma omp simd
      for (int j = 0; j < n; j++) out[j] = out[j] > tau ? g[j] - mean : 0.0f;
    }
  }
}

void runSparse(const HostMatrix& x, bool entmax, float* y) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch widened(x.dtype == DType::BF16 ? x.cols : 0);
  Scratch candidates(x.cols);
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int w) {
    sparseRows(x, entmax, y, widened[w], candidates[w], r0, r1);
  });
}

void runSparseBackward(const HostMatrix& x, const float* dy, bool entmax, float* dx) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch widened(x.dtype == DType::BF16 ? x.cols : 0);
  Scratch candidates(x.cols);
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int w) {
    sparseBackwardRows(x, dy, entmax, dx, widened[w], candidates[w], r0, r1);
  });
}

}  // namespace

void sparsemax(const HostMatrix& x, float* y) { runSparse(x, false, y); }
void sparsemaxBackward(const HostMatrix& x, const float* dy, float* dx) { runSparseBackward(x, dy, false, dx); }
void entmax15(const HostMatrix& x, float* y) { runSparse(x, true, y); }
void entmax15Backward(const HostMatrix& x, const float* dy, float* dx) { runSparseBackward(x, dy, true, dx); }

}  // namespace cutloss::cpu
