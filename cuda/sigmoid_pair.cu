// The pairwise sigmoid loss of SigLIP (Zhai et al. 2023) without the N×M logits: blocks compute
// kPairTile × kPairTile tiles of S = X·Yᵀ in shared memory (fp32 FMAs, exact), turn them into
// each pair's loss and gradient (math/pairwise.cuh), and fold the tile straight into dX or dY.
//   pass 1, one block per row tile of x: walks every tile of y; sums the loss, dTemperature
//           and dBias of its rows (one partial per row tile: a fixed order, no atomics) and
//           accumulates its own rows of dX, which no other block touches;
//   pass 2, one block per row tile of y (gradients only): recomputes its column of tiles and
//           accumulates its own rows of dY.
// The recomputation costs one more S product; in exchange nothing is written twice and the
// result does not depend on scheduling.
#include "common.cuh"
#include "math/pairwise.cuh"

#ifndef CUTLOSS_UNROLL  // as cuda/tile_gemm.cuh: nvcc unrolls; g++ would warn about the pragma
#if defined(__CUDACC__)
#define CUTLOSS_UNROLL _Pragma("unroll")
#else
#define CUTLOSS_UNROLL
#endif
#endif

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

constexpr int kPairThreads = 256;
// Each thread owns kPairTile² / kPairThreads = 4 consecutive columns of one tile row.
constexpr int kPairColsPerThread = kPairTile * kPairTile / kPairThreads;

// ---------------------------------------------------------------- kernels

/** The tile's operands, a kPairTile-wide slice of D at a time (+1 column: no bank conflicts). */
struct PairTileShared {
  float xs[kPairTile][kPairTile + 1];
  float ys[kPairTile][kPairTile + 1];
  float g[kPairTile][kPairTile + 1];  // gradScale·dloss/du of each pair (0 outside the matrices)
};

/**
 * Tile (i0, j0) of S into s[] (this thread's row r and columns c0 .. c0 + 3). Whole block;
 * ends with a barrier.
 */
__device__ __forceinline__ void pairTileProduct(const MatrixRef& x, const MatrixRef& y, int64_t i0, int64_t j0,
                                                PairTileShared& sh, float (&s)[kPairColsPerThread]) {
  const int r = threadIdx.x / (kPairTile / kPairColsPerThread);
  const int c0 = (threadIdx.x % (kPairTile / kPairColsPerThread)) * kPairColsPerThread;
  const int64_t D = x.cols;
CUTLOSS_UNROLL
  for (int q = 0; q < kPairColsPerThread; q++) s[q] = 0.0f;
  for (int64_t d0 = 0; d0 < D; d0 += kPairTile) {
    for (int e = threadIdx.x; e < kPairTile * kPairTile; e += kPairThreads) {
      const int row = e / kPairTile;
      const int k = e % kPairTile;
      const bool inD = d0 + k < D;
      sh.xs[row][k] = inD && i0 + row < x.rows ? loadElement(x.data, x.dtype, (i0 + row) * D + d0 + k) : 0.0f;
      sh.ys[row][k] = inD && j0 + row < y.rows ? loadElement(y.data, y.dtype, (j0 + row) * D + d0 + k) : 0.0f;
    }
    __syncthreads();  // the slice is in shared memory before anyone reads it
    for (int k = 0; k < kPairTile; k++) {
      const float xv = sh.xs[r][k];
CUTLOSS_UNROLL
      for (int q = 0; q < kPairColsPerThread; q++) s[q] = fmaf(xv, sh.ys[c0 + q][k], s[q]);
    }
    __syncthreads();  // everyone is done with the slice before the next one overwrites it
  }
}

/** Sums of a row tile: Σ softplus, Σ g·s (dTemperature), Σ g (dBias). */
struct PairSums {
  float loss;
  float dT;
  float dB;
};

/**
 * Each pair's loss and gradient from s[]; writes sh.g (0 outside the matrices) and adds to
 * `sums`. Ends with a barrier so sh.g is complete.
 */
__device__ __forceinline__ void pairTileEpilogue(const MatrixRef& x, const MatrixRef& y, const SigmoidPairParams& p,
                                                 int64_t i0, int64_t j0, const float (&s)[kPairColsPerThread],
                                                 PairTileShared& sh, PairSums& sums) {
  const int r = threadIdx.x / (kPairTile / kPairColsPerThread);
  const int c0 = (threadIdx.x % (kPairTile / kPairColsPerThread)) * kPairColsPerThread;
CUTLOSS_UNROLL
  for (int q = 0; q < kPairColsPerThread; q++) {
    const int64_t i = i0 + r;
    const int64_t j = j0 + c0 + q;
    float g = 0.0f;
    if (i < x.rows && j < y.rows) {
      const PairTerm term = sigmoidPairTerm(p.temperature * s[q] + p.bias, p.yStart + j == i);
      g = p.gradScale * term.dLogit;
      sums.loss += term.loss;
      sums.dT += g * s[q];
      sums.dB += g;
    }
    sh.g[r][c0 + q] = g;
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kPairThreads, 1)
    sigmoidPairRowsKernel(MatrixRef x, MatrixRef y, SigmoidPairParams p, float* partials, float* dX) {
  __shared__ PairTileShared sh;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kPairTile;
  const int64_t D = x.cols;
  PairSums sums{0.0f, 0.0f, 0.0f};
  float s[kPairColsPerThread];
  for (int64_t j0 = 0; j0 < y.rows; j0 += kPairTile) {
    pairTileProduct(x, y, i0, j0, sh, s);
    pairTileEpilogue(x, y, p, i0, j0, s, sh, sums);
    if (dX != nullptr) {
      // dX[i] += t·Σ_c g[i][c]·y[j0 + c]: this block's rows only, so plain read-modify-write
      // (a row at a time with a strided column: no 64-bit division, which nvcc calls as a function)
      const int rows = x.rows - i0 < kPairTile ? static_cast<int>(x.rows - i0) : kPairTile;
      const int cols = y.rows - j0 < kPairTile ? static_cast<int>(y.rows - j0) : kPairTile;
      for (int r = 0; r < rows; r++) {
        for (int64_t d = threadIdx.x; d < D; d += kPairThreads) {
          float acc = 0.0f;
          for (int c = 0; c < cols; c++) acc = fmaf(sh.g[r][c], loadElement(y.data, y.dtype, (j0 + c) * D + d), acc);
          const int64_t at = (i0 + r) * D + d;
          dX[at] = (j0 == 0 ? 0.0f : dX[at]) + p.temperature * acc;
        }
      }
    }
    __syncthreads();  // sh.g is read before the next tile rewrites it
  }
  const float loss = blockSum(sums.loss);
  const float dT = blockSum(sums.dT);
  const float dB = blockSum(sums.dB);
  if (threadIdx.x == 0) {
    partials[blockIdx.x * 3 + 0] = loss;
    partials[blockIdx.x * 3 + 1] = dT;
    partials[blockIdx.x * 3 + 2] = dB;
  }
}

__global__ void __launch_bounds__(kPairThreads, 1)
    sigmoidPairColumnsKernel(MatrixRef x, MatrixRef y, SigmoidPairParams p, float* dY) {
  __shared__ PairTileShared sh;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kPairTile;
  const int64_t D = x.cols;
  PairSums unused{0.0f, 0.0f, 0.0f};
  float s[kPairColsPerThread];
  for (int64_t i0 = 0; i0 < x.rows; i0 += kPairTile) {
    pairTileProduct(x, y, i0, j0, sh, s);
    pairTileEpilogue(x, y, p, i0, j0, s, sh, unused);
    // dY[j] += t·Σ_r g[r][j]·x[i0 + r]: this block's rows of y only
    const int rows = x.rows - i0 < kPairTile ? static_cast<int>(x.rows - i0) : kPairTile;
    const int cols = y.rows - j0 < kPairTile ? static_cast<int>(y.rows - j0) : kPairTile;
    for (int c = 0; c < cols; c++) {
      for (int64_t d = threadIdx.x; d < D; d += kPairThreads) {
        float acc = 0.0f;
        for (int r = 0; r < rows; r++) acc = fmaf(sh.g[r][c], loadElement(x.data, x.dtype, (i0 + r) * D + d), acc);
        const int64_t at = (j0 + c) * D + d;
        dY[at] = (i0 == 0 ? 0.0f : dY[at]) + p.temperature * acc;
      }
    }
    __syncthreads();
  }
}

/** f32 accumulators into a bf16 (or f32) output. */
// ---------------------------------------------------------------- launchers

namespace {
unsigned tilesOf(int64_t rows) { return static_cast<unsigned>((rows + kPairTile - 1) / kPairTile); }

void storeGradient(const float* accum, const MutMatrixRef& out, Stream s) {
  if (accum == nullptr || out.rows == 0) return;  // f32 outputs were accumulated in place
  const int64_t blocks = (out.rows * out.cols + kPairThreads - 1) / kPairThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
  CUTLOSS_RUN("sigmoidPairLoss", storeAccumulatorKernel<kPairThreads>, grid, kPairThreads, 0, s, accum, out);
}
}  // namespace

void sigmoidPairLoss(const MatrixRef& x, const MatrixRef& y, const SigmoidPairParams& p, const SigmoidPairOut& out,
                     Stream s) {
  if (x.cols != y.cols) throwInvalid("sigmoidPairLoss", "x and y must share D");
  if (x.rows == 0) return;
  const bool grad = out.dX.data != nullptr;
  float* dX = grad ? (out.dXAccum != nullptr ? out.dXAccum : static_cast<float*>(out.dX.data)) : nullptr;
  CUTLOSS_RUN("sigmoidPairLoss", sigmoidPairRowsKernel, tilesOf(x.rows), kPairThreads, 0, s, x, y, p, out.partials, dX);
  if (!grad) return;
  if (y.rows > 0) {
    float* dY = out.dYAccum != nullptr ? out.dYAccum : static_cast<float*>(out.dY.data);
    CUTLOSS_RUN("sigmoidPairLoss", sigmoidPairColumnsKernel, tilesOf(y.rows), kPairThreads, 0, s, x, y, p, dY);
  }
  storeGradient(out.dXAccum, out.dX, s);
  storeGradient(out.dYAccum, out.dY, s);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
