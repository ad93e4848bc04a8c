// The CUDA runtime as the binding uses it: device discovery, memory, copies, synchronization.
// Without CUTLOSS_WITH_CUDA every call says the build has no CUDA part.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "block_cache.h"

namespace cutloss::cudahost {

struct Status {
  bool built;           // the addon was compiled with nvcc
  int code;             // cudaGetDeviceCount's cudaError_t; 0 when it succeeded
  std::string name;     // e.g. "cudaErrorInsufficientDriver"
  std::string message;  // cudaGetErrorString
  int devices;
  int runtimeVersion;
  int driverVersion;
  std::string deviceName;  // device 0
  int computeMajor;
  int computeMinor;
  size_t totalMemory;
};

/** Probed once per process: devices do not come and go under a running process. */
const Status& status();
/**
 * Throws ArgError E_BACKEND with the reason when no usable device exists, or when a sticky
 * error broke this process's CUDA context (then before anything touches the context again).
 */
void requireAvailable();

// ---------------------------------------------------------------- sticky errors

/**
 * Whether a cudaError_t leaves the context unusable for the rest of the process (CUDA's
 * driver_types.h: "the process must be terminated and relaunched"): illegal addresses and
 * instructions, launch failures and timeouts, device-side asserts, uncorrectable ECC and
 * NVLink errors, and the like. Pure: a table of codes, testable without a GPU.
 */
bool isStickyError(int code);
/** Records `code` when it is sticky (the first one wins); later requireAvailable() calls refuse. */
void noteError(int code, const std::string& name, const std::string& message);
struct Fault {
  int code;
  std::string name;
  std::string message;
};
/** The sticky error this process hit, if any. */
bool fault(Fault* out);

// ---------------------------------------------------------------- memory

/** A cudaMalloc'd block of the caching allocator: `capacity` is its size class (>= the bytes asked for). */
struct Block {
  void* data = nullptr;
  size_t capacity = 0;
  int device = 0;
};
/**
 * A block of at least `bytes` on the current device, from the cache when one of its size
 * class is free, else cudaMalloc'd (when that runs out of memory: the cache is emptied and
 * the cudaMalloc tried once more, then E_OOM). Zero-filled only when `zeroed` (a memset on
 * the default stream, ordered before every later kernel). Throws ArgError (E_OOM, E_BACKEND).
 */
Block allocateBlock(size_t bytes, bool zeroed);
/** Back to the cache for the next call; see the stream-order argument in cuda_host.cc. */
void releaseBlock(const Block& block) noexcept;
/** cudaFree at once, never cached (exported memory whose importers have all closed it). */
void freeBlock(const Block& block) noexcept;
BlockCacheStats cacheStats();
/** cudaFree's every cached block; returns the bytes given back. */
size_t trimCache();
void copyToDevice(void* dst, const void* src, size_t bytes);
void copyToHost(void* dst, const void* src, size_t bytes);
/** Waits for queued kernels; throws KernelError with the CUDA error of any that failed. */
void synchronize();

/** CUDA IPC handle bytes (cudaIpcMemHandle_t) of an allocation this process made with cudaMalloc. */
std::string ipcHandle(void* base);
/** Maps another process's exported allocation; returns its base. Throws ArgError E_BACKEND. */
void* ipcOpen(const std::string& handle);
void ipcClose(void* base) noexcept;
/** Whether p points into device (or managed) memory; throws ArgError E_BACKEND when CUDA cannot tell. */
bool isDeviceMemory(const void* p);

/** cudaMemGetInfo of the current device: memory free for any process, and the device's total. */
void memoryInfo(size_t* freeBytes, size_t* totalBytes);
/**
 * Runs `body` between two events recorded on the default stream (where every cutloss launch
 * goes) and returns cudaEventElapsedTime: the device's own clock, not the host's.
 */
float timeOnDefaultStream(const std::function<void()>& body);

}  // namespace cutloss::cudahost
