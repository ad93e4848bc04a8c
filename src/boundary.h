// The native boundary: every value that crosses from JavaScript is checked here before any
// memory is touched. A failed check throws ArgError, which reaches JavaScript as an Error
// whose `code` is one of CutlossError's codes (lib/errors.ts).
#pragma once

#include <napi.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/kernels.h"

namespace cutloss {

class ArgError : public std::runtime_error {
 public:
  ArgError(const char* code, const std::string& message) : std::runtime_error(message), code(code) {}
  const char* code;  // "E_SHAPE", "E_DTYPE", ...
};

/** A JS Error with a `code` property, as the JS side expects. */
Napi::Error codedError(Napi::Env env, const char* code, const std::string& message);

/** Runs `body`, turning ArgError and other C++ exceptions into coded JS exceptions. */
template <class Body>
Napi::Value guarded(const Napi::CallbackInfo& info, Body&& body);

/** A non-negative integer no larger than `max` (shapes, byte counts). */
int64_t readCount(const Napi::Value& v, const char* name, int64_t max);
/** A finite number; `code` names the error when it is not. */
double readFinite(const Napi::Value& v, const char* name, const char* code = "E_OPTION");
bool readBool(const Napi::Value& v, const char* name);
/** An integer in [0, 2^53), e.g. a Gumbel seed. */
uint64_t readSeed(const Napi::Value& v, const char* name);
/** A finite number > 0 that stays finite and > 0 as a float (temperatures, tau). */
float readPositiveFloat(const Napi::Value& v, const char* name);
/** A finite number in [lo, hi] (within float range), as a float; `expected` words the error. */
float readFloatInRange(const Napi::Value& v, const char* name, double lo, double hi, const char* expected);
/** An integer that fits int32_t. */
int32_t readInt32(const Napi::Value& v, const char* name);
/** Resolved loss options (lib/options.ts) for a vocabulary of `vocab`, checked again: they reach kernels as they are. */
LossParams readLossParams(const Napi::Value& v, int64_t vocab);

/** A typed array of the expected kind on a plain, attached ArrayBuffer; copied at once. */
std::vector<uint8_t> copyUint8(const Napi::Value& v, const char* name);
std::vector<int32_t> copyInt32(const Napi::Value& v, const char* name);
std::vector<float> copyFloat32(const Napi::Value& v, const char* name);

/** Where a host view lives; data may be null when byteLength is 0. */
struct HostView {
  void* data;
  size_t byteLength;
};
/** Any typed array (not a DataView) on a plain, attached ArrayBuffer. */
HostView readHostView(const Napi::Value& v, const char* name);
/**
 * A typed array of the expected kind on a plain, attached ArrayBuffer, not copied: valid
 * until JavaScript runs again (read it after every argument that may run a getter).
 */
HostView readTypedView(const Napi::Value& v, const char* name, napi_typedarray_type want);

/** Element size of a dtype code, after checking the code. */
DType readDType(const Napi::Value& v, const char* name);
size_t dtypeSize(DType d);

// ---------------------------------------------------------------- template definitions

/** What went wrong, from inside a catch block: ArgError, KernelError, bad_alloc, anything else. */
struct Failure {
  const char* code;
  std::string message;
};
Failure currentFailure();

template <class Body>
Napi::Value guarded(const Napi::CallbackInfo& info, Body&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;  // already a JS exception (e.g. a throwing getter): let it through as it is
  } catch (...) {
    Failure f = currentFailure();
    throw codedError(info.Env(), f.code, f.message);
  }
}

}  // namespace cutloss
