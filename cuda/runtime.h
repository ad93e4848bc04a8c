// The small layer that lets one kernel source build two ways: with nvcc for real GPUs
// (namespace cutloss::gpu) and with a host compiler against the SIMT emulation
// (namespace cutloss::emu). Kernels use only these macros for what differs.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define CUTLOSS_KERNEL_NS gpu
/** kernel<<<grid, block, smem, stream>>>(args...) */
#define CUTLOSS_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__)
#define CUTLOSS_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
/** Lets `kernel` launch with more than 48 KiB of dynamic shared memory (a launch reports a failure). */
#define CUTLOSS_ALLOW_DYNAMIC_SHARED(kernel, bytes) \
  (void)cudaFuncSetAttribute((kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes))
#else
#include "simt/simt.h"
#define CUTLOSS_KERNEL_NS emu
#define CUTLOSS_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::simt::launchNamedKernel(#kernel, kernel, (grid), (block), (smem), __VA_ARGS__)
#define CUTLOSS_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::simt::detail::dynamicShared())
#define CUTLOSS_ALLOW_DYNAMIC_SHARED(kernel, bytes) ((void)(kernel), (void)(bytes))  // up to 227 KiB, as sm_90
#endif
