// Unit rows for margin softmax (lib/cosine.ts, README "Margin softmax"): y = scale·x / max(‖x‖, 1e-12)
// (PyTorch's F.normalize, times scale) with each row's norm, and the gradient back through it,
// dx = scale·(g − ŷ(ŷ·g))/‖x‖ (scale·g/1e-12 on F.normalize's eps branch, ‖x‖ < 1e-12). One block per
// row; the sums are float64 (a row of 1e20s or 1e-20s keeps its norm) reduced in shared memory
// in a fixed order, so results do not depend on scheduling. O(R·D), memory-bound. The per-row
// formulas are cuda/math/unit_rows.cuh's, shared with the CPU backend (src/cpu/unit_rows.cc).
#include "common.cuh"
#include "math/unit_rows.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

constexpr int kNormThreads = 128;

/** Σ over the block of each thread's v, the same order every time; every thread gets the sum. */
__device__ __forceinline__ double blockSum(double v, double* lanes) {
  lanes[threadIdx.x] = v;
  __syncthreads();
  for (int half = kNormThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) lanes[threadIdx.x] += lanes[threadIdx.x + half];
    __syncthreads();
  }
  const double sum = lanes[0];
  __syncthreads();  // lanes is free again for the caller's next sum
  return sum;
}

__global__ void __launch_bounds__(kNormThreads) unitRowsKernel(MatrixRef x, float scale, MutMatrixRef y, float* norms) {
  __shared__ double lanes[kNormThreads];
  const int64_t r = blockIdx.x;
  const int64_t D = x.cols;
  double ss = 0.0;
  for (int64_t k = threadIdx.x; k < D; k += kNormThreads) {
    const double v = loadElement(x.data, x.dtype, r * D + k);
    ss += v * v;
  }
  const double norm = sqrt(blockSum(ss, lanes));
  const double f = unitRowFactor(norm, scale);
  for (int64_t k = threadIdx.x; k < D; k += kNormThreads) {
    storeElement(y.data, y.dtype, r * D + k, static_cast<float>(loadElement(x.data, x.dtype, r * D + k) * f));
  }
  if (threadIdx.x == 0) norms[r] = static_cast<float>(norm);
}

__global__ void __launch_bounds__(kNormThreads)
    unitRowsBackwardKernel(MatrixRef x, const float* norms, float scale, MatrixRef g, MutMatrixRef dx) {
  __shared__ double lanes[kNormThreads];
  const int64_t r = blockIdx.x;
  const int64_t D = x.cols;
  const double norm = norms[r];
  if (unitRowOnEps(norm)) {  // y = x/eps: no projection (uniform: one row per block)
    for (int64_t k = threadIdx.x; k < D; k += kNormThreads) {
      storeElement(dx.data, dx.dtype, r * D + k, static_cast<float>(unitRowEpsGradient(loadElement(g.data, g.dtype, r * D + k), scale)));
    }
    return;
  }
  double xg = 0.0;
  for (int64_t k = threadIdx.x; k < D; k += kNormThreads) {
    xg += static_cast<double>(loadElement(x.data, x.dtype, r * D + k)) * loadElement(g.data, g.dtype, r * D + k);
  }
  const double inv = 1.0 / norm;
  const double dot = blockSum(xg, lanes) / norm;  // ŷ·g
  const double sd = scale * inv;
  for (int64_t k = threadIdx.x; k < D; k += kNormThreads) {
    const double v = unitRowGradient(loadElement(x.data, x.dtype, r * D + k), loadElement(g.data, g.dtype, r * D + k), inv, dot, sd);
    storeElement(dx.data, dx.dtype, r * D + k, static_cast<float>(v));
  }
}

// ---------------------------------------------------------------- launchers

void unitRows(const MatrixRef& x, float scale, const MutMatrixRef& y, float* norms, Stream s) {
  checkSameShape("unitRows", "y", x.rows, x.cols, y.rows, y.cols);
  if (x.rows == 0) return;
  CUTLOSS_RUN("unitRows", unitRowsKernel, static_cast<unsigned>(x.rows), kNormThreads, 0, s, x, scale, y, norms);
}

void unitRowsBackward(const MatrixRef& x, const float* norms, float scale, const MatrixRef& g, const MutMatrixRef& dx,
                      Stream s) {
  checkSameShape("unitRowsBackward", "g", x.rows, x.cols, g.rows, g.cols);
  checkSameShape("unitRowsBackward", "dx", x.rows, x.cols, dx.rows, dx.cols);
  if (x.rows == 0) return;
  CUTLOSS_RUN("unitRowsBackward", unitRowsBackwardKernel, static_cast<unsigned>(x.rows), kNormThreads, 0, s, x, norms,
              scale, g, dx);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
