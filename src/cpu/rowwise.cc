// Row-wise normalizers on the CPU: log-sum-exp, softmax and log-softmax (temperature, mask),
// StableMax and log-StableMax, and their vector-Jacobian products (cuda/rowwise.cu's math, a
// thread per row instead of a block). A row is read once from memory; the passes after the
// first find it in cache. Outputs are formed from the row's (max, log sum) as on the GPU.
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include "rows.h"

namespace cutloss::cpu {

namespace {

const uint8_t* rowMask(const SoftmaxParams& p, int64_t row, int64_t cols) {
  if (p.mask == nullptr) return nullptr;
  return p.maskShared ? p.mask : p.mask + row * cols;
}

/**
 * body(z, unmasked, zShift) with z(j) = (x_j − shift) / T, or −inf where the row's mask is 0,
 * unmasked(j) whether j is unmasked, and zShift = shift / T: the scaled, masked row, formed on
 * the fly in every pass (never stored), in code specialized for a mask or none. Under a
 * temperature the shift is the row's max (shiftedEffectiveLogit: x/T first would round every
 * gap at |x| ≫ 1, or overflow); softmax is invariant to it, logSumExp adds zShift back.
 */
template <class Body>
CUTLOSS_CPU_INLINE void withScaledLogits(const float* x, const uint8_t* mask, float invT, int n, Body body) {
  if (mask == nullptr) {
    const float shift = invT == 1.0f ? 0.0f : effectiveShift(rowMax(x, n));
    body([=](int j) CUTLOSS_CPU_LAMBDA { return shiftedEffectiveLogit(x[j], 0.0f, invT, shift); },
         [](int) CUTLOSS_CPU_LAMBDA { return true; }, shift * invT);
  } else {
    const float shift = invT == 1.0f ? 0.0f
        : effectiveShift(rowMaxOf(n, [=](int j) CUTLOSS_CPU_LAMBDA { return mask[j] == 0 ? negativeInfinity() : x[j]; }));
    body([=](int j) CUTLOSS_CPU_LAMBDA { return mask[j] == 0 ? negativeInfinity() : shiftedEffectiveLogit(x[j], 0.0f, invT, shift); },
         [=](int j) CUTLOSS_CPU_LAMBDA { return mask[j] != 0; }, shift * invT);
  }
}

CUTLOSS_CPU_CLONES void logSumExpRows(const HostMatrix& x, const SoftmaxParams& p, float* out, float* scratch,
                                      int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    withScaledLogits(rowF32(x, r, scratch), rowMask(p, r, n), p.invTemperature, n, [&](auto z, auto, float zShift) CUTLOSS_CPU_LAMBDA {
      out[r] = lseValue(rowLseOf(n, z)) + zShift;
    });
  }
}

CUTLOSS_CPU_CLONES void softmaxRows(const HostMatrix& x, const SoftmaxParams& p, bool logForm, float* y, float* scratch,
                                    int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  const int64_t rowBytes = n * static_cast<int64_t>(x.dtype == DType::BF16 ? 2 : 4);
  for (int64_t r = r0; r < r1; r++) {
    float* yr = y + r * n;
    const void* next = r + 1 < r1 ? static_cast<const char*>(x.data) + (r + 1) * rowBytes : nullptr;
    withScaledLogits(rowF32(x, r, scratch), rowMask(p, r, n), p.invTemperature, n, [&](auto z, auto, float) CUTLOSS_CPU_LAMBDA {
      if (!logForm) {
        // one exponential per element: e^(z − max) kept in the output row, then scaled by 1/Σ
        const float m = rowMaxOf(n, z);
        if (!infiniteMax(m) && m == m) {
          const float invSum = 1.0f / keptExpSum(n, z, m, yr, next, rowBytes);
#pragma omp simd
          for (int j = 0; j < n; j++) yr[j] *= invSum;
          return;
        }
      }
      const LseState s = rowLseOf(n, z);
      if (s.max == negativeInfinity()) {  // fully masked: 0/0, as PyTorch
        for (int j = 0; j < n; j++) yr[j] = quietNaN();
        return;
      }
      const float m = s.max;
      const float logSum = logf(s.sum);
      specialize(infiniteMax(m), [&](auto) CUTLOSS_CPU_LAMBDA {
        if (logForm) {
#pragma omp simd
          for (int j = 0; j < n; j++) yr[j] = minusLse(z(j), m, logSum);
        } else {
#pragma omp simd
          for (int j = 0; j < n; j++) yr[j] = expMinusLse(z(j), m, logSum);
        }
      });
    });
  }
}

/**
 * softmax: dx = (1/T)·y ⊙ (dy − Σ dy⊙y); log-softmax: dx = (1/T)·(dy − y·Σ dy); the sums run
 * over unmasked entries, and masked ones neither give nor take gradient (their y is 0).
 */
CUTLOSS_CPU_CLONES void softmaxBackwardRows(const HostMatrix& x, const float* dy, const SoftmaxParams& p, bool logForm,
                                            float* dx, float* scratch, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  const int64_t rowBytes = n * static_cast<int64_t>(x.dtype == DType::BF16 ? 2 : 4);
  for (int64_t r = r0; r < r1; r++) {
    const float* g = dy + r * n;
    float* out = dx + r * n;
    const void* next = r + 1 < r1 ? static_cast<const char*>(x.data) + (r + 1) * rowBytes : nullptr;
    withScaledLogits(rowF32(x, r, scratch), rowMask(p, r, n), p.invTemperature, n, [&](auto z, auto unmasked, float) CUTLOSS_CPU_LAMBDA {
      if (!logForm) {
        // one exponential per element: y = e^(z − max)/Σ kept in the output row for both passes
        const float m = rowMaxOf(n, z);
        if (!infiniteMax(m) && m == m) {
          const float invSum = 1.0f / keptExpSum(n, z, m, out, next, rowBytes);
          const float dot = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return unmasked(j) ? g[j] * (out[j] * invSum) : 0.0f; });
          const float invT = p.invTemperature;
#pragma omp simd
          for (int j = 0; j < n; j++) out[j] = unmasked(j) ? (out[j] * invSum) * (g[j] - dot) * invT : 0.0f;
          return;
        }
      }
      const LseState s = rowLseOf(n, z);
      if (s.max == negativeInfinity()) {
        for (int j = 0; j < n; j++) out[j] = quietNaN();
        return;
      }
      const float m = s.max;
      const float logSum = logf(s.sum);
      const float invT = p.invTemperature;
      // a masked z is −inf: its y is 0, and unmasked() drops its dy from Σ dy
      specialize(infiniteMax(m), [&](auto) CUTLOSS_CPU_LAMBDA {
        if (logForm) {
          const float dot = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return unmasked(j) ? g[j] : 0.0f; });
#pragma omp simd
          for (int j = 0; j < n; j++) out[j] = unmasked(j) ? (g[j] - expMinusLse(z(j), m, logSum) * dot) * invT : 0.0f;
        } else {
          const float dot = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return unmasked(j) ? g[j] * expMinusLse(z(j), m, logSum) : 0.0f; });
#pragma omp simd
          for (int j = 0; j < n; j++) out[j] = unmasked(j) ? expMinusLse(z(j), m, logSum) * (g[j] - dot) * invT : 0.0f;
        }
      });
    });
  }
}

CUTLOSS_CPU_CLONES void stablemaxRows(const HostMatrix& x, bool logForm, float* y, float* scratch, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = rowF32(x, r, scratch);
    float* yr = y + r * n;
    // S·scale (S itself may overflow), NaN for a row with +inf (or all −inf), as softmax
    const float max = rowMax(xr, n);
    const float scale = stablemaxSumScale(max);
    const float sum = stablemaxRowSum(blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return stablemaxS(xr[j]) * scale; }), max);
    if (logForm) {
      const float logSum = logf(sum);
      const float logScale = logf(scale);
#pragma omp simd
      for (int j = 0; j < n; j++) yr[j] = stablemaxLogRatio(xr[j], scale, logSum, logScale);
    } else {
#pragma omp simd
      for (int j = 0; j < n; j++) yr[j] = (stablemaxS(xr[j]) * scale) / sum;
    }
  }
}

/** stablemax: dx_k = s'_k/S·(dy_k − Σ dy_j y_j); log-stablemax: dx_k = dy_k·s'_k/s_k − s'_k/S·Σ dy_j. */
CUTLOSS_CPU_CLONES void stablemaxBackwardRows(const HostMatrix& x, const float* dy, bool logForm, float* dx,
                                              float* scratch, int64_t r0, int64_t r1) {
  const int n = static_cast<int>(x.cols);
  for (int64_t r = r0; r < r1; r++) {
    const float* xr = rowF32(x, r, scratch);
    const float* g = dy + r * n;
    float* out = dx + r * n;
    // S and s both times the row's scale: S itself may overflow
    const float max = rowMax(xr, n);
    const float scale = stablemaxSumScale(max);
    const float S = stablemaxRowSum(blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return stablemaxS(xr[j]) * scale; }), max);
    // Σ dy (log) or Σ dy·s, then Σ dy·y = that / S
    const float weighted = blockedSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return logForm ? g[j] : g[j] * (stablemaxS(xr[j]) * scale); });
    const float dot = logForm ? weighted : weighted / S;
#pragma omp simd
    for (int j = 0; j < n; j++) {
      const float dsOverS = stablemaxDsOverSum(xr[j], S, scale);
      out[j] = logForm ? g[j] * stablemaxDlogS(xr[j]) - dsOverS * dot : dsOverS * (g[j] - dot);
    }
  }
}

}  // namespace

void logSumExp(const HostMatrix& x, const SoftmaxParams& p, float* lse) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch scratch(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int w) { logSumExpRows(x, p, lse, scratch[w], r0, r1); });
}

void softmax(const HostMatrix& x, const SoftmaxParams& p, bool log, float* y) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch scratch(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int w) { softmaxRows(x, p, log, y, scratch[w], r0, r1); });
}

void softmaxBackward(const HostMatrix& x, const float* dy, const SoftmaxParams& p, bool log, float* dx) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch scratch(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols),
              [&](int64_t r0, int64_t r1, int w) { softmaxBackwardRows(x, dy, p, log, dx, scratch[w], r0, r1); });
}

void stablemax(const HostMatrix& x, bool log, float* y) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch scratch(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int w) { stablemaxRows(x, log, y, scratch[w], r0, r1); });
}

void stablemaxBackward(const HostMatrix& x, const float* dy, bool log, float* dx) {
  if (x.rows == 0) return;  // an empty matrix may claim any cols: allocate no scratch for it
  Scratch scratch(x.dtype == DType::BF16 ? x.cols : 0);
  parallelFor(x.rows, rowGrain(x.cols),
              [&](int64_t r0, int64_t r1, int w) { stablemaxBackwardRows(x, dy, log, dx, scratch[w], r0, r1); });
}

}  // namespace cutloss::cpu
