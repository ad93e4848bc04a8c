// The warp-level matrix and copy operations the tensor-core kernels use, one name each:
// inline PTX under nvcc, and beside it the emulated twin (cuda/simt/warp_ops.h), which follows
// the PTX ISA's per-lane fragment layouts so that a wrong layout, a missing wait or a missing
// barrier gives wrong results or a report in CI. Kernels never write inline PTX themselves.
//
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16 / m16n8k8"; g = lane / 4, t = lane % 4):
//   m16n8k16 bf16/f16  A 16×16 row: a[i] = A(g + 8·(i % 2), 2t + 8·(i / 2) + {0, 1}), low half first
//                      B 16×8 col:  b[i] = B(2t + 8·i + {0, 1}, g)
//   m16n8k8 tf32       A 16×8:      a[i] = A(g + 8·(i % 2), t + 4·(i / 2));  B 8×8: b[i] = B(t + 4·i, g)
//   accumulators       c[i] = C(g + 8·(i / 2), 2t + (i % 2))
// ldmatrix.x4 (lane i gives row i % 8 of matrix i / 8) leaves in register j of lane l the
// elements (l / 4, 2(l % 4) + {0, 1}) of matrix j, or with .trans (2(l % 4) + {0, 1}, l / 4):
// exactly an A or (from a k-major tile) B fragment.
#pragma once

#include <stdint.h>

#include "runtime.h"

#if defined(__CUDACC__)
#define CUTLOSS_WARP_SITE_PARAM
#define CUTLOSS_WARP_SITE_ARGS
#else
// The emulator tells call sites apart, so lanes at different calls are a divergence.
#define CUTLOSS_WARP_SITE_PARAM , const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define CUTLOSS_WARP_SITE_ARGS file, line
#endif

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- cp.async

/** Copies 16 bytes global → shared without blocking; bytes past srcBytes (0..16) are zero-filled.
 *  Both addresses 16-byte aligned. Lands at the issuing thread's cpAsyncWait. */
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, int srcBytes CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(srcBytes) : "memory");
#else
  ::simt::warp::cpAsync(smem, gmem, 16, srcBytes, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** cpAsync16 to smem + Offset bytes: the offset rides in the instruction's address, no add. */
template <int Offset>
__device__ __forceinline__ void cpAsync16At(void* smem, const void* gmem, int srcBytes CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0+%3], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(srcBytes), "n"(Offset) : "memory");
#else
  ::simt::warp::cpAsync(static_cast<unsigned char*>(smem) + Offset, gmem, 16, srcBytes, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** Closes this thread's copies issued since the last commit into one group. */
__device__ __forceinline__ void cpAsyncCommit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  ::simt::warp::cpAsyncCommit();
#endif
}

/** Waits until at most Pending of this thread's groups are still in flight. Other threads'
 *  copies need a __syncthreads() after their waits before this thread reads them. */
template <int Pending>
__device__ __forceinline__ void cpAsyncWait() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#else
  ::simt::warp::cpAsyncWait(Pending);
#endif
}

// ---------------------------------------------------------------- ldmatrix

#if defined(__CUDACC__)
#define CUTLOSS_SMEM_ADDRESS(p) static_cast<unsigned>(__cvta_generic_to_shared(p))
#endif

/** ldmatrix .x4: four 8×8 b16 matrices; lane i gives the 16-byte row i % 8 of matrix i / 8. */
__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 4, false, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** ldmatrixX4 at row + Offset bytes: the offset rides in the instruction's address, no add. */
template <int Offset>
__device__ __forceinline__ void ldmatrixX4At(uint32_t (&r)[4], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4+%5];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(CUTLOSS_SMEM_ADDRESS(row)), "n"(Offset));
#else
  ::simt::warp::ldmatrix(r, 4, false, static_cast<const unsigned char*>(row) + Offset, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** ldmatrix .x4 .trans: each matrix transposed on the way (B fragments from a k-major tile). */
__device__ __forceinline__ void ldmatrixX4Trans(uint32_t (&r)[4], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 4, true, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** ldmatrix .x2: lanes 0–15 give the rows. */
__device__ __forceinline__ void ldmatrixX2(uint32_t (&r)[2], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 2, false, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

__device__ __forceinline__ void ldmatrixX2Trans(uint32_t (&r)[2], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 2, true, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** ldmatrix .x1: lanes 0–7 give the rows. */
__device__ __forceinline__ void ldmatrixX1(uint32_t (&r)[1], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 1, false, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

__device__ __forceinline__ void ldmatrixX1Trans(uint32_t (&r)[1], const void* row CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(CUTLOSS_SMEM_ADDRESS(row)));
#else
  ::simt::warp::ldmatrix(r, 1, true, row, CUTLOSS_WARP_SITE_ARGS);
#endif
}

// ---------------------------------------------------------------- mma.sync

/** d += A·B, m16n8k16, bf16 operands, fp32 accumulators. */
__device__ __forceinline__ void mmaBf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2] CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  ::simt::warp::mma(::simt::warp::MmaKind::Bf16M16N8K16, d, a, b, d, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** d += A·B, m16n8k16, fp16 operands, fp32 accumulators. */
__device__ __forceinline__ void mmaF16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2] CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  ::simt::warp::mma(::simt::warp::MmaKind::F16M16N8K16, d, a, b, d, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** d += A·B, m16n8k8, tf32 operands (toTf32 bits), fp32 accumulators. */
__device__ __forceinline__ void mmaTf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2] CUTLOSS_WARP_SITE_PARAM) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  ::simt::warp::mma(::simt::warp::MmaKind::Tf32M16N8K8, d, a, b, d, CUTLOSS_WARP_SITE_ARGS);
#endif
}

/** f32 → tf32 bits, cvt.rna: to nearest, ties away from zero. */
__device__ __forceinline__ uint32_t toTf32(float x) {
#if defined(__CUDACC__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  return ::simt::warp::tf32Bits(::simt::bitCast<uint32_t>(x));
#endif
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
