// keptExpSum (rows.h) for a row in memory, written with AVX-512 intrinsics: the portable
// loop's exponential needs integer steps to apply 2^n (GCC cannot emit vscalefps from C++),
// and this pass is most of crossEntropy's arithmetic. Same constants and the same results as
// expNonPositive wherever it gives a normal float (cpu_math.h); 0 below its floor.
// Compiled for AVX-512 whatever the build's target: callers check the CPU first (rows.h).
#include "cpu_math.h"
// after cpu_math.h, which must come first
#include "rows.h"

#if CUTLOSS_CPU_AVX512_KEPT_EXP
#include <immintrin.h>

namespace cutloss::cpu {

namespace {

__attribute__((target("avx512f"))) inline __m512 expNonPositive16(__m512 x) {
  using namespace expConstants;
  const __m512 floor = _mm512_set1_ps(kNonPositiveFloor);
  // x ≤ 0 and not NaN here: no upper clamp. (Masked forms: GCC 12 warns about the plain max
  // and scalef, whose unused pass-through it sees as uninitialized.)
  const __m512 xc = _mm512_mask_max_ps(floor, 0xffff, x, floor);
  const __m512 shifter = _mm512_set1_ps(kShifter);
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(kLog2e), shifter), shifter);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), xc));
  __m512 p = _mm512_set1_ps(kPoly[0]);
  for (int k = 1; k < 6; k++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kPoly[k]));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512 y = _mm512_mask_scalef_ps(p, 0xffff, p, n);  // p·2^n
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, floor, _CMP_GE_OQ), y);  // 0 below the floor
}

}  // namespace

__attribute__((target("avx512f"))) float keptExpSumAvx512(const float* z, int n, float max, float* kept,
                                                        const void* next, int64_t nextBytes, PendingRowStore* store) {
  // The pending row goes out from a cursor that advances a cache line per 16 exponentials: its
  // first elements up to a 64-byte boundary of dst by plain stores, whole lines by streaming
  // stores inside the loop, and what the loop leaves by streamRow at the end.
  float* dst = nullptr;
  const float* src = nullptr;
  int64_t at = 0;
  int64_t lines = 0;  // whole 16-float lines from `at` on
  if (store != nullptr && store->dst != nullptr) {
    dst = store->dst;
    src = store->src;
    at = static_cast<int64_t>(((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63) / sizeof(float));
    at = at < store->n ? at : store->n;
    for (int64_t k = 0; k < at; k++) dst[k] = src[k];
    lines = (store->n - at) / 16;
  }
  const __m512 m = _mm512_set1_ps(max);
  float total = 0.0f;
  for (int b0 = 0; b0 < n; b0 += kSumBlock) {
    const int b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
    prefetchSpan(next, nextBytes * b0 / n, nextBytes * b1 / n);
    __m512 sum0 = _mm512_setzero_ps();
    __m512 sum1 = _mm512_setzero_ps();
    int j = b0;
    for (; j + 32 <= b1; j += 32) {
      if (lines >= 2) {
        _mm512_stream_ps(dst + at, _mm512_loadu_ps(src + at));
        _mm512_stream_ps(dst + at + 16, _mm512_loadu_ps(src + at + 16));
        at += 32;
        lines -= 2;
      }
      const __m512 e0 = expNonPositive16(_mm512_sub_ps(_mm512_loadu_ps(z + j), m));
      const __m512 e1 = expNonPositive16(_mm512_sub_ps(_mm512_loadu_ps(z + j + 16), m));
      _mm512_storeu_ps(kept + j, e0);
      _mm512_storeu_ps(kept + j + 16, e1);
      sum0 = _mm512_add_ps(sum0, e0);
      sum1 = _mm512_add_ps(sum1, e1);
    }
    for (; j < b1; j += 16) {
      const __mmask16 live = static_cast<__mmask16>(b1 - j >= 16 ? 0xffff : (1u << (b1 - j)) - 1u);
      const __m512 e = _mm512_maskz_mov_ps(live, expNonPositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, z + j), m)));
      _mm512_mask_storeu_ps(kept + j, live, e);
      sum0 = _mm512_add_ps(sum0, e);
    }
    alignas(64) float lanes[16];  // (not _mm512_reduce_add_ps: GCC 12's header trips -Wmaybe-uninitialized)
    _mm512_store_ps(lanes, _mm512_add_ps(sum0, sum1));
    float blockSum = 0.0f;
    for (float v : lanes) blockSum += v;
    total += blockSum;
  }
  if (dst != nullptr) {
    streamRow(dst + at, src + at, store->n - at);
    store->dst = nullptr;
  }
  return total;
}

bool cpuHasAvx512() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
}

}  // namespace cutloss::cpu

#endif
