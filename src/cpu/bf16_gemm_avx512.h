// cutloss's own bf16 GEMM for CPUs with AVX512-BF16 (bf16_gemm_avx512.cc).
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CUTLOSS_CPU_AVX512_BF16_GEMM 1
#else
#define CUTLOSS_CPU_AVX512_BF16_GEMM 0
#endif

namespace cutloss::cpu {

#if CUTLOSS_CPU_AVX512_BF16_GEMM
/** Whether this CPU (and its OS) runs AVX512-BF16. */
bool cpuHasAvx512Bf16();

/**
 * C = op(A)·op(B) + beta·C as bf16GemmSerial (bf16_gemm.h) promises, on vdpbf16ps: products exact,
 * summed in fp32 (denormal bf16 inputs read as 0, as the instruction does). Call only where
 * cpuHasAvx512Bf16().
 */
void bf16GemmAvx512(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);
#else
inline bool cpuHasAvx512Bf16() { return false; }
inline void bf16GemmAvx512(bool, bool, int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, int64_t, float,
                           float*, int64_t) {}
#endif

}  // namespace cutloss::cpu
