// The bf16 GEMM on AVX512-BF16 (vdpbf16ps): each instruction multiplies 16 pairs of bf16 along K
// exactly and adds them to 16 fp32 sums, twice the f32 FMA's rate. oneDNN 2.6 reaches ~37% of this
// peak on the shapes linearCrossEntropy runs (a 512-class slice by a chunk of rows), so machines
// without AMX take this kernel instead (bf16_gemm.cc decides).
// Compiled for AVX512-BF16 whatever the build's target: callers check the CPU first.
#include "bf16_gemm_avx512.h"

#if CUTLOSS_CPU_AVX512_BF16_GEMM
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace cutloss::cpu {

namespace {

#define CUTLOSS_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// A block of rows by a panel of columns per micro-kernel call: 12 × 2 accumulators (24 zmm) hide
// the instruction's latency at two per cycle, and leave registers for B's two vectors.
constexpr int kMr = 12;
constexpr int kNr = 32;

/** The pair (x[k], x[k + 1]) as one 32-bit word. */
inline uint32_t pairWord(uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16; }

/** The 32-bit word at p (two bf16 side by side), read without breaking the bf16 data's type. */
inline uint32_t wordAt(const void* p) {
  uint32_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

/** Up to 16 bf16 from lo and hi (hi null: zeros) side by side as pair words; lanes past n are zero. */
CUTLOSS_AVX512_BF16 inline __m512i pairWords16(const uint16_t* lo, const uint16_t* hi, int n) {
  const __mmask16 m = n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1);
  // (zero-masked forms: GCC 12 warns about the plain ones' unused pass-through as uninitialized)
  const __m512i l = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m, lo));
  if (hi == nullptr) return l;
  const __m512i h = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_maskz_loadu_epi16(m, hi));
  return _mm512_or_si512(l, _mm512_maskz_slli_epi32(0xffff, h, 16));
}

/**
 * Up to 16 pair words, lane t from x + t·stride (the pair x[t·stride], x[t·stride + 1]); lanes
 * past n are zero. With odd K the last pair has no second element in memory: `whole` false reads
 * the first alone.
 */
CUTLOSS_AVX512_BF16 inline __m512i stridedPairs16(const uint16_t* x, int64_t stride, int n, bool whole) {
  const __mmask16 m = n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1);
  if (whole && stride * 16 < (int64_t{1} << 31)) {
    const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(static_cast<int>(stride)));
    return _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, index, x, 2);
  }
  alignas(64) uint32_t w[16] = {};
  for (int t = 0; t < n; t++) w[t] = pairWord(x[t * stride], whole ? x[t * stride + 1] : 0);
  return _mm512_load_si512(w);
}

/**
 * Rows [i0, i0 + rows) of op(A) as a block of K-pairs: dst[kp·kMr + r] holds
 * (a(i0 + r, 2kp), a(i0 + r, 2kp + 1)); rows past `rows` and k past K are zero.
 */
CUTLOSS_AVX512_BF16 void packA(bool transA, const uint16_t* A, int64_t lda, int64_t i0, int rows, int64_t K, uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  constexpr __mmask16 kBlock = (1u << kMr) - 1;
  for (int64_t kp = 0; kp < K2; kp++) {
    const int64_t k = 2 * kp;
    const __m512i w = transA ? pairWords16(A + k * lda + i0, k + 1 < K ? A + (k + 1) * lda + i0 : nullptr, rows)
                             : stridedPairs16(A + i0 * lda + k, lda, rows, k + 1 < K);
    _mm512_mask_storeu_epi32(dst + kp * kMr, kBlock, w);
  }
}

/** op(B) as kNr-column panels of K-pairs: panel p's dst[kp·kNr + c] holds (b(2kp, j), b(2kp + 1, j)), j = p·kNr + c. */
CUTLOSS_AVX512_BF16 void packB(bool transB, const uint16_t* B, int64_t ldb, int64_t N, int64_t K, uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t j0 = 0; j0 < N; j0 += kNr) {
    uint32_t* panel = dst + (j0 / kNr) * K2 * kNr;
    for (int h = 0; h < kNr; h += 16) {
      const int n = static_cast<int>(std::clamp<int64_t>(N - j0 - h, 0, 16));
      for (int64_t kp = 0; kp < K2; kp++) {
        const int64_t k = 2 * kp;
        const __m512i w = transB ? stridedPairs16(B + (j0 + h) * ldb + k, ldb, n, k + 1 < K)
                                 : pairWords16(B + k * ldb + j0 + h, k + 1 < K ? B + (k + 1) * ldb + j0 + h : nullptr, n);
        _mm512_storeu_si512(panel + kp * kNr + h, w);
      }
    }
  }
}

/**
 * C[rows × cols] (= or +=) a block of A times the packed panel, over all K-pairs. The block is
 * packed (kDirect false: word kp·kMr + r) or kMr rows of A's bf16 as they lie in memory (kDirect:
 * the pair word at element 2·(r·aStride + kp)), which spares packing where A's rows hold whole pairs.
 */
template <bool kDirect>
CUTLOSS_AVX512_BF16 void blockTimesPanel(int64_t K2, const void* a, int64_t aStride, const uint32_t* b, int rows, int cols,
                                        bool accumulate, float* C, int64_t ldc) {
  // C's lines are far in memory (a slice of dW is 1 MB): ask for them now, use them after the K loop
  for (int r = 0; r < rows; r++) {
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + r * ldc + 16), _MM_HINT_T0);
  }
  __m512 acc[kMr][2];
#pragma GCC unroll 12
  for (int r = 0; r < kMr; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < K2; kp++) {
    const __m512bh b0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + kp * kNr));
    const __m512bh b1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(b + kp * kNr + 16));
#pragma GCC unroll 12
    for (int r = 0; r < kMr; r++) {
      const uint32_t word = kDirect ? wordAt(static_cast<const uint16_t*>(a) + 2 * (r * aStride + kp))
                                    : static_cast<const uint32_t*>(a)[kp * kMr + r];
      const __m512bh ar = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(word)));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
    }
  }
  const __mmask16 m0 = cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
  for (int r = 0; r < rows; r++) {
    float* c = C + r * ldc;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

}  // namespace

bool cpuHasAvx512Bf16() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}

void bf16GemmAvx512(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f) {
      for (int64_t i = 0; i < M; i++) std::memset(C + i * ldc, 0, static_cast<size_t>(N) * sizeof(float));
    }
    return;
  }
  const int64_t K2 = (K + 1) / 2;
  const int64_t panels = (N + kNr - 1) / kNr;
  thread_local std::vector<uint32_t> packedA, packedB;
  packedA.resize(static_cast<size_t>(K2 * kMr));
  packedB.resize(static_cast<size_t>(panels * K2 * kNr));
  packB(transB, B, ldb, N, K, packedB.data());
  // whole blocks of A's rows read in place where its rows are whole pairs
  const bool inPlace = !transA && K % 2 == 0 && lda % 2 == 0;
  for (int64_t i0 = 0; i0 < M; i0 += kMr) {
    const int rows = static_cast<int>(std::min<int64_t>(kMr, M - i0));
    const bool direct = inPlace && rows == kMr;
    if (!direct) packA(transA, A, lda, i0, rows, K, packedA.data());
    const uint16_t* rowPairs = A + i0 * lda;
    for (int64_t p = 0; p < panels; p++) {
      const int cols = static_cast<int>(std::min<int64_t>(kNr, N - p * kNr));
      const uint32_t* panel = packedB.data() + p * K2 * kNr;
      float* c = C + i0 * ldc + p * kNr;
      if (direct) {
        blockTimesPanel<true>(K2, rowPairs, lda / 2, panel, rows, cols, beta != 0.0f, c, ldc);
      } else {
        blockTimesPanel<false>(K2, packedA.data(), 0, panel, rows, cols, beta != 0.0f, c, ldc);
      }
    }
  }
}

}  // namespace cutloss::cpu

#endif  // CUTLOSS_CPU_AVX512_BF16_GEMM
