// Sparse normalizers: sparsemax (Martins & Astudillo 2016) and entmax-1.5 (Peters et al.
// 2019), forward and vector-Jacobian product. The exact thresholds come from passes over the
// row that sits in global memory (Michelot's fixed point for sparsemax; bisection, then the
// closed form on the verified support, for entmax-1.5; see common.cuh), never from sorting
// it, so long rows need no shared-memory staging. Values are taken relative to the row max
// as lib/js/sparse.ts does, which keeps rows of ±3e38 exact.
#include "common.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- kernels

/** The row's max, NaN if any element is NaN. */
__device__ float rowMax(const MatrixRef& x, int64_t base) {
  float m = negativeInfinity();
  for (int j = threadIdx.x; j < static_cast<int>(x.cols); j += blockDim.x) {
    m = maxPropagatingNaN(m, loadElement(x.data, x.dtype, base + j));
  }
  return blockMax(m);
}

__global__ void __launch_bounds__(kMaxRowThreads) sparsemaxKernel(MatrixRef x, MutMatrixRef y) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;  // int64: rows·cols may exceed 2^31
    const float m = rowMax(x, base);
    const auto relative = [&](int j) { return loadElement(x.data, x.dtype, base + j) - m; };
    const float tau = sparsemaxThresholdOfRow(relative, cols, m).tau;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      storeElement(y.data, y.dtype, base + j, reluPropagatingNaN(relative(j) - tau));
    }
  }
}

/** dx_k = [k ∈ supp]·(dy_k − mean over supp of dy). */
__global__ void __launch_bounds__(kMaxRowThreads) sparsemaxBackwardKernel(MatrixRef x, MatrixRef dy, MutMatrixRef dx) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    const float m = rowMax(x, base);
    const auto relative = [&](int j) { return loadElement(x.data, x.dtype, base + j) - m; };
    const float tau = sparsemaxThresholdOfRow(relative, cols, m).tau;
    if (isNaN(tau)) {  // uniform: a row without a finite distribution (+inf, NaN, all −inf) has a NaN gradient
      for (int j = threadIdx.x; j < cols; j += blockDim.x) storeElement(dx.data, dx.dtype, base + j, quietNaN());
      continue;
    }
    FloatPair s{0.0f, 0.0f};  // Σ_supp dy, |supp|
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      if (relative(j) > tau) {
        s.a += loadElement(dy.data, dy.dtype, base + j);
        s.b += 1.0f;
      }
    }
    s = blockSum2(s);
    const float mean = s.b > 0.0f ? s.a / s.b : 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = relative(j) > tau ? loadElement(dy.data, dy.dtype, base + j) - mean : 0.0f;
      storeElement(dx.data, dx.dtype, base + j, v);
    }
  }
}

__global__ void __launch_bounds__(kMaxRowThreads) entmax15Kernel(MatrixRef x, MutMatrixRef y) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    const float m = rowMax(x, base);
    const auto half = [&](int j) { return (loadElement(x.data, x.dtype, base + j) - m) * 0.5f; };
    const float tau = entmaxThresholdOfRow(half, cols, m);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = reluPropagatingNaN(half(j) - tau);
      storeElement(y.data, y.dtype, base + j, d * d);
    }
  }
}

/** dx_k = √y_k·dy_k − √y_k·Σ_j √y_j dy_j / Σ_j √y_j. */
__global__ void __launch_bounds__(kMaxRowThreads) entmax15BackwardKernel(MatrixRef x, MatrixRef dy, MutMatrixRef dx) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    const float m = rowMax(x, base);
    const auto half = [&](int j) { return (loadElement(x.data, x.dtype, base + j) - m) * 0.5f; };
    const float tau = entmaxThresholdOfRow(half, cols, m);
    FloatPair s{0.0f, 0.0f};  // Σ √y, Σ √y·dy
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float root = reluPropagatingNaN(half(j) - tau);
      s.a += root;
      s.b += root * loadElement(dy.data, dy.dtype, base + j);
    }
    s = blockSum2(s);
    const float q = s.b / s.a;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float root = reluPropagatingNaN(half(j) - tau);
      storeElement(dx.data, dx.dtype, base + j, root * (loadElement(dy.data, dy.dtype, base + j) - q));
    }
  }
}

// ---------------------------------------------------------------- launchers

void sparsemax(const MatrixRef& x, const MutMatrixRef& y, Stream s) {
  if (!checkRowwiseShapes("sparsemax", x, {{"y", y}})) return;
  CUTLOSS_RUN("sparsemax", sparsemaxKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, y);
}

void sparsemaxBackward(const MatrixRef& x, const MatrixRef& dy, const MutMatrixRef& dx, Stream s) {
  if (!checkRowwiseShapes("sparsemaxBackward", x, {{"dy", dy}, {"dx", dx}})) return;
  CUTLOSS_RUN("sparsemaxBackward", sparsemaxBackwardKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, dy, dx);
}

void entmax15(const MatrixRef& x, const MutMatrixRef& y, Stream s) {
  if (!checkRowwiseShapes("entmax15", x, {{"y", y}})) return;
  CUTLOSS_RUN("entmax15", entmax15Kernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, y);
}

void entmax15Backward(const MatrixRef& x, const MatrixRef& dy, const MutMatrixRef& dx, Stream s) {
  if (!checkRowwiseShapes("entmax15Backward", x, {{"dy", dy}, {"dx", dx}})) return;
  CUTLOSS_RUN("entmax15Backward", entmax15BackwardKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, dy, dx);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
