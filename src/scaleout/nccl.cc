// NCCL for cutloss/nccl, loaded at run time (dlopen), so the addon has no link-time NCCL
// dependency. Host arrays are staged through device memory: the losses' collectives are on
// host statistics and dEmbeddings. The enum values below are NCCL's stable ABI (nccl.h).
#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>

#include "mpi.h"

#if CUTLOSS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace cutloss {
namespace {

struct UniqueId {
  char internal[128];  // NCCL_UNIQUE_ID_BYTES
};
using Comm = void*;
using GetUniqueIdFn = int (*)(UniqueId*);
using CommInitRankFn = int (*)(Comm*, int, UniqueId, int);
using AllReduceFn = int (*)(const void*, void*, size_t, int, int, Comm, void*);
using CommDestroyFn = int (*)(Comm);
using ErrorStringFn = const char* (*)(int);
using VersionFn = int (*)(int*);

constexpr int kFloat32 = 7, kFloat64 = 9;  // ncclFloat32, ncclFloat64
constexpr int kSum = 0, kMax = 2;          // ncclSum, ncclMax

struct Nccl {
  bool loaded = false;
  std::string error;
  std::string library;
  GetUniqueIdFn getUniqueId = nullptr;
  CommInitRankFn commInitRank = nullptr;
  AllReduceFn allReduce = nullptr;
  CommDestroyFn commDestroy = nullptr;
  ErrorStringFn errorString = nullptr;
  VersionFn version = nullptr;
};

Nccl& nccl() {
  static Nccl n;
  static bool tried = false;
  if (tried) return n;
  tried = true;
  const char* env = std::getenv("CUTLOSS_LIBNCCL");
  const char* candidates[] = {env, "libnccl.so.2", "libnccl.so"};
  void* lib = nullptr;
  std::string errors;
  for (const char* name : candidates) {
    if (name == nullptr || *name == '\0') continue;
    lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) {
      n.library = name;
      break;
    }
    const char* e = dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (e != nullptr ? e : name);
  }
  if (lib == nullptr) {
    n.error = "libnccl could not be loaded: " + errors + " (install NCCL, or set CUTLOSS_LIBNCCL to its path)";
    return n;
  }
  std::string missing;
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(lib, name);
    if (p == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
    return p;
  };
  n.getUniqueId = reinterpret_cast<GetUniqueIdFn>(sym("ncclGetUniqueId"));
  n.commInitRank = reinterpret_cast<CommInitRankFn>(sym("ncclCommInitRank"));
  n.allReduce = reinterpret_cast<AllReduceFn>(sym("ncclAllReduce"));
  n.commDestroy = reinterpret_cast<CommDestroyFn>(sym("ncclCommDestroy"));
  n.errorString = reinterpret_cast<ErrorStringFn>(sym("ncclGetErrorString"));
  n.version = reinterpret_cast<VersionFn>(sym("ncclGetVersion"));
  if (!missing.empty()) {
    n.error = n.library + " lacks " + missing;
    return n;
  }
  n.loaded = true;
  return n;
}

[[noreturn]] void fail(Napi::Env env, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, "E_BACKEND"));
  throw e;
}

std::string ncclError(int rc) {
  Nccl& n = nccl();
  const char* s = n.errorString != nullptr ? n.errorString(rc) : nullptr;
  return std::string(s != nullptr ? s : "NCCL error") + " (" + std::to_string(rc) + ")";
}

/** Why NCCL cannot run here, or "": the library first, then the CUDA part. */
std::string unusable() {
  Nccl& n = nccl();
  if (!n.loaded) return n.error;
#if CUTLOSS_WITH_CUDA
  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess) return std::string("CUDA is unavailable: ") + cudaGetErrorName(e) + " (" + std::to_string(static_cast<int>(e)) + ")";
  if (devices == 0) return "no CUDA device";
  return "";
#else
  return "the addon was built without CUDA, which NCCL needs";
#endif
}

Nccl& ready(Napi::Env env) {
  const std::string why = unusable();
  if (!why.empty()) fail(env, why);
  return nccl();
}

std::unordered_map<int, Comm>& comms() {
  static std::unordered_map<int, Comm> m;
  return m;
}

Napi::Value NcclStatus(const Napi::CallbackInfo& info) {
  const std::string why = unusable();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("available", why.empty());
  out.Set("reason", why.empty() ? "NCCL loaded from " + nccl().library : why);
  if (nccl().loaded) {
    int v = 0;
    if (nccl().version(&v) == 0) out.Set("version", v);
  }
  return out;
}

/** 128 bytes that rank 0 creates and every rank passes to ncclCommInit. */
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  Nccl& n = ready(info.Env());
  UniqueId id;
  const int rc = n.getUniqueId(&id);
  if (rc != 0) fail(info.Env(), "ncclGetUniqueId failed: " + ncclError(rc));
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof id.internal);
  std::memcpy(out.Data(), id.internal, sizeof id.internal);
  return out;
}

/** ncclCommInit(id: Uint8Array(128), rank, size) → a communicator number. */
Napi::Value NcclCommInit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber()) {
    fail(env, "ncclCommInit(id, rank, size): bad arguments");
  }
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  if (bytes.ElementLength() != sizeof(UniqueId::internal)) fail(env, "ncclCommInit: id must be 128 bytes");
  Nccl& n = ready(env);
  UniqueId id;
  std::memcpy(id.internal, bytes.Data(), sizeof id.internal);
  Comm comm = nullptr;
  const int rc = n.commInitRank(&comm, info[2].As<Napi::Number>().Int32Value(), id, info[1].As<Napi::Number>().Int32Value());
  if (rc != 0) fail(env, "ncclCommInitRank failed: " + ncclError(rc));
  static int next = 1;
  comms()[next] = comm;
  return Napi::Number::New(env, next++);
}

/** ncclAllReduce(comm, typedArray, 'sum' | 'max'): in place, staged through device memory. */
Napi::Value NcclAllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Nccl& n = ready(env);
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsString()) {
    fail(env, "ncclAllReduce(comm, data, op): bad arguments");
  }
  auto it = comms().find(info[0].As<Napi::Number>().Int32Value());
  if (it == comms().end()) fail(env, "ncclAllReduce: the communicator was destroyed");
  Napi::TypedArray t = info[1].As<Napi::TypedArray>();
  const bool f32 = t.TypedArrayType() == napi_float32_array;
  if (!f32 && t.TypedArrayType() != napi_float64_array) fail(env, "ncclAllReduce: data must be a Float32Array or Float64Array");
  const std::string op = info[2].As<Napi::String>();
  if (op != "sum" && op != "max") fail(env, "ncclAllReduce: op must be 'sum' or 'max'");
#if CUTLOSS_WITH_CUDA
  const size_t bytes = t.ByteLength();
  void* host = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
  void* dev = nullptr;
  cudaError_t e = cudaMalloc(&dev, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) fail(env, std::string("cudaMalloc: ") + cudaGetErrorName(e));
  e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
  int rc = 0;
  if (e == cudaSuccess) {
    rc = n.allReduce(dev, dev, t.ElementLength(), f32 ? kFloat32 : kFloat64, op == "sum" ? kSum : kMax, it->second, nullptr);
    if (rc == 0) e = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);  // syncs the default stream
  }
  cudaFree(dev);
  if (rc != 0) fail(env, "ncclAllReduce failed: " + ncclError(rc));
  if (e != cudaSuccess) fail(env, std::string("cudaMemcpy: ") + cudaGetErrorName(e));
#else
  (void)n;
#endif
  return env.Undefined();
}

Napi::Value NcclCommDestroy(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].IsNumber()) {
    auto it = comms().find(info[0].As<Napi::Number>().Int32Value());
    if (it != comms().end()) {
      if (nccl().loaded) nccl().commDestroy(it->second);
      comms().erase(it);
    }
  }
  return info.Env().Undefined();
}

}  // namespace

void registerNccl(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclStatus", Napi::Function::New(env, NcclStatus, "ncclStatus"));
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueId, "ncclUniqueId"));
  exports.Set("ncclCommInit", Napi::Function::New(env, NcclCommInit, "ncclCommInit"));
  exports.Set("ncclAllReduce", Napi::Function::New(env, NcclAllReduce, "ncclAllReduce"));
  exports.Set("ncclCommDestroy", Napi::Function::New(env, NcclCommDestroy, "ncclCommDestroy"));
}

}  // namespace cutloss
