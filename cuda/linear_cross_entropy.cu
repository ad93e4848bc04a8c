// Fused linear + cross-entropy (Cut Cross-Entropy, Wijmans et al. 2024): the loss of
// z = E·Wᵀ + b with every option of README "Losses", and dE, dW, dBias, without the N×V
// logits ever reaching global memory. Each block owns a tile of kTile rows and walks a range
// of vocabulary tiles; every logit tile is computed by the tile product of tile_gemm.cuh
// (FMA or tensor cores), used at once, and forgotten.
//
// Forward. A block reduces each row of each tile to (max, Σ exp) and the sums its options
// need (label logit, Σ w·z, Σ_{j≠t} z², Σ s(z) or Gumbel's Σ_{j≠t} ψ(z), Σ w·log s(z)) and folds them into the row's
// running state in shared memory. Blocks that share a row tile (its "splits") write one
// partial per row, and a second tiny pass merges the partials in split order. We chose that
// over per-row atomic merges: (max, sum) pairs have no atomic merge, a lock per row
// serializes the splits, and the fixed order makes the forward bit-reproducible. The
// partials are O(splits·N) with splits ≤ kLinearCeMaxSplits.
//
// Sparsemax. τ lies within 1 of the row max, so each split keeps the logits within 1 of its
// running max (at most kLinearCeCandidates per row, compacted as the max grows); the merge
// pass finds τ exactly from the union by the threshold search of cuda/math/michelot.cuh. Rows
// whose candidates overflow run that search over the vocabulary tiles instead (one GEMM pass
// each, at most 37 for any V, usually 2 or 3), exact too. No extra pass when nothing overflows.
//
// Backward. The host forms each row's reduction scales (s_W, s_U) from labels and class
// weights before the forward, so one call does both. Each tile is recomputed, turned into
// G = ∂loss/∂x by gradCoefficient and the softcap slope, skipped when every coefficient
// (before the scales) is below filterEps, and folded into fp32 accumulators:
// dE += G·W_tile, dW_tile += Gᵀ·E, dBias += Σ_rows G. By default with atomics; in
// deterministic mode one kernel owns dE and another dW and dBias, each output element written by
// one block in a fixed order, which costs one more logit recomputation but gives bit-identical
// gradients. dE's owners are (row tile, vocabulary split) blocks, so that a batch of few row tiles
// still fills the GPU: split 0 adds into dE, the others into partial buffers of their own, and a
// last pass adds the partials in split order (split-K with an ordered reduction; the splits depend
// on the shape alone, so the bits do not depend on the GPU). dW's owners walk the row tiles in
// order. bf16 gradients are accumulated in an fp32 workspace and rounded once at the end. Offsets
// are int64: N·D, V·D may exceed 2^31.
//
// Vocabulary order. With filterEps > 0 the backward walks the classes sorted by mean logit over
// the batch, descending (W·mean(E) + b: one GEMV, then a bitonic sort of (key, class) pairs,
// O(V) workspace), as Cut Cross-Entropy does: a trained model's likely classes gather in the
// first tiles and the tail's tiles hold no coefficient above the threshold for any row, so whole
// tiles are skipped. Only summation order changes. The order is not cached across calls: it
// depends on W and on E's rows, training changes W at every step, and proving W unchanged would
// take a read of W (what the GEMV costs) or a version number the API does not have. The keys are
// unique, so the order, and deterministic mode's results, are the same run to run.
//
// Harmonic logits (LossParams::harmonicExponent > 0) run on the FloatTile kernels, whose
// epilogues map each tile's e·w to −(n/2)·log d² with the tile's row and class norms
// (HarmonicTile below); the tensor-core forward and backward keep the dot logits only.
#include "tile_gemm.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// rowStats slots past the RowStats fields (common.cuh): a crowded sparsemax row's threshold
// search (cuda/math/michelot.cuh) between passes; its tau and hi sit in kStatTau and kStatOmega.
constexpr int kStatSearchPhase = kStatCount;  // SparsemaxSearchPhase: kSearchDone (0) on every other row
constexpr int kStatSearchX = kStatCount + 1;
constexpr int kStatSearchGen = kStatCount + 2;  // int32 bits, like the two below: counts reach V > 2^24
constexpr int kStatSearchCountHi = kStatCount + 3;
constexpr int kStatSearchPasses = kStatCount + 4;
static_assert(kStatSearchPasses < kRowStatFloats, "rowStats stride too small");

enum CounterIndex : int {
  kCounterVisited = 0,
  kCounterSkipped = 1,
  kCounterMichelotRows = 2,
  kCounterMichelotPasses = 3,
  kCounterMmaForwardBlocks = 4,  // tells tests which forward ran
  kCounterMmaBackwardBlocks = 5,  // ... and which backward
};

constexpr int kWarps = kTileThreads / 32;
// The tile kernels say __launch_bounds__(kTileThreads, 1): given the block size alone, ptxas
// aims at 4 blocks per SM (64 registers) and spills; they need 72 to 108 and no local memory.
constexpr int kCandidateOverflow = -1;

/** Everything a launch's kernels read; passed by value (a few hundred bytes). */
struct LinearCeArgs {
  MatrixRef E;  // [N × D]
  MatrixRef W;  // [V × D]
  const float* bias;
  const int32_t* labels;
  LossParams p;
  float filterEps;
  int64_t rowTiles;
  int32_t vocabTiles;
  int32_t splits;
  int32_t tilesPerSplit;
  int32_t ownerSplits;         // deterministic dE: vocabulary splits ...
  int32_t ownerTilesPerSplit;  // ... of this many 64-class tiles
  uint32_t* counters;
  float* rowStats;
  float* partials;
  float* candidates;
  float* michelot;
  const float* scaleWeighted;
  const float* scaleUnweighted;
  float* dE;  // fp32 accumulators
  float* dW;
  float* dEPartials;  // [(ownerSplits − 1) × N × D]: deterministic dE of splits 1.., or null
  float* dBias;
  float* meanRow;      // [kMeanRowChunks × (D + 1)]: partial column sums and row counts, then the mean row
  uint64_t* orderKeys;  // [power of 2 ≥ V]
  int32_t* order;      // [V]: the backward's vocabulary order, or null (identity)
};

/** The class at position j of the backward's vocabulary walk. */
__device__ __forceinline__ int64_t classAt(const LinearCeArgs& a, int64_t j) {
  return a.order != nullptr ? static_cast<int64_t>(a.order[j]) : j;
}

// ---------------------------------------------------------------- operand loaders

/** A(i, k) = E[r0 + i][k]: the rows of a logit tile. */
struct EmbeddingRows {
  static constexpr bool kContiguousK = true;
  MatrixRef E;
  int64_t r0;
  __device__ __forceinline__ float at(int i, int k) const {
    const int64_t r = r0 + i;
    return r < E.rows && k < E.cols ? loadElement(E.data, E.dtype, r * E.cols + k) : 0.0f;
  }
};

/** B(j, k) = W[c0 + j][k]: the classes of a logit tile (with `order`: W[order[c0 + j]][k]). */
struct ClassifierRows {
  static constexpr bool kContiguousK = true;
  MatrixRef W;
  int64_t c0;
  const int32_t* order = nullptr;
  __device__ __forceinline__ float at(int j, int k) const {
    const int64_t c = c0 + j;
    if (!(c < W.rows && k < W.cols)) return 0.0f;
    return loadElement(W.data, W.dtype, (order != nullptr ? static_cast<int64_t>(order[c]) : c) * W.cols + k);
  }
};

/** A(i, k) = G[i][k]: dE = G·W. */
struct GradRows {
  static constexpr bool kContiguousK = true;
  const FloatTile* g;
  __device__ __forceinline__ float at(int i, int k) const { return k < kTile ? (*g)[i][k] : 0.0f; }
};

/** A(i, k) = G[k][i]: dW = Gᵀ·E. */
struct GradColumns {
  static constexpr bool kContiguousK = false;
  const FloatTile* g;
  __device__ __forceinline__ float at(int i, int k) const { return k < kTile ? (*g)[k][i] : 0.0f; }
};

/** B(j, k) = M[base + k][d0 + j]: columns d0.. of the rows a gradient tile meets (W for dE, E for dW);
 *  with `order`, row order[base + k]. */
struct MatrixColumns {
  static constexpr bool kContiguousK = false;
  MatrixRef M;
  int64_t base;
  int d0;
  const int32_t* order = nullptr;
  __device__ __forceinline__ float at(int j, int k) const {
    const int64_t r = base + k;
    const int d = d0 + j;
    if (!(r < M.rows && d < M.cols)) return 0.0f;
    return loadElement(M.data, M.dtype, (order != nullptr ? static_cast<int64_t>(order[r]) : r) * M.cols + d);
  }
};

// ---------------------------------------------------------------- forward

/**
 * combineTileRowSums (cuda/math/row_sums.cuh) as the functor the shuffle reductions take: a row's
 * sums over some of its classes are combined across the lanes of a tile row, then across splits.
 */
struct CombineTileRowSums {
  TileSumOptions o;
  __device__ __forceinline__ TileRowSums operator()(TileRowSums a, TileRowSums b) const { return combineTileRowSums(o, a, b); }
};
__device__ __forceinline__ CombineTileRowSums tileRowSumsCombiner(const LossParams& p) {
  return CombineTileRowSums{tileSumOptions(p.normalizer, p.smoothing, p.squentropy, p.invTemperature, p.vocab)};
}

/** A row's running forward state in the FloatTile kernel. */
struct RowPartial {
  TileRowSums sums;
  int candidates;  // kept so far, or kCandidateOverflow
};

/** combine() over the 4 lanes that share a tile row (aligned lane groups: xor 1, then 2). */
template <class T, class Combine>
__device__ __forceinline__ T rowGroupAllReduce(T v, Combine combine) {
  v = combine(v, shuffleXor(v, 1));
  return combine(v, shuffleXor(v, 2));
}

/** The capped logit c of tile element (m, n) (before ÷T), or −inf past the vocabulary; column t holds the row's label (margin map). */
__device__ __forceinline__ float tileCappedLogit(const LinearCeArgs& a, const FloatTile& c, int m, int n, int64_t c0,
                                                 int nc, int64_t t) {
  if (n >= nc) return negativeInfinity();
  float x = c[m][n] + (a.bias != nullptr ? a.bias[c0 + n] : 0.0f);
  if (n == t) x = marginLabelLogit(a.p.labelMargin, x);
  return effectiveLogit(x, a.p.softcap, 1.0f);
}

/** The label's column in the tile of classes c0.., if it is there (rows past N: none). */
__device__ __forceinline__ int64_t labelColumn(const LinearCeArgs& a, int64_t row, int64_t c0) {
  return row < a.E.rows ? static_cast<int64_t>(a.labels[row]) - c0 : -1;
}

// Harmonic logits (cuda/math/harmonic.cuh): a tile's e·w become −(n/2)·log d² with the squared
// norms of its rows and classes, summed per tile (64·D loads each, a 64th of the tile product)
// rather than kept in the workspace. The backward's H = n·G/d² goes through the same products
// as G; each tile's Σ_j H_ij and Σ_i H_ij give the −e_i·Σ_j H_ij and −w_j·Σ_i H_ij terms.

struct HarmonicTile {
  float rowSq[kTile];  // ‖e_i‖² of rows r0..
  float colSq[kTile];  // ‖w_j‖² of classes c0.. (in the walk's order)
  float rowSumH[kTile];
  float colSumH[kTile];
};

/** ‖M[r]‖², summed in order by one thread. */
__device__ __forceinline__ float squaredRowNorm(const MatrixRef& M, int64_t r) {
  float s = 0.0f;
  for (int64_t k = 0; k < M.cols; ++k) {
    const float v = loadElement(M.data, M.dtype, r * M.cols + k);
    s = fmaf(v, v, s);
  }
  return s;
}

/** The norms of rows r0.. (withRows) and classes c0..: published by the barriers of the tile product that follows. */
__device__ __forceinline__ void harmonicNorms(const LinearCeArgs& a, int64_t r0, int64_t c0, const int32_t* order,
                                              bool withRows, HarmonicTile& h) {
  const int i = static_cast<int>(threadIdx.x);
  if (i < kTile) {
    if (withRows) h.rowSq[i] = r0 + i < a.E.rows ? squaredRowNorm(a.E, r0 + i) : 0.0f;
  } else if (i < 2 * kTile) {
    const int64_t c = c0 + (i - kTile);
    h.colSq[i - kTile] = c < a.W.rows ? squaredRowNorm(a.W, order != nullptr ? static_cast<int64_t>(order[c]) : c) : 0.0f;
  }
}

/** The product tile's e·w → raw harmonic logits, in place (then a barrier). */
__device__ __forceinline__ void harmonicLogits(const LinearCeArgs& a, const HarmonicTile& h, FloatTile& c) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kTileThreads) {
    const int i = idx / kTile;
    const int j = idx % kTile;
    c[i][j] = harmonicLogit(harmonicSqDistance(h.rowSq[i], h.colSq[j], c[i][j]), a.p.harmonicExponent);
  }
  __syncthreads();
}

/** c[i][j] −= s[i]·M[row][d0 + j], row base + i (or order[base + i]): a harmonic gradient product's correction. */
__device__ __forceinline__ void harmonicCorrection(FloatTile& c, const float* s, const MatrixRef& M, int64_t base, int rows,
                                                   int d0, int cols, const int32_t* order = nullptr) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kTileThreads) {
    const int i = idx / kTile;
    const int j = idx % kTile;
    if (!(i < rows && j < cols)) continue;
    const int64_t r = order != nullptr ? static_cast<int64_t>(order[base + i]) : base + i;
    c[i][j] -= s[i] * loadElement(M.data, M.dtype, r * M.cols + d0 + j);
  }
  __syncthreads();
}

/**
 * Sparsemax candidates of tile row m, appended in column order by the row's leader thread:
 * the capped logits c whose z = c/T is within 1 of the running max's. When the list is full,
 * the values a larger max has since pushed out of reach are dropped; if it is still full, the
 * row overflows.
 */
__device__ void collectCandidates(const LinearCeArgs& a, const FloatTile& c, int m, int64_t c0, int nc, int64_t t,
                                  float max, int& count, float* kept) {
  const float invT = a.p.invTemperature;
  for (int n = 0; n < nc && count != kCandidateOverflow; ++n) {
    const float x = tileCappedLogit(a, c, m, n, c0, nc, t);
    if (!((x - max) * invT > -1.0f)) continue;  // as a gap: exact for huge logits; NaN is never a candidate
    if (count == kLinearCeCandidates) {
      int out = 0;
      for (int i = 0; i < count; ++i) {
        if ((kept[i] - max) * invT > -1.0f) kept[out++] = kept[i];
      }
      count = out;
      if (count == kLinearCeCandidates) {
        count = kCandidateOverflow;
        break;
      }
    }
    kept[count++] = x;
  }
}

/** A split's sums for a row, and its sparsemax candidate count (or kCandidateOverflow), into the partials. */
__device__ __forceinline__ void storePartial(const LinearCeArgs& a, int split, int64_t row, const TileRowSums& s,
                                             float candidates) {
  float* out = a.partials + (static_cast<int64_t>(split) * a.E.rows + row) * kLinearCePartialFloats;
  out[0] = s.lse.max;
  out[1] = s.lse.sum;
  out[2] = s.cLabel;
  out[3] = s.weightedGap;
  out[4] = s.sumSqOthers;
  out[5] = s.stableSum;
  out[6] = s.sumWeightedLogS;
  out[7] = candidates;
  out[8] = s.sumW;
}

/**
 * Grid (rowTiles, splits): the block of row tile x walks the vocabulary tiles of split y and
 * leaves one partial per row. Four threads share a tile row (16 columns each, interleaved so
 * they read consecutive words); the first of them, the row's leader, owns its running state.
 */
template <class Gemm>
__global__ void __launch_bounds__(kTileThreads, 1) linearCeForwardKernel(LinearCeArgs a) {
  __shared__ SharedTile cTile;
  FloatTile& c = cTile.v;
  __shared__ RowPartial state[kTile];
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int split = blockIdx.y;
  const int firstTile = split * a.tilesPerSplit;
  const int endTile = min(firstTile + a.tilesPerSplit, a.vocabTiles);
  const int m = threadIdx.x / 4;
  const int phase = threadIdx.x % 4;
  const int64_t row = r0 + m;
  const bool leader = phase == 0 && row < N;  // rows past N still take part in the shuffles
  const int label = row < N ? a.labels[row] : 0;
  const bool smoothing = a.p.smoothing > 0.0f;
  const bool squentropy = a.p.squentropy != 0.0f;
  const bool stable = a.p.normalizer == kNormalizerStablemax;
  const bool gumbel = a.p.normalizer == kNormalizerGumbel;
  float* kept = a.candidates != nullptr && row < N
                    ? a.candidates + (static_cast<int64_t>(split) * N + row) * kLinearCeCandidates
                    : nullptr;
  if (leader) state[m] = RowPartial{emptyTileRowSums(), 0};
  const float invT = a.p.invTemperature;
  const CombineTileRowSums combine = tileRowSumsCombiner(a.p);
  const bool harmonic = a.p.harmonicExponent > 0.0f;
  __shared__ HarmonicTile norms;
  for (int vt = firstTile; vt < endTile; ++vt) {
    const int64_t c0 = static_cast<int64_t>(vt) * kTile;
    const int nc = static_cast<int>(min(static_cast<int64_t>(kTile), V - c0));
    if (harmonic) harmonicNorms(a, r0, c0, nullptr, vt == firstTile, norms);
    Gemm::product(EmbeddingRows{a.E, r0}, ClassifierRows{a.W, c0}, static_cast<int>(a.E.cols), c);
    if (harmonic) harmonicLogits(a, norms, c);
    const int64_t t = static_cast<int64_t>(label) - c0;  // the label's column in this tile, if any
    TileRowSums s = emptyTileRowSums();
    for (int q = 0; q < kTile / 4; ++q) {
      const int n = phase + 4 * q;
      if (n >= nc || row >= N) break;
      const float x = tileCappedLogit(a, c, m, n, c0, nc, t);
      const float z = x * invT;  // the unshifted normalizers' own z
      const float maxBefore = s.lse.max;
      s.lse = lsePush(s.lse, x, invT);
      if (n == t) s.cLabel = x;
      if (smoothing) {
        const float w = classWeight(a.p, c0 + n);
        s.weightedGap = moveGap(s.weightedGap, s.sumW, maxBefore, s.lse.max, combine.o.spreadScale) +
                        w * scaledGap(s.lse.max, x, combine.o.spreadScale);
        s.sumW += w;
      }
      if (squentropy && n != t) s.sumSqOthers += z * z;
      if (stable) {
        const float zMax = s.lse.max * invT;
        s.stableSum = stablemaxRescale(s.stableSum, maxBefore * invT, zMax) + stablemaxS(z) * stablemaxSumScale(zMax);
        if (smoothing) s.sumWeightedLogS += classWeight(a.p, c0 + n) * stablemaxLogS(z);
      }
      if (gumbel && n != t) s.stableSum += gumbelPsi(z);  // Gumbel's row sum takes stableSum's slot
    }
    s = rowGroupAllReduce(s, combine);
    if (leader) {
      RowPartial& st = state[m];
      st.sums = combine(st.sums, s);  // one tile holds the label: the others add 0 to cLabel
      if (kept != nullptr) collectCandidates(a, c, m, c0, nc, t, st.sums.lse.max, st.candidates, kept);
    }
  }
  if (leader) {
    const RowPartial& st = state[m];
    storePartial(a, split, row, st.sums, static_cast<float>(st.candidates));
  }
}

constexpr int kMmaForwardWarpColumns = kMmaBlockCols / kMmaForwardWarpCols;  // 2
// a row's running state per (warp column, row)
constexpr int kMmaForwardSharedBytes =
    kMmaRingBytes + kMmaForwardWarpColumns * kMmaBlockRows * static_cast<int>(sizeof(TileRowSums));

/**
 * The forward on tensor cores (softmax and stablemax; sparsemax keeps the FloatTile kernel,
 * whose epilogue collects candidates in column order). Grid (row blocks of 128, splits): the
 * block walks its split's classes 128 at a time, four warps of 64 × 64. The copies run one
 * cursor (class tile, k-stage) ahead of the products, so the next tile's first stages are in
 * flight while this tile's epilogue runs; the epilogue reads the accumulator fragments: a lane
 * holds rows g and g + 8 of each m16 tile and columns 2t, 2t + 1 of each n8 tile, so each row's
 * sums over the warp's 64 columns take two quad shuffles (xor 1, 2). The lane with t = 0 folds
 * them into the row's state of its warp column (a slot no other thread writes); at the end one
 * thread per row merges the 2 slots in order. kOptions false: plain softmax cross-entropy (no
 * softcap, smoothing, squentropy or stablemax), whose epilogue is a fraction of the general one's.
 */
template <class Op, bool kOptions>
__global__ void __launch_bounds__(kMmaForwardThreads, 2) linearCeForwardMmaKernel(LinearCeArgs a) {
  CUTLOSS_DYNAMIC_SHARED(uint4, sharedWords);  // uint4: 16-byte aligned for cp.async and ldmatrix
  unsigned char* ring = reinterpret_cast<unsigned char*>(sharedWords);
  TileRowSums* state = reinterpret_cast<TileRowSums*>(ring + kMmaRingBytes);  // [2 warp columns][128 rows]
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kMmaBlockRows;
  const int split = blockIdx.y;
  const int64_t colBegin = static_cast<int64_t>(split) * a.tilesPerSplit * kTile;
  const int64_t colEnd = min(static_cast<int64_t>(min(split * a.tilesPerSplit + a.tilesPerSplit, a.vocabTiles)) * kTile, V);
  const int classTiles = static_cast<int>((colEnd - colBegin + kMmaBlockCols - 1) / kMmaBlockCols);
  const int64_t rowBytes = a.E.cols * Op::kElementBytes;
  const int kStages = static_cast<int>((rowBytes + kMmaRowBytes - 1) / kMmaRowBytes);
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int wm = warp / kMmaForwardWarpColumns, wn = warp % kMmaForwardWarpColumns;
  const int g = lane / 4, t = lane % 4;
  const bool smoothing = kOptions && a.p.smoothing > 0.0f;
  const bool stable = kOptions && a.p.normalizer == kNormalizerStablemax;
  const float softcap = kOptions ? a.p.softcap : 0.0f;
  const float invT = a.p.invTemperature;
  const CombineTileRowSums combine = tileRowSumsCombiner(a.p);
  TileSumOptions sumOptions = combine.o;  // the options' sums fold away where kOptions is false
  sumOptions.smoothing = smoothing;
  sumOptions.squentropy = kOptions && sumOptions.squentropy;
  sumOptions.stable = stable;
  sumOptions.gumbel = kOptions && sumOptions.gumbel;

  for (int i = static_cast<int>(threadIdx.x); i < kMmaForwardWarpColumns * kMmaBlockRows; i += kMmaForwardThreads) {
    state[i] = emptyTileRowSums();
  }
  if (threadIdx.x == 0) atomicAdd(a.counters + kCounterMmaForwardBlocks, 1u);
  const unsigned char* wBase = static_cast<const unsigned char*>(a.W.data);
  MmaStageCopier copier(static_cast<const unsigned char*>(a.E.data), r0, N, wBase, colBegin, colEnd, rowBytes);
  const MmaLaneOffsets offsets = mmaLaneOffsets(wm * kMmaWarpRows, wn * kMmaForwardWarpCols);
  // the copy cursor: `loads` stages issued, the next at k-stage loadStage of its class tile into ring slot loadSlot
  const int total = classTiles * kStages;
  int loads = 0, loadStage = 0, loadSlot = 0;
  const auto loadNext = [&]() {
    copier.load(ring + loadSlot * kMmaStageBytes, static_cast<int64_t>(loadStage) * kMmaRowBytes);
    ++loads;
    loadSlot = loadSlot == kMmaStages - 1 ? 0 : loadSlot + 1;
    if (++loadStage == kStages) {
      loadStage = 0;
      copier.nextW();
    }
  };
  float acc[4][8][4];
CUTLOSS_UNROLL
  for (int mt = 0; mt < 4; ++mt)
CUTLOSS_UNROLL
    for (int nt = 0; nt < 8; ++nt)
CUTLOSS_UNROLL
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (loads < total) loadNext();
    cpAsyncCommit();  // empty groups keep the wait count uniform
  }
  int slot = 0;
  for (int tile = 0; tile < classTiles; ++tile) {
    for (int k = 0; k < kStages; ++k) {
      cpAsyncWait<kMmaStages - 2>();  // this thread's copies of this stage have landed ...
      __syncthreads();                // ... and everyone's; the stage read last step is free again
      if (loads < total) loadNext();
      cpAsyncCommit();
      mmaWarpProduct<Op, 4, 8>(ring + slot * kMmaStageBytes, offsets, acc);
      slot = slot == kMmaStages - 1 ? 0 : slot + 1;
    }

    // epilogue of class tile `tile`, from the fragments
    const int64_t c0 = colBegin + static_cast<int64_t>(tile) * kMmaBlockCols + wn * kMmaForwardWarpCols;
CUTLOSS_UNROLL
    for (int mt = 0; mt < 4; ++mt) {
CUTLOSS_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int m = wm * kMmaWarpRows + mt * 16 + g + 8 * h;
        const int label = r0 + m < N ? a.labels[r0 + m] : -1;  // reloaded (from L1) rather than held: registers
        TileRowSums sums = emptyTileRowSums();
        // the lane's 16 capped logits in place, their max, then one exp each (lsePush would branch on every element)
        float rowMax = negativeInfinity();
CUTLOSS_UNROLL
        for (int nt = 0; nt < 8; ++nt) {
CUTLOSS_UNROLL
          for (int j = 0; j < 2; ++j) {
            const int64_t col = c0 + nt * 8 + 2 * t + j;
            float& v = acc[mt][nt][2 * h + j];
            const bool inside = col < colEnd && r0 + m < N;
            float x = v + (inside && a.bias != nullptr ? a.bias[col] : 0.0f);  // no read past the vocabulary
            if (kOptions && col == label) x = marginLabelLogit(a.p.labelMargin, x);
            v = inside ? effectiveLogit(x, softcap, 1.0f) : negativeInfinity();
            rowMax = maxPropagatingNaN(rowMax, v);
          }
        }
        float expSum = 0.0f;
CUTLOSS_UNROLL
        for (int nt = 0; nt < 8; ++nt) {
CUTLOSS_UNROLL
          for (int j = 0; j < 2; ++j) {
            expSum += c0 + nt * 8 + 2 * t + j < colEnd ? expShifted(acc[mt][nt][2 * h + j], rowMax, invT) : 0.0f;
          }
        }
        sums.lse = rowMax == negativeInfinity() ? lseEmpty() : LseState{rowMax, expSum};
        const float stableScale = stable ? stablemaxSumScale(rowMax * invT) : 1.0f;
CUTLOSS_UNROLL
        for (int nt = 0; nt < 8; ++nt) {
CUTLOSS_UNROLL
          for (int j = 0; j < 2; ++j) {
            const int64_t col = c0 + nt * 8 + 2 * t + j;
            if (col >= colEnd || r0 + m >= N) continue;
            const float w = smoothing ? classWeight(a.p, col) : 1.0f;
            addToTileRowSums(sumOptions, sums, acc[mt][nt][2 * h + j], rowMax, stableScale, col == label, w);
          }
        }
        sums = rowGroupAllReduce(sums, combine);
        if (t == 0) {
          TileRowSums& st = state[wn * kMmaBlockRows + m];
          st = combine(st, sums);
        }
      }
    }
CUTLOSS_UNROLL
    for (int mt = 0; mt < 4; ++mt)
CUTLOSS_UNROLL
      for (int nt = 0; nt < 8; ++nt)
CUTLOSS_UNROLL
        for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
  }
  cpAsyncWait<0>();
  __syncthreads();  // every warp column's state is final
  if (threadIdx.x < kMmaBlockRows && r0 + threadIdx.x < N) {
    const int m = static_cast<int>(threadIdx.x);
    const int64_t row = r0 + m;
    TileRowSums s = emptyTileRowSums();
    for (int w = 0; w < kMmaForwardWarpColumns; ++w) s = combine(s, state[w * kMmaBlockRows + m]);  // in column order: the same sums in every fiber order
    storePartial(a, split, row, s, 0.0f);  // no sparsemax candidates
  }
}

/** A crowded sparsemax row's search between passes, in its rowStats slots. */
__device__ __forceinline__ void storeSearch(float* stats, const SparsemaxSearch& st) {
  if (st.phase == kSearchDone) {
    stats[kStatTau] = st.tau;
    stats[kStatSupport] = static_cast<float>(st.gen);
    stats[kStatOmega] = st.tau + 0.5f * (1.0f + st.sumSqP);
  } else {
    stats[kStatTau] = st.tau;
    stats[kStatOmega] = st.hi;
    stats[kStatSearchX] = st.x;
    stats[kStatSearchGen] = floatFromBits(static_cast<uint32_t>(st.gen));
    stats[kStatSearchCountHi] = floatFromBits(static_cast<uint32_t>(st.countHi));
    stats[kStatSearchPasses] = floatFromBits(static_cast<uint32_t>(st.passes));
  }
  stats[kStatSearchPhase] = static_cast<float>(st.phase);
}
__device__ __forceinline__ SparsemaxSearch loadSearch(const float* stats) {
  SparsemaxSearch st;
  st.tau = stats[kStatTau];
  st.hi = stats[kStatOmega];
  st.x = stats[kStatSearchX];
  st.sumSqP = 0.0f;
  st.gen = static_cast<int32_t>(floatBits(stats[kStatSearchGen]));
  st.countHi = static_cast<int32_t>(floatBits(stats[kStatSearchCountHi]));
  st.passes = static_cast<int32_t>(floatBits(stats[kStatSearchPasses]));
  st.phase = static_cast<int32_t>(stats[kStatSearchPhase]);
  return st;
}

struct MichelotSums3 {
  int count;
  float sum, sumSqP;
};
__device__ __forceinline__ MichelotSums3 shuffleXor(MichelotSums3 v, int lane) {
  return MichelotSums3{shuffleXor(v.count, lane), shuffleXor(v.sum, lane), shuffleXor(v.sumSqP, lane)};
}
struct AddMichelot3 {
  __device__ __forceinline__ MichelotSums3 operator()(MichelotSums3 x, MichelotSums3 y) const {
    return MichelotSums3{x.count + y.count, x.sum + y.sum, x.sumSqP + y.sumSqP};
  }
};

/**
 * One warp per row: merges the splits' partials in split order into RowStats, and for
 * sparsemax finds τ from the candidates by the threshold search (cuda/math/michelot.cuh) over
 * that short list; a row whose candidates overflowed starts the search's passes over the
 * vocabulary instead.
 */
__global__ void __launch_bounds__(kTileThreads) linearCeMergeKernel(LinearCeArgs a) {
  const int64_t N = a.E.rows;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= N) return;  // whole warps: this kernel has no block barrier
  const CombineTileRowSums combine = tileRowSumsCombiner(a.p);
  TileRowSums s = emptyTileRowSums();
  int overflow = 0;
  for (int split = lane; split < a.splits; split += 32) {
    const float* in = a.partials + (static_cast<int64_t>(split) * N + row) * kLinearCePartialFloats;
    s = combine(s, TileRowSums{LseState{in[0], in[1]}, in[2], in[3], in[8], in[4], in[5], in[6]});
    overflow |= in[7] < 0.0f ? 1 : 0;
  }
  s = warpAllReduce(s, combine);
  overflow = __any_sync(kFullWarp, overflow != 0);
  const float invT = a.p.invTemperature;
  const float cMax = s.lse.max;
  RowStats st = rowStatsOfSums(s, a.p.normalizer, a.p.squentropy, invT);
  float active = 0.0f;
  if (a.p.normalizer == kNormalizerSparsemax) {
    const float m = st.zMax;
    if (!(m > negativeInfinity() && m < positiveInfinity())) {
      st.tau = quietNaN();
      st.omega = quietNaN();
    } else if (overflow) {
      active = a.labels[row] != a.p.ignoreIndex ? 1.0f : 0.0f;  // ignored rows need no τ
    } else {
      // the same search as the passes over the vocabulary, over the short list
      SparsemaxSearch search = sparsemaxSearchStart();
      while (search.phase != kSearchDone) {  // uniform across the warp: every lane sees the same sums
        MichelotSums3 sums{0, 0.0f, 0.0f};
        for (int split = 0; split < a.splits; ++split) {
          const int64_t slot = static_cast<int64_t>(split) * N + row;
          const int kept = static_cast<int>(a.partials[slot * kLinearCePartialFloats + 7]);
          const float* values = a.candidates + slot * kLinearCeCandidates;
          for (int i = lane; i < kept; i += 32) {
            const float z = (values[i] - cMax) * invT;  // z − m
            if (z > search.x) {
              sums.count += 1;
              sums.sum += z;
              sums.sumSqP += (z - search.x) * (z - search.x);
            }
          }
        }
        sums = warpAllReduce(sums, AddMichelot3());
        sparsemaxSearchStep(search, sums.count, sums.sum, sums.sumSqP);
      }
      st.tau = search.tau;
      st.support = static_cast<float>(search.gen);
      st.omega = search.tau + 0.5f * (1.0f + search.sumSqP);
    }
  }
  if (lane == 0) {
    storeRowStats(a.rowStats, row, st);
    if (active != 0.0f) {
      storeSearch(a.rowStats + row * kRowStatFloats, sparsemaxSearchStart());
      atomicAdd(a.counters + kCounterMichelotRows, 1u);
    } else {
      a.rowStats[row * kRowStatFloats + kStatSearchPhase] = static_cast<float>(kSearchDone);
    }
  }
}

/**
 * One pass of the threshold search for the crowded rows, over the vocabulary tiles of split y:
 * the count, Σ (z − m) and Σ (z − m − x)² of the logits with z − m > x, the row's trial
 * threshold (cuda/math/michelot.cuh). The thread layout is the forward's.
 */
template <class Gemm>
__global__ void __launch_bounds__(kTileThreads, 1) linearCeMichelotPassKernel(LinearCeArgs a) {
  __shared__ SharedTile cTile;
  FloatTile& c = cTile.v;
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int split = blockIdx.y;
  const int m = threadIdx.x / 4;
  const int phase = threadIdx.x % 4;
  const int64_t row = r0 + m;
  const float* stats = a.rowStats + (row < N ? row : 0) * kRowStatFloats;
  const bool active = row < N && stats[kStatSearchPhase] != static_cast<float>(kSearchDone);
  const float zMax = active ? stats[kStatZMax] : 0.0f;
  const float shift = active ? stats[kStatShift] : 0.0f;
  const float invT = a.p.invTemperature;
  const float x = active ? stats[kStatSearchX] : 0.0f;
  // uniform, and no early return: the shuffles below stay in convergent code
  const bool any = __syncthreads_or(active);
  const int firstTile = split * a.tilesPerSplit;
  const int endTile = any ? min(firstTile + a.tilesPerSplit, a.vocabTiles) : firstTile;
  const bool harmonic = a.p.harmonicExponent > 0.0f;
  __shared__ HarmonicTile norms;
  MichelotSums3 total{0, 0.0f, 0.0f};
  for (int vt = firstTile; vt < endTile; ++vt) {
    const int64_t c0 = static_cast<int64_t>(vt) * kTile;
    const int nc = static_cast<int>(min(static_cast<int64_t>(kTile), V - c0));
    if (harmonic) harmonicNorms(a, r0, c0, nullptr, vt == firstTile, norms);
    Gemm::product(EmbeddingRows{a.E, r0}, ClassifierRows{a.W, c0}, static_cast<int>(a.E.cols), c);
    if (harmonic) harmonicLogits(a, norms, c);
    MichelotSums3 s{0, 0.0f, 0.0f};
    for (int q = 0; q < kTile / 4 && active; ++q) {
      const int n = phase + 4 * q;
      const float z = (tileCappedLogit(a, c, m, n, c0, nc, labelColumn(a, row, c0)) - shift) * invT - zMax;
      if (z > x) {
        s.count += 1;
        s.sum += z;
        s.sumSqP += (z - x) * (z - x);
      }
    }
    total = AddMichelot3()(total, rowGroupAllReduce(s, AddMichelot3()));
  }
  if (active && phase == 0) {
    float* out = a.michelot + (static_cast<int64_t>(split) * N + row) * 4;
    out[0] = floatFromBits(static_cast<uint32_t>(total.count));  // the int's bits: exact beyond 2^24
    out[1] = total.sum;
    out[2] = total.sumSqP;
  }
}

/** Merges a pass's partials in split order and takes the search's step (cuda/math/michelot.cuh). */
__global__ void linearCeMichelotUpdateKernel(LinearCeArgs a) {
  const int64_t N = a.E.rows;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row == 0) atomicAdd(a.counters + kCounterMichelotPasses, 1u);
  if (row >= N) return;
  float* stats = a.rowStats + row * kRowStatFloats;
  if (stats[kStatSearchPhase] == static_cast<float>(kSearchDone)) return;
  MichelotSums3 s{0, 0.0f, 0.0f};
  for (int split = 0; split < a.splits; ++split) {
    const float* in = a.michelot + (static_cast<int64_t>(split) * N + row) * 4;
    s = AddMichelot3()(s, MichelotSums3{static_cast<int>(floatBits(in[0])), in[1], in[2]});
  }
  SparsemaxSearch search = loadSearch(stats);
  sparsemaxSearchStep(search, s.count, s.sum, s.sumSqP);
  storeSearch(stats, search);
  if (search.phase != kSearchDone) atomicAdd(a.counters + kCounterMichelotRows, 1u);
}

/** One thread per row: the row's loss terms from its finished RowStats, and its lse. */
__global__ void linearCeFinishKernel(LinearCeArgs a, LinearCeOut out) {
  const int64_t N = a.E.rows;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  const RowStats st = loadRowStats(a.rowStats, row);
  out.lse[row] = st.lse;  // every row's, ignored ones too
  const int label = a.labels[row];
  if (label == a.p.ignoreIndex) {
    out.weighted[row] = 0.0f;
    out.unweighted[row] = 0.0f;
    return;
  }
  const float wLabel = isClass(label, a.p.vocab) ? classWeight(a.p, label) : quietNaN();
  const RowLoss rl = rowLoss(lossConstants(a.p), st, wLabel, a.p.sumWeights);
  out.weighted[row] = rl.weighted;
  out.unweighted[row] = rl.unweighted;
}

// ---------------------------------------------------------------- backward

/** Which gradients a backward kernel folds in, and how. */
enum BackwardMode : int {
  kBackwardAtomic = 0,    // grid (rowTiles, splits): dE, dW, dBias with atomics
  kBackwardOwnRows = 1,   // grid (rowTiles): dE rows of its tile, vocabulary tiles in order
  kBackwardOwnVocab = 2,  // grid (vocabTiles): dW rows and dBias of its tile, row tiles in order
};

/** A thread's row of the gradient tile: its per-row constants (cuda/math/loss.cuh). */
struct ThreadRow {
  bool valid;
  int label;
  float invScale;  // 1 / max(|s_W|, |s_U|): filtering looks at coefficients before the reduction scale
  float shift;     // RowStats::shift
  RowGrad rg;
};

__device__ __forceinline__ ThreadRow threadRow(const LinearCeArgs& a, int64_t row) {
  ThreadRow r;
  r.valid = false;
  r.label = 0;
  r.invScale = 0.0f;
  r.shift = 0.0f;
  if (row >= a.E.rows) return r;
  r.label = a.labels[row];
  if (r.label == a.p.ignoreIndex) return r;
  r.valid = true;
  const RowStats st = loadRowStats(a.rowStats, row);
  const float wLabel = isClass(r.label, a.p.vocab) ? classWeight(a.p, r.label) : quietNaN();
  const LossConstants k = lossConstants(a.p);
  const RowLoss rl = rowLoss(k, st, wLabel, a.p.sumWeights);
  const float sW = a.scaleWeighted[row];
  const float sU = a.scaleUnweighted[row];
  r.rg = rowGrad(k, st, rl, wLabel, sW, sU);
  const float scale = rowGradScale(sW, sU);
  r.invScale = scale > 0.0f ? 1.0f / scale : 0.0f;
  r.shift = st.shift;
  return r;
}

__device__ __forceinline__ void addTo(float* p, float v, bool atomic) {
  if (atomic) {
    atomicAdd(p, v);
  } else {
    *p += v;  // the block owns this element: no other block writes it
  }
}

/** Where deterministic split `split` sums its dE: split 0 into dE itself, the others into their partials. */
__device__ __forceinline__ float* ownerDE(const LinearCeArgs& a, unsigned split) {
  return split == 0 ? a.dE : a.dEPartials + static_cast<int64_t>(split - 1) * a.E.rows * a.E.cols;
}

#include "linear_ce_backward.cuh"

/** Adds the product tile c (rows × cols valid) into acc rows base.. (with `order`: order[base + ..]),
 *  columns d0.. (row stride ld). */
__device__ __forceinline__ void addTile(const FloatTile& c, float* acc, int64_t base, int rows, int d0, int cols,
                                        int64_t ld, bool atomic, const int32_t* order = nullptr) {
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kTileThreads) {
    const int i = idx / kTile;
    const int j = idx % kTile;
    if (!(i < rows && j < cols)) continue;
    const int64_t r = order != nullptr ? static_cast<int64_t>(order[base + i]) : base + i;
    addTo(acc + r * ld + d0 + j, c[i][j], atomic);
  }
}

/**
 * One (row tile, vocabulary tile) of the backward: recompute the logits, form G, and fold it
 * into the gradients this mode owns. `row` is the calling thread's ThreadRow for tile row
 * threadIdx.x / 4; thread (m, phase) forms G[m][phase + 4·q].
 */
template <class Gemm, int Mode>
__device__ void backwardTile(const LinearCeArgs& a, int64_t r0, int vt, const ThreadRow& row, FloatTile& c,
                             FloatTile& g, float* dE) {
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  const int D = static_cast<int>(a.E.cols);
  const int64_t c0 = static_cast<int64_t>(vt) * kTile;
  const int nc = static_cast<int>(min(static_cast<int64_t>(kTile), V - c0));
  const int nr = static_cast<int>(min(static_cast<int64_t>(kTile), N - r0));
  const bool atomic = Mode == kBackwardAtomic;
  const bool harmonic = a.p.harmonicExponent > 0.0f;
  __shared__ HarmonicTile norms;
  if (harmonic) harmonicNorms(a, r0, c0, a.order, true, norms);
  Gemm::product(EmbeddingRows{a.E, r0}, ClassifierRows{a.W, c0, a.order}, D, c);
  const int m = threadIdx.x / 4;
  const int phase = threadIdx.x % 4;
  bool keep = false;
CUTLOSS_UNROLL
  for (int q = 0; q < kTile / 4; ++q) {
    const int n = phase + 4 * q;
    float gradient = 0.0f;
    if (row.valid && n < nc) {
      const int64_t cls = classAt(a, c0 + n);
      const bool isLabel = cls == row.label;
      float x = c[m][n] + (a.bias != nullptr ? a.bias[cls] : 0.0f);
      const float sq = harmonic ? harmonicSqDistance(norms.rowSq[m], norms.colSq[n], c[m][n]) : 0.0f;
      if (harmonic) x = harmonicLogit(sq, a.p.harmonicExponent);
      const float marginSlope = isLabel ? marginLabelSlope(a.p.labelMargin, x) : 1.0f;
      if (isLabel) x = marginLabelLogit(a.p.labelMargin, x);
      const float z = shiftedEffectiveLogit(x, a.p.softcap, a.p.invTemperature, row.shift);
      const float coef = gradCoefficient(row.rg, z, isLabel, classWeight(a.p, cls));
      if (!(fabsf(coef) * row.invScale < a.filterEps)) keep = true;  // NaN is never filtered
      gradient = coef * effectiveSlope(x, a.p.softcap, a.p.invTemperature) * marginSlope;
      if (harmonic) gradient = harmonicGrad(gradient, sq, a.p.harmonicExponent);  // after filtering, which looks at dloss/dz
    }
    g[m][n] = gradient;
  }
  keep = __syncthreads_or(keep);  // also: g is complete
  if (Mode != kBackwardOwnVocab && threadIdx.x == 0) {
    atomicAdd(a.counters + kCounterVisited, 1u);
    if (!keep) atomicAdd(a.counters + kCounterSkipped, 1u);
  }
  if (!keep) return;  // uniform
  if (harmonic) {  // the tile's Σ_j H_ij (threads 0..63) and Σ_i H_ij (64..127), in order
    const int k = static_cast<int>(threadIdx.x);
    float sum = 0.0f;
    if (k < kTile) {
      for (int j = 0; j < kTile; ++j) sum += g[k][j];
      norms.rowSumH[k] = sum;
    } else if (k < 2 * kTile) {
      for (int i = 0; i < kTile; ++i) sum += g[i][k - kTile];
      norms.colSumH[k - kTile] = sum;
    }
    __syncthreads();
  }
  const int column = threadIdx.x;
  if (Mode != kBackwardOwnRows && a.dBias != nullptr && column < nc) {
    float sum = 0.0f;
    for (int i = 0; i < nr; ++i) sum += g[i][column];  // rows in order: the same sum in every mode
    addTo(a.dBias + classAt(a, c0 + column), sum, atomic);
  }
  if (Mode != kBackwardOwnVocab) {
    for (int d0 = 0; d0 < D; d0 += kTile) {  // dE[r0.., d0..] += G·W[c0.., d0..]
      Gemm::product(GradRows{&g}, MatrixColumns{a.W, c0, d0, a.order}, nc, c);
      if (harmonic) harmonicCorrection(c, norms.rowSumH, a.E, r0, nr, d0, min(kTile, D - d0));  // − e_i·Σ_j H_ij
      addTile(c, dE, r0, nr, d0, min(kTile, D - d0), D, atomic);
    }
  }
  if (Mode != kBackwardOwnRows) {
    for (int d0 = 0; d0 < D; d0 += kTile) {  // dW[c0.., d0..] += Gᵀ·E[r0.., d0..]
      Gemm::product(GradColumns{&g}, MatrixColumns{a.E, r0, d0}, nr, c);
      if (harmonic) harmonicCorrection(c, norms.colSumH, a.W, c0, nc, d0, min(kTile, D - d0), a.order);  // − w_j·Σ_i H_ij
      addTile(c, a.dW, c0, nc, d0, min(kTile, D - d0), D, atomic, a.order);
    }
  }
}

template <class Gemm, int Mode>
__global__ void __launch_bounds__(kTileThreads, 1) linearCeBackwardKernel(LinearCeArgs a) {
  __shared__ SharedTile cTile, gTile;
  FloatTile& c = cTile.v;
  FloatTile& g = gTile.v;
  if (Mode == kBackwardOwnVocab) {
    const int vt = blockIdx.x;
    for (int64_t rt = 0; rt < a.rowTiles; ++rt) {
      const int64_t r0 = rt * kTile;
      const ThreadRow row = threadRow(a, r0 + threadIdx.x / 4);
      if (!__syncthreads_or(row.valid)) continue;  // uniform: no row of the tile has a gradient
      backwardTile<Gemm, Mode>(a, r0, vt, row, c, g, nullptr);
    }
    return;
  }
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const ThreadRow row = threadRow(a, r0 + threadIdx.x / 4);
  if (!__syncthreads_or(row.valid)) return;  // uniform
  const int perSplit = Mode == kBackwardAtomic ? a.tilesPerSplit : a.ownerTilesPerSplit;
  const int firstTile = static_cast<int>(blockIdx.y) * perSplit;
  const int endTile = min(firstTile + perSplit, a.vocabTiles);
  float* dE = Mode == kBackwardAtomic ? a.dE : ownerDE(a, blockIdx.y);
  for (int vt = firstTile; vt < endTile; ++vt) backwardTile<Gemm, Mode>(a, r0, vt, row, c, g, dE);
}

/** dE += the partial sums of deterministic splits 1.., in split order. */
__global__ void linearCeSumPartialsKernel(LinearCeArgs a) {
  const int64_t n = a.E.rows * a.E.cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float sum = a.dE[i];
    for (int s = 1; s < a.ownerSplits; ++s) sum += a.dEPartials[(s - 1) * n + i];
    a.dE[i] = sum;
  }
}

__global__ void fillKernel(float* p, int64_t n, float v) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    p[i] = v;
  }
}

__global__ void zeroCountersKernel(uint32_t* counters, int first, int count) {
  if (static_cast<int>(threadIdx.x) < count) counters[first + threadIdx.x] = 0u;
}

// ---------------------------------------------------------------- vocabulary order (filtering backward)

// The mean row is summed in kLinearCeMeanRowChunks row chunks: blocks (column chunk, row chunk)
// keep the GPU busy whatever N or D is.
constexpr int kMeanRowChunks = kLinearCeMeanRowChunks;

/** meanRow[y][d] = Σ E[r][d] over labelled rows r ≡ y (mod kMeanRowChunks), in order; [y][D] their count. */
__global__ void linearCeMeanRowPartialKernel(LinearCeArgs a) {
  const int64_t D = a.E.cols;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int y = blockIdx.y;
  if (d > D) return;
  float sum = 0.0f;
  int count = 0;
  for (int64_t r = y; r < a.E.rows; r += kMeanRowChunks) {
    if (a.labels[r] == a.p.ignoreIndex) continue;  // padding rows say nothing about the vocabulary
    if (d < D) sum += loadElement(a.E.data, a.E.dtype, r * D + d);
    ++count;
  }
  a.meanRow[y * (D + 1) + d] = d < D ? sum : static_cast<float>(count);
}

/** The mean row, over the chunks in order, into meanRow[0..D). */
__global__ void linearCeMeanRowKernel(LinearCeArgs a) {
  const int64_t D = a.E.cols;
  float count = 0.0f;
  for (int y = 0; y < kMeanRowChunks; ++y) count += a.meanRow[y * (D + 1) + D];  // column D: never overwritten
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float sum = 0.0f;
    for (int y = 0; y < kMeanRowChunks; ++y) sum += a.meanRow[y * (D + 1) + d];
    a.meanRow[d] = count > 0.0f ? sum / count : 0.0f;  // d < D: only this thread reads column d
  }
}

/** One warp per class: key = (mean logit W[c]·meanRow + b[c], descending; c), padded with ~0 to `keys`. */
__global__ void __launch_bounds__(kTileThreads) linearCeOrderKeysKernel(LinearCeArgs a, int64_t keys) {
  const int lane = threadIdx.x & 31;
  const int64_t D = a.E.cols;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; c < keys; c += warps) {
    if (c >= a.W.rows) {  // uniform per warp
      if (lane == 0) a.orderKeys[c] = ~uint64_t{0};
      continue;
    }
    float dot = 0.0f;
    for (int64_t d = lane; d < D; d += 32) dot += loadElement(a.W.data, a.W.dtype, c * D + d) * a.meanRow[d];
    dot = warpAllReduce(dot, AddFloat());
    if (lane != 0) continue;
    const float mean = dot + (a.bias != nullptr ? a.bias[c] : 0.0f);
    const uint32_t u = __float_as_uint(mean);
    const uint32_t ascending = (u & 0x80000000u) != 0u ? ~u : u | 0x80000000u;  // unsigned order = float order
    a.orderKeys[c] = (static_cast<uint64_t>(~ascending) << 32) | static_cast<uint64_t>(c);
  }
}

/** One step (k, j) of a bitonic sort of `n` (a power of 2) keys, ascending: the unique keys leave one order. */
__global__ void linearCeBitonicStepKernel(uint64_t* keys, int64_t n, int64_t k, int64_t j) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t l = i ^ j;
    if (l <= i) continue;  // the pair's lower index does the exchange
    const uint64_t x = keys[i], y = keys[l];
    if ((x > y) == ((i & k) == 0)) {
      keys[i] = y;
      keys[l] = x;
    }
  }
}

__global__ void linearCeOrderKernel(LinearCeArgs a) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.W.rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    a.order[i] = static_cast<int32_t>(a.orderKeys[i] & 0xffffffffu);
  }
}

// ---------------------------------------------------------------- launchers

/** Blocks for a grid-stride loop over n elements. */
inline unsigned elementBlocks(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

/** A word of the workspace on the host (the Michelot loop needs to know when to stop). */
inline uint32_t readCounter(const uint32_t* p, Stream s) {
#if defined(__CUDACC__)
  uint32_t v = 0;
  cudaError_t e = cudaMemcpyAsync(&v, p, sizeof v, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(s));
  if (e == cudaSuccess) e = cudaStreamSynchronize(static_cast<cudaStream_t>(s));
  if (e != cudaSuccess) {
    throw KernelError(static_cast<int>(e), cudaGetErrorName(e), std::string("linearCrossEntropy: ") + cudaGetErrorString(e));
  }
  return v;
#else
  (void)s;
  return *p;  // emulated device memory is host memory
#endif
}

void zeroFloats(float* p, int64_t n, Stream s) {
  if (n > 0) CUTLOSS_RUN("linearCrossEntropy", fillKernel, elementBlocks(n), 256, 0, s, p, n, 0.0f);
}

/** Which forward kernel runs: the FloatTile one, or the mma one with bf16 or tf32 operands. */
enum class ForwardPath { FloatTile, MmaBf16, MmaTf32 };

template <class Op>
void runMmaForward(const LinearCeArgs& a, const LinearCePlan& plan, Stream s) {
  const bool plain = a.p.softcap <= 0.0f && !(a.p.smoothing > 0.0f) && a.p.squentropy == 0.0f &&
                     a.p.normalizer == kNormalizerSoftmax && !(a.p.labelMargin.scale > 0.0f);
  // the name the emulator's reports give
  const auto linearCeForwardMma = plain ? &linearCeForwardMmaKernel<Op, false> : &linearCeForwardMmaKernel<Op, true>;
  CUTLOSS_ALLOW_DYNAMIC_SHARED(linearCeForwardMma, kMmaForwardSharedBytes);
  const dim3 grid(static_cast<unsigned>((a.E.rows + kMmaBlockRows - 1) / kMmaBlockRows), static_cast<unsigned>(plan.splits));
  CUTLOSS_RUN("linearCrossEntropy", linearCeForwardMma, grid, kMmaForwardThreads, kMmaForwardSharedBytes, s, a);
}

template <class Gemm>
void runLinearCrossEntropy(const LinearCeArgs& a, const LinearCePlan& plan, const LinearCeOut& out,
                           const LinearCeConfig& cfg, ForwardPath path, Stream s) {
  const char* op = "linearCrossEntropy";
  const int64_t N = a.E.rows;
  const dim3 tiles(static_cast<unsigned>(plan.rowTiles), static_cast<unsigned>(plan.splits));
  const unsigned rowWarps = static_cast<unsigned>((N + kWarps - 1) / kWarps);
  const unsigned rowThreads = static_cast<unsigned>((N + 255) / 256);
  CUTLOSS_RUN(op, zeroCountersKernel, 1, 32, 0, s, a.counters, 0, kLinearCeCounters);
  if (path == ForwardPath::MmaBf16) {
    runMmaForward<MmaBf16>(a, plan, s);
  } else if (path == ForwardPath::MmaTf32) {
    runMmaForward<MmaTf32>(a, plan, s);
  } else {
    const auto forward = &linearCeForwardKernel<Gemm>;
    CUTLOSS_RUN(op, forward, tiles, kTileThreads, 0, s, a);
  }
  CUTLOSS_RUN(op, linearCeMergeKernel, rowWarps, kTileThreads, 0, s, a);
  if (a.p.normalizer == kNormalizerSparsemax) {
    // Crowded rows: passes of the threshold search until every row's τ is found, at most
    // kSparsemaxPassLimit (37) for any V (cuda/math/michelot.cuh); most rows take 2 or 3.
    const auto pass = &linearCeMichelotPassKernel<Gemm>;
    const int64_t limit = kSparsemaxPassLimit;
    int64_t passes = 0;
    while (readCounter(a.counters + kCounterMichelotRows, s) > 0) {
      if (passes == limit) {
        throw KernelError(-1, "cutloss::MichelotLimit",
                          std::string(op) + ": sparsemax thresholds still unknown after " + std::to_string(limit) +
                              " passes over the vocabulary, more than the search can take");
      }
      CUTLOSS_RUN(op, pass, tiles, kTileThreads, 0, s, a);
      CUTLOSS_RUN(op, zeroCountersKernel, 1, 32, 0, s, a.counters, static_cast<int>(kCounterMichelotRows), 1);
      CUTLOSS_RUN(op, linearCeMichelotUpdateKernel, rowThreads, 256, 0, s, a);
      ++passes;
    }
  }
  CUTLOSS_RUN(op, linearCeFinishKernel, rowThreads, 256, 0, s, a, out);
  if (out.scaleWeighted == nullptr) return;

  const int64_t D = a.E.cols;
  const int64_t V = a.W.rows;
  zeroFloats(a.dE, N * D, s);
  zeroFloats(a.dW, V * D, s);
  if (a.dBias != nullptr) zeroFloats(a.dBias, V, s);
  if (a.order != nullptr) {
    int64_t keys = 1;
    while (keys < V) keys *= 2;
    const dim3 chunks(static_cast<unsigned>((D + 1 + 255) / 256), static_cast<unsigned>(kMeanRowChunks));
    CUTLOSS_RUN(op, linearCeMeanRowPartialKernel, chunks, 256, 0, s, a);
    CUTLOSS_RUN(op, linearCeMeanRowKernel, 1, 256, 0, s, a);
    CUTLOSS_RUN(op, linearCeOrderKeysKernel, elementBlocks(keys * 32), kTileThreads, 0, s, a, keys);
    for (int64_t k = 2; k <= keys; k *= 2) {
      for (int64_t j = k / 2; j > 0; j /= 2) {
        CUTLOSS_RUN(op, linearCeBitonicStepKernel, elementBlocks(keys), 256, 0, s, a.orderKeys, keys, k, j);
      }
    }
    CUTLOSS_RUN(op, linearCeOrderKernel, elementBlocks(V), 256, 0, s, a);
  }
  if (a.dEPartials != nullptr) zeroFloats(a.dEPartials, (plan.ownerSplits - 1) * N * D, s);
  const unsigned rowBlocks = static_cast<unsigned>((N + kMmaBlockRows - 1) / kMmaBlockRows);
  if (path == ForwardPath::MmaBf16 && !cfg.deterministic) {
    const auto linearCeBackwardMma = &linearCeBackwardMmaKernel<kBackwardAtomic>;  // the name the emulator's reports give
    CUTLOSS_ALLOW_DYNAMIC_SHARED(linearCeBackwardMma, kMmaBackwardSharedBytes);
    CUTLOSS_RUN(op, linearCeBackwardMma, rowBlocks * plan.splits, kMmaThreads, kMmaBackwardSharedBytes, s, a);
  } else if (path == ForwardPath::MmaBf16) {
    // deterministic: dE by (row block, split) owners, dW and dBias by class-tile owners
    const auto linearCeBackwardMmaOwnRows = &linearCeBackwardMmaKernel<kBackwardOwnRows>;
    const auto linearCeBackwardMmaOwnVocab = &linearCeBackwardMmaKernel<kBackwardOwnVocab>;
    CUTLOSS_ALLOW_DYNAMIC_SHARED(linearCeBackwardMmaOwnRows, kMmaBackwardSharedBytes);
    CUTLOSS_ALLOW_DYNAMIC_SHARED(linearCeBackwardMmaOwnVocab, kMmaBackwardSharedBytes);
    const unsigned classTiles = static_cast<unsigned>((V + kMmaBlockCols - 1) / kMmaBlockCols);
    CUTLOSS_RUN(op, linearCeBackwardMmaOwnRows, rowBlocks * plan.ownerSplits, kMmaThreads, kMmaBackwardSharedBytes, s, a);
    CUTLOSS_RUN(op, linearCeBackwardMmaOwnVocab, classTiles, kMmaThreads, kMmaBackwardSharedBytes, s, a);
  } else if (cfg.deterministic) {
    const auto ownRows = &linearCeBackwardKernel<Gemm, kBackwardOwnRows>;
    const auto ownVocab = &linearCeBackwardKernel<Gemm, kBackwardOwnVocab>;
    const dim3 owners(static_cast<unsigned>(plan.rowTiles), static_cast<unsigned>(plan.ownerSplits));
    CUTLOSS_RUN(op, ownRows, owners, kTileThreads, 0, s, a);
    CUTLOSS_RUN(op, ownVocab, static_cast<unsigned>(plan.vocabTiles), kTileThreads, 0, s, a);
  } else {
    const auto atomic = &linearCeBackwardKernel<Gemm, kBackwardAtomic>;
    CUTLOSS_RUN(op, atomic, tiles, kTileThreads, 0, s, a);
  }
  if (a.dEPartials != nullptr) CUTLOSS_RUN(op, linearCeSumPartialsKernel, elementBlocks(N * D), 256, 0, s, a);
  if (a.dE != out.dE.data) CUTLOSS_RUN(op, storeAccumulatorKernel<256>, elementBlocks(N * D), 256, 0, s, a.dE, out.dE);
  if (a.dW != out.dW.data) CUTLOSS_RUN(op, storeAccumulatorKernel<256>, elementBlocks(V * D), 256, 0, s, a.dW, out.dW);
}

void linearCrossEntropy(const MatrixRef& E, const MatrixRef& W, const float* bias, const int32_t* labels,
                        const LossParams& p, const LinearCeConfig& c, const LinearCeOut& out, void* workspace,
                        Stream s) {
  const char* op = "linearCrossEntropy";
  const int64_t N = E.rows;
  const int64_t D = E.cols;
  const int64_t V = W.rows;
  if (N < 0 || D < 1 || V < 1 || D > INT32_MAX - kLinearCeTile || V > INT32_MAX - kLinearCeTile ||
      N > INT32_MAX - kLinearCeTile) {
    throwInvalid(op, "E [" + std::to_string(N) + " × " + std::to_string(D) + "], W [" + std::to_string(V) +
                         " × ...] (need 1 <= D, V and N, D, V < 2^31 - 64)");
  }
  if (W.cols != D) throwInvalid(op, "W has " + std::to_string(W.cols) + " columns, E has " + std::to_string(D));
  if (p.vocab != V) throwInvalid(op, "vocab " + std::to_string(p.vocab) + " but W has " + std::to_string(V) + " rows");
  if (p.normalizer < kNormalizerSoftmax || p.normalizer > kNormalizerGumbel) {
    throwInvalid(op, "unknown normalizer " + std::to_string(p.normalizer));
  }
  const bool withGrad = out.scaleWeighted != nullptr;
  if (withGrad) {
    checkSameShape(op, "dE", N, D, out.dE.rows, out.dE.cols);
    checkSameShape(op, "dW", V, D, out.dW.rows, out.dW.cols);
  }
  if (N == 0) return;
  const LinearCePlan plan =
      linearCrossEntropyPlan(N, D, V, p.normalizer, c, withGrad, withGrad ? out.dE.dtype : DType::F32,
                             withGrad ? out.dW.dtype : DType::F32);
  auto* base = static_cast<unsigned char*>(workspace);
  const auto part = [base](size_t offset) { return offset == kLinearCeAbsent ? nullptr : base + offset; };

  LinearCeArgs a;
  a.E = E;
  a.W = W;
  a.bias = bias;
  a.labels = labels;
  a.p = p;
  a.filterEps = c.filterEps;
  a.rowTiles = plan.rowTiles;
  a.vocabTiles = static_cast<int32_t>(plan.vocabTiles);
  a.splits = plan.splits;
  a.tilesPerSplit = plan.tilesPerSplit;
  a.ownerSplits = plan.ownerSplits;
  a.ownerTilesPerSplit = plan.ownerTilesPerSplit;
  a.counters = reinterpret_cast<uint32_t*>(part(plan.counters));
  a.rowStats = reinterpret_cast<float*>(part(plan.rowStats));
  a.partials = reinterpret_cast<float*>(part(plan.partials));
  a.candidates = reinterpret_cast<float*>(part(plan.candidates));
  a.michelot = reinterpret_cast<float*>(part(plan.michelot));
  a.scaleWeighted = out.scaleWeighted;
  a.scaleUnweighted = out.scaleUnweighted;
  // f32 gradients accumulate in place; bf16 ones in the fp32 workspace
  a.dE = withGrad ? (plan.dEAccum != kLinearCeAbsent ? reinterpret_cast<float*>(part(plan.dEAccum))
                                                    : static_cast<float*>(out.dE.data))
                  : nullptr;
  a.dW = withGrad ? (plan.dWAccum != kLinearCeAbsent ? reinterpret_cast<float*>(part(plan.dWAccum))
                                                    : static_cast<float*>(out.dW.data))
                  : nullptr;
  a.dBias = withGrad ? out.dBias : nullptr;
  a.dEPartials = withGrad ? reinterpret_cast<float*>(part(plan.dEPartials)) : nullptr;
  a.meanRow = reinterpret_cast<float*>(part(plan.meanRow));
  a.orderKeys = reinterpret_cast<uint64_t*>(part(plan.orderKeys));
  a.order = reinterpret_cast<int32_t*>(part(plan.order));

  const bool bothBf16 = E.dtype == DType::BF16 && W.dtype == DType::BF16;
  const bool bothF32 = E.dtype == DType::F32 && W.dtype == DType::F32;
  const bool tensorCores = c.gemm == TileGemm::Wmma || (c.gemm == TileGemm::Auto && (bothBf16 || c.tf32));
  // The mma forward copies 16-byte row segments: rows must be 16-byte multiples at 16-byte aligned bases.
  const int64_t rowBytes = D * (bothBf16 ? 2 : 4);
  const bool aligned = rowBytes % 16 == 0 && reinterpret_cast<uintptr_t>(E.data) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(W.data) % 16 == 0;
  ForwardPath path = ForwardPath::FloatTile;
  // harmonic logits take the FloatTile kernels, whose epilogue has each element's row and class norms at hand
  const bool harmonic = p.harmonicExponent > 0.0f;
  if (tensorCores && aligned && p.normalizer != kNormalizerSparsemax && !harmonic && (bothBf16 || bothF32)) {
    path = bothBf16 ? ForwardPath::MmaBf16 : ForwardPath::MmaTf32;
  }
  if (!tensorCores) {
    runLinearCrossEntropy<FmaTile>(a, plan, out, c, path, s);
  } else if (bothBf16) {
    runLinearCrossEntropy<WmmaBf16Tile>(a, plan, out, c, path, s);
  } else {
    runLinearCrossEntropy<WmmaTf32Tile>(a, plan, out, c, path, s);
  }
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
