// The cutloss addon: device memory by id, the kernel entry points (ops.cc), and what the
// JavaScript side needs to choose a backend. lib/native.ts holds the typed view of it.
#include <napi.h>

#include <cstring>
#include <string>

#include "bench_probe.h"
#include "boundary.h"
#include "cuda_host.h"
#include "device_buffer.h"
#include "launch.h"
#include "ops.h"
#include "sharing.h"
#include "scaleout/mpi.h"
#include "cpu/binding.h"

#ifndef CUTLOSS_BUILD_TOOL
#define CUTLOSS_BUILD_TOOL "unknown"
#endif
#ifndef CUTLOSS_WITHOUT_CUDA_REASON
#define CUTLOSS_WITHOUT_CUDA_REASON "the addon was built without nvcc"
#endif

namespace cutloss {
namespace {

// Bumped whenever an entry point changes, so a stale build is refused rather than misused.
constexpr int kInterfaceVersion = 2;
constexpr int64_t kMaxBytes = int64_t{1} << 53;

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Backend backend = readBackend(info[0], "backend");
    int64_t bytes = readCount(info[1], "byteLength", kMaxBytes);
    auto buffer = DeviceBuffer::allocate(backend, static_cast<size_t>(bytes));
    return Napi::Number::New(info.Env(), handles::add(info.Env(), std::move(buffer)));
  });
}

Napi::Value Upload(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Backend backend = readBackend(info[0], "backend");
    HostView view = readHostView(info[1], "data");  // copied right away: no JavaScript runs in between
    auto buffer = DeviceBuffer::fromHost(backend, view.data, view.byteLength);
    return Napi::Number::New(info.Env(), handles::add(info.Env(), std::move(buffer)));
  });
}

Napi::Value Download(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto buffer = readBuffer(info[0], "id");
    HostView out = readHostView(info[1], "out");
    if (out.byteLength != buffer->bytes()) {
      throw ArgError("E_SHAPE", "out has " + std::to_string(out.byteLength) + " bytes, the buffer has " +
                                    std::to_string(buffer->bytes()));
    }
    buffer->copyToHost(out.data, out.byteLength);
    return info.Env().Undefined();
  });
}

Napi::Value Write(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto buffer = readBuffer(info[0], "id");
    HostView data = readHostView(info[1], "data");
    if (data.byteLength != buffer->bytes()) {
      throw ArgError("E_SHAPE", "data has " + std::to_string(data.byteLength) + " bytes, the buffer has " +
                                    std::to_string(buffer->bytes()));
    }
    buffer->copyFromHost(data.data, data.byteLength);
    return info.Env().Undefined();
  });
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  bool released = info[0].IsNumber() && handles::release(info[0].As<Napi::Number>().DoubleValue());
  return Napi::Boolean::New(info.Env(), released);
}

Napi::Value ByteLength(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(readBuffer(info[0], "id")->bytes()));
  });
}

Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("buffers", static_cast<double>(DeviceBuffer::liveCount()));
  out.Set("bytes", static_cast<double>(DeviceBuffer::liveBytes()));
  out.Set("handles", static_cast<double>(handles::count()));
  return out;
}

Napi::Value CudaStatus(const Napi::CallbackInfo& info) {
  const cudahost::Status& s = cudahost::status();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("built", s.built);
  out.Set("code", s.code);
  out.Set("name", s.name);
  out.Set("message", s.message);
  out.Set("devices", s.devices);
  out.Set("runtimeVersion", s.runtimeVersion);
  out.Set("driverVersion", s.driverVersion);
  if (s.devices > 0) {
    out.Set("deviceName", s.deviceName);
    out.Set("computeCapability", std::to_string(s.computeMajor) + "." + std::to_string(s.computeMinor));
    out.Set("totalMemory", static_cast<double>(s.totalMemory));
  }
  cudahost::Fault f;
  if (cudahost::fault(&f)) {  // a sticky error broke the context after the probe
    Napi::Object fault = Napi::Object::New(info.Env());
    fault.Set("code", f.code);
    fault.Set("name", f.name);
    fault.Set("message", f.message);
    out.Set("fault", fault);
  }
  return out;
}

Napi::Value SetEmulatorOrder(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int64_t order = readCount(info[0], "order", 2);
    uint64_t seed = readSeed(info[1], "seed");
    setEmulatorOrder(static_cast<int>(order), seed);
    return info.Env().Undefined();
  });
}

Napi::Value EmulatorOrder(const Napi::CallbackInfo& info) {
  int order = 0;
  uint64_t seed = 0;
  emulatorOrder(&order, &seed);
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("order", order);
  out.Set("seed", static_cast<double>(seed));
  return out;
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("interfaceVersion", kInterfaceVersion);
  Napi::Object build = Napi::Object::New(env);
  build.Set("tool", CUTLOSS_BUILD_TOOL);
#if CUTLOSS_WITH_CUDA
  build.Set("cuda", true);
  build.Set("cudaVersion", CUTLOSS_CUDA_VERSION);
  build.Set("cudaArchitectures", CUTLOSS_CUDA_ARCHITECTURES);
#else
  build.Set("cuda", false);
  build.Set("withoutCudaReason", CUTLOSS_WITHOUT_CUDA_REASON);
#endif
  exports.Set("build", build);
  exports.Set("alloc", Napi::Function::New(env, Alloc, "alloc"));
  exports.Set("upload", Napi::Function::New(env, Upload, "upload"));
  exports.Set("download", Napi::Function::New(env, Download, "download"));
  exports.Set("write", Napi::Function::New(env, Write, "write"));
  exports.Set("free", Napi::Function::New(env, Free, "free"));
  exports.Set("byteLength", Napi::Function::New(env, ByteLength, "byteLength"));
  exports.Set("stats", Napi::Function::New(env, Stats, "stats"));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus, "cudaStatus"));
  exports.Set("setEmulatorOrder", Napi::Function::New(env, SetEmulatorOrder, "setEmulatorOrder"));
  exports.Set("emulatorOrder", Napi::Function::New(env, EmulatorOrder, "emulatorOrder"));
  registerOps(env, exports);
  registerSharing(env, exports);
  registerDeviceMemory(env, exports);
  cpu::registerCpu(env, exports);
  registerBenchProbe(env, exports);
  registerMpi(env, exports);
  registerNccl(env, exports);
  return exports;
}

}  // namespace cutloss

static Napi::Object Init(Napi::Env env, Napi::Object exports) { return cutloss::init(env, exports); }

NODE_API_MODULE(cutloss, Init)
