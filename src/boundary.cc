#include "boundary.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>

namespace cutloss {

Napi::Error codedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

Failure currentFailure() {
  try {
    throw;
  } catch (const ArgError& e) {
    return {e.code, e.what()};
  } catch (const KernelError& e) {
    // cudaErrorMemoryAllocation is 2 in every CUDA version
    const char* code = e.code == 2 ? "E_OOM" : "E_INTERNAL";
    return {code, "kernel failed: " + e.name + (e.code >= 0 ? " (" + std::to_string(e.code) + ")" : "") + ": " + e.what()};
  } catch (const std::bad_alloc& e) {
    // allocators that know the size say so in what(); a plain bad_alloc only says its type
    const std::string what = e.what();
    return {"E_OOM", what == std::bad_alloc().what() ? "out of host memory" : what};
  } catch (const std::exception& e) {
    return {"E_INTERNAL", std::string("native failure: ") + e.what()};
  } catch (...) {
    return {"E_INTERNAL", "native failure of unknown kind"};
  }
}

namespace {

std::string describe(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return v.As<Napi::Boolean>().Value() ? "true" : "false";
    case napi_number: {
      char text[32];
      std::snprintf(text, sizeof text, "%.17g", v.As<Napi::Number>().DoubleValue());
      return text;
    }
    case napi_string: return "a string";
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_bigint: return "a bigint";
    case napi_external: return "an external";
    case napi_object:
      if (v.IsTypedArray()) return "a typed array of another kind";
      if (v.IsArray()) return "an array";
      if (v.IsArrayBuffer()) return "an ArrayBuffer";
      if (v.IsDataView()) return "a DataView";
      return "an object";
  }
  return "a value of unknown type";
}

const char* typedArrayName(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "typed array";
  }
}

struct TypedArrayInfo {
  napi_typedarray_type type;
  size_t length;
  void* data;
  size_t byteLength;
};

/** Checks that v is a typed array on a plain ArrayBuffer that is still attached. */
TypedArrayInfo typedArrayInfo(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray()) throw ArgError("E_DTYPE", std::string(name) + " must be a typed array, got " + describe(v));
  napi_env env = v.Env();
  TypedArrayInfo info{};
  napi_value buffer = nullptr;
  size_t byteOffset = 0;
  if (napi_get_typedarray_info(env, v, &info.type, &info.length, &info.data, &buffer, &byteOffset) != napi_ok) {
    throw ArgError("E_DTYPE", std::string(name) + ": cannot read the typed array");
  }
  bool plain = false;
  napi_is_arraybuffer(env, buffer, &plain);
  if (!plain) {
    // Another thread could write a SharedArrayBuffer while we copy it.
    throw ArgError("E_DTYPE", std::string(name) + " is backed by a SharedArrayBuffer; pass a copy on a plain ArrayBuffer");
  }
  bool detached = false;
  napi_is_detached_arraybuffer(env, buffer, &detached);
  if (detached) throw ArgError("E_DISPOSED", std::string(name) + "'s ArrayBuffer was detached (transferred)");
  size_t elementSize = 1;
  switch (info.type) {
    case napi_int16_array:
    case napi_uint16_array: elementSize = 2; break;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array: elementSize = 4; break;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array: elementSize = 8; break;
    default: break;
  }
  info.byteLength = info.length * elementSize;
  if (info.byteLength > 0 && info.data == nullptr) {
    throw ArgError("E_DISPOSED", std::string(name) + " has no backing memory");
  }
  return info;
}

template <class T>
std::vector<T> copyTyped(const Napi::Value& v, const char* name, napi_typedarray_type want) {
  const HostView view = readTypedView(v, name, want);
  std::vector<T> out(view.byteLength / sizeof(T));
  if (view.byteLength > 0) std::memcpy(out.data(), view.data, view.byteLength);
  return out;
}

}  // namespace

int64_t readCount(const Napi::Value& v, const char* name, int64_t max) {
  if (!v.IsNumber()) throw ArgError("E_SHAPE", std::string(name) + " must be a non-negative integer, got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != std::floor(d) || d > static_cast<double>(max)) {
    throw ArgError("E_SHAPE", std::string(name) + " must be an integer in [0, " + std::to_string(max) + "], got " +
                                  describe(v));
  }
  return static_cast<int64_t>(d);
}

double readFinite(const Napi::Value& v, const char* name, const char* code) {
  if (!v.IsNumber()) throw ArgError(code, std::string(name) + " must be a finite number, got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throw ArgError(code, std::string(name) + " must be a finite number, got " + describe(v));
  return d;
}

bool readBool(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throw ArgError("E_OPTION", std::string(name) + " must be a boolean, got " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

uint64_t readSeed(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw ArgError("E_OPTION", std::string(name) + " must be an integer in [0, 2^53), got " + describe(v));
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d != std::floor(d) || d >= 9007199254740992.0) {
    throw ArgError("E_OPTION", std::string(name) + " must be an integer in [0, 2^53), got " + describe(v));
  }
  return static_cast<uint64_t>(d);
}

float readPositiveFloat(const Napi::Value& v, const char* name) {
  const double d = readFinite(v, name);
  const float f = static_cast<float>(d);
  if (!(f > 0) || !std::isfinite(f)) throw ArgError("E_OPTION", std::string(name) + " must be a number > 0 that a float can hold");
  return f;
}

float readFloatInRange(const Napi::Value& v, const char* name, double lo, double hi, const char* expected) {
  const double d = readFinite(v, name);
  if (!(d >= lo && d <= hi)) throw ArgError("E_OPTION", std::string(name) + " must be " + expected);
  return static_cast<float>(d);
}

int32_t readInt32(const Napi::Value& v, const char* name) {
  const double d = readFinite(v, name);
  if (d != std::floor(d) || d < std::numeric_limits<int32_t>::min() || d > std::numeric_limits<int32_t>::max()) {
    throw ArgError("E_OPTION", std::string(name) + " must be a 32-bit integer");
  }
  return static_cast<int32_t>(d);
}

LossParams readLossParams(const Napi::Value& v, int64_t vocab) {
  if (!v.IsObject()) throw ArgError("E_OPTION", "params must be an object of resolved loss options");
  Napi::Object o = v.As<Napi::Object>();
  LossParams p;
  p.vocab = static_cast<int32_t>(vocab);
  const double normalizer = readFinite(o.Get("normalizer"), "params.normalizer");
  if (normalizer != 0 && normalizer != 1 && normalizer != 2 && normalizer != 3) {
    throw ArgError("E_OPTION", "params.normalizer must be 0 (softmax), 1 (stablemax), 2 (sparsemax) or 3 (gumbel)");
  }
  p.normalizer = static_cast<int32_t>(normalizer);
  constexpr double kFloatMax = 3.4e38;
  p.smoothing = readFloatInRange(o.Get("smoothing"), "params.smoothing", 0, 1, "in [0, 1)");
  if (!(p.smoothing < 1)) throw ArgError("E_OPTION", "params.smoothing must be in [0, 1)");
  p.focalGamma = readFloatInRange(o.Get("focalGamma"), "params.focalGamma", 0, kFloatMax, "a float >= 0");
  p.polyEpsilon = readFloatInRange(o.Get("polyEpsilon"), "params.polyEpsilon", -kFloatMax, kFloatMax, "a float");
  p.zLoss = readFloatInRange(o.Get("zLoss"), "params.zLoss", 0, kFloatMax, "a float >= 0");
  const double squentropy = readFinite(o.Get("squentropy"), "params.squentropy");
  if (squentropy != 0 && squentropy != 1) throw ArgError("E_OPTION", "params.squentropy must be 0 or 1");
  p.squentropy = static_cast<float>(squentropy);
  // absent = off, so callers that predate it need not send it
  const Napi::Value gce = o.Get("generalizedCE");
  if (!gce.IsUndefined()) p.generalizedCE = readFloatInRange(gce, "params.generalizedCE", 0, 1, "in [0, 1] (0 = off)");
  p.softcap = readFloatInRange(o.Get("softcap"), "params.softcap", 0, kFloatMax, "a float >= 0 (0 = off)");
  p.invTemperature = readPositiveFloat(o.Get("invTemperature"), "params.invTemperature");
  p.ignoreIndex = readInt32(o.Get("ignoreIndex"), "params.ignoreIndex");
  // margin softmax's label map (cuda/math/margin.cuh); absent = off
  const Napi::Value lm = o.Get("labelMargin");
  if (!lm.IsUndefined() && !lm.IsNull()) {
    if (!lm.IsObject()) throw ArgError("E_OPTION", "params.labelMargin must be an object");
    Napi::Object m = lm.As<Napi::Object>();
    p.labelMargin.scale = readPositiveFloat(m.Get("scale"), "params.labelMargin.scale");
    p.labelMargin.margin = readFloatInRange(m.Get("margin"), "params.labelMargin.margin", -kFloatMax, kFloatMax, "a float");
    p.labelMargin.cosAngular = readFloatInRange(m.Get("cosAngular"), "params.labelMargin.cosAngular", -1, 1, "in [-1, 1]");
    p.labelMargin.sinAngular = readFloatInRange(m.Get("sinAngular"), "params.labelMargin.sinAngular", 0, 1, "in [0, 1]");
    p.labelMargin.continuation =
        readFloatInRange(m.Get("continuation"), "params.labelMargin.continuation", 0, 4, "in [0, 4]");
  }
  // harmonic logits' exponent n (cuda/math/harmonic.cuh); absent or 0 = dot logits
  const Napi::Value he = o.Get("harmonicExponent");
  if (!he.IsUndefined()) {
    p.harmonicExponent = readFloatInRange(he, "params.harmonicExponent", 0, kFloatMax, "a float >= 0 (0 = off)");
  }
  return p;
}

std::vector<uint8_t> copyUint8(const Napi::Value& v, const char* name) {
  return copyTyped<uint8_t>(v, name, napi_uint8_array);
}
std::vector<int32_t> copyInt32(const Napi::Value& v, const char* name) {
  return copyTyped<int32_t>(v, name, napi_int32_array);
}
std::vector<float> copyFloat32(const Napi::Value& v, const char* name) {
  return copyTyped<float>(v, name, napi_float32_array);
}

HostView readHostView(const Napi::Value& v, const char* name) {
  TypedArrayInfo info = typedArrayInfo(v, name);
  return {info.data, info.byteLength};
}

HostView readTypedView(const Napi::Value& v, const char* name, napi_typedarray_type want) {
  if (!v.IsTypedArray()) {
    throw ArgError("E_DTYPE", std::string(name) + " must be a " + typedArrayName(want) + ", got " + describe(v));
  }
  TypedArrayInfo info = typedArrayInfo(v, name);
  if (info.type != want) {
    throw ArgError("E_DTYPE", std::string(name) + " must be a " + typedArrayName(want) + ", got a " +
                                  typedArrayName(info.type));
  }
  return {info.data, info.byteLength};
}

DType readDType(const Napi::Value& v, const char* name) {
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d == 0) return DType::F32;
    if (d == 1) return DType::BF16;
  }
  throw ArgError("E_DTYPE", std::string(name) + " must be 0 (f32) or 1 (bf16), got " + describe(v));
}

size_t dtypeSize(DType d) { return d == DType::BF16 ? 2 : 4; }

}  // namespace cutloss
