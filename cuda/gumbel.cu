// Gumbel-softmax (Jang et al. 2017): softmax((x + g)/τ), formed as ((x − max) + g)/τ, hard samples as the one-hot of the
// argmax, and the straight-through backward. The noise g of element e = row·cols + col is
// recomputed from (seed, e) wherever it is needed (counter-based Philox, cuda/math/philox.cuh),
// so it is never stored and every backend draws the same samples for the same seed.
#include "common.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- kernels

/** ((x_e − shift) + g_e)/τ for flat element e (int64: e = row·cols + col may exceed 2^31). */
__device__ __forceinline__ float perturbedLogit(const MatrixRef& x, float tau, uint64_t seed, int64_t e, float shift) {
  return gumbelPerturbed(loadElement(x.data, x.dtype, e), shift, gumbelNoiseAt(seed, e), tau);
}

/** The row's shift (gumbelPerturbed): its largest finite x, from one reduction. */
__device__ __forceinline__ float perturbShift(const MatrixRef& x, int64_t base) {
  float max = negativeInfinity();
  for (int j = threadIdx.x; j < static_cast<int>(x.cols); j += blockDim.x) {
    max = maxPropagatingNaN(max, loadElement(x.data, x.dtype, base + j));
  }
  return effectiveShift(blockMax(max));
}

/** The first maximum of a row, and whether any value was NaN (then no argmax exists). */
struct ArgMax {
  float value;
  int index;
  int sawNaN;
};
__device__ __forceinline__ ArgMax shuffleXor(ArgMax v, int lane) {
  return ArgMax{shuffleXor(v.value, lane), shuffleXor(v.index, lane), shuffleXor(v.sawNaN, lane)};
}
struct CombineArgMax {
  __device__ __forceinline__ ArgMax operator()(ArgMax a, ArgMax b) const {
    const bool takeB = b.value > a.value || (b.value == a.value && b.index < a.index);  // the first maximum wins ties
    ArgMax r = takeB ? b : a;
    r.sawNaN = a.sawNaN | b.sawNaN;
    return r;
  }
};

__global__ void __launch_bounds__(kMaxRowThreads)
    gumbelSoftmaxKernel(MatrixRef x, float tau, bool hard, uint64_t seed, MutMatrixRef y) {
  const int cols = static_cast<int>(x.cols);
  const ArgMax none{negativeInfinity(), INT32_MAX, 0};
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    const float shift = perturbShift(x, base);
    if (hard) {  // uniform across the grid
      ArgMax best = none;
      for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float v = perturbedLogit(x, tau, seed, base + j, shift);
        best = CombineArgMax()(best, ArgMax{v, j, isNaN(v) ? 1 : 0});
      }
      best = blockAllReduce(best, CombineArgMax(), none);
      for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        storeElement(y.data, y.dtype, base + j, best.sawNaN ? quietNaN() : (j == best.index ? 1.0f : 0.0f));
      }
    } else {
      LseState s = lseEmpty();
      for (int j = threadIdx.x; j < cols; j += blockDim.x) s = lsePush(s, perturbedLogit(x, tau, seed, base + j, shift));
      s = blockLse(s);
      const float logSum = logf(s.sum);
      for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        storeElement(y.data, y.dtype, base + j, expMinusLse(perturbedLogit(x, tau, seed, base + j, shift), s.max, logSum));
      }
    }
  }
}

/** Straight-through: hard and soft samples share the soft gradient (1/τ)·y ⊙ (dy − Σ dy⊙y). */
__global__ void __launch_bounds__(kMaxRowThreads)
    gumbelSoftmaxBackwardKernel(MatrixRef x, MatrixRef dy, float tau, uint64_t seed, MutMatrixRef dx) {
  const int cols = static_cast<int>(x.cols);
  for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
    const int64_t base = row * x.cols;
    const float shift = perturbShift(x, base);
    LseState s = lseEmpty();
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s = lsePush(s, perturbedLogit(x, tau, seed, base + j, shift));
    s = blockLse(s);
    const float logSum = logf(s.sum);
    float dot = 0.0f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      dot += loadElement(dy.data, dy.dtype, base + j) * expMinusLse(perturbedLogit(x, tau, seed, base + j, shift), s.max, logSum);
    }
    dot = blockSum(dot);
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float yj = expMinusLse(perturbedLogit(x, tau, seed, base + j, shift), s.max, logSum);
      storeElement(dx.data, dx.dtype, base + j, yj * (loadElement(dy.data, dy.dtype, base + j) - dot) / tau);
    }
  }
}

// ---------------------------------------------------------------- launchers

void gumbelSoftmax(const MatrixRef& x, float tau, bool hard, uint64_t seed, const MutMatrixRef& y, Stream s) {
  if (!checkRowwiseShapes("gumbelSoftmax", x, {{"y", y}})) return;
  CUTLOSS_RUN("gumbelSoftmax", gumbelSoftmaxKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, tau, hard, seed, y);
}

void gumbelSoftmaxBackward(const MatrixRef& x, const MatrixRef& dy, float tau, uint64_t seed, const MutMatrixRef& dx,
                           Stream s) {
  if (!checkRowwiseShapes("gumbelSoftmaxBackward", x, {{"dy", dy}, {"dx", dx}})) return;
  CUTLOSS_RUN("gumbelSoftmaxBackward", gumbelSoftmaxBackwardKernel, rowBlocks(x.rows), rowThreads(x.cols), 0, s, x, dy,
              tau, seed, dx);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
