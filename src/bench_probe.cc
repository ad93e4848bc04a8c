#include "bench_probe.h"

#include <chrono>
#include <string>

#include "boundary.h"
#include "cuda_host.h"
#include "device_buffer.h"

namespace cutloss {
namespace {

/**
 * deviceMemory(backend) → { liveBytes, peakBytes, freeBytes, totalBytes, source }: the bytes
 * cutloss's buffers hold on the backend and their high-water mark, and cudaMemGetInfo on cuda.
 * The emulator has no device, so its free/total are its own accounting: the machine's memory
 * (the cap allocate() enforces) less what its buffers hold.
 */
Napi::Value DeviceMemory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Backend backend = readBackend(info[0], "backend");
    size_t freeBytes = 0;
    size_t totalBytes = 0;
    const char* source = "cudaMemGetInfo";
    if (backend == Backend::Gpu) {
      cudahost::memoryInfo(&freeBytes, &totalBytes);
    } else {
      totalBytes = DeviceBuffer::emulatorCapacity();
      const size_t live = DeviceBuffer::liveBytes(backend);
      freeBytes = live < totalBytes ? totalBytes - live : 0;
      source = "emulator";
    }
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("liveBytes", static_cast<double>(DeviceBuffer::liveBytes(backend)));
    out.Set("peakBytes", static_cast<double>(DeviceBuffer::peakBytes(backend)));
    out.Set("freeBytes", static_cast<double>(freeBytes));
    out.Set("totalBytes", static_cast<double>(totalBytes));
    out.Set("source", source);
    return out;
  });
}

Napi::Value ResetDeviceMemoryPeak(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    DeviceBuffer::resetPeak(readBackend(info[0], "backend"));
    return info.Env().Undefined();
  });
}

/**
 * timeOnDevice(backend, fn) → { ms, clock, value }: calls fn() and times it with CUDA events
 * on the default stream (cuda), or with the host's steady clock (cuda-emu, whose kernels run
 * on the calling thread, so the host's time is the emulated device's). `value` is fn's result.
 */
Napi::Value TimeOnDevice(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Backend backend = readBackend(info[0], "backend");
    if (!info[1].IsFunction()) throw ArgError("E_OPTION", "fn must be a function");
    Napi::Function fn = info[1].As<Napi::Function>();
    Napi::Value value = info.Env().Undefined();
    double ms = 0;
    if (backend == Backend::Gpu) {
      ms = cudahost::timeOnDefaultStream([&] { value = fn.Call({}); });
    } else {
      const auto t0 = std::chrono::steady_clock::now();
      value = fn.Call({});
      ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("ms", ms);
    out.Set("clock", backend == Backend::Gpu ? "cudaEvent" : "host");
    out.Set("value", value);
    return out;
  });
}

}  // namespace

void registerBenchProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceMemory", Napi::Function::New(env, DeviceMemory, "deviceMemory"));
  exports.Set("resetDeviceMemoryPeak", Napi::Function::New(env, ResetDeviceMemoryPeak, "resetDeviceMemoryPeak"));
  exports.Set("timeOnDevice", Napi::Function::New(env, TimeOnDevice, "timeOnDevice"));
}

}  // namespace cutloss
