// The spherical Z-loss (de Brébisson & Vincent 2016) of z = E·Wᵀ + b from moments of the
// classifier, never the N×V logits (lib/js/zscore.ts states the formulas). With a row x of a
// matrix extended by one column x[D] (the centred bias β, or 1), every moment is a weighted Gram
// matrix G = scale·Σ_r w_r·x_r x_rᵀ of size (D+1)², or a weighted column sum:
//   C' = Gram of U = W − w̄ with x[D] = β          → C (D×D), c (column D), var(b) (corner)
//   M' = Gram of E with x[D] = 1, weights p_i      → M, m, P
//   r' = column sums of E with x[D] = 1, weights a_i → r, A;  w̄' = column sums of W | b, scale 1/V
// Each is computed in a fixed number of row chunks whose partials a second kernel adds in
// order: results do not depend on scheduling. Per token the work is O(D²) (C·e_i), whatever V.
// Simple fp32 FMA tiles; no tensor cores.
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

constexpr int kZThreads = 256;
constexpr int kZTile = 32;  // Gram output tile kZTile × kZTile; each thread 4 consecutive columns
constexpr int kZColsPerThread = kZTile * kZTile / kZThreads;

/** Rows of a matrix, extended by column D, centred and weighted: what the moments sum over. */
struct MomentRows {
  MatrixRef x;                  // [R × D]
  const float* centre;          // [D + 1] subtracted from columns 0..D (null: none)
  const float* extra;           // [R] column D before centring (null: extraValue for every row)
  float extraValue;
  const float* weights;         // [R] (null: 1)
  float scale;
};

__device__ __forceinline__ float momentValue(const MomentRows& m, int64_t r, int64_t k) {
  const int64_t D = m.x.cols;
  float v = k < D ? loadElement(m.x.data, m.x.dtype, r * D + k) : (m.extra != nullptr ? m.extra[r] : m.extraValue);
  if (m.centre != nullptr) v -= m.centre[k];
  return v;
}

// ---------------------------------------------------------------- kernels

/**
 * Column sums: block (g, chunk) handles kZTile columns starting at 32·g and rows [chunk·rowsPer,
 * ...) in 8 lanes; writes partials[chunk × (D + 1) + k].
 */
__global__ void __launch_bounds__(kZThreads)
    zscoreColumnSumsKernel(MomentRows m, int64_t rowsPer, unsigned groups, float* partials) {
  __shared__ float lanes[kZThreads / kZTile][kZTile];
  const int64_t Da = m.x.cols + 1;
  const int64_t g = blockIdx.x % groups;
  const int64_t chunk = blockIdx.x / groups;
  const int col = threadIdx.x % kZTile;
  const int lane = threadIdx.x / kZTile;
  const int64_t k = g * kZTile + col;
  const int64_t r0 = chunk * rowsPer;
  const int64_t r1 = r0 + rowsPer < m.x.rows ? r0 + rowsPer : m.x.rows;
  float acc = 0.0f;
  if (k < Da) {
    for (int64_t r = r0 + lane; r < r1; r += kZThreads / kZTile) {
      const float w = m.weights != nullptr ? m.weights[r] : 1.0f;
      acc = fmaf(w, momentValue(m, r, k), acc);
    }
  }
  lanes[lane][col] = acc;
  __syncthreads();  // every lane's sum is in before one thread per column adds them in order
  if (lane == 0 && k < Da) {
    float s = 0.0f;
    for (int l = 0; l < kZThreads / kZTile; l++) s += lanes[l][col];
    partials[chunk * Da + k] = m.scale * s;
  }
}

/** Operands of one Gram tile: a kZTile-row slice of the rows, for the tile's p and q columns. */
struct GramShared {
  float xp[kZTile][kZTile + 1];  // [row][p], weighted
  float xq[kZTile][kZTile + 1];  // [row][q]
};

/** Block (tile, chunk): the (p0, q0) tile of the chunk's Gram sum into partials[chunk × Da² + p·Da + q]. */
__global__ void __launch_bounds__(kZThreads, 1)
    zscoreGramKernel(MomentRows m, int64_t rowsPer, unsigned tilesPerSide, float* partials) {
  __shared__ GramShared sh;
  const int64_t Da = m.x.cols + 1;
  const unsigned tiles = tilesPerSide * tilesPerSide;
  const int64_t chunk = blockIdx.x / tiles;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x % tiles / tilesPerSide) * kZTile;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x % tilesPerSide) * kZTile;
  const int64_t r0 = chunk * rowsPer;
  const int64_t r1 = r0 + rowsPer < m.x.rows ? r0 + rowsPer : m.x.rows;
  const int p = threadIdx.x / (kZTile / kZColsPerThread);
  const int c0 = (threadIdx.x % (kZTile / kZColsPerThread)) * kZColsPerThread;
  float s[kZColsPerThread];
CUTLOSS_UNROLL
  for (int j = 0; j < kZColsPerThread; j++) s[j] = 0.0f;
  for (int64_t rb = r0; rb < r1; rb += kZTile) {
    for (int e = threadIdx.x; e < kZTile * kZTile; e += kZThreads) {
      const int row = e / kZTile;
      const int k = e % kZTile;
      const int64_t r = rb + row;
      const bool inRows = r < r1;
      const float w = inRows && m.weights != nullptr ? m.weights[r] : 1.0f;
      sh.xp[row][k] = inRows && p0 + k < Da ? w * momentValue(m, r, p0 + k) : 0.0f;
      sh.xq[row][k] = inRows && q0 + k < Da ? momentValue(m, r, q0 + k) : 0.0f;
    }
    __syncthreads();  // the slice is in shared memory before anyone reads it
    for (int row = 0; row < kZTile; row++) {
      const float xv = sh.xp[row][p];
CUTLOSS_UNROLL
      for (int j = 0; j < kZColsPerThread; j++) s[j] = fmaf(xv, sh.xq[row][c0 + j], s[j]);
    }
    __syncthreads();  // everyone is done with the slice before the next one overwrites it
  }
CUTLOSS_UNROLL
  for (int j = 0; j < kZColsPerThread; j++) {
    const int64_t q = q0 + c0 + j;
    if (p0 + p < Da && q < Da) partials[chunk * Da * Da + (p0 + p) * Da + q] = m.scale * s[j];
  }
}

/** out[k] = Σ_chunk partials[chunk × n + k], in chunk order. */
__global__ void __launch_bounds__(kZThreads) zscoreSumChunksKernel(const float* partials, int64_t n, int chunks, float* out) {
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kZThreads + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * kZThreads) {
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += partials[c * n + k];
    out[k] = s;
  }
}

struct ZscoreRowArgs {
  MatrixRef E;
  MatrixRef W;
  const float* bias;     // [V] or null
  const int32_t* labels;
  int32_t ignoreIndex;
  float a;
  float b;
  const float* rowScale;  // [N] or null: forward only
  const float* mean;      // [D + 1]: w̄ and b̄
  const float* moments;   // C' [(D + 1)²]
  float* CE;              // [N × D] scratch: C·e_i
  float* rowLoss;
  float* zt;
  float* aRow;            // a_i = q_i/σ_i (0: no gradient from the row)
  float* pRow;            // p_i = q_i·z̃_i/(σ_i²·V)
  MutMatrixRef dE;        // data null: forward only
};

/** One block per token: σ_i² = e·C·e + 2e·c + var(b), z̃_i, the loss, and dE_i. */
__global__ void __launch_bounds__(kZThreads) zscoreRowsKernel(ZscoreRowArgs r) {
  const int64_t D = r.E.cols;
  const int64_t Da = D + 1;
  const int64_t V = r.W.rows;
  for (int64_t i = blockIdx.x; i < r.E.rows; i += gridDim.x) {  // uniform per block
    const int32_t t = r.labels[i];
    const bool ignored = t == r.ignoreIndex;
    float quad = 0.0f, lin = 0.0f, dl = 0.0f;
    if (!ignored) {
      for (int64_t p = threadIdx.x; p < D; p += kZThreads) {
        // C symmetric: column p read as row p, so neighbouring threads read neighbouring words
        float acc = 0.0f;
        for (int64_t q = 0; q < D; q++) acc = fmaf(r.moments[q * Da + p], loadElement(r.E.data, r.E.dtype, i * D + q), acc);
        r.CE[i * D + p] = acc;
        const float ep = loadElement(r.E.data, r.E.dtype, i * D + p);
        quad = fmaf(ep, acc, quad);
        lin = fmaf(ep, r.moments[p * Da + D], lin);
        dl = fmaf(ep, loadElement(r.W.data, r.W.dtype, static_cast<int64_t>(t) * D + p) - r.mean[p], dl);
      }
    }
    quad = blockSum(quad);
    lin = blockSum(lin);
    dl = blockSum(dl);
    float z = 0.0f, sigma = 0.0f, ai = 0.0f;
    if (!ignored) {
      if (r.bias != nullptr) dl += r.bias[t] - r.mean[D];
      const float variance = quad + 2.0f * lin + r.moments[D * Da + D];
      sigma = variance > 0.0f ? sqrtf(variance) : 0.0f;
      z = sigma > 0.0f ? dl / sigma : 0.0f;  // all logits equal: z̃ = 0 by convention
      const PairTerm term = zscoreLossTerm(z, r.a, r.b);
      if (r.rowScale != nullptr && sigma > 0.0f) {
        const float q = r.rowScale[i] * term.dLogit;
        ai = q / sigma;
        if (threadIdx.x == 0) r.pRow[i] = q * z / (variance * static_cast<float>(V));
      } else if (threadIdx.x == 0 && r.rowScale != nullptr) {
        r.pRow[i] = 0.0f;
      }
      if (threadIdx.x == 0) {
        r.rowLoss[i] = term.loss;
        r.zt[i] = z;
      }
    } else if (threadIdx.x == 0) {
      r.rowLoss[i] = 0.0f;
      r.zt[i] = 0.0f;
      if (r.rowScale != nullptr) r.pRow[i] = 0.0f;
    }
    if (r.rowScale == nullptr) continue;
    if (threadIdx.x == 0) r.aRow[i] = ai;
    // dE_i = a_i·(u_t − z̃_i·(C·e_i + c)/σ_i); each thread reads back the CE entries it wrote
    const float k2 = sigma > 0.0f ? z / sigma : 0.0f;
    for (int64_t p = threadIdx.x; p < D; p += kZThreads) {
      float g = 0.0f;
      if (ai != 0.0f) {
        const float ut = loadElement(r.W.data, r.W.dtype, static_cast<int64_t>(t) * D + p) - r.mean[p];
        g = ai * (ut - k2 * (r.CE[i * D + p] + r.moments[p * Da + D]));
      }
      storeElement(r.dE.data, r.dE.dtype, i * D + p, g);
    }
  }
}

struct ZscoreClassArgs {
  MatrixRef W;
  const float* bias;
  const float* mean;   // [D + 1]
  const float* M;      // M' [(D + 1)²]: M, m (column D), P (corner)
  const float* rA;     // r' [D + 1]: r, A
  float* dW;           // [V × D] f32
  float* dBias;        // [V] or null
};

/**
 * One block per class k: dW_k = −M·u_k − β_k·m − r/V, db_k = −m·u_k − P·β_k − A/V (the label
 * rows' Σ a_i e_i come after, in zscoreLabelRowsKernel).
 */
__global__ void __launch_bounds__(kZThreads) zscoreClassKernel(ZscoreClassArgs c) {
  const int64_t D = c.W.cols;
  const int64_t Da = D + 1;
  const int64_t V = c.W.rows;
  const float invV = 1.0f / static_cast<float>(V);
  for (int64_t k = blockIdx.x; k < V; k += gridDim.x) {
    const float beta = c.bias != nullptr ? c.bias[k] - c.mean[D] : 0.0f;
    float um = 0.0f;
    for (int64_t p = threadIdx.x; p < D; p += kZThreads) {
      float acc = 0.0f;  // (M·u_k)_p, M symmetric: column p read as row p
      for (int64_t q = 0; q < D; q++) {
        acc = fmaf(c.M[q * Da + p], loadElement(c.W.data, c.W.dtype, k * D + q) - c.mean[q], acc);
      }
      const float mp = c.M[p * Da + D];
      c.dW[k * D + p] = -acc - beta * mp - c.rA[p] * invV;
      um = fmaf(mp, loadElement(c.W.data, c.W.dtype, k * D + p) - c.mean[p], um);
    }
    um = blockSum(um);
    if (c.dBias != nullptr && threadIdx.x == 0) c.dBias[k] = -um - c.M[D * Da + D] * beta - c.rA[D] * invV;
  }
}

/** dW_t += a_i·e_i and db_t += a_i for every row i, in row order (column D is the bias). */
__global__ void __launch_bounds__(kZThreads)
    zscoreLabelRowsKernel(MatrixRef E, const int32_t* labels, const float* aRow, float* dW, float* dBias) {
  const int64_t D = E.cols;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * kZThreads + threadIdx.x;
  if (k > D || (k == D && dBias == nullptr)) return;
  for (int64_t i = 0; i < E.rows; i++) {
    const float ai = aRow[i];
    if (ai == 0.0f) continue;
    const int64_t t = labels[i];
    if (k < D) dW[t * D + k] += ai * loadElement(E.data, E.dtype, i * D + k);
    else dBias[t] += ai;
  }
}

// ---------------------------------------------------------------- launchers

namespace {
constexpr char kOp[] = "linearCrossEntropy (zscore)";

unsigned gridOf(int64_t items) { return static_cast<unsigned>(items < 65535 ? (items > 0 ? items : 1) : 65535); }

/** Column sums of m into out [D + 1]. */
void columnSums(const MomentRows& m, float* partials, float* out, Stream s) {
  const int64_t Da = m.x.cols + 1;
  const int chunks = zscoreChunks(m.x.rows, 1);
  const int64_t rowsPer = (m.x.rows + chunks - 1) / chunks;
  const auto groups = static_cast<unsigned>((Da + kZTile - 1) / kZTile);
  CUTLOSS_RUN(kOp, zscoreColumnSumsKernel, groups * static_cast<unsigned>(chunks), kZThreads, 0, s, m, rowsPer, groups, partials);
  CUTLOSS_RUN(kOp, zscoreSumChunksKernel, gridOf((Da + kZThreads - 1) / kZThreads), kZThreads, 0, s, partials, Da, chunks, out);
}

/** The Gram matrix of m into out [(D + 1)²]. */
void gram(const MomentRows& m, float* partials, float* out, Stream s) {
  const int64_t Da = m.x.cols + 1;
  const int chunks = zscoreChunks(m.x.rows, Da);
  const int64_t rowsPer = (m.x.rows + chunks - 1) / chunks;
  const auto side = static_cast<unsigned>((Da + kZTile - 1) / kZTile);
  CUTLOSS_RUN(kOp, zscoreGramKernel, side * side * static_cast<unsigned>(chunks), kZThreads, 0, s, m, rowsPer, side, partials);
  CUTLOSS_RUN(kOp, zscoreSumChunksKernel, gridOf((Da * Da + kZThreads - 1) / kZThreads), kZThreads, 0, s, partials, Da * Da,
              chunks, out);
}
}  // namespace

void zscoreLinear(const MatrixRef& E, const MatrixRef& W, const float* bias, const int32_t* labels,
                  const ZscoreParams& p, const ZscoreKernelOut& out, const ZscoreWork& w, Stream s) {
  if (E.cols != W.cols) throwInvalid(kOp, "E and W must share D");
  if (W.rows < 1) throwInvalid(kOp, "W needs at least one row");
  const int64_t N = E.rows, D = E.cols, V = W.rows;
  const bool grad = out.dE.data != nullptr;
  const auto invV = 1.0f / static_cast<float>(V);
  // w̄ and b̄, then C' = Gram of (W − w̄ | b − b̄) / V
  columnSums(MomentRows{W, nullptr, bias, 0.0f, nullptr, invV}, w.partials, w.mean, s);
  gram(MomentRows{W, w.mean, bias, 0.0f, nullptr, invV}, w.partials, w.moments, s);
  if (N == 0) return;
  ZscoreRowArgs r{E, W, bias, labels, p.ignoreIndex, p.a, p.b, grad ? p.rowScale : nullptr, w.mean, w.moments, w.CE,
                  out.rowLoss, out.zt, w.aRow, w.pRow, out.dE};
  CUTLOSS_RUN(kOp, zscoreRowsKernel, gridOf(N), kZThreads, 0, s, r);
  if (!grad) return;
  // M' = Σ p_i (e_i | 1)(e_i | 1)ᵀ and r' = Σ a_i (e_i | 1)
  gram(MomentRows{E, nullptr, nullptr, 1.0f, w.pRow, 1.0f}, w.partials, w.M, s);
  columnSums(MomentRows{E, nullptr, nullptr, 1.0f, w.aRow, 1.0f}, w.partials, w.rA, s);
  float* dW = out.dWAccum != nullptr ? out.dWAccum : static_cast<float*>(out.dW.data);
  ZscoreClassArgs c{W, bias, w.mean, w.M, w.rA, dW, out.dBias};
  CUTLOSS_RUN(kOp, zscoreClassKernel, gridOf(V), kZThreads, 0, s, c);
  CUTLOSS_RUN(kOp, zscoreLabelRowsKernel, static_cast<unsigned>((D + 1 + kZThreads - 1) / kZThreads), kZThreads, 0, s, E,
              labels, w.aRow, dW, out.dBias);
  if (out.dWAccum != nullptr) {
    CUTLOSS_RUN(kOp, storeAccumulatorKernel<kZThreads>, gridOf((V * D + kZThreads - 1) / kZThreads), kZThreads, 0, s, out.dWAccum, out.dW);
  }
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
