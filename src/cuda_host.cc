#include "cuda_host.h"

#include <mutex>

#include "../cuda/kernels.h"
#include "boundary.h"

#if CUTLOSS_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace cutloss::cudahost {

#if CUTLOSS_WITH_CUDA

namespace {

[[noreturn]] void fail(cudaError_t err, const char* what) {
  throw KernelError(static_cast<int>(err), cudaGetErrorName(err), std::string(what) + ": " + cudaGetErrorString(err));
}

Status probe() {
  Status s{};
  s.built = true;
  cudaRuntimeGetVersion(&s.runtimeVersion);
  cudaDriverGetVersion(&s.driverVersion);
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  s.code = static_cast<int>(err);
  s.name = cudaGetErrorName(err);
  s.message = cudaGetErrorString(err);
  cudaGetLastError();  // clear it, so it is not reported by a later call
  s.devices = err == cudaSuccess ? count : 0;
  if (s.devices > 0) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
      s.deviceName = prop.name;
      s.computeMajor = prop.major;
      s.computeMinor = prop.minor;
      s.totalMemory = prop.totalGlobalMem;
    }
  }
  return s;
}

}  // namespace

const Status& status() {
  static std::once_flag once;
  static Status s;
  std::call_once(once, [] { s = probe(); });
  return s;
}

void requireAvailable() {
  const Status& s = status();
  if (s.code != 0) {
    throw ArgError("E_BACKEND", "cuda is unavailable: " + s.name + " (" + std::to_string(s.code) + "): " + s.message);
  }
  if (s.devices == 0) throw ArgError("E_BACKEND", "cuda is unavailable: no CUDA device");
}

void* allocateZeroed(size_t bytes) {
  requireAvailable();
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of GPU memory");
  }
  if (err != cudaSuccess) fail(err, "cudaMalloc");
  err = cudaMemset(p, 0, bytes);
  if (err != cudaSuccess) {
    cudaFree(p);
    fail(err, "cudaMemset");
  }
  return p;
}

void release(void* p) noexcept { cudaFree(p); }

void copyToDevice(void* dst, const void* src, size_t bytes) {
  cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (err != cudaSuccess) fail(err, "cudaMemcpy to the device");
}

void copyToHost(void* dst, const void* src, size_t bytes) {
  cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
  if (err != cudaSuccess) fail(err, "cudaMemcpy to the host");
}

void synchronize() {
  cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err != cudaSuccess) fail(err, "kernel");
}

#else  // no CUDA part in this build

const Status& status() {
  static const Status s{false, -1, "", "", 0, 0, 0, "", 0, 0, 0};
  return s;
}

void requireAvailable() {
  throw ArgError("E_BACKEND", "cuda is unavailable: this build of the addon has no CUDA part");
}

void* allocateZeroed(size_t) {
  requireAvailable();
  return nullptr;
}
void release(void*) noexcept {}
void copyToDevice(void*, const void*, size_t) { requireAvailable(); }
void copyToHost(void*, const void*, size_t) { requireAvailable(); }
void synchronize() { requireAvailable(); }

#endif

}  // namespace cutloss::cudahost
