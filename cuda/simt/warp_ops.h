// The emulated half of cuda/warp_ops.cuh: cp.async, ldmatrix and mma.sync as the PTX ISA
// documents them, lane by lane.
//
// - cp.async: a copy is queued by its thread and lands (global → shared, zero-filled past
//   srcBytes) only when that thread's wait_group retires its group, so reading a stage before
//   its wait reads what was there before. Until it lands, its destination counts as written
//   by its thread in every barrier interval, so another thread touching it is a race.
// - ldmatrix and mma.sync are warp exchanges: every lane of the full warp must reach the same
//   call; each lane supplies its own registers (for ldmatrix, one row address), and receives
//   the registers the documented fragment layout gives it. Row addresses must be 16-byte
//   aligned and in shared memory.
// - mma: products are exact in double (bf16, fp16 and tf32 products fit), summed over k in
//   double and added to the fp32 accumulator with one rounding.
#pragma once

#include <cstddef>
#include <cstdint>

namespace simt::warp {

/** Queues a copy of `bytes` (4, 8 or 16) from global `src` to shared `dst`; past `srcBytes` it writes zeros. */
void cpAsync(void* dst, const void* src, int bytes, int srcBytes, const char* file, int line);
/** Closes the calling thread's queued copies into one group. */
void cpAsyncCommit();
/** Lands the calling thread's groups until at most `pending` are left. */
void cpAsyncWait(int pending);

/** ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16: lane i < 8·count gives row i % 8 of matrix i / 8. */
void ldmatrix(uint32_t* regs, int count, bool trans, const void* row, const char* file, int line);

enum class MmaKind : int { Bf16M16N8K16 = 0, F16M16N8K16 = 1, Tf32M16N8K8 = 2 };
/** d = a·b + c for one lane's fragments (a: 4 registers, b: 2, c and d: 4 floats). */
void mma(MmaKind kind, float* d, const uint32_t* a, const uint32_t* b, const float* c, const char* file, int line);

/** cvt.rna.tf32.f32: nearest, ties away from zero; the result's low 13 bits are zero. */
inline uint32_t tf32Bits(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u ? u : ((u + 0x1000u) & 0xffffe000u); }

}  // namespace simt::warp
