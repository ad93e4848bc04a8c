// The CUDA runtime as the binding uses it: device discovery, memory, copies, synchronization.
// Without CUTLOSS_WITH_CUDA every call says the build has no CUDA part.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

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
/** Throws ArgError E_BACKEND with the reason when no usable device exists. */
void requireAvailable();

void* allocateZeroed(size_t bytes);
void release(void* p) noexcept;
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
