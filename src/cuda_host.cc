#include "cuda_host.h"

#include <cstring>
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

namespace {
/** A CUDA failure the caller caused (a bad handle or pointer): E_BACKEND with CUDA's words. */
[[noreturn]] void refuse(cudaError_t err, const std::string& what) {
  cudaGetLastError();  // not sticky: clear it so later calls do not report it
  throw ArgError("E_BACKEND", what + ": " + cudaGetErrorName(err) + " (" + std::to_string(static_cast<int>(err)) +
                                  "): " + cudaGetErrorString(err));
}
}  // namespace

std::string ipcHandle(void* base) {
  requireAvailable();
  cudaIpcMemHandle_t handle;
  cudaError_t err = cudaIpcGetMemHandle(&handle, base);
  if (err != cudaSuccess) refuse(err, "cudaIpcGetMemHandle");
  return std::string(reinterpret_cast<const char*>(&handle), sizeof handle);
}

void* ipcOpen(const std::string& bytes) {
  requireAvailable();
  cudaIpcMemHandle_t handle;
  if (bytes.size() != sizeof handle) {
    throw ArgError("E_OPTION", "a CUDA IPC handle has " + std::to_string(sizeof handle) + " bytes, got " +
                                   std::to_string(bytes.size()));
  }
  std::memcpy(&handle, bytes.data(), sizeof handle);
  void* base = nullptr;
  cudaError_t err = cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
  if (err != cudaSuccess) {
    refuse(err, "cudaIpcOpenMemHandle (was the exported tensor disposed, or its process ended?)");
  }
  return base;
}

void ipcClose(void* base) noexcept { cudaIpcCloseMemHandle(base); }

bool isDeviceMemory(const void* p) {
  requireAvailable();
  cudaPointerAttributes attributes{};
  cudaError_t err = cudaPointerGetAttributes(&attributes, p);
  if (err != cudaSuccess) refuse(err, "cudaPointerGetAttributes");
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

void memoryInfo(size_t* freeBytes, size_t* totalBytes) {
  requireAvailable();
  cudaError_t err = cudaMemGetInfo(freeBytes, totalBytes);
  if (err != cudaSuccess) fail(err, "cudaMemGetInfo");
}

float timeOnDefaultStream(const std::function<void()>& body) {
  requireAvailable();
  cudaEvent_t start = nullptr, stop = nullptr;
  cudaError_t err = cudaEventCreate(&start);
  if (err == cudaSuccess) err = cudaEventCreate(&stop);
  // Events are destroyed whether body throws or not (a JS exception passes through here).
  struct Events {
    cudaEvent_t& a;
    cudaEvent_t& b;
    ~Events() {
      if (a != nullptr) cudaEventDestroy(a);
      if (b != nullptr) cudaEventDestroy(b);
    }
  } events{start, stop};
  if (err != cudaSuccess) fail(err, "cudaEventCreate");
  err = cudaEventRecord(start, nullptr);
  if (err != cudaSuccess) fail(err, "cudaEventRecord");
  body();
  err = cudaEventRecord(stop, nullptr);
  if (err == cudaSuccess) err = cudaEventSynchronize(stop);
  float ms = 0;
  if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, start, stop);
  if (err != cudaSuccess) fail(err, "cudaEvent timing");
  return ms;
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
std::string ipcHandle(void*) {
  requireAvailable();
  return {};
}
void* ipcOpen(const std::string&) {
  requireAvailable();
  return nullptr;
}
void ipcClose(void*) noexcept {}
bool isDeviceMemory(const void*) {
  requireAvailable();
  return false;
}
void memoryInfo(size_t*, size_t*) { requireAvailable(); }
float timeOnDefaultStream(const std::function<void()>&) {
  requireAvailable();
  return 0;
}

#endif

}  // namespace cutloss::cudahost
