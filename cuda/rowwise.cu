// Row-wise normalizers: log-sum-exp, softmax and log-softmax (temperature, mask), StableMax
// and log-StableMax, and their vector-Jacobian products. One block per row: the first pass
// reduces the row to its online log-sum-exp state (or StableMax's Σ s(x)) held in registers,
// so no row is ever staged in shared memory and rows of any length work; the last pass
// writes the outputs. Backward kernels fuse the row's dot product Σ dy·y into one more pass
// rather than writing y out and reading it back.
#include "common.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- kernels

/** Masked elements (mask byte 0) read as −inf; the mask is per row or one row shared by all. */
__device__ __forceinline__ bool isMasked(const SoftmaxParams& p, int64_t row, int64_t cols, int j) {
  if (p.mask == nullptr) return false;
  const int64_t offset = p.maskShared ? 0 : row * cols;  // int64: rows·cols may exceed 2^31
  return p.mask[offset + j] == 0;
}

/**
 * What a row's logits are shifted by before ÷ T: under a temperature its max over unmasked
 * entries (shiftedEffectiveLogit: x/T first would round every gap at |x| ≫ 1, or overflow;
 * softmax is invariant to it), else 0 and no extra pass.
 */
__device__ float rowShift(const MatrixRef& x, const SoftmaxParams& p, int64_t row) {
  if (p.invTemperature == 1.0f) return 0.0f;  // uniform across the block
  float max = negativeInfinity();
  for (int j = threadIdx.x; j < static_cast<int>(x.cols); j += blockDim.x) {
    if (!isMasked(p, row, x.cols, j)) max = maxPropagatingNaN(max, loadElement(x.data, x.dtype, row * x.cols + j));
  }
  return effectiveShift(blockMax(max));
}

/** z_j = (x_j − shift) / T, or −inf where masked. */
__device__ __forceinline__ float scaledLogit(const MatrixRef& x, const SoftmaxParams& p, int64_t row, int j, float shift) {
  if (isMasked(p, row, x.cols, j)) return negativeInfinity();
  return shiftedEffectiveLogit(loadElement(x.data, x.dtype, row * x.cols + j), 0.0f, p.invTemperature, shift);
}

/** The row's online log-sum-exp state over z: per-thread states merged across the block. */
__device__ LseState rowLseState(const MatrixRef& x, const SoftmaxParams& p, int64_t row, float shift) {
  LseState s = lseEmpty();
  for (int j = threadIdx.x; j < static_cast<int>(x.cols); j += blockDim.x) s = lsePush(s, scaledLogit(x, p, row, j, shift));
  return blockLse(s);
}

__global__ void __launch_bounds__(kMaxRowThreads) logSumExpKernel(MatrixRef x, SoftmaxParams p, float* out) {
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const float shift = rowShift(x, p, row);
    const float lse = lseValue(rowLseState(x, p, row, shift)) + shift * p.invTemperature;
    if (threadIdx.x == 0) out[row] = lse;
  }
}

// Outputs are formed from the row's (max, log sum) rather than its rounded lse: see minusLse.

__global__ void __launch_bounds__(kMaxRowThreads) softmaxKernel(MatrixRef x, SoftmaxParams p, bool logForm, MutMatrixRef y) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const float shift = rowShift(x, p, row);
    const LseState s = rowLseState(x, p, row, shift);
    const float logSum = logf(s.sum);
    const bool fullyMasked = s.max == negativeInfinity();  // 0/0, as PyTorch: NaN
    const int64_t base = row * x.cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float z = scaledLogit(x, p, row, j, shift);
      float v;
      if (fullyMasked) {
        v = quietNaN();
      } else {
        v = logForm ? minusLse(z, s.max, logSum) : expMinusLse(z, s.max, logSum);
      }
      storeElement(y.data, y.dtype, base + j, v);
    }
  }
}

/** softmax: dx = (1/T)·y ⊙ (dy − Σ dy⊙y); log-softmax: dx = (1/T)·(dy − y·Σ dy); sums over unmasked entries. */
__global__ void __launch_bounds__(kMaxRowThreads)
    softmaxBackwardKernel(MatrixRef x, MatrixRef dy, SoftmaxParams p, bool logForm, MutMatrixRef dx) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const float shift = rowShift(x, p, row);
    const LseState s = rowLseState(x, p, row, shift);
    const float logSum = logf(s.sum);
    const bool fullyMasked = s.max == negativeInfinity();
    const int64_t base = row * x.cols;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      if (isMasked(p, row, x.cols, j)) continue;  // a masked output is constant: its dy does not flow back
      const float g = loadElement(dy.data, dy.dtype, base + j);
      dot += logForm ? g : g * expMinusLse(scaledLogit(x, p, row, j, shift), s.max, logSum);
    }
    dot = blockSum(dot);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      float v;
      if (fullyMasked) {
        v = quietNaN();
      } else if (isMasked(p, row, x.cols, j)) {
        v = 0.0f;
      } else {
        const float yj = expMinusLse(scaledLogit(x, p, row, j, shift), s.max, logSum);
        const float g = loadElement(dy.data, dy.dtype, base + j);
        v = (logForm ? g - yj * dot : yj * (g - dot)) * p.invTemperature;
      }
      storeElement(dx.data, dx.dtype, base + j, v);
    }
  }
}

/**
 * StableMax's row sums scaled by the row's stablemaxSumScale: (Σ s·scale, Σ dy·s·scale), or
 * (Σ s·scale, Σ dy) in log form; without dy the second is 0. The kernels first sum unscaled in
 * the pass that finds the max; scaling that result by the power of two is the same sum unless
 * it overflowed or went subnormal, and only such rows are summed here again.
 */
__device__ FloatPair scaledStablemaxSums(const MatrixRef& x, const MatrixRef* dy, bool logForm, int64_t row,
                                         FloatPair unscaled, float scale) {
  // uniform: every thread holds the reduced sums
  if (unscaled.a < 1e30f && unscaled.a > 1e-30f && (logForm || fabsf(unscaled.b) < 1e30f)) {
    return FloatPair{unscaled.a * scale, logForm ? unscaled.b : unscaled.b * scale};
  }
  const int64_t base = row * x.cols;
  FloatPair sums{0.0f, 0.0f};
  for (int j = threadIdx.x; j < static_cast<int>(x.cols); j += blockDim.x) {
    const float s = stablemaxS(loadElement(x.data, x.dtype, base + j)) * scale;
    sums.a += s;
    if (dy != nullptr) {
      const float g = loadElement(dy->data, dy->dtype, base + j);
      sums.b += logForm ? g : g * s;
    }
  }
  return blockSum2(sums);
}

__global__ void __launch_bounds__(kMaxRowThreads) stablemaxKernel(MatrixRef x, bool logForm, MutMatrixRef y) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    float partial = 0.0f;
    float max = negativeInfinity();
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = loadElement(x.data, x.dtype, base + j);
      partial += stablemaxS(v);
      max = maxPropagatingNaN(max, v);
    }
    partial = blockSum(partial);
    max = blockMax(max);
    const float scale = stablemaxSumScale(max);  // S itself may overflow float32; S·scale cannot
    const FloatPair sums = scaledStablemaxSums(x, nullptr, false, row, FloatPair{partial, 0.0f}, scale);
    const float sum = stablemaxRowSum(sums.a, max);  // NaN for +inf or all −inf, as softmax
    const float logSum = logf(sum);
    const float logScale = logf(scale);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = loadElement(x.data, x.dtype, base + j);
      storeElement(y.data, y.dtype, base + j,
                   logForm ? stablemaxLogRatio(v, scale, logSum, logScale) : (stablemaxS(v) * scale) / sum);
    }
  }
}

/** stablemax: dx_k = s'_k/S·(dy_k − Σ dy_j y_j); log-stablemax: dx_k = dy_k·s'_k/s_k − s'_k/S·Σ dy_j. */
__global__ void __launch_bounds__(kMaxRowThreads)
    stablemaxBackwardKernel(MatrixRef x, MatrixRef dy, bool logForm, MutMatrixRef dx) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    // S and Σ dy (log) or Σ dy·s (then Σ dy·y = that / S), in one pass
    FloatPair sums{0.0f, 0.0f};
    float max = negativeInfinity();
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = loadElement(x.data, x.dtype, base + j);
      const float s = stablemaxS(v);
      const float g = loadElement(dy.data, dy.dtype, base + j);
      sums.a += s;
      sums.b += logForm ? g : g * s;
      max = maxPropagatingNaN(max, v);
    }
    sums = blockSum2(sums);
    max = blockMax(max);
    const float scale = stablemaxSumScale(max);  // S and s both times the row's scale: S may overflow
    sums = scaledStablemaxSums(x, &dy, logForm, row, sums, scale);
    const float S = stablemaxRowSum(sums.a, max);  // NaN for +inf or all −inf, as softmax
    const float dot = logForm ? sums.b : sums.b / S;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float v = loadElement(x.data, x.dtype, base + j);
      const float g = loadElement(dy.data, dy.dtype, base + j);
      const float dsOverS = stablemaxDsOverSum(v, S, scale);
      storeElement(dx.data, dx.dtype, base + j, logForm ? g * stablemaxDlogS(v) - dsOverS * dot : dsOverS * (g - dot));
    }
  }
}

// ---------------------------------------------------------------- launchers

void logSumExp(const MatrixRef& x, const SoftmaxParams& p, float* out, Stream s) {
  if (!checkRowwiseShapes("logSumExp", x, {})) return;
  CUTLOSS_RUN("logSumExp", logSumExpKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, p, out);
}

void softmax(const MatrixRef& x, const SoftmaxParams& p, bool log, const MutMatrixRef& y, Stream s) {
  const char* op = log ? "logSoftmax" : "softmax";
  if (!checkRowwiseShapes(op, x, {{"y", y}})) return;
  CUTLOSS_RUN(op, softmaxKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, p, log, y);
}

void softmaxBackward(const MatrixRef& x, const MatrixRef& dy, const SoftmaxParams& p, bool log, const MutMatrixRef& dx,
                     Stream s) {
  const char* op = log ? "logSoftmaxBackward" : "softmaxBackward";
  if (!checkRowwiseShapes(op, x, {{"dy", dy}, {"dx", dx}})) return;
  CUTLOSS_RUN(op, softmaxBackwardKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, dy, p, log, dx);
}

void stablemax(const MatrixRef& x, bool log, const MutMatrixRef& y, Stream s) {
  const char* op = log ? "logStablemax" : "stablemax";
  if (!checkRowwiseShapes(op, x, {{"y", y}})) return;
  CUTLOSS_RUN(op, stablemaxKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, log, y);
}

void stablemaxBackward(const MatrixRef& x, const MatrixRef& dy, bool log, const MutMatrixRef& dx, Stream s) {
  const char* op = log ? "logStablemaxBackward" : "stablemaxBackward";
  if (!checkRowwiseShapes(op, x, {{"dy", dy}, {"dx", dx}})) return;
  CUTLOSS_RUN(op, stablemaxBackwardKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, dy, log, dx);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
