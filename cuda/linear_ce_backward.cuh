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
//      (k-major, so ldmatrix.trans). Warps 0–3 compute dE rows 32w.. (A = G, ldmatrix), warps 4–7
//      dW classes 32(w − 4).. (A = Gᵀ, ldmatrix.trans of the same tile) for the slice. dW is folded into
//      its fp32 accumulator at every step (each tile has its own classes); dE, the same rows for
//      both tiles, stays in registers across the pair's steps of a slice and is folded in once:
//      the reductions into L2, which bound this kernel, are 3 per element of a pair, not 4.
//
// Deterministic mode runs the same steps as two owner kernels, each doing half of step 3 with plain
// adds to what it alone writes: kBackwardOwnRows, grid (row blocks × owner splits), folds dE into its
// split's own buffer (linearCeSumPartialsKernel adds the buffers in split order); kBackwardOwnVocab,
// one block per class tile, walks the row blocks in order, two at a time: its pair is two row blocks'
// G of the one class tile, so dW is held across the pair's steps and folded in once, as dE is above.
// Each recomputes the logits, so a kept tile costs four tile products instead of three; both fill the GPU.
//
// Included by linear_cross_entropy.cu inside its kernel namespace, after LinearCeArgs, ThreadRow
// and threadRow, which it uses.
#pragma once

constexpr int kGradTileBytes = kMmaBlockRows * kMmaBlockCols * 2;  // G in bf16: 32 KiB
constexpr int kGradPairTiles = 2;  // class tiles whose dE products share one flush
constexpr int kMmaBackwardSharedBytes = kMmaRingBytes + kGradPairTiles * kGradTileBytes + 2 * kMmaBlockCols * 4 +
                                        kGradPairTiles * kMmaBlockRows * static_cast<int>(sizeof(ThreadRow)) +
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

/** p[0] += x, p[1] += y, p 8-byte aligned: for an owner one 8-byte load and store, half the L2 requests of two;
 *  atomic, one vector reduction where the GPU has it (sm_90: red.global.add.v2.f32), else two. */
__device__ __forceinline__ void addPair(float* p, float x, float y, bool atomic) {
#if defined(__CUDACC__)
  if (atomic) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(x, y));
#else
    atomicAdd(p, x);
    atomicAdd(p + 1, y);
#endif
    return;
  }
  float2 v = *reinterpret_cast<const float2*>(p);
  v.x += x;
  v.y += y;
  *reinterpret_cast<float2*>(p) = v;
#else
  addTo(p, x, atomic);
  addTo(p + 1, y, atomic);
#endif
}

/** Adds a warp's 16 × 32 fragment tile to acc rows base + row0.., columns d0.. (row stride ld), within rows × cols;
 *  with `rows` (shared, tile row → matrix row) the rows are rows[row0 + ..] instead. Atomic: by reductions;
 *  otherwise the block owns these elements. A lane's two adjacent columns go as one pair where aligned. */
template <bool Atomic>
__device__ __forceinline__ void flushFragments(const float (&c)[4][4], float* acc, int64_t base, int row0, int64_t rowEnd,
                                               int64_t d0, int64_t cols, const int32_t* rows = nullptr) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane / 4, t = lane % 4;
  // d is even: pairs are aligned when every row starts 8-byte aligned (the mma path's D is a multiple of 8);
  // reductions go in pairs only where one instruction takes both
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kPairs = true;
#else
  constexpr bool kPairs = !Atomic;
#endif
  const bool pairs = kPairs && cols % 2 == 0 && reinterpret_cast<uintptr_t>(acc) % 8 == 0;
CUTLOSS_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t at = base + row0 + g + 8 * h;
    if (at >= rowEnd) continue;
    const int64_t r = rows != nullptr ? static_cast<int64_t>(rows[row0 + g + 8 * h]) : at;
CUTLOSS_UNROLL
    for (int nt = 0; nt < 4; ++nt) {
      const int64_t d = d0 + nt * 8 + 2 * t;
      if (pairs && d + 1 < cols) {
        addPair(acc + r * cols + d, c[nt][2 * h], c[nt][2 * h + 1], Atomic);
        continue;
      }
CUTLOSS_UNROLL
      for (int j = 0; j < 2; ++j) {
        if (d + j < cols) addTo(acc + r * cols + d + j, c[nt][2 * h + j], Atomic);  // atomic: result unused, a reduction (red)
      }
    }
  }
}

/** A warp's product in step 3, as a type: dE (A = G) or dW (A = Gᵀ). */
template <bool DE>
struct WarpRole {
  static constexpr bool kDE = DE;
};

/** The gathered W rows of tile u of a pair: a select per pointer (a dynamically indexed array would live in local memory). */
__device__ __forceinline__ MmaGatheredRows pairRows(const MmaGatheredRows& first, const MmaGatheredRows& second, int u) {
  MmaGatheredRows r;
CUTLOSS_UNROLL
  for (int i = 0; i < kMmaCopiesPerOperand; ++i) r.row[i] = u == 0 ? first.row[i] : second.row[i];
  return r;
}

/**
 * Steps 1–3 for a pair of tiles, with the block's rows[] already holding the rows' constants: row block
 * r0 and the class tiles pt, pt + 1 of [colBegin, colEnd) in walk order, or (kBackwardOwnVocab) row
 * blocks r0, r0 + 128 (pairSize of them; rows[128..] the second's) and class tile pt. Mode says which of
 * dE (into `dE`), dW and dBias it folds in, and how (BackwardMode).
 */
template <int Mode>
__device__ __forceinline__ void backwardPair(const LinearCeArgs& a, unsigned char* ring, unsigned char* gTiles,
                                             float* biasSums, const ThreadRow* rows, int32_t* pairClasses, int64_t r0,
                                             int64_t colBegin, int64_t colEnd, int pt, int pairSize, float* dE) {
  constexpr bool kAtomic = Mode == kBackwardAtomic;
  constexpr bool kFoldsDE = Mode != kBackwardOwnVocab;
  constexpr bool kFoldsDW = Mode != kBackwardOwnRows;
  constexpr bool kRowPair = Mode == kBackwardOwnVocab;  // the pair's tiles share classes, not rows
  const int64_t N = a.E.rows;
  const int64_t D = a.E.cols;
  const int64_t rowBytes = D * 2;
  const int kStages = static_cast<int>((rowBytes + kMmaRowBytes - 1) / kMmaRowBytes);  // also the D-slices
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int wm = warp / 4, wn = warp % 4;
  const int g = lane / 4, t = lane % 4;
  const auto rowsOf = [&](int u) { return MmaRows{static_cast<const unsigned char*>(a.E.data), rowBytes, r0 + (kRowPair ? u * kMmaBlockRows : 0), N}; };
  const auto classBase = [&](int u) { return colBegin + static_cast<int64_t>(pt + (kRowPair ? 0 : u)) * kMmaBlockCols; };

  MmaGatheredRows wRowsOf[kGradPairTiles];  // indexed only by unrolled loops and pairRows
  bool keptOf[kGradPairTiles];
CUTLOSS_UNROLL
  for (int u = 0; u < kGradPairTiles; ++u) keptOf[u] = false;
CUTLOSS_UNROLL
  for (int u = 0; u < kGradPairTiles; ++u) {
    if (u >= pairSize) break;
    const int64_t c0 = classBase(u);
    const MmaRows eRows = rowsOf(u);
    const ThreadRow* tileRows = rows + (kRowPair ? u * kMmaBlockRows : 0);
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
        const ThreadRow& row = tileRows[m];
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
    if (kFoldsDE && threadIdx.x == 0) {  // each (row block, class tile) is counted once
      atomicAdd(a.counters + kCounterVisited, 1u);
      if (!keep) atomicAdd(a.counters + kCounterSkipped, 1u);
    }
    // one add per column and block: the two warp rows' sums in a fixed order
    if (kFoldsDW && keep && a.dBias != nullptr && threadIdx.x < kMmaBlockCols && c0 + threadIdx.x < colEnd) {
      addTo(a.dBias + classes[threadIdx.x], biasSums[threadIdx.x] + biasSums[kMmaBlockCols + threadIdx.x], kAtomic);
    }
  }
  // uniform: the votes are the block's
  const int keptCount = (keptOf[0] ? 1 : 0) + (pairSize > 1 && keptOf[1] ? 1 : 0);
  if (keptCount == 0) return;
  const int firstKept = keptOf[0] ? 0 : 1;
  // an owner kernel copies only the operand its product reads: the other's rows read as zeros, unread
  const MmaRows eFirst = rowsOf(0);
  const MmaRows eSecond = rowsOf(kRowPair && pairSize > 1 ? 1 : 0);
  const MmaRows noERows{eFirst.base, rowBytes, r0, r0};
  const MmaGatheredRows noRows{};
  const MmaGatheredRows wRowsFirst = kFoldsDE ? wRowsOf[0] : noRows;
  const MmaGatheredRows wRowsSecond = !kFoldsDE ? noRows : pairSize > 1 ? wRowsOf[1] : wRowsOf[0];

  // 3. per D-slice of 32 columns and kept tile u: dW[classes u, slice] += G_uᵀ·E[rows u, slice], and
  //    dE[rows u, slice] += G_u·W[classes u, slice]; the pair's shared rows' dE (or shared classes' dW)
  //    held until the slice's last kept tile
  const auto tileOfStep = [&](int step) { return keptCount == 2 ? step % 2 : firstKept; };
  const auto load = [&](unsigned char* stage, int step) {
    const int s = step / keptCount;
    const int u = tileOfStep(step);
    const MmaRows eSlice = !kFoldsDW ? noERows : u == 0 ? eFirst : eSecond;
    mmaLoadStage(stage, eSlice, pairRows(wRowsFirst, wRowsSecond, u), static_cast<int64_t>(s) * kMmaRowBytes);
  };
  // Warps in step 3: atomic mode gives the two products four warps each, 32 × 32 apiece (rows or
  // classes × slice columns: 4 ldmatrix per 8 mma, where 16 × 32 tiles of both take 6); an owner's
  // one product takes all eight, 16 × 32 each.
  constexpr int kWarpTiles = kFoldsDE && kFoldsDW ? 2 : 1;  // m16 tiles per warp
  const bool dEWarp = kFoldsDE && (!kFoldsDW || warp < 4);  // uniform per warp
  const int warpRow0 = 16 * kWarpTiles * (kWarpTiles == 2 ? warp % 4 : warp);  // its G rows (dE) or classes (dW)
  // dE, or dW of row pairs, is held across the pair's steps of a slice; atomic mode's dW is one tile's
  const bool hold = dEWarp || kRowPair;
  float fragments[kWarpTiles][4][4];
  mmaRingLoop(ring, kStages * keptCount, load, [&](const unsigned char* stage, int step) {
    const int s = step / keptCount;
    const int u = tileOfStep(step);
    const unsigned char* gTile = gTiles + u * kGradTileBytes;
    const unsigned char* sE = stage;
    const unsigned char* sW = stage + kMmaBlockRows * kMmaRowBytes;
    const bool sliceStart = step % keptCount == 0;
    const bool sliceEnd = step % keptCount == keptCount - 1;
CUTLOSS_UNROLL
    for (int mt = 0; mt < kWarpTiles; ++mt)
CUTLOSS_UNROLL
      for (int nt = 0; nt < 4; ++nt)
CUTLOSS_UNROLL
        for (int i = 0; i < 4; ++i) {
          if (!hold || sliceStart) fragments[mt][nt][i] = 0.0f;
        }
    // each role's k-loop compiled apart: one branch per step, not one per k-step
    const auto products = [&](auto role) {
      constexpr bool kDE = decltype(role)::kDE;
CUTLOSS_UNROLL
      for (int ks = 0; ks < kMmaBlockCols / 16; ++ks) {  // k: classes for dE, rows for dW
        uint32_t aTiles[kWarpTiles][4], b[4][2];
CUTLOSS_UNROLL
        for (int mt = 0; mt < kWarpTiles; ++mt) {
          if (kDE) {
            // A = G rows warpRow0 + 16·mt.., classes 16·ks..: matrices (rows 0–7 | 8–15) × (chunk 2ks | 2ks + 1)
            ldmatrixX4(aTiles[mt], gTile + gradSwizzle(warpRow0 + 16 * mt + (lane % 8) + 8 * ((lane / 8) % 2), 2 * ks + lane / 16));
          } else {
            // A = Gᵀ classes warpRow0 + 16·mt.., rows 16·ks..: stored blocks (rows 0–7, classes 0–7),
            // (0–7, 8–15), (8–15, 0–7), (8–15, 8–15), each transposed
            ldmatrixX4Trans(aTiles[mt], gTile + gradSwizzle(16 * ks + (lane % 8) + 8 * (lane / 16), (warpRow0 + 16 * mt) / 8 + (lane / 8) % 2));
          }
        }
        kMajorBFragments(kDE ? sW : sE, 16 * ks, b);
CUTLOSS_UNROLL
        for (int mt = 0; mt < kWarpTiles; ++mt)
CUTLOSS_UNROLL
          for (int nt = 0; nt < 4; ++nt) mmaBf16(fragments[mt][nt], aTiles[mt], b[nt]);
      }
    };
    if (dEWarp) {
      products(WarpRole<true>{});
    } else {
      products(WarpRole<false>{});
    }
    const int64_t d0 = static_cast<int64_t>(s) * (kMmaRowBytes / 2);
    if (hold && !sliceEnd) return;
CUTLOSS_UNROLL
    for (int mt = 0; mt < kWarpTiles; ++mt) {
      if (dEWarp) {
        flushFragments<kAtomic>(fragments[mt], dE, r0, warpRow0 + 16 * mt, N, d0, D);
      } else {
        flushFragments<kAtomic>(fragments[mt], a.dW, classBase(u), warpRow0 + 16 * mt, colEnd, d0, D, pairClasses + u * kMmaBlockCols);
      }
    }
  });
}

// One block per SM: ~138 KiB of shared memory, and under a 128-register cap ptxas spills the
// logit fragments; with 1 it uses ~200 registers and no local memory.
template <int Mode>
__global__ void __launch_bounds__(kMmaThreads, 1) linearCeBackwardMmaKernel(LinearCeArgs a) {
  CUTLOSS_DYNAMIC_SHARED(uint4, sharedWords);  // uint4: 16-byte aligned for cp.async and ldmatrix
  unsigned char* ring = reinterpret_cast<unsigned char*>(sharedWords);
  unsigned char* gTiles = ring + kMmaRingBytes;  // [2]: G of the pair's tiles
  float* biasSums = reinterpret_cast<float*>(gTiles + kGradPairTiles * kGradTileBytes);  // [2 warp rows][128 classes]
  ThreadRow* rows = reinterpret_cast<ThreadRow*>(biasSums + 2 * kMmaBlockCols);  // [2 × 128]: the second for row pairs
  int32_t* pairClasses = reinterpret_cast<int32_t*>(rows + kGradPairTiles * kMmaBlockRows);  // [2][128]: the tiles' classes, in walk order
  const int64_t N = a.E.rows;
  const int64_t V = a.W.rows;
  /** rows[] for `count` rows from r0; false (uniform) when none of them has a gradient. */
  const auto loadRows = [&](int64_t r0, int count) {
    bool anyRow = false;
    if (static_cast<int>(threadIdx.x) < count) {
      rows[threadIdx.x] = threadRow(a, r0 + threadIdx.x);
      anyRow = rows[threadIdx.x].valid;
    }
    return __syncthreads_or(anyRow) != 0;
  };
  if (threadIdx.x == 0 && Mode != kBackwardOwnVocab) atomicAdd(a.counters + kCounterMmaBackwardBlocks, 1u);

  if (Mode == kBackwardOwnVocab) {
    // a class tile, every row block in order, two at a time: the one writer of its dW rows and dBias
    static_assert(kGradPairTiles * kMmaBlockRows == kMmaThreads, "a thread per row of a pair of row blocks");
    const int64_t colBegin = static_cast<int64_t>(blockIdx.x) * kMmaBlockCols;
    const int64_t colEnd = min(colBegin + kMmaBlockCols, V);
    for (int64_t r0 = 0; r0 < N; r0 += kGradPairTiles * kMmaBlockRows) {
      const int rowBlocks = static_cast<int>(min(static_cast<int64_t>(kGradPairTiles), (N - r0 + kMmaBlockRows - 1) / kMmaBlockRows));
      // the previous pair's readers of rows[] are past its keep votes
      if (!loadRows(r0, rowBlocks * kMmaBlockRows)) continue;
      backwardPair<Mode>(a, ring, gTiles, biasSums, rows, pairClasses, r0, colBegin, colEnd, 0, rowBlocks, nullptr);
    }
    return;
  }
  // Splits vary fastest: the blocks in flight share few row blocks (their dE rows) and walk the
  // same class tiles in step (their dW rows), so the accumulators they add to stay in L2.
  const int splits = Mode == kBackwardAtomic ? a.splits : a.ownerSplits;
  const int perSplit = Mode == kBackwardAtomic ? a.tilesPerSplit : a.ownerTilesPerSplit;
  const int split = static_cast<int>(blockIdx.x % static_cast<unsigned>(splits));
  const int64_t r0 = static_cast<int64_t>(blockIdx.x / static_cast<unsigned>(splits)) * kMmaBlockRows;
  const int64_t colBegin = static_cast<int64_t>(split) * perSplit * kTile;
  const int64_t colEnd = min(static_cast<int64_t>(min(split * perSplit + perSplit, a.vocabTiles)) * kTile, V);
  const int classTiles = static_cast<int>((colEnd - colBegin + kMmaBlockCols - 1) / kMmaBlockCols);
  float* dE = Mode == kBackwardAtomic ? a.dE : ownerDE(a, static_cast<unsigned>(split));
  if (!loadRows(r0, kMmaBlockRows)) return;
  for (int pt = 0; pt < classTiles; pt += kGradPairTiles) {
    backwardPair<Mode>(a, ring, gTiles, biasSums, rows, pairClasses, r0, colBegin, colEnd, pt,
                       min(kGradPairTiles, classTiles - pt), dE);
  }
}
