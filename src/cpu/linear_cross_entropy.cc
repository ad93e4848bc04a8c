// Fused linear cross-entropy on the CPU: CE(E·Wᵀ + b) and its gradients with three GEMMs
// and memory bounded by a workspace, never N×V. The rows of E go in chunks sized to the
// workspace budget, each with the whole vocabulary:
//   1. L = E_chunk·Wᵀ                      (GEMM 1: the chunk's logits, once)
//   2. per row, in parallel: + b, the row's loss (lossRow), and its gradient G in place
//   3. dE_chunk = G·W                      (GEMM 2)
//   4. dW += Gᵀ·E_chunk, dBias += Σ_rows G (GEMM 3)
// A forward and a separate backward would compute the logits twice (four GEMMs). Bigger
// chunks make GEMM 3 cheaper (dW is read and written once per chunk) and cost memory.
// Steps 3 and 4 of a chunk and step 1 of the next run in one pass over the vocabulary slices:
// each slice of W is read from memory once per chunk, not twice, and the next chunk's logits
// overwrite the slice of G just used. At a large vocabulary the chunks are short and the call
// is bound by memory traffic (W and dW once per chunk), so that read is a fifth of it.
// Vocabulary tiles, where the budget holds few whole rows (vocabularyTiles): blocks of up to
// kTileRowsMax rows, each thread a tile of the block × one slice. A forward over the slices keeps
// each row's sums per slice (cuda/math/row_sums.cuh, as the GPU's forward), merged in slice order
// into the row's RowStats, loss and RowGrad; a backward forms each tile's logits again (a fourth
// GEMM), its gradient by the GPU backward's per-entry formulas, and the tile's products. dW is
// then read and written once per block at any V; sparsemax and harmonic rows keep whole rows.
// Harmonic logits (p.harmonicExponent > 0, cuda/math/harmonic.cuh): step 2 first turns each
// row's e·w into −(n/2)·log d² (the squared norms computed once per call), and its G into
// H = n·G/d² after filtering; GEMMs 2 and 3 take H, then dE_i −= e_i·Σ_j H_ij per chunk and
// dW_j −= w_j·Σ_i H_ij once at the end, both over the slices the products used.
//
// The GEMMs go by slices of kFilterBlockCols vocabulary columns, each a single-threaded BLAS
// call, handed to the backend's threads as they come free: no thread waits on another (a BLAS
// splitting each call across threads spins until its slowest thread is done, which on a
// shared machine is most of the time), no operand is read twice, and GEMMs 2 and 3 of a slice
// run back to back on its block of G while it is in cache. dE goes to a per-thread partial
// (chunk rows × D), summed at the end of the chunk.
//
// Denormals: with logits spread like a trained model's, most of G is far below FLT_MIN. Our
// threads flush denormals to zero, but the BLAS's own threads do not, and a product of a tiny
// normal G entry and a weight can still be denormal; so entries below 2^-60 of their row's
// largest (and below 2^-100) are zeroed before the GEMMs (far below what fp32 sums of that row
// can resolve).
// filterEps > 0, the rule of every backend (lib/js/fusedLoss.ts, the kernels): per chunk, the
// vocabulary slices whose every |dloss/dz| is below filterEps (relative to the row's scale) are
// skipped. Single entries are dropped too, below min(filterEps, 2^-24/V) only (the f32 default
// of lib/options.ts): the entries a row drops then sum to under 2^-24 of its scale, f32
// rounding of the gradient, whatever filterEps allows per tile. Dropped entries are zeroed
// (without softcap, where dloss/dx = dloss/dz / T), so a slice's count of the entries left says
// what its products cost: a sparse slice (a trained model's peaked rows leave a few entries per
// row, in different columns for every row, so no slice is empty) runs as per-entry products,
// dE_i += g_ij·W_j and dW_j += g_ij·E_i, a dense one as the GEMMs. The per-entry products wait
// for the end of the call where the budget has room (DeferredSparseProducts): sorted by column,
// they then read and write each row of dW once, not once per chunk.
// dE and dW may come with any contents: each slice of dW is overwritten by the first product
// that reaches it (or zeroed at the end), each chunk's rows of dE by the sum of its partials.
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "../../cuda/math/filter.cuh"
#include "bf16_gemm.h"
#include "gemm.h"
#include "host_memory.h"
#include "loss_rows.h"

namespace cutloss::cpu {

namespace {

/**
 * Slices whose entries left are at most this fraction of the slice go as per-entry products:
 * one costs two D-long axpys from rows in cache, about what a GEMM spends on 8 entries.
 */
constexpr double kSparseSliceDensity = 1.0 / 8.0;

/**
 * Below this many rows of whole-vocabulary logits in the budget, a call goes by vocabulary tiles:
 * a fourth GEMM, against W and dW streamed once per chunk of whole rows (traffic ∝ V²/budget).
 * Measured at N 4096, D 256, 48 MiB: V 128k (96 rows) whole rows 3.1–3.3 s, tiles 3.55–3.65;
 * V 256k (48 rows) whole rows 7.5 s, tiles 7.2.
 */
constexpr int64_t kWholeRowsMin = 64;

/** W and dW beyond this stream from memory (a last-level cache's share of a few cores). */
constexpr double kCachedBytes = 16.0 * (1 << 20);

/**
 * Slices of whole rows' logits formed by one GEMM, at most: S2-peaked (N 2048, D 512, V 32000)
 * 277 → 270 ms from 1 to 4 (8: 267), S2 607 → 600 ms.
 */
constexpr int64_t kLogitGroupSlices = 4;

/** Rows of a vocabulary-tiled block, at most: dW is read and written once per block (256 to 2048 within 5%). */
constexpr int64_t kTileRowsMax = 512;


/** x_j += b_j: the bias joins the logits before anything reads them. */
CUTLOSS_CPU_INLINE void addBias(float* x, const float* bias, int n) {
#pragma omp simd
  for (int j = 0; j < n; j++) x[j] += bias[j];
}

/**
 * After a row's gradient: fold it into the thread's dBias partial (if any) and zero the
 * entries below 2^-60 of the row's largest, so the BLAS never meets denormal products. With
 * sliceCounts (entry filtering), also zero the entries below `entryThreshold`, and per slice of
 * kFilterBlockCols columns count the entries left and flag a slice holding one ≥ sliceThreshold.
 */
CUTLOSS_CPU_INLINE void finishGradRow(float* g, int n, float* biasPartial, float entryThreshold, float sliceThreshold,
                                      int32_t* sliceCounts, uint8_t* sliceFlags) {
  float maxAbs = 0.0f;
  float minAbs = positiveInfinity();  // smallest nonzero
  if (biasPartial != nullptr) {
#pragma omp simd reduction(max : maxAbs) reduction(min : minAbs)
    for (int j = 0; j < n; j++) {
      const float a = fabsf(g[j]);
      maxAbs = a > maxAbs ? a : maxAbs;
      minAbs = a != 0.0f && a < minAbs ? a : minAbs;
      biasPartial[j] += g[j];
    }
  } else {
#pragma omp simd reduction(max : maxAbs) reduction(min : minAbs)
    for (int j = 0; j < n; j++) {
      const float a = fabsf(g[j]);
      maxAbs = a > maxAbs ? a : maxAbs;
      minAbs = a != 0.0f && a < minAbs ? a : minAbs;
    }
  }
  // an infinite entry: the others keep their values (but for filtering); at most 2^-100, whose
  // products with any weight above 2^-26 stay normal: a row of huge gradients (squentropy at
  // |z| = 1e30) keeps its O(1) entries
  const float floor = maxAbs == positiveInfinity() ? 0.0f : fminf(maxAbs * 8.67361738e-19f, 7.88860905e-31f);  // 2^-60, 2^-100
  if (sliceCounts != nullptr) {
    const float t = fmaxf(entryThreshold, floor);
    for (int b0 = 0, s = 0; b0 < n; b0 += static_cast<int>(kFilterBlockCols), s++) {
      const int b1 = b0 + kFilterBlockCols < n ? b0 + static_cast<int>(kFilterBlockCols) : n;
      int count = 0;
      int significant = 0;
#pragma omp simd reduction(+ : count) reduction(| : significant)
      for (int j = b0; j < b1; j++) {
        const float a = fabsf(g[j]);
        const bool keep = !(a < t);  // NaN is never dropped
        significant |= !(a < sliceThreshold) ? 1 : 0;
        g[j] = keep ? g[j] : 0.0f;
        count += keep ? 1 : 0;
      }
      sliceCounts[s] += count;
      sliceFlags[s] |= static_cast<uint8_t>(significant);
    }
    return;
  }
  if (!(minAbs < floor)) return;
#pragma omp simd
  for (int j = 0; j < n; j++) g[j] = fabsf(g[j]) < floor ? 0.0f : g[j];
}

/** y += a·x over n floats. */
CUTLOSS_CPU_INLINE void axpy(int64_t n, float a, const float* __restrict x, float* __restrict y) {
#pragma omp simd
  for (int64_t k = 0; k < n; k++) y[k] += a * x[k];
}

/** f(j, g[j]) for each nonzero (or NaN) g[j], j < n, in order; 16 at a time are tested first: most hold none. */
template <class F>
CUTLOSS_CPU_INLINE void forEachNonzero(const float* g, int64_t n, F&& f) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t j1 = std::min(n, j0 + 16);
    int any = 0;
#pragma omp simd reduction(| : any)
    for (int64_t j = j0; j < j1; j++) any |= g[j] != 0.0f ? 1 : 0;  // NaN counts
    if (!any) continue;
    for (int64_t j = j0; j < j1; j++) {
      if (g[j] != 0.0f) f(j, g[j]);
    }
  }
}

/**
 * The products of one sparse slice of the gradient: Gs holds its nr × cols entries (zeros where
 * dropped) at stride ldg, Wslice and dWslice W's and dW's rows of its classes (dW's rows
 * zeroed or started, or null): dE_i += g_ij·W_j into the thread's partial, dW_j += g_ij·E_i.
 */
CUTLOSS_CPU_CLONES void sparseSliceProducts(const float* Gs, int64_t ldg, int64_t nr, int64_t cols, const float* Wslice,
                                            const float* Ec, int64_t D, float* dE, float* dWslice) {
  for (int64_t i = 0; i < nr; i++) {
    const float* g = Gs + i * ldg;
    float* dEi = dE + i * D;
    const float* Ei = Ec + i * D;
    forEachNonzero(g, cols, [&](int64_t j, float v) CUTLOSS_CPU_LAMBDA {
      axpy(D, v, Wslice + j * D, dEi);
      if (dWslice != nullptr) axpy(D, v, Ei, dWslice + j * D);
    });
  }
}

/** y += a·x over n floats, x as bf16 bits. */
CUTLOSS_CPU_INLINE void axpyBf16(int64_t n, float a, const uint16_t* __restrict x, float* __restrict y) {
#pragma omp simd
  for (int64_t k = 0; k < n; k++) y[k] += a * bf16ToF32(x[k]);
}

/** y = a·(row r of x), x f32 or bf16. */
CUTLOSS_CPU_INLINE void scaleRow(float a, const HostMatrix& x, int64_t r, float* __restrict y) {
  const int64_t n = x.cols;
  if (x.dtype == DType::F32) {
    const float* __restrict src = static_cast<const float*>(x.data) + r * n;
#pragma omp simd
    for (int64_t k = 0; k < n; k++) y[k] = a * src[k];
  } else {
    const uint16_t* __restrict src = static_cast<const uint16_t*>(x.data) + r * n;
#pragma omp simd
    for (int64_t k = 0; k < n; k++) y[k] = a * bf16ToF32(src[k]);
  }
}

/** y += a·(row r of x), x f32 or bf16. */
CUTLOSS_CPU_INLINE void axpyRow(float a, const HostMatrix& x, int64_t r, float* y) {
  const int64_t n = x.cols;
  if (x.dtype == DType::F32) {
    axpy(n, a, static_cast<const float*>(x.data) + r * n, y);
  } else {
    axpyBf16(n, a, static_cast<const uint16_t*>(x.data) + r * n, y);
  }
}

/** A kept entry g of the gradient at (row, col). */
struct SparseEntry {
  int32_t row;
  int32_t col;
  float g;
};

/**
 * dW's rows c0 .. c0 + cols from their entries sorted by column (column j's end at end[j]): a
 * row not started yet is written by its first entry (0 + g·e rounds as g·e) or zeroed, never read.
 */
CUTLOSS_CPU_CLONES void columnProducts(const SparseEntry* entries, const int32_t* end, int64_t c0, int64_t cols, bool started,
                                       const HostMatrix& E, float* dW) {
  const int64_t D = E.cols;
  for (int64_t j = 0, k = 0; j < cols; j++) {
    float* dWj = dW + (c0 + j) * D;
    if (!started) {
      if (k == end[j]) {
        std::memset(dWj, 0, static_cast<size_t>(D) * sizeof(float));
        continue;
      }
      scaleRow(entries[k].g, E, entries[k].row, dWj);
      k++;
    }
    for (; k < end[j]; k++) axpyRow(entries[k].g, E, entries[k].row, dWj);
  }
}

/** dE_i += g·W_col over the entries of rows r0 .. r1 − 1. */
CUTLOSS_CPU_CLONES void rowProducts(const SparseEntry* entries, size_t count, int64_t r0, int64_t r1, const HostMatrix& W, float* dE) {
  const int64_t D = W.cols;
  for (size_t k = 0; k < count; k++) {
    const SparseEntry& e = entries[k];
    if (e.row >= r0 && e.row < r1) axpyRow(e.g, W, e.col, dE + e.row * D);
  }
}

/**
 * The per-entry products of sparse slices, deferred to the end of the call. A peaked row's few
 * kept entries fall in nearly every slice of every chunk, so done per chunk they read W_j and
 * read and write dW_j about once per entry: S2-peaked went over all of dW once per chunk.
 * Sorted by column at the end, each dW_j is written once, and each W_j read once per thread.
 * A slice keeps at most `perSlice` entries (its share of what the workspace budget leaves);
 * a chunk whose entries do not fit has its products done at once. Entries are kept in chunk
 * and row order per slice, so the order of every sum depends on the data alone.
 */
class DeferredSparseProducts {
 public:
  DeferredSparseProducts(int64_t slices, size_t budgetBytes)
      : perSlice_(slices > 0 ? budgetBytes / sizeof(Entry) / static_cast<size_t>(slices) : 0),
        entries_(static_cast<size_t>(slices)) {}

  /** Entries taken. */
  int64_t entryCount() const {
    size_t n = 0;
    for (const auto& list : entries_) n += list.size();
    return static_cast<int64_t>(n);
  }

  /** The most memory its entries take (within the workspace budget). */
  size_t capacityBytes() const { return perSlice_ * entries_.size() * sizeof(Entry); }

  /**
   * Takes a sparse slice's `count` nonzero entries (Gs: nr × cols at stride ldg, rows from
   * row0, columns from c0) if they fit; only the thread working on slice s calls it.
   */
  bool take(int64_t s, int64_t row0, int64_t c0, const float* Gs, int64_t ldg, int64_t nr, int64_t cols, int64_t count) {
    if (perSlice_ == 0) return false;
    std::vector<Entry>& list = entries_[static_cast<size_t>(s)];
    const size_t need = list.size() + static_cast<size_t>(count);
    if (need > perSlice_) return false;
    if (need > list.capacity()) list.reserve(std::min(perSlice_, std::max(need, 2 * list.capacity())));  // within the share
    for (int64_t i = 0; i < nr; i++) {
      const float* g = Gs + i * ldg;
      // rows a stride apart (whole rows: V floats) defeat the hardware's prefetch
      if (i + kPrefetchRows < nr) {
        for (int64_t j = 0; j < cols; j += 16) __builtin_prefetch(g + kPrefetchRows * ldg + j);
      }
      forEachNonzero(g, cols, [&](int64_t j, float v) CUTLOSS_CPU_LAMBDA {
        list.push_back(Entry{static_cast<int32_t>(row0 + i), static_cast<int32_t>(c0 + j), v});
      });
    }
    return true;
  }

  /**
   * dW_j += Σ_i g_ij·E_i (a thread per slice, each column's entries in row order; in a slice
   * no product has started, a row is written by its first entry or zeroed), then
   * dE_i += Σ_j g_ij·W_j (a thread per range of rows, columns in order). dW may be null.
   */
  void apply(const HostMatrix& E, const HostMatrix& W, float* dE, float* dW, const std::vector<uint8_t>& dWStarted) {
    const int64_t D = E.cols, V = W.rows;
    const int64_t slices = static_cast<int64_t>(entries_.size());
    std::vector<std::vector<Entry>> sorted(static_cast<size_t>(threadCount()));
    parallelFor(slices, 1, [&](int64_t s0, int64_t s1, int w) {
      std::vector<Entry>& tmp = sorted[static_cast<size_t>(w)];
      for (int64_t s = s0; s < s1; s++) {
        const int64_t c0 = s * kFilterBlockCols, c1 = std::min(V, c0 + kFilterBlockCols);
        const bool started = dWStarted[static_cast<size_t>(s)] != 0;
        std::vector<Entry>& list = entries_[static_cast<size_t>(s)];
        if (list.empty()) {
          if (dW != nullptr && !started) std::memset(dW + c0 * D, 0, static_cast<size_t>((c1 - c0) * D) * sizeof(float));
          continue;
        }
        // a stable counting sort by column: within a column, the rows stay in order
        int32_t start[kFilterBlockCols + 1] = {};
        for (const Entry& e : list) start[e.col - c0 + 1]++;
        for (int64_t j = 0; j < kFilterBlockCols; j++) start[j + 1] += start[j];
        tmp.resize(list.size());
        for (const Entry& e : list) tmp[static_cast<size_t>(start[e.col - c0]++)] = e;
        list.swap(tmp);
        if (dW != nullptr) columnProducts(list.data(), start, c0, c1 - c0, started, E, dW);  // start[j]: column j's end
      }
    });
    if (perSlice_ == 0) return;
    const int parts = threadCount();
    const int64_t N = E.rows;
    parallelFor(parts, 1, [&](int64_t p0, int64_t p1, int) {
      for (int64_t part = p0; part < p1; part++) {
        const int64_t r0 = N * part / parts, r1 = N * (part + 1) / parts;
        for (const std::vector<Entry>& list : entries_) rowProducts(list.data(), list.size(), r0, r1, W, dE);
      }
    });
  }

 private:
  static constexpr int64_t kPrefetchRows = 4;
  using Entry = SparseEntry;
  size_t perSlice_;
  std::vector<std::vector<Entry>> entries_;  // per slice
};

struct ChunkRowsArgs {
  const LossCall* call;
  float* logits;  // [nr, V]
  int64_t row0;   // first row of the chunk in the batch
  int64_t V;
  const float* bias;
  const int32_t* labels;
  const float* scaleWeighted;
  const float* scaleUnweighted;
  bool grad;
  const LossRowsOut* out;
  float entryFilterEps;  // > 0: zero the entries below it (times the row's scale and 1/T) and count them
  float sliceFilterEps;  // with it: flag the slices holding an entry at or above this
  const float* rowSq;    // harmonic logits: ‖e_i‖² [N] and ‖w_j‖² [V], else null
  const float* colSq;
};

/** Harmonic logits (cuda/math/harmonic.cuh): the row's e·w in x become −(n/2)·log d², d² kept in sq. */
CUTLOSS_CPU_INLINE void harmonicRow(float* x, float* sq, float rowSq, const float* colSq, float n, int V) {
#pragma omp simd
  for (int j = 0; j < V; j++) {
    sq[j] = harmonicSqDistance(rowSq, colSq[j], x[j]);
    x[j] = harmonicLogit(sq[j], n);
  }
}

/** G → H = n·G/d²: the GEMMs then give Σ_j H_ij·w_j and Σ_i H_ij·e_i (the −e·ΣH, −w·ΣH terms come after). */
CUTLOSS_CPU_INLINE void harmonicGradRow(float* g, const float* sq, float n, int V) {
#pragma omp simd
  for (int j = 0; j < V; j++) g[j] = harmonicGrad(g[j], sq[j], n);
}

CUTLOSS_CPU_CLONES void linearChunkRows(const ChunkRowsArgs& a, float* z, float* candidates, float* sq, float* biasPartial,
                                        uint8_t* blockFlags, int32_t* sliceCounts, int64_t i0, int64_t i1) {
  const int V = static_cast<int>(a.V);  // a row's columns fit an int (the binding checks V < 2^31)
  const float harmonicN = a.call->p.harmonicExponent;
  for (int64_t i = i0; i < i1; i++) {
    const int64_t r = a.row0 + i;
    float* x = a.logits + i * a.V;
    if (a.bias != nullptr) addBias(x, a.bias, V);
    if (a.rowSq != nullptr) harmonicRow(x, sq, a.rowSq[r], a.colSq, harmonicN, V);
    // margin softmax (cuda/math/margin.cuh): the label's logit mapped here, its gradient scaled by the map's slope below
    const LabelMargin& margin = a.call->p.labelMargin;
    const int32_t label = a.labels[r];
    const bool marginRow = margin.scale > 0.0f && label >= 0 && label < V;
    const float labelRaw = marginRow ? x[label] : 0.0f;
    if (marginRow) x[label] = marginLabelLogit(margin, labelRaw);
    LossRowIO io;
    io.label = label;
    io.scaleWeighted = a.grad ? a.scaleWeighted[r] : 0.0f;
    io.scaleUnweighted = a.grad ? a.scaleUnweighted[r] : 0.0f;
    io.z = z;
    io.candidates = candidates;
    io.grad = a.grad ? x : nullptr;
    io.blockFlags = sliceCounts == nullptr ? blockFlags : nullptr;  // else finishGradRow flags the slices
    io.nextBytes = a.V * static_cast<int64_t>(sizeof(float));
    io.next = i + 1 < i1 ? x + a.V : nullptr;
    io.store = nullptr;
    const LossRowResult res = lossRowAny(*a.call, x, V, io);
    a.out->lse[r] = res.lse;
    a.out->weighted[r] = res.weighted;
    a.out->unweighted[r] = res.unweighted;
    if (!a.grad) continue;
    if (marginRow) x[label] *= marginLabelSlope(margin, labelRaw);
    float entryThreshold = 0.0f, sliceThreshold = 0.0f;
    if (sliceCounts != nullptr) {
      // on dloss/dx = dloss/dz / T
      const float scaleX = rowGradScale(io.scaleWeighted, io.scaleUnweighted) * a.call->p.invTemperature;
      entryThreshold = filterThreshold(a.entryFilterEps, scaleX);
      sliceThreshold = filterThreshold(a.sliceFilterEps, scaleX);
    }
    finishGradRow(x, V, biasPartial, entryThreshold, sliceThreshold, sliceCounts, blockFlags);
    if (a.rowSq != nullptr) harmonicGradRow(x, sq, harmonicN, V);  // after filtering, which looks at dloss/dz
  }
}

// ---- vocabulary tiles: a block of rows meets the vocabulary a slice at a time (row_sums.cuh)

/** What a row of a vocabulary-tiled block carries from its forward to its backward tiles. */
struct TileRow {
  RowGrad rg;
  float shift;           // RowStats::shift
  float entryThreshold;  // entry filtering: drop |dloss/dx| below it
  float sliceThreshold;  // entry filtering: a slice is kept by an entry at or above it
  float coefThreshold;   // per-slice filtering (softcap): a slice is kept by a |dloss/dz| at or above it
  bool active;           // false: an ignored row, no gradient
};

/** The label's column in a tile of classes c0.. (margin map, cLabel), or −1. */
CUTLOSS_CPU_INLINE int labelColumn(int32_t label, int64_t c0, int n) {
  const int64_t t = static_cast<int64_t>(label) - c0;
  return t >= 0 && t < n ? static_cast<int>(t) : -1;
}

/**
 * A tile row's logits (e·w) → its capped logits in place (bias, the label's margin map,
 * softcap), and their sums: the max first, then one exponential per class (as the GPU's
 * tensor-core forward). w: the class weights of the tile's classes.
 */
CUTLOSS_CPU_CLONES TileRowSums tileRowForward(const LossCall& call, const TileSumOptions& o, float* x, int n,
                                              const float* bias, int t, const float* w) {
  const LossParams& p = call.p;
  if (bias != nullptr) addBias(x, bias, n);
  if (t >= 0 && p.labelMargin.scale > 0.0f) x[t] = marginLabelLogit(p.labelMargin, x[t]);
  if (p.softcap > 0.0f) {
#pragma omp simd
    for (int j = 0; j < n; j++) x[j] = effectiveLogit(x[j], p.softcap, 1.0f);
  }
  const float m = rowMax(x, n);
  float sum = 0.0f;
  specialize(infiniteMax(m), [&](auto) CUTLOSS_CPU_LAMBDA {
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) sum += expShifted(x[j], m, o.invT);
  });
  TileRowSums s = emptyTileRowSums();
  s.lse = m == negativeInfinity() ? lseEmpty() : LseState{m, sum};
  if (o.smoothing || o.squentropy || o.stable || o.gumbel) {
    const float stableScale = o.stable ? stablemaxSumScale(m * o.invT) : 1.0f;
    for (int j = 0; j < n; j++) addToTileRowSums(o, s, x[j], m, stableScale, j == t, w[j]);
  } else if (t >= 0) {
    s.cLabel = x[t];
  }
  return s;
}

/**
 * A tile row's dloss/dx in place of its biased logits x, and whether a |dloss/dz| reaches
 * coefThreshold. The normalizer a constant and the row constants the formulas branch on
 * specialized (loss_rows.h), so the loop vectorizes.
 */
template <int kNormalizer>
CUTLOSS_CPU_INLINE bool tileGradientLoop(const LossParams& p, RowGrad rg, float shift, float coefThreshold, float* x, int n,
                                         int t, const float* w) {
  rg.normalizer = kNormalizer;
  int significant = 0;
  specialize(p.softcap > 0.0f, [&](auto capped) CUTLOSS_CPU_LAMBDA {
    const float cap = decltype(capped)::value ? p.softcap : 0.0f;
    specialize(infiniteMax(rg.zMax), [&](auto) CUTLOSS_CPU_LAMBDA {
      specialize(rg.sqCoef != 0.0f, [&](auto) CUTLOSS_CPU_LAMBDA {
#pragma omp simd reduction(| : significant)
        for (int j = 0; j < n; j++) {
          const float z = shiftedEffectiveLogit(x[j], cap, p.invTemperature, shift);
          const float coef = gradCoefficient(rg, z, j == t, w[j]);
          significant |= !(fabsf(coef) < coefThreshold) ? 1 : 0;  // NaN is never filtered
          x[j] = coef * effectiveSlope(x[j], cap, p.invTemperature);
        }
      });
    });
  });
  return significant != 0;
}

/**
 * A tile row's logits (e·w) → its gradient dloss/dx in place (the formulas of the GPU's
 * backward); returns whether a |dloss/dz| reaches coefThreshold.
 */
CUTLOSS_CPU_CLONES bool tileRowGradient(const LossCall& call, const TileRow& r, float* x, int n, const float* bias, int t,
                                        const float* w) {
  if (!r.active) {
    std::memset(x, 0, static_cast<size_t>(n) * sizeof(float));
    return false;
  }
  const LossParams& p = call.p;
  if (bias != nullptr) addBias(x, bias, n);
  float marginSlope = 1.0f;
  if (t >= 0 && p.labelMargin.scale > 0.0f) {
    marginSlope = marginLabelSlope(p.labelMargin, x[t]);
    x[t] = marginLabelLogit(p.labelMargin, x[t]);
  }
  bool significant = false;
  switch (p.normalizer) {
    case kNormalizerStablemax:
      significant = tileGradientLoop<kNormalizerStablemax>(p, r.rg, r.shift, r.coefThreshold, x, n, t, w);
      break;
    case kNormalizerGumbel:
      significant = tileGradientLoop<kNormalizerGumbel>(p, r.rg, r.shift, r.coefThreshold, x, n, t, w);
      break;
    default:  // softmax (sparsemax keeps whole rows)
      significant = tileGradientLoop<kNormalizerSoftmax>(p, r.rg, r.shift, r.coefThreshold, x, n, t, w);
      break;
  }
  if (t >= 0) x[t] *= marginSlope;
  return significant;
}

/**
 * Whether a call runs in vocabulary tiles (CUTLOSS_CPU_VOCAB_TILES=on|off forces it): where the
 * budget holds few whole rows and W and dW stream from memory (each chunk of whole rows reads
 * them again); sparsemax and harmonic logits keep whole rows.
 */
bool vocabularyTiles(int64_t budgetRows, int64_t N, int64_t V, int64_t D, const LossParams& p) {
  if (p.normalizer == kNormalizerSparsemax || p.harmonicExponent > 0.0f) return false;
  const char* env = std::getenv("CUTLOSS_CPU_VOCAB_TILES");
  if (env != nullptr && std::strcmp(env, "on") == 0) return true;
  if (env != nullptr && std::strcmp(env, "off") == 0) return false;
  const double streamedBytes = 2.0 * static_cast<double>(V) * static_cast<double>(D) * sizeof(float);  // W and dW
  return budgetRows < N && budgetRows < kWholeRowsMin && streamedBytes > kCachedBytes;
}

CUTLOSS_CPU_CLONES void widenRows(const uint16_t* src, float* dst, int64_t n) { widenBf16(src, dst, n); }

/** ‖row‖² of every row of M (f32 or bf16), accumulated in double: harmonic logits' r_i and c_j. */
std::vector<float> squaredRowNorms(const HostMatrix& M) {
  std::vector<float> out(static_cast<size_t>(M.rows));
  const int64_t D = M.cols;
  parallelFor(M.rows, rowGrain(D), [&](int64_t i0, int64_t i1, int) {
    std::vector<float> wide(static_cast<size_t>(M.dtype == DType::BF16 ? D : 0));
    for (int64_t i = i0; i < i1; i++) {
      const float* row = static_cast<const float*>(M.data) + i * D;
      if (M.dtype == DType::BF16) {
        widenRows(static_cast<const uint16_t*>(M.data) + i * D, wide.data(), D);
        row = wide.data();
      }
      double s = 0.0;
      for (int64_t k = 0; k < D; k++) s += static_cast<double>(row[k]) * row[k];
      out[static_cast<size_t>(i)] = static_cast<float>(s);
    }
  });
  return out;
}

}  // namespace

LinearCrossEntropyStats linearCrossEntropy(const HostMatrix& E, const HostMatrix& W, const float* bias,
                                           const int32_t* labels, const LossParams& p, const float* scaleWeighted,
                                           const float* scaleUnweighted, float filterEps, size_t workspaceBytes,
                                           const LinearCrossEntropyOut& out) {
  const int64_t N = E.rows, D = E.cols, V = W.rows;
  const bool grad = out.dE != nullptr;
  LinearCrossEntropyStats stats;
  if (N == 0) {
    if (out.dW != nullptr) std::memset(out.dW, 0, static_cast<size_t>(V * D) * sizeof(float));
    return stats;
  }
  const int threads = threadCount();
  const int64_t slices = (V + kFilterBlockCols - 1) / kFilterBlockCols;
  const auto sliceCols = [&](int64_t s) { return std::pair<int64_t, int64_t>{s * kFilterBlockCols, std::min(V, (s + 1) * kFilterBlockCols)}; };

  // Whole rows: the workspace holds whole rows of logits, at least one, at most N; the fewest
  // chunks the budget allows, of equal size (a short last chunk would cost a full pass over W
  // and dW). Vocabulary tiles: blocks of rows, each thread a tile of one slice of them, and
  // every slice's row sums.
  const size_t rowBytes = static_cast<size_t>(V) * sizeof(float);
  const int64_t budgetRows = std::max<int64_t>(1, std::min<int64_t>(N, static_cast<int64_t>(workspaceBytes / rowBytes)));
  const bool tiles = vocabularyTiles(budgetRows, N, V, D, p);
  const size_t tileRowBytes = static_cast<size_t>(threads * kFilterBlockCols) * sizeof(float) +
                              static_cast<size_t>(slices) * sizeof(TileRowSums) + sizeof(TileRow);
  const int64_t blockRows = tiles ? std::max<int64_t>(1, std::min<int64_t>({N, kTileRowsMax, static_cast<int64_t>(workspaceBytes / tileRowBytes)}))
                                  : budgetRows;
  const int64_t chunkCount = (N + blockRows - 1) / blockRows;
  const int64_t chunkRows = (N + chunkCount - 1) / chunkCount;
  PooledScratch logits(tiles ? static_cast<size_t>(threads * chunkRows * kFilterBlockCols) * sizeof(float)
                             : static_cast<size_t>(chunkRows) * rowBytes);
  std::vector<TileRowSums> tileSums(tiles ? static_cast<size_t>(slices * chunkRows) : 0);  // [slice][row]
  std::vector<TileRow> tileRows(tiles ? static_cast<size_t>(chunkRows) : 0);
  stats.chunkRows = chunkRows;
  stats.tileCols = tiles ? kFilterBlockCols : 0;
  stats.workspaceBytes = static_cast<int64_t>(logits.bytes() + tileSums.size() * sizeof(TileRowSums) +
                                              tileRows.size() * sizeof(TileRow));

  // bf16 E and W where the CPU has bf16 matrix instructions: the GEMMs take their bits; the
  // backward GEMMs take G as bf16 terms (bf16GradientTerms: G rounded, or hi + lo).
  const bool bf16Gemm = E.dtype == DType::BF16 && W.dtype == DType::BF16 && bf16GemmActive();
  const bool harmonic = p.harmonicExponent > 0.0f;
  // bf16 W widened once where f32 GEMMs or harmonic logits read it whole; on the bf16 GEMMs a
  // sparse slice widens its own rows (wSlice). E is widened a chunk at a time.
  std::unique_ptr<PooledScratch> wide;
  const float* W32 = W.dtype == DType::BF16 ? nullptr : static_cast<const float*>(W.data);
  if (W.dtype == DType::BF16 && (!bf16Gemm || harmonic)) {
    wide = std::make_unique<PooledScratch>(static_cast<size_t>(V * D) * sizeof(float));
    float* dst = wide->as<float>();
    const auto* src = static_cast<const uint16_t*>(W.data);
    parallelFor(V, rowGrain(D), [&](int64_t v0, int64_t v1, int) { widenRows(src + v0 * D, dst + v0 * D, (v1 - v0) * D); });
    W32 = dst;
  }
  const bool wideSlices = W.dtype == DType::BF16 && wide == nullptr;
  std::vector<std::vector<float>> wSlice(wideSlices && grad ? threads : 0);
  const int gTerms = bf16GradientTerms();
  const auto* Wb = static_cast<const uint16_t*>(W.data);
  const int64_t gTile = chunkRows * std::min(V, kFilterBlockCols);
  std::vector<std::vector<uint16_t>> gBf16(bf16Gemm && grad ? threads : 0, std::vector<uint16_t>(static_cast<size_t>(gTerms * gTile)));
  std::unique_ptr<HostBuffer> eChunk[2];
  if (E.dtype == DType::BF16) {
    for (auto& b : eChunk) b = std::make_unique<HostBuffer>(static_cast<size_t>(chunkRows * D) * sizeof(float));
  }

  std::vector<float> ones;
  if (p.classWeights == nullptr) ones.assign(static_cast<size_t>(V), 1.0f);
  const LossCall call = makeLossCall(p, ones.data(), grad ? filterEps : 0.0f);
  Scratch z(call.plain || tiles ? 0 : V);
  Scratch candidates(p.normalizer == kNormalizerSparsemax ? V : 0);
  // harmonic logits: the norms once, each row's d² for its gradient, Σ_i H_ij over the chunks
  const std::vector<float> rowSq = harmonic ? squaredRowNorms(E) : std::vector<float>();
  const std::vector<float> colSq = harmonic ? squaredRowNorms(W) : std::vector<float>();
  Scratch sqDistance(harmonic ? V : 0);
  std::vector<double> colSumH(harmonic && grad ? static_cast<size_t>(V) : 0);
  std::vector<std::vector<double>> rowSumH(harmonic && grad ? threads : 0, std::vector<double>(static_cast<size_t>(chunkRows)));  // per thread
  const bool withBias = grad && bias != nullptr && out.dBias != nullptr;
  Scratch biasPartial(withBias ? (tiles ? kFilterBlockCols : V) : 0);
  Scratch dEPartial(grad ? chunkRows * D : 0);  // each thread's share of G·W for the chunk
  const bool filtering = call.filterEps > 0.0f;
  // per-entry filtering where dloss/dx is dloss/dz times one constant (1/T); per-slice flags otherwise
  const bool entryFiltering = filtering && p.softcap == 0.0f;
  std::vector<std::vector<uint8_t>> flags(filtering && !tiles ? threads : 0, std::vector<uint8_t>(static_cast<size_t>(slices)));
  // a row's dropped single entries sum to under kFilterRowMass of its scale
  const float entryEps = std::min(call.filterEps, static_cast<float>(kFilterRowMass / static_cast<double>(p.vocab)));
  std::vector<std::vector<int32_t>> counts(entryFiltering && !tiles ? threads : 0, std::vector<int32_t>(static_cast<size_t>(slices)));
  std::vector<uint8_t> sparse(static_cast<size_t>(slices), 0);
  std::vector<int64_t> sliceEntries(static_cast<size_t>(entryFiltering && !tiles ? slices : 0));  // a chunk's entries left
  // sparse slices' products wait for the end of the call in what the budget leaves
  const size_t budgetUsed = static_cast<size_t>(stats.workspaceBytes);
  // (every slice, so that apply zeroes the slices of dW no product reached)
  DeferredSparseProducts deferred(grad ? slices : 0, grad && entryFiltering && workspaceBytes > budgetUsed ? workspaceBytes - budgetUsed : 0);
  stats.workspaceBytes += static_cast<int64_t>(deferred.capacityBytes());
  std::vector<uint8_t> kept(static_cast<size_t>(slices), 1);
  std::vector<uint8_t> dEStarted(static_cast<size_t>(threads));
  std::vector<uint8_t> dWStarted(static_cast<size_t>(slices));  // dW's slices hold any contents until then

  SerialGemmScope serialGemm;  // every thread runs its own products on slices of the vocabulary
  // A chunk's rows of E: f32 as given, bf16 widened into one of two buffers (the slice pass
  // reads chunk k's while it forms chunk k + 1's logits) and as given (the bf16 GEMM's bits).
  struct Chunk {
    int64_t r0 = 0, nr = 0;
    const float* Ec = nullptr;
    const uint16_t* Ecb = nullptr;
  };
  const auto chunkAt = [&](int64_t k) {
    Chunk c;
    c.r0 = k * chunkRows;
    c.nr = std::min(chunkRows, N - c.r0);
    c.Ec = static_cast<const float*>(E.data) + c.r0 * D;
    c.Ecb = static_cast<const uint16_t*>(E.data) + c.r0 * D;
    if (E.dtype == DType::BF16) {
      float* dst = eChunk[k % 2]->as<float>();
      parallelFor(c.nr, rowGrain(D), [&](int64_t i0, int64_t i1, int) { widenRows(c.Ecb + i0 * D, dst + i0 * D, (i1 - i0) * D); });
      c.Ec = dst;
    }
    return c;
  };
  float* L = logits.as<float>();
  // 1. Ls = E_chunk·W[c0, c1)ᵀ, Ls those columns of logits at stride ldl
  const auto logitColumns = [&](const Chunk& c, int64_t c0, int64_t c1, float* Ls, int64_t ldl) {
    if (bf16Gemm) {
      bf16GemmSerial(false, true, c.nr, c1 - c0, D, c.Ecb, D, Wb + c0 * D, D, 0.0f, Ls, ldl);
    } else {
      sgemmSerial(false, true, c.nr, c1 - c0, D, 1.0f, c.Ec, D, W32 + c0 * D, D, 0.0f, Ls, ldl);
    }
  };
  const auto logitSlice = [&](const Chunk& c, int64_t s, float* Ls, int64_t ldl) {
    const auto [c0, c1] = sliceCols(s);
    logitColumns(c, c0, c1, Ls, ldl);
  };
  // 3. a kept slice, its gradient Gs at stride ldg: dE_chunk += Gs·W[slice] (into the thread's
  //    partial), dW[slice] += Gsᵀ·E_chunk (dW's slice is overwritten by the first product that reaches it)
  const auto sliceProducts = [&](const Chunk& c, int64_t s, int w, const float* Gs, int64_t ldg, bool sparseSlice, int64_t count) {
    const auto [c0, c1] = sliceCols(s);
    const int64_t nr = c.nr;
    if (sparseSlice && deferred.take(s, c.r0, c0, Gs, ldg, nr, c1 - c0, count)) return;
    if (sparseSlice) {
      if (!dEStarted[w]) std::memset(dEPartial[w], 0, static_cast<size_t>(nr * D) * sizeof(float));
      dEStarted[w] = 1;
      const float* Wslice = nullptr;
      if (wideSlices) {
        std::vector<float>& buf = wSlice[static_cast<size_t>(w)];
        buf.resize(static_cast<size_t>((c1 - c0) * D));
        widenRows(Wb + c0 * D, buf.data(), (c1 - c0) * D);
        Wslice = buf.data();
      } else {
        Wslice = W32 + c0 * D;
      }
      float* dWslice = out.dW != nullptr ? out.dW + c0 * D : nullptr;
      if (dWslice != nullptr && !dWStarted[s]) std::memset(dWslice, 0, static_cast<size_t>((c1 - c0) * D) * sizeof(float));
      dWStarted[s] = 1;
      sparseSliceProducts(Gs, ldg, nr, c1 - c0, Wslice, c.Ec, D, dEPartial[w], dWslice);
    } else if (bf16Gemm) {
      uint16_t* Gb = gBf16[w].data();
      roundToBf16(Gs, ldg, nr, c1 - c0, Gb, gTerms == 2 ? Gb + gTile : nullptr);
      for (int t = 0; t < gTerms; t++) {
        const uint16_t* Gt = Gb + t * gTile;
        bf16GemmSerial(false, false, nr, D, c1 - c0, Gt, c1 - c0, Wb + c0 * D, D, dEStarted[w] ? 1.0f : 0.0f,
                       dEPartial[w], D);
        dEStarted[w] = 1;
        if (out.dW != nullptr) {
          bf16GemmSerial(true, false, c1 - c0, D, nr, Gt, c1 - c0, c.Ecb, D, dWStarted[s] ? 1.0f : 0.0f,
                         out.dW + c0 * D, D);
          dWStarted[s] = 1;
        }
      }
    } else {
      sgemmSerial(false, false, nr, D, c1 - c0, 1.0f, Gs, ldg, W32 + c0 * D, D, dEStarted[w] ? 1.0f : 0.0f,
                  dEPartial[w], D);
      dEStarted[w] = 1;
      if (out.dW != nullptr) {
        sgemmSerial(true, false, c1 - c0, D, nr, 1.0f, Gs, ldg, c.Ec, D, dWStarted[s] ? 1.0f : 0.0f, out.dW + c0 * D, D);
        dWStarted[s] = 1;
      }
    }
  };
  // 3, whole rows: the slice's products, dBias[slice] += the threads' column sums of G, harmonic sums
  const auto gradientSlice = [&](const Chunk& c, int64_t s, int w) {
    const auto [c0, c1] = sliceCols(s);
    const int64_t nr = c.nr;
    if (kept[s]) sliceProducts(c, s, w, L + c0, V, sparse[s] != 0, sparse[s] != 0 ? sliceEntries[static_cast<size_t>(s)] : 0);
    if (withBias) {
      for (int t = 0; t < threads; t++) {
        float* part = biasPartial[t];
        if (kept[s]) {
          for (int64_t j = c0; j < c1; j++) out.dBias[j] += part[j];
        }
        std::memset(part + c0, 0, static_cast<size_t>(c1 - c0) * sizeof(float));
      }
    }
    if (harmonic && kept[s]) {  // Σ_j H_ij and Σ_i H_ij of the entries the products used (this thread owns the slice)
      double* rowSum = rowSumH[static_cast<size_t>(w)].data();
      for (int64_t i = 0; i < nr; i++) {
        const float* h = L + i * V;
        double sum = 0.0;
        for (int64_t j = c0; j < c1; j++) {
          colSumH[static_cast<size_t>(j)] += h[j];
          sum += h[j];
        }
        rowSum[i] += sum;
      }
    }
  };
  // dE rows of the chunk = the sum of the threads' partials (harmonic: − e_i·Σ_j H_ij over the kept slices)
  const auto finishChunkDE = [&](const Chunk& c) {
    float* dEc = out.dE + c.r0 * D;
    parallelFor(c.nr, rowGrain(D), [&](int64_t i0, int64_t i1, int) {
      for (int64_t i = i0; i < i1; i++) {
        float* dst = dEc + i * D;
        std::memset(dst, 0, static_cast<size_t>(D) * sizeof(float));
        for (int t = 0; t < threads; t++) {
          if (!dEStarted[t]) continue;
          const float* src = dEPartial[t] + i * D;
          for (int64_t k2 = 0; k2 < D; k2++) dst[k2] += src[k2];
        }
        if (!harmonic) continue;
        double rowSum = 0.0;
        for (const auto& r : rowSumH) rowSum += r[static_cast<size_t>(i)];
        const float h = static_cast<float>(rowSum);
        const float* e = c.Ec + i * D;
        if (h != 0.0f) for (int64_t k2 = 0; k2 < D; k2++) dst[k2] -= h * e[k2];
      }
    });
  };

  if (tiles) {
    // Vocabulary tiles (rows × slices): per block of rows, a forward over the slices keeps each
    // row's sums per slice (cuda/math/row_sums.cuh), merged in slice order into its RowStats,
    // loss and RowGrad; the backward forms each slice's logits again, its gradient, products.
    const TileSumOptions sumOptions = tileSumOptions(p.normalizer, p.smoothing, p.squentropy, p.invTemperature, p.vocab);
    const int64_t ldt = kFilterBlockCols;
    std::vector<int64_t> sparseCount(static_cast<size_t>(threads)), skippedCount(static_cast<size_t>(threads)),
        usedCount(static_cast<size_t>(threads));
    for (int64_t k = 0; k < chunkCount; k++) {
      const Chunk c = chunkAt(k);
      stats.chunks++;
      parallelFor(slices, 1, [&](int64_t s0, int64_t s1, int w) {
        float* T = L + static_cast<int64_t>(w) * chunkRows * ldt;
        for (int64_t s = s0; s < s1; s++) {
          const auto [c0, c1] = sliceCols(s);
          const int n = static_cast<int>(c1 - c0);
          logitSlice(c, s, T, ldt);
          for (int64_t i = 0; i < c.nr; i++) {
            tileSums[static_cast<size_t>(s * chunkRows + i)] = tileRowForward(
                call, sumOptions, T + i * ldt, n, bias != nullptr ? bias + c0 : nullptr, labelColumn(labels[c.r0 + i], c0, n),
                call.weights + c0);
          }
        }
      });
      parallelFor(c.nr, 64, [&](int64_t i0, int64_t i1, int) {
        for (int64_t i = i0; i < i1; i++) {
          const int64_t r = c.r0 + i;
          TileRowSums sums = emptyTileRowSums();
          for (int64_t s = 0; s < slices; s++) sums = combineTileRowSums(sumOptions, sums, tileSums[static_cast<size_t>(s * chunkRows + i)]);
          const RowStats st = rowStatsOfSums(sums, p.normalizer, p.squentropy, p.invTemperature);
          const int32_t label = labels[r];
          TileRow& row = tileRows[static_cast<size_t>(i)];
          row = TileRow{};
          row.active = false;
          row.coefThreshold = row.entryThreshold = row.sliceThreshold = positiveInfinity();
          out.rows.lse[r] = st.lse;
          out.rows.weighted[r] = 0.0f;
          out.rows.unweighted[r] = 0.0f;
          if (label == p.ignoreIndex) continue;
          const float wLabel = label >= 0 && label < V ? call.weights[label] : quietNaN();
          const RowLoss rl = rowLoss(call.k, st, wLabel, p.sumWeights);
          out.rows.weighted[r] = rl.weighted;
          out.rows.unweighted[r] = rl.unweighted;
          if (!grad) continue;
          const float sW = scaleWeighted[r], sU = scaleUnweighted[r];
          row.active = true;
          row.rg = rowGrad(call.k, st, rl, wLabel, sW, sU);
          row.shift = st.shift;
          // as whole rows': the coefficients dloss/dz, the entries dloss/dx = dloss/dz / T
          const float scale = rowGradScale(sW, sU);
          const float scaleX = scale * p.invTemperature;
          row.coefThreshold = filtering ? filterThreshold(call.filterEps, scale) : positiveInfinity();
          row.entryThreshold = filterThreshold(entryFiltering ? entryEps : 0.0f, scaleX);
          row.sliceThreshold = filterThreshold(call.filterEps, scaleX);
        }
      });
      if (!grad) continue;
      stats.gradEntries += c.nr * V;
      stats.blocks += slices;
      std::fill(dEStarted.begin(), dEStarted.end(), 0);
      parallelFor(slices, 1, [&](int64_t s0, int64_t s1, int w) {
        float* T = L + static_cast<int64_t>(w) * chunkRows * ldt;
        float* biasSlice = withBias ? biasPartial[w] : nullptr;
        for (int64_t s = s0; s < s1; s++) {
          const auto [c0, c1] = sliceCols(s);
          const int n = static_cast<int>(c1 - c0);
          logitSlice(c, s, T, ldt);
          if (biasSlice != nullptr) std::memset(biasSlice, 0, static_cast<size_t>(n) * sizeof(float));
          int32_t left = 0;
          uint8_t significant = 0;
          for (int64_t i = 0; i < c.nr; i++) {
            const TileRow& row = tileRows[static_cast<size_t>(i)];
            float* g = T + i * ldt;
            const bool coefKept = tileRowGradient(call, row, g, n, bias != nullptr ? bias + c0 : nullptr,
                                                  labelColumn(labels[c.r0 + i], c0, n), call.weights + c0);
            if (filtering && !entryFiltering && coefKept) significant = 1;
            if (entryFiltering) {
              finishGradRow(g, n, biasSlice, row.entryThreshold, row.sliceThreshold, &left, &significant);
            } else {
              finishGradRow(g, n, biasSlice, 0.0f, 0.0f, nullptr, nullptr);
            }
          }
          const int64_t entries = c.nr * n;
          const bool keep = !filtering || (significant != 0 && (!entryFiltering || left > 0));
          const bool sparseSlice = keep && entryFiltering && static_cast<double>(left) <= kSparseSliceDensity * static_cast<double>(entries);
          if (keep) sliceProducts(c, s, w, T, ldt, sparseSlice, left);
          if (keep && biasSlice != nullptr) {
            for (int j = 0; j < n; j++) out.dBias[c0 + j] += biasSlice[j];  // this thread owns the slice
          }
          sparseCount[static_cast<size_t>(w)] += sparseSlice ? 1 : 0;
          skippedCount[static_cast<size_t>(w)] += keep ? 0 : 1;
          usedCount[static_cast<size_t>(w)] += sparseSlice ? left : keep ? entries : 0;
        }
      });
      finishChunkDE(c);
    }
    if (grad) {
      stats.deferredEntries = deferred.entryCount();
      deferred.apply(E, W, out.dE, out.dW, dWStarted);
    }
    for (int t = 0; t < threads; t++) {
      stats.sparseBlocks += sparseCount[static_cast<size_t>(t)];
      stats.skippedBlocks += skippedCount[static_cast<size_t>(t)];
      stats.gradEntriesUsed += usedCount[static_cast<size_t>(t)];
    }
    return stats;
  }

  // Whole rows: the logits go up to kLogitGroupSlices slices a GEMM (the BLAS packs E_chunk
  // again for every call), while every thread still gets at least 4 groups
  const int64_t groupSlices = std::clamp<int64_t>(slices / (4 * threads), 1, kLogitGroupSlices);
  const int64_t groups = (slices + groupSlices - 1) / groupSlices;
  const auto groupLogits = [&](const Chunk& c, int64_t g) {
    const int64_t c0 = sliceCols(g * groupSlices).first;
    const int64_t c1 = sliceCols(std::min(slices, (g + 1) * groupSlices) - 1).second;
    logitColumns(c, c0, c1, L + c0, V);
  };
  Chunk chunk = chunkAt(0);
  parallelFor(groups, 1, [&](int64_t g0, int64_t g1, int) {
    for (int64_t g = g0; g < g1; g++) groupLogits(chunk, g);
  });
  for (int64_t k = 0; k < chunkCount; k++) {
    const int64_t r0 = chunk.r0, nr = chunk.nr;
    stats.chunks++;
    const bool more = k + 1 < chunkCount;
    const Chunk next = more ? chunkAt(k + 1) : Chunk{};

    // 2. each row: + b, its loss, its gradient G in place
    ChunkRowsArgs args{&call, L, r0, V, bias, labels, scaleWeighted, scaleUnweighted, grad, &out.rows,
                       entryFiltering ? entryEps : 0.0f, call.filterEps, harmonic ? rowSq.data() : nullptr,
                       harmonic ? colSq.data() : nullptr};
    parallelFor(nr, rowGrain(V), [&](int64_t i0, int64_t i1, int w) {
      linearChunkRows(args, z[w], candidates[w], sqDistance[w], biasPartial[w], filtering ? flags[w].data() : nullptr,
                      entryFiltering ? counts[w].data() : nullptr, i0, i1);
    });
    if (grad) {
      // Which vocabulary slices the backward visits, and how: a slice of few entries left costs
      // less as per-entry products than as a GEMM over all of it.
      stats.gradEntries += nr * V;
      if (entryFiltering) {
        for (int64_t s = 0; s < slices; s++) {
          int64_t left = 0;
          uint8_t any = 0;
          for (int t = 0; t < threads; t++) {
            left += counts[t][s];
            counts[t][s] = 0;
            any |= flags[t][s];
            flags[t][s] = 0;
          }
          const auto [c0, c1] = sliceCols(s);
          const int64_t entries = nr * (c1 - c0);
          kept[s] = any && left > 0 ? 1 : 0;
          sparse[s] = kept[s] && static_cast<double>(left) <= kSparseSliceDensity * static_cast<double>(entries) ? 1 : 0;
          sliceEntries[static_cast<size_t>(s)] = left;
          stats.sparseBlocks += sparse[s];
          stats.gradEntriesUsed += sparse[s] ? left : kept[s] ? entries : 0;
        }
      } else if (filtering) {
        for (int64_t s = 0; s < slices; s++) {
          uint8_t any = 0;
          for (auto& f : flags) {
            any |= f[s];
            f[s] = 0;
          }
          kept[s] = any;
        }
      }
      if (!entryFiltering) {
        for (int64_t s = 0; s < slices; s++) stats.gradEntriesUsed += kept[s] ? nr * (sliceCols(s).second - sliceCols(s).first) : 0;
      }
      stats.blocks += slices;
      for (int64_t s = 0; s < slices; s++) stats.skippedBlocks += kept[s] ? 0 : 1;
      std::fill(dEStarted.begin(), dEStarted.end(), 0);
      for (auto& r : rowSumH) std::fill(r.begin(), r.end(), 0.0);
    }

    // 3 for this chunk and 1 for the next, a group of slices at a time as threads come free: W's
    // slices are read from memory once for both, and the next chunk's logits take the place of G
    if (grad || more) {
      parallelFor(groups, 1, [&](int64_t g0, int64_t g1, int w) {
        for (int64_t g = g0; g < g1; g++) {
          if (grad) {
            for (int64_t s = g * groupSlices; s < std::min(slices, (g + 1) * groupSlices); s++) gradientSlice(chunk, s, w);
          }
          if (more) groupLogits(next, g);
        }
      });
    }

    if (grad) finishChunkDE(chunk);
    chunk = next;
  }
  if (grad) {
    stats.deferredEntries = deferred.entryCount();
    deferred.apply(E, W, out.dE, out.dW, dWStarted);
  }
  // harmonic: dW_j −= w_j·Σ_i H_ij, once every chunk is in
  if (harmonic && grad && out.dW != nullptr) {
    parallelFor(V, rowGrain(D), [&](int64_t j0, int64_t j1, int) {
      for (int64_t j = j0; j < j1; j++) {
        const float h = static_cast<float>(colSumH[static_cast<size_t>(j)]);
        if (h == 0.0f) continue;
        for (int64_t k = 0; k < D; k++) out.dW[j * D + k] -= h * W32[j * D + k];
      }
    });
  }
  return stats;
}

}  // namespace cutloss::cpu
