// Single-precision GEMM for the CPU backend: OpenBLAS, linked statically when it was present
// at build time (the addon then needs no BLAS on the user's machine), or a portable packed
// kernel of our own (always built; CUTLOSS_CPU_GEMM=portable or setGemm("portable") picks it,
// which is how the tests cover it where OpenBLAS is linked).
#pragma once

#include <cstdint>
#include <string>

namespace cutloss::cpu {

/**
 * C = alpha·op(A)·op(B) + beta·C, row-major; op(A) is M×K, op(B) is K×N. beta = 0 writes C
 * without reading it. Runs on the CPU backend's threads; call inside a CpuSession.
 */
void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

/**
 * The same product on the calling thread alone, for callers that split the work across the
 * backend's threads themselves (inside a parallelFor piece, under a SerialGemmScope).
 */
void sgemmSerial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

/** While alive: the BLAS runs each call on its caller's thread (so sgemmSerial may run on many at once). */
class SerialGemmScope {
 public:
  SerialGemmScope();
  ~SerialGemmScope();
  SerialGemmScope(const SerialGemmScope&) = delete;
  SerialGemmScope& operator=(const SerialGemmScope&) = delete;
};

struct GemmInfo {
  std::string library;     // "OpenBLAS 0.3.21 (linked statically)" or "portable (cutloss)"
  std::string kernel;      // OpenBLAS's core name, e.g. "SkylakeX"; the SIMD clone for the portable kernel
  std::string kernelNote;  // why that kernel runs
  bool blasLinked;         // whether OpenBLAS is in this build
};
GemmInfo gemmInfo();

/** "blas" (OpenBLAS; the default where linked) or "portable"; false when not available. */
bool setGemm(const std::string& name);

/** The BLAS's own threads (called by setThreadCount). */
void setGemmThreads(int n);

/** Undoes what the addon's load did to the environment for OpenBLAS (once, from module init). */
void restoreBlasEnvironment();

/** The widest SIMD level this CPU runs the kernels' clones at: "avx512f", "avx2", "sse2", or "none". */
const char* simdLevel();

}  // namespace cutloss::cpu
