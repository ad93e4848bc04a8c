// Unit rows for margin softmax on the CPU: cuda/normalize.cu's work with a thread per range of
// rows instead of a block per row, the formulas of cuda/math/unit_rows.cuh. Each row is read
// twice (its sum, then its output), the second time from cache. The row sums are float64 in
// `omp simd` reductions: a row of 1e19s, whose squares overflow f32, keeps its norm. Inputs
// are widened to f32 (bf16 bits shifted), then to double; denormal f32 inputs and outputs are
// flushed on cutloss's threads (parallel.h), which moves a result by less than 2^-126.
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include "../../cuda/math/bf16.cuh"
#include "../../cuda/math/unit_rows.cuh"
#include "clones.h"
#include "parallel.h"
#include "rows.h"
#include "unit_rows.h"

namespace cutloss::cpu {

namespace {

CUTLOSS_CPU_INLINE float widen(float v) { return v; }
CUTLOSS_CPU_INLINE float widen(uint16_t bits) { return bf16ToF32(bits); }

template <class X>
CUTLOSS_CPU_INLINE void unitRowsOf(const X* x, int64_t D, double scale, float* y, double* norms, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    const X* xr = x + r * D;
    float* yr = y + r * D;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < D; k++) {
      const double v = widen(xr[k]);
      ss += v * v;
    }
    const double norm = sqrt(ss);
    norms[r] = norm;
    const double f = unitRowFactor(norm, scale);
#pragma omp simd
    for (int64_t k = 0; k < D; k++) yr[k] = static_cast<float>(widen(xr[k]) * f);
  }
}

template <class X, class G>
CUTLOSS_CPU_INLINE void backOf(const X* x, const G* g, int64_t D, const double* norms, double scale, float* dx, int64_t r0,
                               int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    const X* xr = x + r * D;
    const G* gr = g + r * D;
    float* out = dx + r * D;
    const double norm = norms[r];
    if (unitRowOnEps(norm)) {
#pragma omp simd
      for (int64_t k = 0; k < D; k++) out[k] = static_cast<float>(unitRowEpsGradient(widen(gr[k]), scale));
      continue;
    }
    double xg = 0.0;
#pragma omp simd reduction(+ : xg)
    for (int64_t k = 0; k < D; k++) xg += static_cast<double>(widen(xr[k])) * widen(gr[k]);
    const double inv = 1.0 / norm;
    const double dot = xg / norm;  // ŷ·g
    const double sd = scale * inv;
#pragma omp simd
    for (int64_t k = 0; k < D; k++) out[k] = static_cast<float>(unitRowGradient(widen(xr[k]), widen(gr[k]), inv, dot, sd));
  }
}

CUTLOSS_CPU_CLONES void unitRowsRange(const HostMatrix& x, double scale, float* y, double* norms, int64_t r0, int64_t r1) {
  if (x.dtype == DType::BF16) {
    unitRowsOf(static_cast<const uint16_t*>(x.data), x.cols, scale, y, norms, r0, r1);
  } else {
    unitRowsOf(static_cast<const float*>(x.data), x.cols, scale, y, norms, r0, r1);
  }
}

template <class X>
CUTLOSS_CPU_INLINE void backWithX(const X* x, const HostMatrix& g, const double* norms, double scale, float* dx, int64_t r0,
                                  int64_t r1) {
  if (g.dtype == DType::BF16) {
    backOf(x, static_cast<const uint16_t*>(g.data), g.cols, norms, scale, dx, r0, r1);
  } else {
    backOf(x, static_cast<const float*>(g.data), g.cols, norms, scale, dx, r0, r1);
  }
}

CUTLOSS_CPU_CLONES void backRange(const HostMatrix& x, const double* norms, double scale, const HostMatrix& g, float* dx,
                                  int64_t r0, int64_t r1) {
  if (x.dtype == DType::BF16) {
    backWithX(static_cast<const uint16_t*>(x.data), g, norms, scale, dx, r0, r1);
  } else {
    backWithX(static_cast<const float*>(x.data), g, norms, scale, dx, r0, r1);
  }
}

}  // namespace

void unitRows(const HostMatrix& x, double scale, float* y, double* norms) {
  if (x.rows == 0) return;
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int) { unitRowsRange(x, scale, y, norms, r0, r1); });
}

void unitRowsBackward(const HostMatrix& x, const double* norms, double scale, const HostMatrix& g, float* dx) {
  if (x.rows == 0) return;
  parallelFor(x.rows, rowGrain(x.cols), [&](int64_t r0, int64_t r1, int) { backRange(x, norms, scale, g, dx, r0, r1); });
}

}  // namespace cutloss::cpu
