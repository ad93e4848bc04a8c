#include "cuda_host.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include "../cuda/kernels.h"
#include "boundary.h"

#if CUTLOSS_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace cutloss::cudahost {

// ---------------------------------------------------------------- sticky errors (both builds)

bool isStickyError(int code) {
  switch (code) {  // cudaError_t values, stable across CUDA 11-13 (driver_types.h)
    case 214:  // cudaErrorECCUncorrectable
    case 220:  // cudaErrorNvlinkUncorrectable
    case 226:  // cudaErrorContained
    case 700:  // cudaErrorIllegalAddress
    case 702:  // cudaErrorLaunchTimeout
    case 710:  // cudaErrorAssert
    case 714:  // cudaErrorHardwareStackError
    case 715:  // cudaErrorIllegalInstruction
    case 716:  // cudaErrorMisalignedAddress
    case 717:  // cudaErrorInvalidAddressSpace
    case 718:  // cudaErrorInvalidPc
    case 719:  // cudaErrorLaunchFailure
    case 721:  // cudaErrorTensorMemoryLeak
    case 810:  // cudaErrorMpsClientTerminated
    case 911:  // cudaErrorExternalDevice
      return true;
    default:
      return false;
  }
}

namespace {
std::mutex gFaultMutex;
Fault gFault;
std::atomic<bool> gFaultedFlag{false};  // checked without the lock before every CUDA call
}  // namespace

void noteError(int code, const std::string& name, const std::string& message) {
  if (!isStickyError(code)) return;
  std::lock_guard<std::mutex> lock(gFaultMutex);
  if (gFaultedFlag.load()) return;
  gFault = Fault{code, name, message};
  gFaultedFlag.store(true, std::memory_order_release);
}

bool fault(Fault* out) {
  if (!gFaultedFlag.load(std::memory_order_acquire)) return false;
  std::lock_guard<std::mutex> lock(gFaultMutex);
  if (out != nullptr) *out = gFault;
  return true;
}

namespace {
/** E_BACKEND once a sticky error broke the context: nothing may run on it again. */
void refuseAfterFault() {
  Fault f;
  if (!fault(&f)) return;
  throw ArgError("E_BACKEND", "cuda is unavailable: a sticky CUDA error broke this process's context: " + f.name +
                                  " (" + std::to_string(f.code) + "): " + f.message +
                                  "; restart the process to use the GPU again");
}
}  // namespace

#if CUTLOSS_WITH_CUDA

namespace {

[[noreturn]] void fail(cudaError_t err, const char* what) {
  noteError(static_cast<int>(err), cudaGetErrorName(err), std::string(what) + ": " + cudaGetErrorString(err));
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
  refuseAfterFault();
  const Status& s = status();
  if (s.code != 0) {
    throw ArgError("E_BACKEND", "cuda is unavailable: " + s.name + " (" + std::to_string(s.code) + "): " + s.message);
  }
  if (s.devices == 0) throw ArgError("E_BACKEND", "cuda is unavailable: no CUDA device");
}

// ---------------------------------------------------------------- the caching allocator
//
// Stream order. Every piece of device work cutloss issues goes to the legacy default stream:
// kernels (runKernels launches on stream 0, and the addon is not built with
// --default-stream per-thread), cudaMemcpy both ways, and the memset below. That stream runs
// its work in issue order, so work issued after a block is reused runs after every kernel
// that used the block before, even had they not finished when it was released. Besides, a
// block returns to the cache only when its last DeviceBuffer reference drops: a job holds
// references to all it touches until runKernels' cudaDeviceSynchronize returned, so in
// practice the kernels have finished. What the cache must never hold is memory another
// process may still use (CUDA IPC exports): those are freed by freeBlock once their
// importers closed them (sharing.cc, device_buffer.cc).

namespace {

constexpr size_t kGranule = 512;  // cudaMalloc aligns to 256; the smallest class is one 512-byte block

BlockCache& cache() {
  static BlockCache* c = new BlockCache(SIZE_MAX);  // never destroyed: blocks may be released at exit
  return *c;
}

[[noreturn]] void outOfMemory(size_t bytes) {
  throw ArgError("E_OOM", "cannot allocate " + std::to_string(bytes) + " bytes of GPU memory");
}

size_t freeBlocks(const std::vector<std::pair<void*, size_t>>& blocks) {
  size_t bytes = 0;
  for (const auto& [p, size] : blocks) {
    cudaFree(p);
    cache().countFree();
    bytes += size;
  }
  return bytes;
}

}  // namespace

Block allocateBlock(size_t bytes, bool zeroed) {
  requireAvailable();
  Block b;
  b.capacity = BlockCache::sizeClass(bytes, kGranule);
  if (b.capacity == 0) outOfMemory(bytes);
  cudaError_t err = cudaGetDevice(&b.device);
  if (err != cudaSuccess) fail(err, "cudaGetDevice");
  b.data = cache().take(b.device, b.capacity);
  if (b.data == nullptr) {
    err = cudaMalloc(&b.data, b.capacity);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // not sticky: cleared so that later calls do not report it
      cache().countOomRetry();
      freeBlocks(cache().drain(-1));
      err = cudaMalloc(&b.data, b.capacity);
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        outOfMemory(bytes);
      }
    }
    if (err != cudaSuccess) fail(err, "cudaMalloc");
    cache().countAllocation();
  }
  if (zeroed && bytes > 0) {
    err = cudaMemsetAsync(b.data, 0, bytes, nullptr);
    if (err != cudaSuccess) {
      releaseBlock(b);
      fail(err, "cudaMemsetAsync");
    }
  }
  return b;
}

void releaseBlock(const Block& b) noexcept {
  if (b.data == nullptr) return;
  if (fault(nullptr)) return;  // the context is broken: its memory goes with the process
  if (!cache().put(b.device, b.capacity, b.data)) freeBlock(b);
}

void freeBlock(const Block& b) noexcept {
  if (b.data == nullptr || fault(nullptr)) return;
  cudaFree(b.data);
  cache().countFree();
}

BlockCacheStats cacheStats() { return cache().stats(); }

size_t trimCache() {
  if (fault(nullptr)) return 0;
  return freeBlocks(cache().drain(-1));
}

void copyToDevice(void* dst, const void* src, size_t bytes) {
  refuseAfterFault();
  cudaError_t err = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (err != cudaSuccess) fail(err, "cudaMemcpy to the device");
}

void copyToHost(void* dst, const void* src, size_t bytes) {
  refuseAfterFault();
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
  if (isStickyError(static_cast<int>(err))) fail(err, what.c_str());
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

void ipcClose(void* base) noexcept {
  if (!fault(nullptr)) cudaIpcCloseMemHandle(base);
}

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

Block allocateBlock(size_t, bool) {
  requireAvailable();
  return {};
}
void releaseBlock(const Block&) noexcept {}
void freeBlock(const Block&) noexcept {}
BlockCacheStats cacheStats() { return {}; }
size_t trimCache() { return 0; }
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
