// The tile products the fused linear + cross-entropy kernels are built on.
//
// MmaTile (first section): the tensor-core product of the forward's logits, C = E·Wᵀ over a
// 128 × 128 block tile, straight from global memory: a ring of kMmaStages stages of 16-byte
// cp.async copies into XOR-swizzled shared memory, ldmatrix.x4, mma.sync (m16n8k16 bf16 or
// m16n8k8 tf32), fp32 accumulators left in registers for an epilogue that reads fragments.
// The forward runs four warps in a 2 × 2 grid, each 64 × 64 (4 × 8 mma tiles: per 32-byte k-step
// of a row, 4 A and 4 B ldmatrix.x4 feed 32 mma: 128 ldmatrix bytes per mma); the backward, which
// keeps a gradient tile beside the ring, eight warps in 2 × 4, each 64 × 32 (6 ldmatrix, 16 mma).
// Each thread's copy and ldmatrix offsets are computed once (the swizzle repeats every 16 rows)
// and the per-tile steps ride as immediates in the instructions' addresses. The dtype is a
// template parameter: no per-element branch; bounds are zero-filled copies (rows past the
// matrix, K past D) that only tail tiles meet.
// Needs D·elementBytes % 16 == 0 and 16-byte aligned bases (the launcher checks, else FloatTile
// products below). All operations come from warp_ops.cuh, so the emulator checks them lane by
// lane.
//
// The FloatTile products (second section): one kTile × kTile
// block of C = A·Bᵀ, summed over k in chunks staged through shared memory, left in a shared
// float tile for the caller's epilogue. It is one swappable piece with three variants, chosen
// per launch (linear_cross_entropy.cu):
//   FmaTile       fp32 FMAs, 4 × 4 outputs per thread: exact fp32 products (f32 inputs)
//   WmmaBf16Tile  nvcuda::wmma m16n16k16, bf16 operands, fp32 accumulation (bf16 inputs)
//   WmmaTf32Tile  nvcuda::wmma m16n16k8, tf32 operands, fp32 accumulation (f32 inputs, opt-in)
// Both operands are given as kTile "rows" by K: A(i, k) for the rows of C, B(j, k) for its
// columns. Loaders return them as floats, 0 outside the matrix, so partial tiles and any K
// need no special case; kContiguousK says which index walks memory, so consecutive threads
// stage consecutive addresses. Under the SIMT emulator the wmma variants run on its fragment
// emulation, so all three are tested without a GPU.
#pragma once

#include <type_traits>
#include <utility>

#include "common.cuh"
#include "warp_ops.cuh"

// Loop unrolling for nvcc (accumulators stay in registers); host compilers decide for themselves.
#if defined(__CUDACC__)
#define CUTLOSS_UNROLL _Pragma("unroll")
#else
#define CUTLOSS_UNROLL
#endif

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

/** f(std::integral_constant<int, i>) for i = 0..N−1: a compile-time index (decltype(arg)::value) for immediate address offsets. */
template <class F, int... I>
__device__ __forceinline__ void staticForEach(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>()), ...);
}
template <int N, class F>
__device__ __forceinline__ void staticFor(F&& f) {
  staticForEach(f, std::make_integer_sequence<int, N>());
}

// ---------------------------------------------------------------- MmaTile

constexpr int kMmaBlockRows = 128;  // block tile: rows of E ...
constexpr int kMmaBlockCols = 128;  // ... × rows of W (classes)
constexpr int kMmaWarpRows = 64;    // backward warp tile 64 × 32: 2 × 4 warps
constexpr int kMmaWarpCols = 32;
constexpr int kMmaThreads = 256;
constexpr int kMmaForwardWarpCols = 64;  // forward warp tile 64 × 64: 2 × 2 warps, two blocks an SM
constexpr int kMmaForwardThreads = 128;
constexpr int kMmaStages = 4;        // copies of stages s+1..s+3 in flight while stage s is multiplied
constexpr int kMmaRowBytes = 64;     // K bytes of one operand row in a stage: 32 bf16 or 16 fp32
constexpr int kMmaChunks = kMmaRowBytes / 16;
constexpr int kMmaStageBytes = (kMmaBlockRows + kMmaBlockCols) * kMmaRowBytes;  // 16 KiB
constexpr int kMmaRingBytes = kMmaStages * kMmaStageBytes;                       // 64 KiB
static_assert(kMmaBlockRows == 2 * kMmaWarpRows && kMmaBlockCols == 4 * kMmaWarpCols, "2 × 4 warps");
static_assert(kMmaThreads == 8 * 32, "eight warps");

/** bf16 operands: m16n8k16, a 16-byte k-step is 16 elements. Exact products for bf16 inputs. */
struct MmaBf16 {
  static constexpr int kElementBytes = 2;
  __device__ __forceinline__ static void convert(uint32_t*, int) {}
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mmaBf16(d, a, b);
  }
};

/** tf32 operands: m16n8k8 (8 elements a k-step), each fp32 rounded by cvt.rna once it is in registers. */
struct MmaTf32 {
  static constexpr int kElementBytes = 4;
  __device__ __forceinline__ static void convert(uint32_t* r, int n) {
CUTLOSS_UNROLL
    for (int i = 0; i < n; ++i) r[i] = toTf32(__uint_as_float(r[i]));
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    mmaTf32(d, a, b);
  }
};

/** Byte offset of 16-byte chunk c of row r in a stage operand. The XOR spreads the 8 rows one
 *  ldmatrix reads (at one logical chunk) over all 8 16-byte bank groups: no conflicts. */
__device__ __forceinline__ int mmaSwizzle(int r, int c) { return r * kMmaRowBytes + ((c ^ ((r >> 1) & 3)) << 4); }

/** Rows [r0, r0 + 128) of a row-major operand in global memory; rows from rowEnd on read as zeros. */
struct MmaRows {
  const unsigned char* base;
  int64_t rowBytes;  // = K · element bytes, a multiple of 16
  int64_t r0;
  int64_t rowEnd;
};

constexpr int kMmaCopiesPerOperand = kMmaBlockRows * kMmaChunks / kMmaThreads;  // copies per thread, operand and stage

/** Issues the copies of stage bytes [kByte0, kByte0 + 64) of both operands into `stage`. */
__device__ __forceinline__ void mmaLoadStage(unsigned char* stage, const MmaRows& a, const MmaRows& b, int64_t kByte0) {
CUTLOSS_UNROLL
  for (int i = 0; i < 2 * kMmaCopiesPerOperand; ++i) {
    const bool isB = i >= kMmaCopiesPerOperand;  // known at compile time once unrolled: no local-memory select
    const int idx = static_cast<int>(threadIdx.x) + (i % kMmaCopiesPerOperand) * kMmaThreads;
    const int r = idx / kMmaChunks;
    const int c = idx % kMmaChunks;  // 4 consecutive threads copy one 64-byte row segment
    const unsigned char* base = isB ? b.base : a.base;
    const int64_t row = (isB ? b.r0 : a.r0) + r;
    const int64_t kb = kByte0 + 16 * c;
    const bool inside = row < (isB ? b.rowEnd : a.rowEnd) && kb < a.rowBytes;  // both operands have K·bytes per row
    const unsigned char* src = inside ? base + row * a.rowBytes + kb : base;  // src-size 0: nothing is read
    cpAsync16(stage + (isB ? kMmaBlockRows * kMmaRowBytes : 0) + mmaSwizzle(r, c), src, inside ? 16 : 0);
  }
}

/** The B rows one thread copies (tile rows threadIdx.x / kMmaChunks + 64·i), gathered by an
 *  index and resolved once per tile; null past the end (zeros). Rows stay 16-byte aligned. */
struct MmaGatheredRows {
  const unsigned char* row[kMmaCopiesPerOperand];
};

/** Rows index[r0 + r] of `base` for the calling thread's copy rows r (index null: r0 + r), below rowEnd. */
__device__ __forceinline__ MmaGatheredRows mmaGatherRows(const unsigned char* base, int64_t rowBytes, const int32_t* index,
                                                         int64_t r0, int64_t rowEnd) {
  MmaGatheredRows g;
CUTLOSS_UNROLL
  for (int i = 0; i < kMmaCopiesPerOperand; ++i) {
    const int64_t row = r0 + (static_cast<int>(threadIdx.x) + i * kMmaThreads) / kMmaChunks;
    g.row[i] = row < rowEnd ? base + (index != nullptr ? static_cast<int64_t>(index[row]) : row) * rowBytes : nullptr;
  }
  return g;
}

/** mmaLoadStage with B's rows gathered (the backward walks the vocabulary in sorted order). */
__device__ __forceinline__ void mmaLoadStage(unsigned char* stage, const MmaRows& a, const MmaGatheredRows& b, int64_t kByte0) {
CUTLOSS_UNROLL
  for (int i = 0; i < 2 * kMmaCopiesPerOperand; ++i) {
    const bool isB = i >= kMmaCopiesPerOperand;
    const int idx = static_cast<int>(threadIdx.x) + (i % kMmaCopiesPerOperand) * kMmaThreads;
    const int r = idx / kMmaChunks;
    const int c = idx % kMmaChunks;
    const int64_t kb = kByte0 + 16 * c;
    const unsigned char* rowStart = isB ? b.row[i % kMmaCopiesPerOperand] : (a.r0 + r < a.rowEnd ? a.base + (a.r0 + r) * a.rowBytes : nullptr);
    const bool inside = rowStart != nullptr && kb < a.rowBytes;
    const unsigned char* src = inside ? rowStart + kb : a.base;  // src-size 0: nothing is read
    cpAsync16(stage + (isB ? kMmaBlockRows * kMmaRowBytes : 0) + mmaSwizzle(r, c), src, inside ? 16 : 0);
  }
}

/** A lane's ldmatrix offsets in a stage, per 32-byte k-step ks, for the first m16 (A) and first
 *  pair of n8 tiles (B) of its warp tile; tile i lies 16·i rows further, the same swizzle. */
struct MmaLaneOffsets {
  int a[2];
  int b[2];
};

/** Offsets for a warp tile at stage rows rowBase (of E) and colBase (of W). */
__device__ __forceinline__ MmaLaneOffsets mmaLaneOffsets(int rowBase, int colBase) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  MmaLaneOffsets o;
CUTLOSS_UNROLL
  for (int ks = 0; ks < 2; ++ks) {
    // A matrices: rows 0–7 | 8–15 of the m16 tile × chunks 2ks | 2ks + 1
    o.a[ks] = mmaSwizzle(rowBase + (lane % 8) + 8 * ((lane / 8) % 2), 2 * ks + lane / 16);
    // B matrices, two n8 tiles: (rows 0–7, chunk 2ks), (0–7, 2ks + 1), (8–15, 2ks), (8–15, 2ks + 1)
    o.b[ks] = kMmaBlockRows * kMmaRowBytes + mmaSwizzle(colBase + (lane % 8) + 8 * (lane / 16), 2 * ks + (lane / 8) % 2);
  }
  return o;
}

/** acc[mt][nt] += the warp's (16·MT) × (8·NT) product over one stage (two 32-byte k-steps). */
template <class Op, int MT, int NT>
__device__ __forceinline__ void mmaWarpProduct(const unsigned char* stage, const MmaLaneOffsets& o, float (&acc)[MT][NT][4]) {
  static_assert(NT % 2 == 0, "B fragments come in pairs of n8 tiles");
CUTLOSS_UNROLL
  for (int ks = 0; ks < 2; ++ks) {
    uint32_t a[MT][4], b[NT][2];
    const unsigned char* sa = stage + o.a[ks];
    const unsigned char* sb = stage + o.b[ks];
    staticFor<MT>([&](auto mtConstant) {  // + 16 rows: the same swizzle, 1 KiB further
      constexpr int mt = decltype(mtConstant)::value;
      ldmatrixX4At<mt * 16 * kMmaRowBytes>(a[mt], sa);
      Op::convert(a[mt], 4);
    });
    staticFor<NT / 2>([&](auto npConstant) {
      constexpr int np = decltype(npConstant)::value;
      uint32_t x[4];
      ldmatrixX4At<np * 16 * kMmaRowBytes>(x, sb);
      Op::convert(x, 4);
      b[2 * np][0] = x[0];
      b[2 * np][1] = x[1];
      b[2 * np + 1][0] = x[2];
      b[2 * np + 1][1] = x[3];
    });
CUTLOSS_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
CUTLOSS_UNROLL
      for (int nt = 0; nt < NT; ++nt) Op::mma(acc[mt][nt], a[mt], b[nt]);
    }
  }
}

/** acc[mt][nt] += the backward warp (wm, wn)'s 64 × 32 product over one stage. */
template <class Op>
__device__ __forceinline__ void mmaStageProduct(const unsigned char* stage, int wm, int wn, float (&acc)[4][4][4]) {
  mmaWarpProduct<Op, 4, 4>(stage, mmaLaneOffsets(wm * kMmaWarpRows, wn * kMmaWarpCols), acc);
}

/**
 * The forward's stage copies: thread i copies 16-byte chunk i % 4 of rows i / 4 + 32·j (j < 4)
 * of each operand, so its shared offsets are one swizzled offset plus 2 KiB steps and its
 * sources one row pointer plus steps of 32 rows. Its rows that exist are j < count (E: once;
 * W: 4 fewer each class tile); the others, and chunks past K, copy with src-size 0 (zeros) from
 * E's first byte: src-size 0 reads nothing, but no address outside the operands is ever issued.
 */
struct MmaStageCopier {
  static constexpr int kRowStep = kMmaForwardThreads / kMmaChunks;  // 32
  static constexpr int kCopies = kMmaBlockRows / kRowStep;          // per operand and stage: 4
  const unsigned char* e;  // the thread's first E row, at its chunk
  const unsigned char* w;  // the thread's first W row of the class tile, at its chunk
  const unsigned char* zero;  // the source of zero-filled copies
  int64_t rowBytes;
  int smem;  // swizzled offset of the first copy
  int chunkBytes;
  int eCount, wCount;  // rows j < count exist (may be ≤ 0)

  __device__ __forceinline__ static int rowCount(int64_t first, int64_t end) {
    return static_cast<int>(max(static_cast<int64_t>(0), min(static_cast<int64_t>(kCopies), (end - first + kRowStep - 1) / kRowStep)));
  }
  /** E rows [r0, r0 + 128) below rowEnd; W rows [c0, c0 + 128) below cEnd, then the next 128 at each nextW. */
  __device__ __forceinline__ MmaStageCopier(const unsigned char* eBase, int64_t r0, int64_t rowEnd, const unsigned char* wBase,
                                            int64_t c0, int64_t cEnd, int64_t rowBytes_)
      : zero(eBase), rowBytes(rowBytes_) {
    const int tid = static_cast<int>(threadIdx.x);
    chunkBytes = 16 * (tid % kMmaChunks);
    smem = mmaSwizzle(tid / kMmaChunks, tid % kMmaChunks);
    e = eBase + (r0 + tid / kMmaChunks) * rowBytes + chunkBytes;
    eCount = rowCount(r0 + tid / kMmaChunks, rowEnd);
    w = wBase + (c0 + tid / kMmaChunks) * rowBytes + chunkBytes;
    wCount = static_cast<int>(max(static_cast<int64_t>(-(1 << 30)), min(static_cast<int64_t>(1 << 30),
                                                                         (cEnd - c0 - tid / kMmaChunks + kRowStep - 1) / kRowStep)));
  }
  __device__ __forceinline__ void nextW() {
    w += kMmaBlockCols * rowBytes;
    wCount -= kMmaBlockCols / kRowStep;
  }
  /** Issues the copies of row bytes [kByte0, kByte0 + 64) of both operands into `stage`. */
  __device__ __forceinline__ void load(unsigned char* stage, int64_t kByte0) const {
    const bool kInside = kByte0 + chunkBytes < rowBytes;
    const int ec = kInside ? eCount : 0;
    const int wc = kInside ? wCount : 0;
    const int64_t step = kRowStep * rowBytes;
    unsigned char* dst = stage + smem;
    const unsigned char* src = e + kByte0;
    staticFor<kCopies>([&](auto jConstant) {  // + 32 rows: the same swizzle, 2 KiB further
      constexpr int j = decltype(jConstant)::value;
      cpAsync16At<j * kRowStep * kMmaRowBytes>(dst, j < ec ? src + j * step : zero, j < ec ? 16 : 0);
    });
    src = w + kByte0;
    staticFor<kCopies>([&](auto jConstant) {
      constexpr int j = decltype(jConstant)::value;
      cpAsync16At<kMmaBlockRows * kMmaRowBytes + j * kRowStep * kMmaRowBytes>(dst, j < wc ? src + j * step : zero, j < wc ? 16 : 0);
    });
  }
};
static_assert(MmaStageCopier::kRowStep % 16 == 0, "copy rows 32 apart share the swizzle");

// ---------------------------------------------------------------- FloatTile products

constexpr int kTile = kLinearCeTile;
constexpr int kTileThreads = 256;   // 8 warps
constexpr int kTileLd = kTile + 4;  // row stride of shared float tiles: a multiple of 4 (wmma), rows shift banks

typedef float FloatTile[kTile][kTileLd];

/** Kernels declare their tiles through this: wmma::store_matrix_sync needs 32-byte aligned rows. */
struct alignas(32) SharedTile {
  FloatTile v;
};

/** Stages operand rows [0, kTile) × k [k0, k0 + KC) through store(row, kk, value). */
template <int KC, class Loader, class Store>
__device__ __forceinline__ void stageOperand(const Loader& src, int k0, Store store) {
  for (int idx = threadIdx.x; idx < kTile * KC; idx += kTileThreads) {
    const int i = Loader::kContiguousK ? idx / KC : idx % kTile;
    const int kk = Loader::kContiguousK ? idx % KC : idx / kTile;
    store(i, kk, src.at(i, k0 + kk));
  }
}

/** fp32 FMAs: thread (ty, tx) owns C rows ty + 16·i and columns tx + 16·j, so a warp reads
 *  16 consecutive words of the B stage (no bank conflicts) and broadcasts 2 of the A stage. */
struct FmaTile {
  static constexpr int kK = 16;
  struct Stage {
    float a[kK][kTile + 1];  // a[k][i] = A(i, k)
    float b[kK][kTile + 1];  // b[k][j] = B(j, k)
  };
  /** One stage per kernel, whatever loaders its products use. */
  __device__ static Stage& stage() {
    __shared__ Stage st;
    return st;
  }

  template <class LoadA, class LoadB>
  __device__ static void product(const LoadA& a, const LoadB& b, int K, FloatTile& c) {
    Stage& st = stage();
    const int ty = threadIdx.x / 16;
    const int tx = threadIdx.x % 16;
    float acc[4][4];
CUTLOSS_UNROLL
    for (int i = 0; i < 4; ++i) {
CUTLOSS_UNROLL
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += kK) {
      __syncthreads();  // the previous chunk (or product) is read before the stage is overwritten
      stageOperand<kK>(a, k0, [&](int i, int k, float v) { st.a[k][i] = v; });
      stageOperand<kK>(b, k0, [&](int j, int k, float v) { st.b[k][j] = v; });
      __syncthreads();
CUTLOSS_UNROLL
      for (int k = 0; k < kK; ++k) {
        float av[4], bv[4];
CUTLOSS_UNROLL
        for (int i = 0; i < 4; ++i) av[i] = st.a[k][ty + 16 * i];
CUTLOSS_UNROLL
        for (int j = 0; j < 4; ++j) bv[j] = st.b[k][tx + 16 * j];
CUTLOSS_UNROLL
        for (int i = 0; i < 4; ++i) {
CUTLOSS_UNROLL
          for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
      }
    }
    __syncthreads();  // the caller is done reading c (the previous product)
CUTLOSS_UNROLL
    for (int i = 0; i < 4; ++i) {
CUTLOSS_UNROLL
      for (int j = 0; j < 4; ++j) c[ty + 16 * i][tx + 16 * j] = acc[i][j];
    }
    __syncthreads();  // c is complete for every thread
  }
};

/** bf16 operands: exact for bf16 inputs; a gradient tile is rounded to nearest even. */
__device__ __forceinline__ void stageValue(__nv_bfloat16& dst, float v) { dst = __float2bfloat16_rn(v); }
/** tf32 operands (10 mantissa bits), rounded once when staged, as the hardware expects. */
__device__ __forceinline__ void stageValue(float& dst, float v) { dst = nvcuda::wmma::__float_to_tf32(v); }

/**
 * Tensor cores through nvcuda::wmma. Warp w computes C rows 16·(w / 2) and columns
 * 32·(w % 2) as two 16 × 16 accumulators. B is staged as B(j, k) at [j][k], which is the
 * K × kTile matrix_b in column-major order. Element is __nv_bfloat16 (m16n16k16) or
 * wmma::precision::tf32 (m16n16k8, staged as tf32-rounded floats).
 */
template <class Element, int KStep, class StageType, int KC, int Pad>
struct WmmaTile {
  static constexpr int kK = KC;
  static constexpr int kLd = KC + Pad;  // 16-byte multiple (wmma), rows shift banks

  struct alignas(32) Stage {  // fragment loads need 32-byte aligned rows
    StageType a[kTile * kLd];
    StageType b[kTile * kLd];
  };

  /** One stage per kernel, whatever loaders its products use. */
  __device__ static Stage& stage() {
    __shared__ Stage st;
    return st;
  }

  template <class LoadA, class LoadB>
  __device__ static void product(const LoadA& a, const LoadB& b, int K, FloatTile& c) {
    namespace wmma = nvcuda::wmma;
    Stage& st = stage();
    const int warp = threadIdx.x / 32;
    const int i0 = (warp / 2) * 16;
    const int j0 = (warp % 2) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, KStep, float> acc0, acc1;
    wmma::fill_fragment(acc0, 0.0f);
    wmma::fill_fragment(acc1, 0.0f);
    for (int k0 = 0; k0 < K; k0 += kK) {
      __syncthreads();  // the previous chunk is read before the stage is overwritten
      stageOperand<kK>(a, k0, [&](int i, int k, float v) { stageValue(st.a[i * kLd + k], v); });
      stageOperand<kK>(b, k0, [&](int j, int k, float v) { stageValue(st.b[j * kLd + k], v); });
      __syncthreads();
CUTLOSS_UNROLL
      for (int k = 0; k < kK; k += KStep) {
        wmma::fragment<wmma::matrix_a, 16, 16, KStep, Element, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, KStep, Element, wmma::col_major> fb0, fb1;
        wmma::load_matrix_sync(fa, st.a + i0 * kLd + k, kLd);
        wmma::load_matrix_sync(fb0, st.b + j0 * kLd + k, kLd);
        wmma::load_matrix_sync(fb1, st.b + (j0 + 16) * kLd + k, kLd);
        wmma::mma_sync(acc0, fa, fb0, acc0);
        wmma::mma_sync(acc1, fa, fb1, acc1);
      }
    }
    __syncthreads();  // the caller is done reading c
    wmma::store_matrix_sync(&c[i0][j0], acc0, kTileLd, wmma::mem_row_major);
    wmma::store_matrix_sync(&c[i0][j0 + 16], acc1, kTileLd, wmma::mem_row_major);
    __syncthreads();
  }
};

using WmmaBf16Tile = WmmaTile<__nv_bfloat16, 16, __nv_bfloat16, 32, 8>;
using WmmaTf32Tile = WmmaTile<nvcuda::wmma::precision::tf32, 8, float, 16, 4>;

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
