// What every row kernel shares: element access for f32/bf16 storage, warp and block
// reductions, the row-per-block launch shape, launch error checks, and the exact sparsemax
// and entmax-1.5 thresholds of a row that sits in global memory.
//
// Shape: one block per row (grid-stride over rows), the row split across the block's threads
// with stride blockDim.x, so a row of any length is reduced with warp shuffles and one
// __shared__ word per warp. Rows are indexed with int64 (row·cols can exceed 2^31); a
// column index is an int, and the launchers keep cols below 2^31 − kMaxRowThreads so the
// strided loop j += blockDim.x cannot overflow.
#pragma once

#include <stdint.h>

#include <initializer_list>
#include <string>

#include "kernels.h"
#include "math/math.cuh"
#include "runtime.h"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- launch shape and errors

/** Threads per row block: the row rounded up to whole warps, at most this many. */
constexpr int kMaxRowThreads = 512;
/** Rows beyond this many blocks are visited by the blocks' grid-stride loop. */
constexpr int64_t kMaxRowBlocks = 1 << 20;

inline int rowThreads(int64_t cols) {
  const int64_t warps = (cols + 31) / 32;
  return static_cast<int>(warps >= kMaxRowThreads / 32 ? kMaxRowThreads : (warps < 1 ? 32 : warps * 32));
}

inline unsigned rowBlocks(int64_t rows) {
  return static_cast<unsigned>(rows < kMaxRowBlocks ? rows : kMaxRowBlocks);
}

[[noreturn]] inline void throwInvalid(const char* op, const std::string& what) {
  throw KernelError(1, "cudaErrorInvalidValue", std::string(op) + ": " + what);
}

/** Rows and columns a row kernel accepts: rows >= 0, cols in [1, 2^31 − kMaxRowThreads]. */
inline void checkRowShape(const char* op, int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 1 || cols > INT32_MAX - kMaxRowThreads) {
    throwInvalid(op, "rows " + std::to_string(rows) + " × cols " + std::to_string(cols) +
                         " (need rows >= 0 and 1 <= cols <= 2^31 - " + std::to_string(kMaxRowThreads + 1) + ")");
  }
}

inline void checkSameShape(const char* op, const char* what, int64_t rows, int64_t cols, int64_t r, int64_t c) {
  if (r != rows || c != cols) {
    throwInvalid(op, std::string(what) + " is " + std::to_string(r) + " × " + std::to_string(c) + ", expected " +
                         std::to_string(rows) + " × " + std::to_string(cols));
  }
}

/** A matrix that must have x's shape (an output, an upstream gradient), named for the error. */
struct ShapedLikeX {
  const char* name;
  int64_t rows;
  int64_t cols;
  template <class Matrix>
  ShapedLikeX(const char* n, const Matrix& m) : name(n), rows(m.rows), cols(m.cols) {}
};

/** Checks a row-wise op's shapes; returns whether x has rows to launch over. */
inline bool checkRowwiseShapes(const char* op, const MatrixRef& x, std::initializer_list<ShapedLikeX> sameAsX) {
  checkRowShape(op, x.rows, x.cols);
  for (const ShapedLikeX& m : sameAsX) checkSameShape(op, m.name, x.rows, x.cols, m.rows, m.cols);
  return x.rows > 0;
}

// Launch, then turn a launch failure into KernelError: the CUDA error of the launch on a GPU,
// the emulator's report (divergent barrier, partial-warp collective, ...) under emulation.
#if defined(__CUDACC__)
#define CUTLOSS_RUN(op, kernel, grid, block, smem, stream, ...)                                             \
  do {                                                                                                      \
    CUTLOSS_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__);                                         \
    const cudaError_t launchError = cudaGetLastError();                                                     \
    if (launchError != cudaSuccess) {                                                                       \
      throw ::cutloss::KernelError(static_cast<int>(launchError), cudaGetErrorName(launchError),            \
                                   std::string(op) + ": " + cudaGetErrorString(launchError));               \
    }                                                                                                       \
  } while (0)
#else
#define CUTLOSS_RUN(op, kernel, grid, block, smem, stream, ...)                                             \
  do {                                                                                                      \
    (void)(stream);                                                                                         \
    try {                                                                                                   \
      CUTLOSS_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__);                                       \
    } catch (const ::simt::Error& e) {                                                                      \
      throw ::cutloss::KernelError(-1, "simt::Error", std::string(op) + ": " + e.what());                   \
    }                                                                                                       \
  } while (0)
#endif

// ---------------------------------------------------------------- element access

/** Element i of f32 or bf16 storage, as f32. The dtype branch is uniform across the grid. */
__device__ __forceinline__ float loadElement(const void* data, DType dtype, int64_t i) {
  if (dtype == DType::BF16) return bf16ToF32(static_cast<const uint16_t*>(data)[i]);
  return static_cast<const float*>(data)[i];
}

/** Stores v into f32 or bf16 storage (bf16: round to nearest even). */
__device__ __forceinline__ void storeElement(void* data, DType dtype, int64_t i, float v) {
  if (dtype == DType::BF16) {
    static_cast<uint16_t*>(data)[i] = f32ToBf16(v);
  } else {
    static_cast<float*>(data)[i] = v;
  }
}

/**
 * An fp32 accumulator into its output's dtype (bf16: rounded to nearest even, once), grid-stride.
 * A template so that only the kernels that launch it compile it.
 */
template <int kThreads>
__global__ void __launch_bounds__(kThreads) storeAccumulatorKernel(const float* from, MutMatrixRef to) {
  const int64_t n = to.rows * to.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    storeElement(to.data, to.dtype, e, from[e]);
  }
}

// ---------------------------------------------------------------- reductions
// A reduced value is a small aggregate of floats/ints; each type provides shuffleXor (one
// shuffle per member: CUDA shuffles move 32-bit words) and the kernels pass how to combine.

constexpr unsigned kFullWarp = 0xffffffffu;

__device__ __forceinline__ float shuffleXor(float v, int lane) { return __shfl_xor_sync(kFullWarp, v, lane, 32); }
__device__ __forceinline__ int shuffleXor(int v, int lane) { return __shfl_xor_sync(kFullWarp, v, lane, 32); }
__device__ __forceinline__ LseState shuffleXor(LseState v, int lane) {
  return LseState{shuffleXor(v.max, lane), shuffleXor(v.sum, lane)};
}
__device__ __forceinline__ TileRowSums shuffleXor(TileRowSums v, int lane) {
  return TileRowSums{shuffleXor(v.lse, lane),         shuffleXor(v.cLabel, lane),    shuffleXor(v.weightedGap, lane),
                     shuffleXor(v.sumW, lane),        shuffleXor(v.sumSqOthers, lane), shuffleXor(v.stableSum, lane),
                     shuffleXor(v.sumWeightedLogS, lane)};
}

struct FloatPair {  // plain aggregates throughout: they live in __shared__ scratch
  float a, b;
};
__device__ __forceinline__ FloatPair shuffleXor(FloatPair v, int lane) {
  return FloatPair{shuffleXor(v.a, lane), shuffleXor(v.b, lane)};
}

struct AddFloat {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxFloat {  // NaN-propagating, as Math.max
  __device__ __forceinline__ float operator()(float a, float b) const { return maxPropagatingNaN(a, b); }
};
struct MergeLse {
  __device__ __forceinline__ LseState operator()(LseState a, LseState b) const { return mergeLse(a, b); }
};
struct AddPair {
  __device__ __forceinline__ FloatPair operator()(FloatPair x, FloatPair y) const { return FloatPair{x.a + y.a, x.b + y.b}; }
};

/** Butterfly reduction: every lane ends with the warp's result. */
template <class T, class Combine>
__device__ __forceinline__ T warpAllReduce(T v, Combine combine) {
  for (int lane = 16; lane > 0; lane >>= 1) v = combine(v, shuffleXor(v, lane));
  return v;
}

/**
 * Every thread of the block gets combine() over the block, in the same order in every
 * thread (so loop conditions computed from it are uniform). blockDim.x is a multiple of 32.
 * Must be reached by the whole block.
 */
template <class T, class Combine>
__device__ T blockAllReduce(T v, Combine combine, T identity) {
  __shared__ T warpPartials[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warpAllReduce(v, combine);
  __syncthreads();  // the previous reduction's readers are done before warpPartials is overwritten
  if (lane == 0) warpPartials[warp] = v;
  __syncthreads();  // every warp's partial is written before any is read
  v = lane < warps ? warpPartials[lane] : identity;
  return warpAllReduce(v, combine);  // each warp reduces the same partials: no broadcast needed
}

__device__ __forceinline__ float blockSum(float v) { return blockAllReduce(v, AddFloat(), 0.0f); }
__device__ __forceinline__ float blockMax(float v) { return blockAllReduce(v, MaxFloat(), negativeInfinity()); }
__device__ __forceinline__ FloatPair blockSum2(FloatPair v) { return blockAllReduce(v, AddPair(), FloatPair{0.0f, 0.0f}); }
__device__ __forceinline__ LseState blockLse(LseState v) { return blockAllReduce(v, MergeLse(), lseEmpty()); }

// ---------------------------------------------------------------- loss rows
// What the loss kernels (cross_entropy.cu, linear_cross_entropy.cu) share: the rowStats
// layout a forward leaves for its backward, and the per-class lookups of LossParams.

// rowStats layout: kRowStatFloats floats per row, the RowStats fields at these offsets.
enum RowStatOffset : int {
  kStatLse = 0,
  kStatZLabel = 1,
  kStatSpreadGap = 2,
  kStatSumSqOthers = 3,
  kStatStableSum = 4,
  kStatSumWeightedLogS = 5,
  kStatZMax = 6,
  kStatTau = 7,
  kStatOmega = 8,
  kStatSupport = 9,
  kStatLogSum = 10,
  kStatShift = 11,
  kStatCount = 12,
};
static_assert(kStatCount <= kRowStatFloats, "RowStats must fit in the rowStats stride");

__device__ __forceinline__ void storeRowStats(float* rowStats, int64_t row, const RowStats& st) {
  float* stats = rowStats + row * kRowStatFloats;  // int64: N·kRowStatFloats may exceed 2^31
  stats[kStatLse] = st.lse;
  stats[kStatZLabel] = st.zLabel;
  stats[kStatSpreadGap] = st.spreadGap;
  stats[kStatSumSqOthers] = st.sumSqOthers;
  stats[kStatStableSum] = st.stableSum;
  stats[kStatSumWeightedLogS] = st.sumWeightedLogS;
  stats[kStatZMax] = st.zMax;
  stats[kStatTau] = st.tau;
  stats[kStatOmega] = st.omega;
  stats[kStatSupport] = st.support;
  stats[kStatLogSum] = st.logSum;
  stats[kStatShift] = st.shift;
}

__device__ __forceinline__ RowStats loadRowStats(const float* rowStats, int64_t row) {
  const float* stats = rowStats + row * kRowStatFloats;
  RowStats st;
  st.lse = stats[kStatLse];
  st.zLabel = stats[kStatZLabel];
  st.spreadGap = stats[kStatSpreadGap];
  st.sumSqOthers = stats[kStatSumSqOthers];
  st.stableSum = stats[kStatStableSum];
  st.sumWeightedLogS = stats[kStatSumWeightedLogS];
  st.zMax = stats[kStatZMax];
  st.tau = stats[kStatTau];
  st.omega = stats[kStatOmega];
  st.support = stats[kStatSupport];
  st.logSum = stats[kStatLogSum];
  st.shift = stats[kStatShift];
  return st;
}

__device__ __forceinline__ LossConstants lossConstants(const LossParams& p) {
  return LossConstants{p.vocab, p.normalizer, p.smoothing, p.focalGamma, p.polyEpsilon, p.zLoss, p.squentropy,
                       p.generalizedCE};
}

__device__ __forceinline__ float classWeight(const LossParams& p, int64_t j) {
  return p.classWeights == nullptr ? 1.0f : p.classWeights[j];
}

/** A label the caller let through that is neither a class nor ignoreIndex gives NaN, never a wild read. */
__device__ __forceinline__ bool isClass(int label, int64_t cols) { return label >= 0 && label < cols; }

// ---------------------------------------------------------------- sparse thresholds
// Both thresholds work on values relative to the row max m (so ±3e38 rows keep their gaps)
// and read the row again on every pass instead of sorting it: the callers pass a functor,
// `relative(j)` = z_j − m for sparsemax, `half(j)` = (x_j − m)/2 for entmax-1.5.

struct MichelotSums {
  int count;
  float sum, sumSqP;
};
__device__ __forceinline__ MichelotSums shuffleXor(MichelotSums v, int lane) {
  return MichelotSums{shuffleXor(v.count, lane), shuffleXor(v.sum, lane), shuffleXor(v.sumSqP, lane)};
}
struct AddMichelot {
  __device__ __forceinline__ MichelotSums operator()(MichelotSums x, MichelotSums y) const {
    return MichelotSums{x.count + y.count, x.sum + y.sum, x.sumSqP + y.sumSqP};
  }
};

struct SparsemaxThreshold {
  float tau;      // τ − m
  float support;  // |{z > τ}|
  float sumSqP;   // Σ_supp (z − τ)² = ‖p‖²
};

/**
 * Exact sparsemax τ by Michelot's fixed point: τ₀ = −1 ≤ τ (the max alone already has
 * mass max − τ₀ = 1), then τ ← (Σ_{z>τ} z − 1) / |{z > τ}|, which rises monotonically
 * and stops when the set {z > τ} no longer changes; there τ is exact. Each step is one pass
 * over the row; the set only shrinks, so there are at most |{z > −1}| + 1 passes, and
 * typically a handful. τ is kept from falling back by fp32 rounding, which keeps the
 * set monotone and the loop finite. A row whose max is not finite has τ = NaN.
 */
template <class Relative>
__device__ SparsemaxThreshold sparsemaxThresholdOfRow(Relative relative, int cols, float rowMax) {
  if (!(rowMax > negativeInfinity() && rowMax < positiveInfinity())) return SparsemaxThreshold{quietNaN(), 0.0f, quietNaN()};
  float tau = -1.0f;
  int support = -1;
  for (;;) {  // uniform: every thread sees the same reduced sums
    MichelotSums s{0, 0.0f, 0.0f};
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float z = relative(j);
      if (z > tau) {
        s.count += 1;
        s.sum += z;
        s.sumSqP += (z - tau) * (z - tau);
      }
    }
    s = blockAllReduce(s, AddMichelot(), MichelotSums{0, 0.0f, 0.0f});
    if (s.count == support) return SparsemaxThreshold{tau, static_cast<float>(support), s.sumSqP};
    support = s.count;
    tau = maxPropagatingNaN(tau, (s.sum - 1.0f) / static_cast<float>(s.count));
  }
}

struct EntmaxSums {
  int count;
  float sumD, sumSqD;    // Σ d, Σ d² of d = u − c over u > c
  float minIn, maxOut;   // smallest u above c, largest u at or below c
};
__device__ __forceinline__ EntmaxSums shuffleXor(EntmaxSums v, int lane) {
  return EntmaxSums{shuffleXor(v.count, lane), shuffleXor(v.sumD, lane), shuffleXor(v.sumSqD, lane),
                    shuffleXor(v.minIn, lane), shuffleXor(v.maxOut, lane)};
}
struct CombineEntmax {
  __device__ __forceinline__ EntmaxSums operator()(EntmaxSums x, EntmaxSums y) const {
    return EntmaxSums{x.count + y.count, x.sumD + y.sumD, x.sumSqD + y.sumSqD, fminf(x.minIn, y.minIn),
                      fmaxf(x.maxOut, y.maxOut)};
  }
};

/** One pass: the support candidate {u > c} and its sums relative to `shift`. */
template <class Half>
__device__ EntmaxSums entmaxSumsOfRow(Half half, int cols, float c, float shift) {
  EntmaxSums s{0, 0.0f, 0.0f, positiveInfinity(), negativeInfinity()};
  for (int j = threadIdx.x; j < cols; j += blockDim.x) {
    const float u = half(j);
    if (u > c) {
      const float d = u - shift;
      s.count += 1;
      s.sumD += d;
      s.sumSqD += d * d;
      s.minIn = fminf(s.minIn, u);
    } else {
      s.maxOut = fmaxf(s.maxOut, u);
    }
  }
  return blockAllReduce(s, CombineEntmax(), EntmaxSums{0, 0.0f, 0.0f, positiveInfinity(), negativeInfinity()});
}

/**
 * The closed form on a known support of k values: the smaller root of
 * Σ (u − τ)² = 1, i.e. τ = mean − sqrt(1/k − var), with the sums taken relative to a
 * shift (returns τ − shift). Shifting by a value near τ keeps var free of cancellation.
 */
__device__ __forceinline__ float entmaxClosedForm(const EntmaxSums& s) {
  const float k = static_cast<float>(s.count);
  const float mean = s.sumD / k;
  const float delta = fmaxf(1.0f / k - (s.sumSqD / k - mean * mean), 0.0f);
  return mean - sqrtf(delta);
}

/**
 * Exact entmax-1.5 τ of u = (x − m)/2 ∈ [−inf, 0]: p_j = max(u_j − τ, 0)², Σ p = 1, and
 * τ ∈ [−1, 0). Bisection on f(τ) = Σ max(u − τ, 0)² − 1 (decreasing) narrows [lo, hi];
 * at each midpoint c the candidate support {u > c} gets the closed-form τ, which is the
 * answer exactly when it lies between the largest u outside and the smallest u inside
 * (then {u > τ} is that same set). Once verified, one more pass recomputes the closed form
 * with sums relative to τ itself, for full fp32 precision. Rounding ties that never verify
 * end when the interval can no longer be halved, with the superset {u > lo}, clamped.
 * `half(j)` gives u_j; a row whose max is not finite has τ = NaN.
 */
template <class Half>
__device__ float entmaxThresholdOfRow(Half half, int cols, float rowMax) {
  if (!(rowMax > negativeInfinity() && rowMax < positiveInfinity())) return quietNaN();
  float lo = -1.0f, hi = 0.0f;
  for (;;) {  // uniform: every thread sees the same reduced sums
    const float c = 0.5f * (lo + hi);
    if (!(c > lo && c < hi)) break;
    const EntmaxSums s = entmaxSumsOfRow(half, cols, c, c);  // count >= 1: the max has u = 0 > c
    const float tau = c + entmaxClosedForm(s);
    if (tau < s.minIn && tau >= s.maxOut) {
      const EntmaxSums r = entmaxSumsOfRow(half, cols, c, tau);
      return tau + entmaxClosedForm(r);
    }
    if (s.sumSqD >= 1.0f) {
      lo = c;  // f(c) >= 0: τ >= c
    } else {
      hi = c;
    }
  }
  const EntmaxSums s = entmaxSumsOfRow(half, cols, lo, lo);
  return fminf(fmaxf(lo + entmaxClosedForm(s), lo), hi);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
