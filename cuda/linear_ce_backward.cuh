// The fused linear + cross-entropy backward on tensor cores (bf16 E and W): each 128 × 128
// (rows × classes) tile of the gradient G = ∂loss/∂z is formed once and reused by two mma.sync
// products, dE += G·W and dW += Gᵀ·E, so a kept tile costs three tile products on tensor cores
// and nothing staged element by element.
//
// Grid (row blocks of 128 × vocabulary splits, splits fastest): the block walks the class tiles of its split,
// in the vocabulary order a.order gives (classes by mean logit when filtering: W rows are gathered,
// 16-byte aligned like any row; identity otherwise), two class tiles at a time. For each tile of a pair:
//   1. the logits, recomputed on the forward's cp.async ring (mmaLoadStage, mmaStageProduct);
//   2. G from the accumulator fragments (cuda/math/loss.cuh: gradCoefficient and the softcap's
//      slope), rounded once to bf16 into the pair's swizzled 32 KiB shared tile; a tile whose every
//      coefficient is below filterEps is skipped here, before any gradient product;
// then, for the pair's kept tiles:
//   3. D-slices of 32 columns, streamed through the same ring, one step per slice and kept tile: a
//      stage holds E[rows, slice] and W[classes, slice], which are exactly the two B operands
//      (k-major, so ldmatrix.trans). Warp w computes dE rows 16w.. (A = G, ldmatrix) and dW
//      classes 16w.. (A = Gᵀ, ldmatrix.trans of the same tile) for the slice. dW is folded into
//      its fp32 accumulator at every step (each tile has its own classes); dE, the same rows for
//      both tiles, stays in registers across the pair's steps of a slice and is folded in once:
//      the reductions into L2, which bound this kernel, are 3 per element of a pair, not 4.
// Atomic mode only: the deterministic backward keeps the owner kernels of linear_cross_entropy.cu.
//
// Included by linear_cross_entropy.cu inside its kernel namespace, after LinearCeArgs, ThreadRow
// and threadRow, which it uses.
#pragma once

constexpr int kGradTileBytes = kMmaBlockRows * kMmaBlockCols * 2;  // G in bf16: 32 KiB
constexpr int kGradPairTiles = 2;  // class tiles whose dE products share one flush
constexpr int kMmaBackwardSharedBytes = kMmaRingBytes + kGradPairTiles * kGradTileBytes + 2 * kMmaBlockCols * 4 +
                                        kMmaBlockRows * static_cast<int>(sizeof(ThreadRow)) +
                                        kGradPairTiles * kMmaBlockCols * 4;

/** Byte offset of 16-byte chunk c (8 classes) of row r of the G tile (256-byte rows). The
 *  XOR spreads the 8 rows one ldmatrix reads at one logical chunk over 8 bank groups. */
__device__ __forceinline__ int gradSwizzle(int r, int c) { return r * (kMmaBlockCols * 2) + ((c ^ (r & 7)) << 4); }

/**
 * Runs `total` steps over the ring: step s's stage is loaded by load(stage, s) kMmaStages − 1
 * steps ahead and multiplied by compute(stage, s). Ends with every copy landed and every warp
 * done reading, so the next ring loop may start at once.
 */
template <class Load, class Compute>
__device__ __forceinline__ void mmaRingLoop(unsigned char* ring, int total, Load load, Compute compute) {
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < total) load(ring + s * kMmaStageBytes, s);
    cpAsyncCommit();  // empty groups keep the wait count uniform
  }
  for (int step = 0; step < total; ++step) {
    cpAsyncWait<kMmaStages - 2>();  // this thread's copies of stage `step` have landed ...
    __syncthreads();                // ... and everyone's; the stage read last step is free again
    const int next = step + kMmaStages - 1;
    if (next < total) load(ring + (next % kMmaStages) * kMmaStageBytes, next);
    cpAsyncCommit();
    compute(ring + (step % kMmaStages) * kMmaStageBytes, step);
  }
  cpAsyncWait<0>();
  __syncthreads();  // the ring is free for the next loop
}

/**
 * b[nt] for n8 tiles nt = 0..3 (32 columns, one stage row segment) and classes/rows k0..k0+15 of a
 * k-major stage operand (row = k, 64 bytes = 32 columns): ldmatrix.trans turns each stored 8 × 8
 * (k × n) block into a B fragment. Matrices: (k 0–7, nt), (k 8–15, nt), (k 0–7, nt + 1), (k 8–15, nt + 1).
 */
__device__ __forceinline__ void kMajorBFragments(const unsigned char* operand, int k0, uint32_t (&b)[4][2]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
CUTLOSS_UNROLL
  for (int np = 0; np < 2; ++np) {
    uint32_t x[4];
    ldmatrixX4Trans(x, operand + mmaSwizzle(k0 + (lane % 8) + 8 * ((lane / 8) % 2), 2 * np + lane / 16));
    b[2 * np][0] = x[0];
    b[2 * np][1] = x[1];
    b[2 * np + 1][0] = x[2];
    b[2 * np + 1][1] = x[3];
  }
}

/** Adds a warp's 16 × 32 fragment tile to acc rows base + row0.., columns d0.. (row stride ld), within rows × cols;
 *  with `rows` (shared, tile row → matrix row) the rows are rows[row0 + ..] instead. */
__device__ __forceinline__ void flushFragments(const float (&c)[4][4], float* acc, int64_t base, int row0, int64_t rowEnd,
                                               int64_t d0, int64_t cols, const int32_t* rows = nullptr) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane / 4, t = lane % 4;
CUTLOSS_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t at = base + row0 + g + 8 * h;
    if (at >= rowEnd) continue;
    const int64_t r = rows != nullptr ? static_cast<int64_t>(rows[row0 + g + 8 * h]) : at;
CUTLOSS_UNROLL
    for (int nt = 0; nt < 4; ++nt) {
CUTLOSS_UNROLL
      for (int j = 0; j < 2; ++j) {
        const int64_t d = d0 + nt * 8 + 2 * t + j;
        if (d < cols) atomicAdd(acc + r * cols + d, c[nt][2 * h + j]);  // result unused: a reduction (red)
      }
    }
  }
}

/** The gathered W rows of tile u of a pair: a select per pointer (a dynamically indexed array would live in local memory). */
__device__ __forceinline__ MmaGatheredRows pairRows(const MmaGatheredRows& first, const MmaGatheredRows& second, int u) {
  MmaGatheredRows r;
CUTLOSS_UNROLL
  for (int i = 0; i < kMmaCopiesPerOperand; ++i) r.row[i] = u == 0 ? first.row[i] : second.row[i];
  return r;
}

// One block per SM: ~138 KiB of shared memory, and under a 128-register cap ptxas spills the
// logit fragments; with 1 it uses ~200 registers and no local memory.
__global__ void __launch_bounds__(kMmaThreads, 1) linearCeBackwardMmaKernel(LinearCeArgs a) {
  CUTLOSS_DYNAMIC_SHARED(uint4, sharedWords);  // uint4: 16-byte aligned for cp.async and ldmatrix
  unsigned char* ring = reinterpret_cast<unsigned char*>(sharedWords);
  unsigned char* gTiles = ring + kMmaRingBytes;  // [2]: G of the pair's tiles
  float* biasSums = reinterpret_cast<float*>(gTiles + kGradPairTiles * kGradTileBytes);  // [2 warp rows][128 classes]
  ThreadRow* rows = reinterpret_cast<ThreadRow*>(biasSums + 2 * kMmaBlockCols);
  int32_t* pairClasses = reinterpret_cast<int32_t*>(rows + kMmaBlockRows);  // [2][128]: the tiles' classes, in walk order
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  const int64_t D = a.E.cols;
  // Splits vary fastest: the blocks in flight share few row blocks (their dE rows) and walk the
  // same class tiles in step (their dW rows), so the accumulators they add to stay in L2.
  const int split = static_cast<int>(blockIdx.x % static_cast<unsigned>(a.splits));
  const int64_t r0 = static_cast<int64_t>(blockIdx.x / static_cast<unsigned>(a.splits)) * kMmaBlockRows;
  const int64_t colBegin = static_cast<int64_t>(split) * a.tilesPerSplit * kTile;
  const int64_t colEnd = min(static_cast<int64_t>(min(split * a.tilesPerSplit + a.tilesPerSplit, a.vocabTiles)) * kTile, V);
  const int classTiles = static_cast<int>((colEnd - colBegin + kMmaBlockCols - 1) / kMmaBlockCols);
  const int64_t rowBytes = D * 2;
  const int kStages = static_cast<int>((rowBytes + kMmaRowBytes - 1) / kMmaRowBytes);  // also the D-slices
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int wm = warp / 4, wn = warp % 4;
  const int g = lane / 4, t = lane % 4;

  bool anyRow = false;
  if (threadIdx.x < kMmaBlockRows) {
    rows[threadIdx.x] = threadRow(a, r0 + threadIdx.x);
    anyRow = rows[threadIdx.x].valid;
  }
  if (threadIdx.x == 0) atomicAdd(a.counters + kCounterMmaBackwardBlocks, 1u);
  if (!__syncthreads_or(anyRow)) return;  // uniform: no row of the block has a gradient

  const MmaRows eRows{static_cast<const unsigned char*>(a.E.data), rowBytes, r0, N};
  for (int pt = 0; pt < classTiles; pt += kGradPairTiles) {
    const int pairSize = min(kGradPairTiles, classTiles - pt);
    MmaGatheredRows wRowsOf[kGradPairTiles];  // indexed only by unrolled loops and pairRows
    bool keptOf[kGradPairTiles];
CUTLOSS_UNROLL
    for (int u = 0; u < kGradPairTiles; ++u) keptOf[u] = false;
CUTLOSS_UNROLL
    for (int u = 0; u < kGradPairTiles; ++u) {
      if (u >= pairSize) break;
      const int64_t c0 = colBegin + static_cast<int64_t>(pt + u) * kMmaBlockCols;
      int32_t* classes = pairClasses + u * kMmaBlockCols;
      unsigned char* gTile = gTiles + u * kGradTileBytes;
      __nv_bfloat16* gValues = reinterpret_cast<__nv_bfloat16*>(gTile);
      // the previous readers of `classes` are past a barrier (the pair's last ring loop, or its keep votes)
      if (threadIdx.x < kMmaBlockCols) classes[threadIdx.x] = c0 + threadIdx.x < colEnd ? classAt(a, c0 + threadIdx.x) : -1;
      const MmaGatheredRows wRows = mmaGatherRows(static_cast<const unsigned char*>(a.W.data), rowBytes, a.order, c0, colEnd);
      wRowsOf[u] = wRows;
      const auto load = [&](unsigned char* stage, int s) { mmaLoadStage(stage, eRows, wRows, static_cast<int64_t>(s) * kMmaRowBytes); };

      // 1. the logits of the tile
      float acc[4][4][4];
CUTLOSS_UNROLL
      for (int mt = 0; mt < 4; ++mt)
CUTLOSS_UNROLL
        for (int nt = 0; nt < 4; ++nt)
CUTLOSS_UNROLL
          for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
      mmaRingLoop(ring, kStages, load, [&](const unsigned char* stage, int) { mmaStageProduct<MmaBf16>(stage, wm, wn, acc); });
      // the ring loop's barriers also published `classes`

      // 2. G from the fragments: lane (g, t) holds rows g, g + 8 of each m16 tile, columns 2t, 2t + 1 of each n8 tile
      bool keep = false;
      float columnSums[4][2];
CUTLOSS_UNROLL
      for (int nt = 0; nt < 4; ++nt) columnSums[nt][0] = columnSums[nt][1] = 0.0f;
CUTLOSS_UNROLL
      for (int mt = 0; mt < 4; ++mt) {
CUTLOSS_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int m = wm * kMmaWarpRows + mt * 16 + g + 8 * h;
          const ThreadRow& row = rows[m];
CUTLOSS_UNROLL
          for (int nt = 0; nt < 4; ++nt) {
            const int n = wn * kMmaWarpCols + nt * 8 + 2 * t;
CUTLOSS_UNROLL
            for (int j = 0; j < 2; ++j) {
              const int32_t cls = classes[n + j];  // −1 past the vocabulary
              float gradient = 0.0f;
              if (row.valid && cls >= 0) {
                const bool isLabel = cls == row.label;
                float x = acc[mt][nt][2 * h + j] + (a.bias != nullptr ? a.bias[cls] : 0.0f);
                const float marginSlope = isLabel ? marginLabelSlope(a.p.labelMargin, x) : 1.0f;  // margin softmax
                if (isLabel) x = marginLabelLogit(a.p.labelMargin, x);
                const float z = shiftedEffectiveLogit(x, a.p.softcap, a.p.invTemperature, row.shift);
                const float coef = gradCoefficient(row.rg, z, isLabel, classWeight(a.p, cls));
                if (!(fabsf(coef) * row.invScale < a.filterEps)) keep = true;  // NaN is never filtered
                gradient = coef * effectiveSlope(x, a.p.softcap, a.p.invTemperature) * marginSlope;
              }
              columnSums[nt][j] += gradient;
              gValues[(gradSwizzle(m, n / 8) >> 1) + (n % 8) + j] = __float2bfloat16_rn(gradient);
            }
          }
        }
      }
      // the previous tile's readers of biasSums (its bias flush) are past its keep vote, and a ring loop since
CUTLOSS_UNROLL
      for (int nt = 0; nt < 4; ++nt) {
CUTLOSS_UNROLL
        for (int j = 0; j < 2; ++j) {
          float s = columnSums[nt][j];  // the lane's 8 rows; then the warp's 64 (the lanes of one t)
          s += shuffleXor(s, 4);
          s += shuffleXor(s, 8);
          s += shuffleXor(s, 16);
          if (g == 0) biasSums[wm * kMmaBlockCols + wn * kMmaWarpCols + nt * 8 + 2 * t + j] = s;
        }
      }
      keep = __syncthreads_or(keep) != 0;  // also: G and biasSums are complete
      keptOf[u] = keep;
      if (threadIdx.x == 0) {
        atomicAdd(a.counters + kCounterVisited, 1u);
        if (!keep) atomicAdd(a.counters + kCounterSkipped, 1u);
      }
      // one add per column and block: the two warp rows' sums in a fixed order
      if (keep && a.dBias != nullptr && threadIdx.x < kMmaBlockCols && c0 + threadIdx.x < colEnd) {
        atomicAdd(a.dBias + classes[threadIdx.x], biasSums[threadIdx.x] + biasSums[kMmaBlockCols + threadIdx.x]);
      }
    }
    // uniform: the votes are the block's
    const int keptCount = (keptOf[0] ? 1 : 0) + (pairSize > 1 && keptOf[1] ? 1 : 0);
    if (keptCount == 0) continue;
    const int firstKept = keptOf[0] ? 0 : 1;
    const MmaGatheredRows wRowsFirst = wRowsOf[0];
    const MmaGatheredRows wRowsSecond = pairSize > 1 ? wRowsOf[1] : wRowsOf[0];

    // 3. per D-slice of 32 columns and kept tile u: dW[classes u, slice] += G_uᵀ·E[rows, slice], and
    //    dE[rows, slice] += G_u·W[classes u, slice], held until the slice's last kept tile
    const auto tileOfStep = [&](int step) { return keptCount == 2 ? step % 2 : firstKept; };
    const auto load = [&](unsigned char* stage, int step) {
      const int s = step / keptCount;
      mmaLoadStage(stage, eRows, pairRows(wRowsFirst, wRowsSecond, tileOfStep(step)), static_cast<int64_t>(s) * kMmaRowBytes);
    };
    float dE[4][4];
    mmaRingLoop(ring, kStages * keptCount, load, [&](const unsigned char* stage, int step) {
      const int s = step / keptCount;
      const int u = tileOfStep(step);
      const unsigned char* gTile = gTiles + u * kGradTileBytes;
      const unsigned char* sE = stage;
      const unsigned char* sW = stage + kMmaBlockRows * kMmaRowBytes;
      float dW[4][4];
      const bool sliceStart = step % keptCount == 0;
CUTLOSS_UNROLL
      for (int nt = 0; nt < 4; ++nt)
CUTLOSS_UNROLL
        for (int i = 0; i < 4; ++i) {
          dW[nt][i] = 0.0f;
          if (sliceStart) dE[nt][i] = 0.0f;
        }
CUTLOSS_UNROLL
      for (int ks = 0; ks < kMmaBlockCols / 16; ++ks) {  // k: classes for dE, rows for dW
        uint32_t aG[4], aGt[4], b[4][2];
        // A = G rows 16·warp.., classes 16·ks..: matrices (rows 0–7 | 8–15) × (chunk 2ks | 2ks + 1)
        ldmatrixX4(aG, gTile + gradSwizzle(16 * warp + (lane % 8) + 8 * ((lane / 8) % 2), 2 * ks + lane / 16));
        kMajorBFragments(sW, 16 * ks, b);
CUTLOSS_UNROLL
        for (int nt = 0; nt < 4; ++nt) mmaBf16(dE[nt], aG, b[nt]);
        // A = Gᵀ classes 16·warp.., rows 16·ks..: stored blocks (rows 0–7, classes 0–7), (0–7, 8–15),
        // (8–15, 0–7), (8–15, 8–15), each transposed
        ldmatrixX4Trans(aGt, gTile + gradSwizzle(16 * ks + (lane % 8) + 8 * (lane / 16), 2 * warp + (lane / 8) % 2));
        kMajorBFragments(sE, 16 * ks, b);
CUTLOSS_UNROLL
        for (int nt = 0; nt < 4; ++nt) mmaBf16(dW[nt], aGt, b[nt]);
      }
      const int64_t d0 = static_cast<int64_t>(s) * (kMmaRowBytes / 2);
      const int64_t c0 = colBegin + static_cast<int64_t>(pt + u) * kMmaBlockCols;
      if (step % keptCount == keptCount - 1) flushFragments(dE, a.dE, r0, 16 * warp, N, d0, D);
      flushFragments(dW, a.dW, c0, 16 * warp, colEnd, d0, D, pairClasses + u * kMmaBlockCols);
    });
  }
}
