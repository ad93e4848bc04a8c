// What the CPU kernels share: f32 views of rows (bf16 widened into per-thread scratch), the
// NaN-propagating row max and the row's online log-sum-exp state, written as plain loops
// the compiler vectorizes (reductions are marked `omp simd`, which lets it reorder the sum).
// Include after cpu_math.h.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "clones.h"
#include "kernels.h"
#include "parallel.h"

namespace cutloss::cpu {

/**
 * dst[0..n) = src[0..n) with non-temporal stores where the target has them (x86: SSE2, in every
 * clone): an output row that nobody reads back soon goes to memory without first being read
 * into the cache (a write-allocate would read as many bytes as it writes). Call
 * finishStreamingStores() before the data is handed to another thread.
 */
CUTLOSS_CPU_INLINE void streamRow(float* dst, const float* src, int64_t n) {
#if defined(__SSE2__)
  int64_t j = 0;
  for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & 15) != 0; j++) dst[j] = src[j];
  for (; j + 4 <= n; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
  for (; j < n; j++) dst[j] = src[j];
#else
  for (int64_t j = 0; j < n; j++) dst[j] = src[j];
#endif
}

/**
 * Asks for bytes [from, to) of `next` (a row the thread takes up soon) to be brought into L2
 * (a prefetch: never faults) while this row's compute-bound passes run. The hardware
 * prefetcher follows a stream, but not a row ahead of a loop that stays in cache, so the first
 * pass over each row would wait on memory.
 */
CUTLOSS_CPU_INLINE void prefetchSpan(const void* next, int64_t from, int64_t to) {
  if (next == nullptr) return;
  const char* bytes = static_cast<const char*>(next);
  for (int64_t at = from; at < to; at += 64) __builtin_prefetch(bytes + at, 0, 2);
}

CUTLOSS_CPU_INLINE void finishStreamingStores() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/** Rows per parallel piece: enough elements (~64K) that waking a thread pays off. */
inline int64_t rowGrain(int64_t cols) {
  const int64_t g = (int64_t{1} << 16) / (cols > 0 ? cols : 1);
  return g < 1 ? 1 : g;
}

/** Per-thread float scratch of `n` elements for each of the backend's threads. */
class Scratch {
 public:
  explicit Scratch(int64_t n) : buffers_(static_cast<size_t>(threadCount())) {
    for (auto& b : buffers_) b.resize(static_cast<size_t>(n));
  }
  float* operator[](int worker) { return buffers_[static_cast<size_t>(worker)].data(); }

 private:
  std::vector<std::vector<float>> buffers_;
};

CUTLOSS_CPU_INLINE void widenBf16(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; j++) dst[j] = bf16ToF32(src[j]);
}

/** Row r of x as f32: the row itself, or its bf16 bits widened into scratch. */
CUTLOSS_CPU_INLINE const float* rowF32(const HostMatrix& x, int64_t r, float* scratch) {
  if (x.dtype == DType::F32) return static_cast<const float*>(x.data) + r * x.cols;
  widenBf16(static_cast<const uint16_t*>(x.data) + r * x.cols, scratch, x.cols);
  return scratch;
}

/**
 * body(std::true_type) where cond holds, body(std::false_type) where not: the same loop twice,
 * each a copy of its own. The shared formulas branch on row constants (an infinite row max,
 * softcap on or off); the compiler folds such a branch in a copy whose guard decides it, where
 * it cannot vectorize it as a select (GCC 12 with AVX-512 masks). Guard with the very
 * comparison the formula makes, so the two are recognized as one.
 */
template <class Body>
CUTLOSS_CPU_INLINE void specialize(bool cond, Body&& body) {
  if (cond) {
    body(std::true_type{});
  } else {
    body(std::false_type{});
  }
}

/** The test expShifted, expMinusLse and minusLse make of a row max (or lse). */
CUTLOSS_CPU_INLINE bool infiniteMax(float max) { return max == positiveInfinity() || max == negativeInfinity(); }

/**
 * Sums go in blocks of this many terms: SIMD partial sums within a block, the blocks' sums
 * added in order. The rounding error then grows with kSumBlock / lanes + n / kSumBlock terms
 * instead of n / lanes (a 32000-term row: ~90 instead of 2000).
 */
constexpr int kSumBlock = 512;

/** Σ term(j) over [0, n), blockwise. */
template <class Term>
CUTLOSS_CPU_INLINE float blockedSum(int n, Term term) {
  float total = 0.0f;
  for (int b0 = 0; b0 < n; b0 += kSumBlock) {
    const int b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = b0; j < b1; j++) s += term(j);
    total += s;
  }
  return total;
}

/** Math.max over z(0..n): NaN if any element is NaN, −inf for an empty row. */
template <class Z>
CUTLOSS_CPU_INLINE float rowMaxOf(int n, Z z) {
  float m = negativeInfinity();
  int sawNaN = 0;
#pragma omp simd reduction(max : m) reduction(| : sawNaN)
  for (int j = 0; j < n; j++) {
    const float v = z(j);
    m = v > m ? v : m;
    sawNaN |= v != v;
  }
  return sawNaN ? quietNaN() : m;
}

/**
 * The log-sum-exp state (max, Σ exp(z − max)) of z(0..n), as mergeLse over its elements would
 * give: each block of kSumBlock elements is reduced to (max, Σ exp) while it sits in L1 (two
 * passes over 2 KiB), and the blocks' states are merged with mergeLse. So the row is read from
 * memory once, with the exponentials computed as it streams in.
 */
template <class Z>
CUTLOSS_CPU_INLINE LseState rowLseOf(int n, Z z) {
  LseState state = lseEmpty();
  for (int b0 = 0; b0 < n; b0 += kSumBlock) {
    const int b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
    float m = negativeInfinity();
    int sawNaN = 0;
#pragma omp simd reduction(max : m) reduction(| : sawNaN)
    for (int j = b0; j < b1; j++) {
      const float v = z(j);
      m = v > m ? v : m;
      sawNaN |= v != v;
    }
    if (sawNaN) m = quietNaN();
    float sum = 0.0f;
    if (m != negativeInfinity()) {  // an all −inf block adds nothing (mergeLse's empty state)
      specialize(infiniteMax(m), [&](auto) CUTLOSS_CPU_LAMBDA {
#pragma omp simd reduction(+ : sum)
        for (int j = b0; j < b1; j++) sum += expShifted(z(j), m);
      });
    }
    state = mergeLse(state, LseState{m, sum});
  }
  return state;
}

/**
 * Σ e^(z(j) − max) over [0, n), blockwise as blockedSum, with each term also stored in
 * kept[j] (in cache for the pass that uses it: one exponential per element where forming a
 * row's outputs would otherwise recompute them). max is the row's finite max. While it runs,
 * the `nextBytes` bytes at `next` (the row the thread takes next, or null) are prefetched.
 */
template <class Z>
CUTLOSS_CPU_INLINE float keptExpSum(int n, Z z, float max, float* kept, const void* next, int64_t nextBytes) {
  float total = 0.0f;
  for (int b0 = 0; b0 < n; b0 += kSumBlock) {
    const int b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
    prefetchSpan(next, nextBytes * b0 / n, nextBytes * b1 / n);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = b0; j < b1; j++) {
      const float e = expNonPositive(z(j) - max);
      kept[j] = e;
      s += e;
    }
    total += s;
  }
  return total;
}

/**
 * A finished row of n floats in cache (src) on its way to memory (dst) by streaming stores, which
 * keptExpSumOfRow may send out while it computes the next row: dst is null once it is written.
 */
struct PendingRowStore {
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t n = 0;
};

/** Writes a pending row now, if there is one. */
CUTLOSS_CPU_INLINE void flushRowStore(PendingRowStore& store) {
  if (store.dst == nullptr) return;
  streamRow(store.dst, store.src, store.n);
  store.dst = nullptr;
}

// keptExpSum of a row in memory: on AVX-512 CPUs by kept_exp_avx512.cc. With clones, the
// CPU decides at run time; a build for one instruction set (CUTLOSS_CPU_NO_CLONES) decides
// at compile time, so a build without AVX-512 never runs it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    (CUTLOSS_CPU_HAS_CLONES || defined(__AVX512F__))
#define CUTLOSS_CPU_AVX512_KEPT_EXP 1
/**
 * keptExpSum(n, z[j], max, kept, next, nextBytes) with AVX-512; z has no NaN and max is finite.
 * A pending store (null for none) goes out a cache line per 16 exponentials, so that its
 * writes drain while the arithmetic runs instead of in a pass of their own.
 */
float keptExpSumAvx512(const float* z, int n, float max, float* kept, const void* next, int64_t nextBytes,
                       PendingRowStore* store);
bool cpuHasAvx512();
#else
#define CUTLOSS_CPU_AVX512_KEPT_EXP 0
#endif

/** keptExpSum over a row in memory (no NaN in it, its max finite); writes the pending store, if any. */
CUTLOSS_CPU_INLINE float keptExpSumOfRow(const float* z, int n, float max, float* kept, const void* next,
                                         int64_t nextBytes, PendingRowStore* store) {
#if CUTLOSS_CPU_AVX512_KEPT_EXP
  if (cpuHasAvx512()) return keptExpSumAvx512(z, n, max, kept, next, nextBytes, store);
#endif
  if (store != nullptr) flushRowStore(*store);
  return keptExpSum(n, [&](int j) CUTLOSS_CPU_LAMBDA { return z[j]; }, max, kept, next, nextBytes);
}

CUTLOSS_CPU_INLINE float rowMax(const float* z, int n) {
  return rowMaxOf(n, [&](int j) CUTLOSS_CPU_LAMBDA { return z[j]; });
}

CUTLOSS_CPU_INLINE LseState rowLse(const float* z, int n) {
  return rowLseOf(n, [&](int j) CUTLOSS_CPU_LAMBDA { return z[j]; });
}

}  // namespace cutloss::cpu
