// MPI_COMM_WORLD loaded at run time. Open MPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM…)
// are addresses of global objects in libmpi (ompi_mpi_comm_world…), so dlsym finds them
// like the functions. libmpi goes in RTLD_GLOBAL: Open MPI's own plugins resolve their
// symbols against it. MPICH (integer handles) is not supported: status() says so.
#include <dlfcn.h>

#include <cstdlib>
#include <string>

#include "mpi.h"

namespace cutloss {
namespace {

using Handle = void*;  // Open MPI: every MPI_* handle is a pointer
using InitThreadFn = int (*)(int*, char***, int, int*);
using FlagFn = int (*)(int*);
using CommIntFn = int (*)(Handle, int*);
using AllreduceFn = int (*)(const void*, void*, int, Handle, Handle, Handle);
using FinalizeFn = int (*)();
using ErrorStringFn = int (*)(int, char*, int*);
using VersionFn = int (*)(char*, int*);

void* const kInPlace = reinterpret_cast<void*>(1);  // Open MPI's MPI_IN_PLACE
constexpr int kThreadSingle = 0;                         // MPI_THREAD_SINGLE: only the JS thread calls MPI

struct Mpi {
  bool loaded = false;
  std::string error;   // why it is unusable
  std::string library;
  InitThreadFn initThread = nullptr;
  FlagFn initialized = nullptr;
  FlagFn finalized = nullptr;
  CommIntFn commRank = nullptr;
  CommIntFn commSize = nullptr;
  AllreduceFn allreduce = nullptr;
  FinalizeFn finalize = nullptr;
  ErrorStringFn errorString = nullptr;
  VersionFn libraryVersion = nullptr;
  Handle commWorld = nullptr, f32 = nullptr, f64 = nullptr, opSum = nullptr, opMax = nullptr;
  bool weInitialized = false;
};

Mpi& mpi() {
  static Mpi m;
  static bool tried = false;
  if (tried) return m;
  tried = true;
  const char* env = std::getenv("CUTLOSS_LIBMPI");
  const char* candidates[] = {env, "libmpi.so.40", "libmpi.so"};
  void* lib = nullptr;
  std::string errors;
  for (const char* name : candidates) {
    if (name == nullptr || *name == '\0') continue;
    lib = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
    if (lib != nullptr) {
      m.library = name;
      break;
    }
    const char* e = dlerror();
    errors += std::string(errors.empty() ? "" : "; ") + (e != nullptr ? e : name);
  }
  if (lib == nullptr) {
    m.error = "libmpi (Open MPI) could not be loaded: " + errors +
              " (install Open MPI, e.g. apt-get install libopenmpi-dev openmpi-bin, or set CUTLOSS_LIBMPI)";
    return m;
  }
  std::string missing;
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(lib, name);
    if (p == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
    return p;
  };
  m.initThread = reinterpret_cast<InitThreadFn>(sym("MPI_Init_thread"));
  m.initialized = reinterpret_cast<FlagFn>(sym("MPI_Initialized"));
  m.finalized = reinterpret_cast<FlagFn>(sym("MPI_Finalized"));
  m.commRank = reinterpret_cast<CommIntFn>(sym("MPI_Comm_rank"));
  m.commSize = reinterpret_cast<CommIntFn>(sym("MPI_Comm_size"));
  m.allreduce = reinterpret_cast<AllreduceFn>(sym("MPI_Allreduce"));
  m.finalize = reinterpret_cast<FinalizeFn>(sym("MPI_Finalize"));
  m.errorString = reinterpret_cast<ErrorStringFn>(sym("MPI_Error_string"));
  m.libraryVersion = reinterpret_cast<VersionFn>(sym("MPI_Get_library_version"));
  m.commWorld = sym("ompi_mpi_comm_world");
  m.f32 = sym("ompi_mpi_float");
  m.f64 = sym("ompi_mpi_double");
  m.opSum = sym("ompi_mpi_op_sum");
  m.opMax = sym("ompi_mpi_op_max");
  if (!missing.empty()) {
    m.error = "the MPI library " + m.library + " is not Open MPI (missing " + missing +
              "); cutloss/mpi supports Open MPI";
    return m;
  }
  m.loaded = true;
  return m;
}

std::string mpiError(int code) {
  Mpi& m = mpi();
  char buf[512];
  int len = 0;
  if (m.errorString != nullptr && m.errorString(code, buf, &len) == 0) return std::string(buf, len) + " (" + std::to_string(code) + ")";
  return "MPI error " + std::to_string(code);
}

[[noreturn]] void fail(Napi::Env env, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, "E_BACKEND"));
  throw e;
}

Mpi& ready(Napi::Env env) {
  Mpi& m = mpi();
  if (!m.loaded) fail(env, m.error);
  int done = 0;
  m.finalized(&done);
  if (done) fail(env, "MPI was already finalized");
  int init = 0;
  m.initialized(&init);
  if (!init) {
    int provided = 0;
    const int rc = m.initThread(nullptr, nullptr, kThreadSingle, &provided);
    if (rc != 0) fail(env, "MPI_Init_thread failed: " + mpiError(rc));
    m.weInitialized = true;
  }
  return m;
}

/** { available, reason, library, version }: loads libmpi, never initializes MPI. */
Napi::Value MpiStatus(const Napi::CallbackInfo& info) {
  Mpi& m = mpi();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("available", m.loaded);
  out.Set("reason", m.loaded ? "Open MPI loaded from " + m.library : m.error);
  if (m.loaded) {
    char buf[1024];
    int len = 0;
    if (m.libraryVersion(buf, &len) == 0) {
      std::string v(buf, len);
      const auto nl = v.find_first_of(",\n");
      out.Set("version", nl == std::string::npos ? v : v.substr(0, nl));
    }
  }
  return out;
}

/** Initializes MPI (once) and returns { rank, size } of MPI_COMM_WORLD. */
Napi::Value MpiWorld(const Napi::CallbackInfo& info) {
  Mpi& m = ready(info.Env());
  int rank = 0, size = 0;
  int rc = m.commRank(m.commWorld, &rank);
  if (rc == 0) rc = m.commSize(m.commWorld, &size);
  if (rc != 0) fail(info.Env(), "MPI_Comm_rank/size failed: " + mpiError(rc));
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("rank", rank);
  out.Set("size", size);
  return out;
}

/** allReduce(typedArray, 'sum' | 'max'): in place over MPI_COMM_WORLD; blocks until every rank joins. */
Napi::Value MpiAllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mpi& m = ready(env);
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsString()) fail(env, "mpiAllReduce(data, op): bad arguments");
  Napi::TypedArray t = info[0].As<Napi::TypedArray>();
  Handle type = nullptr;
  if (t.TypedArrayType() == napi_float32_array) type = m.f32;
  else if (t.TypedArrayType() == napi_float64_array) type = m.f64;
  else fail(env, "mpiAllReduce: data must be a Float32Array or Float64Array");
  const std::string op = info[1].As<Napi::String>();
  Handle mop = op == "sum" ? m.opSum : op == "max" ? m.opMax : nullptr;
  if (mop == nullptr) fail(env, "mpiAllReduce: op must be 'sum' or 'max'");
  void* data = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
  const size_t n = t.ElementLength();
  // MPI counts are int: long arrays go in pieces, each one collective
  constexpr size_t kMaxCount = size_t{1} << 30;
  const size_t elem = t.TypedArrayType() == napi_float32_array ? 4 : 8;
  for (size_t off = 0; off < n || (n == 0 && off == 0); off += kMaxCount) {
    const int count = static_cast<int>(n - off < kMaxCount ? n - off : kMaxCount);
    const int rc = m.allreduce(kInPlace, static_cast<uint8_t*>(data) + off * elem, count, type, mop, m.commWorld);
    if (rc != 0) fail(env, "MPI_Allreduce failed: " + mpiError(rc));
    if (n == 0) break;
  }
  return env.Undefined();
}

/** Finalizes MPI if cutloss initialized it (called at process exit). */
Napi::Value MpiFinalize(const Napi::CallbackInfo& info) {
  Mpi& m = mpi();
  if (m.loaded && m.weInitialized) {
    int done = 0;
    m.finalized(&done);
    if (!done) m.finalize();
    m.weInitialized = false;
  }
  return info.Env().Undefined();
}

}  // namespace

void registerMpi(Napi::Env env, Napi::Object exports) {
  exports.Set("mpiStatus", Napi::Function::New(env, MpiStatus, "mpiStatus"));
  exports.Set("mpiWorld", Napi::Function::New(env, MpiWorld, "mpiWorld"));
  exports.Set("mpiAllReduce", Napi::Function::New(env, MpiAllReduce, "mpiAllReduce"));
  exports.Set("mpiFinalize", Napi::Function::New(env, MpiFinalize, "mpiFinalize"));
}

}  // namespace cutloss
