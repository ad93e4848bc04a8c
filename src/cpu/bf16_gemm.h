// bf16 × bf16 → fp32 GEMM on the CPU's bf16 matrix instructions: AMX-BF16 through oneDNN loaded
// at run time (dlopen("libdnnl.so.2"), Debian's libdnnl2: the addon links no new shared library),
// AVX512-BF16 through cutloss's own kernel (bf16_gemm_avx512.cc); where neither serves (or
// ONEDNN_MAX_CPU_ISA leaves oneDNN no bf16 instructions on a CPU without AVX512-BF16) the callers
// take the portable path (bf16 widened to fp32, the fp32 GEMM).
// Debian's OpenBLAS 0.3.21 is built without BUILD_BFLOAT16: its cblas.h declares cblas_sbgemm,
// its libopenblas.a has no such symbol.
//
// CUTLOSS_CPU_BF16=off (or setBf16Gemm("off")) forces the portable path, which is how the tests
// cover both paths on any machine; CUTLOSS_CPU_BF16=split keeps the logits' gradient as two bf16
// terms in the backward GEMMs (bf16GradientTerms).
#pragma once

#include <cstdint>
#include <string>

namespace cutloss::cpu {

/** Whether bf16 products run on bf16 matrix instructions now (loaded, a bf16 ISA, not switched off). */
bool bf16GemmActive();

/**
 * C = op(A)·op(B) + beta·C (beta 0 or 1; 0 writes C without reading it), row-major, A and B bf16
 * bits, C fp32, products exact and summed in fp32. On the calling thread alone; call only
 * where bf16GemmActive() said true, inside a CpuSession.
 */
void bf16GemmSerial(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc);

/**
 * rows × cols of src (leading dimension ldSrc) rounded to bf16 (nearest even; NaN stays NaN) into
 * hi (dense); with lo, also the rest src − hi rounded to bf16: hi + lo is src within 2^-16 of it.
 */
void roundToBf16(const float* src, int64_t ldSrc, int64_t rows, int64_t cols, uint16_t* hi, uint16_t* lo);

/**
 * How a GEMM of an fp32 operand (the logits' gradient G) by a bf16 one goes: G rounded to bf16 (1,
 * the default: one product, within 2^-8·Σ|g·w|, bf16's unit roundoff, as the CUDA tensor-core
 * backward, Cut Cross-Entropy and PyTorch's bf16 autograd round it), or as G's two bf16 terms
 * hi + lo (2, "split": two products, within 2^-16·Σ|g·w| of fp32 G's).
 */
int bf16GradientTerms();

/**
 * "auto" (the best bf16 GEMM here: oneDNN on AMX, bf16_gemm_avx512.cc on AVX512-BF16; G rounded to
 * bf16), "split" (the same, G as two terms), "onednn" (oneDNN's, whatever its ISA) or "off" (the
 * portable path); false where the choice leaves the portable path. CUTLOSS_CPU_BF16 sets the
 * initial one.
 */
bool setBf16Gemm(const std::string& name);

struct Bf16GemmInfo {
  std::string path;  // "cutloss AVX512-BF16 kernel", "oneDNN 2.6.3 (loaded at run time)" or "portable (…)"
  std::string isa;   // "avx512_bf16" (cutloss's kernel), oneDNN's "avx512_core_amx" / "avx512_core_bf16"; "" portable
  std::string note;  // why this path
};
Bf16GemmInfo bf16GemmInfo();

}  // namespace cutloss::cpu
