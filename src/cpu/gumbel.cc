// Gumbel-softmax on the CPU (cuda/gumbel.cu's math): softmax(((x − max) + g)/τ), hard samples as the
// one-hot of the first argmax, and the straight-through backward. The noise of element
// e = row·cols + col comes from gumbelNoiseAt(seed, e) (Philox-4x32-10, cuda/math/philox.cuh),
// so every backend draws the same samples for the same seed. It is computed once per row
// into the output row, which the last pass overwrites. A row takes one exponential per
// element: e^(z − max) is kept in place and scaled (rows with a non-finite max excepted).
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include "rows.h"

namespace cutloss::cpu {

namespace {

CUTLOSS_CPU_INLINE void perturbedRow(const float* x, float tau, uint64_t seed, int64_t base, int n, float* z) {
  const float shift = effectiveShift(rowMax(x, n));
#pragma omp simd
  for (int j = 0; j < n; j++) z[j] = gumbelPerturbed(x[j], shift, gumbelNoiseAt(seed, base + j), tau);
}

CUTLOSS_CPU_CLONES void gumbelRows(const HostMatrix& x, float tau, bool hard, uint64_t seed, float* y, float* widened,
                                   int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    float* yr = y + r * n;
    perturbedRow(rowF32(x, r, widened), tau, seed, r * n, n, yr);
    if (hard) {
      int64_t best = 0;
      bool sawNaN = false;
      for (int j = 0; j < n; j++) {
        if (yr[j] != yr[j]) sawNaN = true;
        else if (yr[j] > yr[best] || yr[best] != yr[best]) best = j;  // the first maximum wins ties
      }
      for (int j = 0; j < n; j++) yr[j] = sawNaN ? quietNaN() : (j == best ? 1.0f : 0.0f);
    } else {
      const float m = rowMax(yr, n);
      if (!infiniteMax(m) && m == m) {  // one exponential per element, kept in place
        const auto perturbed = [&](int j) CUTLOSS_CPU_LAMBDA { return yr[j]; };
        const float invSum = 1.0f / keptExpSum(n, perturbed, m, yr, nullptr, 0);
#pragma omp simd
        for (int j = 0; j < n; j++) yr[j] *= invSum;
        continue;
      }
      const LseState s = rowLse(yr, n);
      const float logSum = logf(s.sum);
      specialize(infiniteMax(s.max), [&](auto) CUTLOSS_CPU_LAMBDA {
#pragma omp simd
        for (int j = 0; j < n; j++) yr[j] = expMinusLse(yr[j], s.max, logSum);
      });
    }
  }
}

/** Straight-through: hard and soft samples share the soft gradient (1/τ)·y ⊙ (dy − Σ dy⊙y). */
CUTLOSS_CPU_CLONES void gumbelBackwardRows(const HostMatrix& x, const float* dy, float tau, uint64_t seed, float* dx,
                                           float* widened, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    float* out = dx + r * n;
    const float* g = dy + r * n;
    perturbedRow(rowF32(x, r, widened), tau, seed, r * n, n, out);
    const float m = rowMax(out, n);
    if (!infiniteMax(m) && m == m) {  // one exponential per element: y kept in place
      const auto perturbed = [&](int j) CUTLOSS_CPU_LAMBDA { return out[j]; };
      const float invSum = 1.0f / keptExpSum(n, perturbed, m, out, nullptr, 0);
#pragma omp simd
      for (int j = 0; j < n; j++) out[j] *= invSum;
      const float dot = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return g[j] * out[j]; });
#pragma omp simd
      for (int j = 0; j < n; j++) out[j] = out[j] * (g[j] - dot) / tau;
      continue;
    }
    const LseState s = rowLse(out, n);
    const float logSum = logf(s.sum);
    specialize(infiniteMax(s.max), [&](auto) CUTLOSS_CPU_LAMBDA {
      const float dot = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return g[j] * expMinusLse(out[j], s.max, logSum); });
#pragma omp simd
      for (int j = 0; j < n; j++) out[j] = expMinusLse(out[j], s.max, logSum) * (g[j] - dot) / tau;
    });
  }
}

}  // namespace

void gumbelSoftmax(const HostMatrix& x, float tau, bool hard, uint64_t seed, float* y) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch widened(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols),
              [&](int64_t r0, int64_t r1, int w) { gumbelRows(x, tau, hard, seed, y, widened[w], r0, r1); });
}

void gumbelSoftmaxBackward(const HostMatrix& x, const float* dy, float tau, uint64_t seed, float* dx) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch widened(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols),
              [&](int64_t r0, int64_t r1, int w) { gumbelBackwardRows(x, dy, tau, seed, dx, widened[w], r0, r1); });
}

}  // namespace cutloss::cpu
