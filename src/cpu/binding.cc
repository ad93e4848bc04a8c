// The CPU backend's entry points. Host data crosses as typed arrays with explicit shapes;
// every argument is checked (src/boundary.h) before any memory is touched, in this order:
// scalars and option objects first (reading an object may run a getter, which may detach an
// array), typed arrays last. A synchronous call then reads the caller's arrays in place (no
// JavaScript runs until it returns); an async call copies its inputs first, since JavaScript
// runs while the libuv pool computes. Outputs are new Float32Arrays, allocated on the JS
// thread before the work starts; large ones reuse the memory of outputs JavaScript has let go
// (host_memory.h's output pool), which spares the page faults of fresh memory. A caller may
// instead give the arrays the gradients go to (options.out), reused from call to call.
#include "binding.h"

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../boundary.h"
#include "../job.h"
#include "bf16_gemm.h"
#include "gemm.h"
#include "host_memory.h"
#include "kernels.h"
#include "pairwise.h"
#include "parallel.h"
#include "unit_rows.h"

namespace cutloss::cpu {

namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxElements = int64_t{1} << 53;

// ---------------------------------------------------------------- jobs

/** A Float32Array the job fills, kept alive by a reference until result() hands it over. */
struct Output {
  const char* name;
  size_t length;
  void* data;
  bool bf16;  // a Uint16Array of bf16 bits, else a Float32Array
  Napi::Reference<Napi::ArrayBuffer> buffer;
};

/** How an output starts: zero-filled, or with any contents because the kernel writes every element. */
enum class Fill { Zero, Overwritten };

/**
 * New ArrayBuffer memory of `bytes`: a large one from the output pool when it has one of the
 * size (host_memory.h; returned to it by the finalizer), else a new mapping while the pooled
 * outputs not yet finalized stay under outputPool::liveCapFor(bytes); otherwise, and for small
 * ones, V8's. Where the runtime refuses external buffers, V8's allocator serves all sizes.
 */
Napi::ArrayBuffer newOutputBuffer(Napi::Env env, size_t bytes, Fill fill) {
  if (bytes >= outputPool::kPooledMinBytes) {
    void* data = outputPool::take(bytes);
    std::unique_ptr<HostBuffer> fresh;
    if (data == nullptr && outputPool::liveBytes() + bytes <= outputPool::liveCapFor(bytes)) {
      fresh = std::make_unique<HostBuffer>(bytes);  // zero-filled by the kernel
      data = fresh->data();
    } else if (data != nullptr && fill == Fill::Zero) {
      std::memset(data, 0, bytes);
    }
    if (data != nullptr) {
      napi_value value = nullptr;
      const uint64_t id = outputPool::startLive(data, bytes);
      const napi_status status = napi_create_external_arraybuffer(
          env, data, bytes, [](napi_env, void*, void* hint) { outputPool::endLive(reinterpret_cast<uint64_t>(hint)); },
          reinterpret_cast<void*>(id), &value);
      if (status == napi_ok) {
        if (fresh) fresh->detach();
        return Napi::ArrayBuffer(env, value);
      }
      if (fresh) {
        fresh->detach();  // endLive releases it
      }
      outputPool::endLive(id);
    }
  }
  // v8::ArrayBuffer::New ends the process when its allocator (calloc) is refused: ask malloc
  // first, so that a refusal reaches the caller as E_OOM with the size
  if (bytes > 0) {
    void* probe = std::malloc(bytes);
    if (probe == nullptr) throw outOfHostMemory(bytes);
    std::free(probe);
  }
  return Napi::ArrayBuffer::New(env, bytes);
}

class CpuJob : public Job {
 public:
  explicit CpuJob(bool async) : async_(async) {}

  /** The array's memory: the caller's own (sync), or a copy the job owns (async). */
  const void* input(const HostView& view) {
    if (!async_) read_.push_back(view);
    if (!async_ || view.byteLength == 0) return view.data;
    auto& copy = copies_.emplace_back(std::make_unique<HostBuffer>(view.byteLength));
    std::memcpy(copy->data(), view.data, view.byteLength);
    return copy->data();
  }

  /**
   * A new Float32Array of `length`, created now on the JS thread and filled by run(): zero-filled,
   * or (Fill::Overwritten) with stale contents of an earlier output that the kernel overwrites.
   */
  float* output(Napi::Env env, size_t length, const char* name = nullptr, Fill fill = Fill::Zero) {
    Napi::ArrayBuffer ab = newOutputBuffer(env, length * sizeof(float), fill);
    auto* data = static_cast<float*>(ab.Data());
    outputs_.push_back(Output{name, length, data, false, Napi::Persistent(ab)});
    return data;
  }

  /** A new Uint16Array of `length` (bf16 bits) that run() writes whole. */
  uint16_t* outputBf16(Napi::Env env, size_t length, const char* name = nullptr) {
    Napi::ArrayBuffer ab = newOutputBuffer(env, length * sizeof(uint16_t), Fill::Overwritten);
    auto* data = static_cast<uint16_t*>(ab.Data());
    outputs_.push_back(Output{name, length, data, true, Napi::Persistent(ab)});
    return data;
  }

  /**
   * The caller's Float32Array `v` of `length` elements as an output. Sync: written in place; it
   * may share no memory with the inputs but `inPlaceOf` (the input array itself, whose kernel
   * reads each element before writing its gradient there). Async: computed into memory the job
   * owns and copied into `v` on the JS thread when done; E_DISPOSED then if `v` was detached.
   */
  float* outputInto(const Napi::Value& v, const char* name, size_t length, Fill fill, const void* inPlaceOf = nullptr) {
    HostView view = readTypedView(v, name, napi_float32_array);
    const size_t bytes = length * sizeof(float);
    if (view.byteLength != bytes) {
      throw ArgError("E_SHAPE", std::string(name) + " output must have " + std::to_string(length) + " elements, got " +
                                    std::to_string(view.byteLength / sizeof(float)));
    }
    if (async_) {
      auto& copy = copies_.emplace_back(std::make_unique<HostBuffer>(bytes));  // zero-filled
      dests_.push_back(Destination{name, bytes, copy->data(), Napi::Persistent(v.As<Napi::Object>())});
      return copy->as<float>();
    }
    const auto* lo = static_cast<const char*>(view.data);
    bool inPlace = false;
    for (const HostView& r : read_) {
      const auto* rlo = static_cast<const char*>(r.data);
      if (bytes == 0 || r.byteLength == 0 || lo >= rlo + r.byteLength || rlo >= lo + bytes) continue;
      // one input may be the output itself; any other overlap would feed gradients back into inputs
      if (!inPlace && r.data == inPlaceOf && view.data == inPlaceOf && r.byteLength == bytes) {
        inPlace = true;
        continue;
      }
      throw ArgError("E_OPTION", std::string(name) + " output shares memory with an input or another output");
    }
    read_.push_back(view);
    if (fill == Fill::Zero && !inPlace) std::memset(view.data, 0, bytes);
    return static_cast<float*>(view.data);
  }

  void setWork(std::function<void()> work) { work_ = std::move(work); }
  /** Adds fields (numbers) to a named result after the work ran. */
  void setExtra(std::function<void(Napi::Env, Napi::Object&)> extra) { extra_ = std::move(extra); }

  void run() override {
    if (!work_) return;
    CpuSession session;
    work_();
  }

  Napi::Value result(Napi::Env env) override {
    for (auto& d : dests_) {
      HostView now{nullptr, 0};
      try {
        now = readTypedView(d.array.Value(), d.name, napi_float32_array);
      } catch (const ArgError&) {
      }
      if (now.byteLength != d.bytes) {
        throw ArgError("E_DISPOSED", std::string(d.name) + " output was detached or resized before the result could be written");
      }
      std::memcpy(now.data, d.data, d.bytes);
    }
    auto view = [&](Output& o) {
      Napi::ArrayBuffer ab = o.buffer.Value();
      o.buffer.Reset();
      return o.bf16 ? Napi::Value(Napi::Uint16Array::New(env, o.length, ab, 0)) : Napi::Value(Napi::Float32Array::New(env, o.length, ab, 0));
    };
    if (outputs_.size() == 1 && outputs_[0].name == nullptr && !extra_) return view(outputs_[0]);
    Napi::Object out = Napi::Object::New(env);
    for (auto& o : outputs_) out.Set(o.name, view(o));
    if (extra_) extra_(env, out);
    return out;
  }

 private:
  /** A caller's array an async job's result is copied into. */
  struct Destination {
    const char* name;
    size_t bytes;
    void* data;
    Napi::Reference<Napi::Object> array;
  };

  bool async_;
  std::vector<std::unique_ptr<HostBuffer>> copies_;
  std::vector<HostView> read_;  // sync: the caller's memory this call reads or writes
  std::vector<Destination> dests_;
  std::vector<Output> outputs_;
  std::function<void()> work_;
  std::function<void(Napi::Env, Napi::Object&)> extra_;
};

// ---------------------------------------------------------------- arguments

/** A matrix given as (data, rows, cols, dtype) at info[at..at+3]; its data is read last (viewMatrix). */
struct MatrixArgs {
  Napi::Value data;
  std::string name;
  int64_t rows;
  int64_t cols;
  DType dtype;
};

MatrixArgs readMatrixArgs(const Napi::CallbackInfo& info, size_t at, const std::string& name) {
  MatrixArgs m{info[at], name, 0, 0, DType::F32};
  m.rows = readCount(info[at + 1], (name + " rows").c_str(), kMaxDim);
  m.cols = readCount(info[at + 2], (name + " cols").c_str(), kMaxDim);
  m.dtype = readDType(info[at + 3], (name + " dtype").c_str());
  if (m.cols < 1) throw ArgError("E_SHAPE", name + ": cols must be at least 1");
  if (m.rows * m.cols > kMaxElements) throw ArgError("E_SHAPE", name + " has more than 2^53 elements");
  return m;
}

size_t elementsOf(const MatrixArgs& m) { return static_cast<size_t>(m.rows * m.cols); }

HostMatrix viewMatrix(CpuJob& job, const MatrixArgs& m) {
  const bool bf16 = m.dtype == DType::BF16;
  HostView v = readTypedView(m.data, m.name.c_str(), bf16 ? napi_uint16_array : napi_float32_array);
  const size_t want = elementsOf(m) * (bf16 ? 2 : 4);
  if (v.byteLength != want) {
    throw ArgError("E_SHAPE", m.name + ": [" + std::to_string(m.rows) + ", " + std::to_string(m.cols) + "] needs " +
                                  std::to_string(elementsOf(m)) + " elements, the array has " +
                                  std::to_string(v.byteLength / (bf16 ? 2 : 4)));
  }
  return HostMatrix{job.input(v), m.dtype, m.rows, m.cols};
}

/** A Float32Array of exactly n elements. */
const float* viewFloats(CpuJob& job, const Napi::Value& v, const char* name, size_t n) {
  HostView view = readTypedView(v, name, napi_float32_array);
  if (view.byteLength != n * sizeof(float)) {
    throw ArgError("E_SHAPE", std::string(name) + " must have " + std::to_string(n) + " elements, got " +
                                  std::to_string(view.byteLength / sizeof(float)));
  }
  return static_cast<const float*>(job.input(view));
}

const float* viewOptionalFloats(CpuJob& job, const Napi::Value& v, const char* name, size_t n) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return viewFloats(job, v, name, n);
}

/** An f32 upstream gradient with x's element count. */
const float* viewUpstream(CpuJob& job, const Napi::Value& v, const MatrixArgs& x) {
  return viewFloats(job, v, "dy", elementsOf(x));
}

/** The mask: null, or a Uint8Array of rows·cols or cols (one row shared by every row). */
SoftmaxParams readSoftmaxParams(CpuJob& job, const MatrixArgs& x, float invTemperature, const Napi::Value& mask) {
  SoftmaxParams p;
  p.invTemperature = invTemperature;
  if (mask.IsNull() || mask.IsUndefined()) return p;
  HostView m = readTypedView(mask, "mask", napi_uint8_array);
  const size_t full = elementsOf(x);
  if (m.byteLength != full && m.byteLength != static_cast<size_t>(x.cols)) {
    throw ArgError("E_SHAPE", "mask must have rows·cols = " + std::to_string(full) + " or cols = " +
                                  std::to_string(x.cols) + " elements, got " + std::to_string(m.byteLength));
  }
  p.mask = static_cast<const uint8_t*>(job.input(m));
  p.maskShared = m.byteLength != full;
  return p;
}

/** Labels of N rows, each a class in [0, V) or ignoreIndex. */
const int32_t* viewLabels(CpuJob& job, const Napi::Value& v, int64_t N, int64_t V, int32_t ignoreIndex) {
  HostView view = readTypedView(v, "labels", napi_int32_array);
  if (view.byteLength != static_cast<size_t>(N) * sizeof(int32_t)) {
    throw ArgError("E_SHAPE", "labels must have N = " + std::to_string(N) + " elements, got " +
                                  std::to_string(view.byteLength / sizeof(int32_t)));
  }
  const auto* labels = static_cast<const int32_t*>(view.data);
  for (int64_t i = 0; i < N; i++) {
    const int32_t t = labels[i];
    if (t != ignoreIndex && (t < 0 || t >= V)) {
      throw ArgError("E_LABEL", "labels[" + std::to_string(i) + "] = " + std::to_string(t) + " is outside [0, " +
                                    std::to_string(V) + ") and is not ignoreIndex (" + std::to_string(ignoreIndex) + ")");
    }
  }
  return static_cast<const int32_t*>(job.input(view));
}

/** Class weights (finite, V of them) into p, with their sum. */
void viewClassWeights(CpuJob& job, const Napi::Value& v, int64_t V, LossParams& p) {
  p.classWeights = viewOptionalFloats(job, v, "classWeights", static_cast<size_t>(V));
  double sum = static_cast<double>(V);
  if (p.classWeights != nullptr) {
    sum = 0;
    for (int64_t j = 0; j < V; j++) {
      if (!std::isfinite(p.classWeights[j])) throw ArgError("E_OPTION", "classWeights[" + std::to_string(j) + "] must be finite");
      sum += p.classWeights[j];
    }
  }
  p.sumWeights = static_cast<float>(sum);
}

// ---------------------------------------------------------------- row-wise ops

using Factory = std::unique_ptr<Job> (*)(const Napi::CallbackInfo&, bool async);

/** cpuLogSumExp(x, rows, cols, dtype, invTemperature, mask) → Float32Array [rows]. */
std::unique_ptr<Job> makeLogSumExp(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const float invT = readPositiveFloat(info[4], "invTemperature");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const SoftmaxParams p = readSoftmaxParams(*job, m, invT, info[5]);
  float* out = job->output(info.Env(), static_cast<size_t>(m.rows));
  job->setWork([=] { logSumExp(x, p, out); });
  return job;
}

/** cpuSoftmax(x, rows, cols, dtype, invTemperature, mask, log). */
std::unique_ptr<Job> makeSoftmax(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const float invT = readPositiveFloat(info[4], "invTemperature");
  const bool log = readBool(info[6], "log");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const SoftmaxParams p = readSoftmaxParams(*job, m, invT, info[5]);
  float* y = job->output(info.Env(), elementsOf(m), nullptr, Fill::Overwritten);
  job->setWork([=] { softmax(x, p, log, y); });
  return job;
}

/** cpuSoftmaxBackward(x, dy, rows, cols, dtype, invTemperature, mask, log). */
std::unique_ptr<Job> makeSoftmaxBackward(const Napi::CallbackInfo& info, bool async) {
  MatrixArgs m = readMatrixArgs(info, 1, "x");
  m.data = info[0];
  const float invT = readPositiveFloat(info[5], "invTemperature");
  const bool log = readBool(info[7], "log");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const float* dy = viewUpstream(*job, info[1], m);
  const SoftmaxParams p = readSoftmaxParams(*job, m, invT, info[6]);
  float* dx = job->output(info.Env(), elementsOf(m), nullptr, Fill::Overwritten);
  job->setWork([=] { softmaxBackward(x, dy, p, log, dx); });
  return job;
}

/** cpuStablemax(x, rows, cols, dtype, log). */
std::unique_ptr<Job> makeStablemax(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const bool log = readBool(info[4], "log");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  float* y = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { stablemax(x, log, y); });
  return job;
}

/** cpuStablemaxBackward(x, dy, rows, cols, dtype, log). */
std::unique_ptr<Job> makeStablemaxBackward(const Napi::CallbackInfo& info, bool async) {
  MatrixArgs m = readMatrixArgs(info, 1, "x");
  m.data = info[0];
  const bool log = readBool(info[5], "log");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const float* dy = viewUpstream(*job, info[1], m);
  float* dx = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { stablemaxBackward(x, dy, log, dx); });
  return job;
}

/** cpuSparsemax / cpuEntmax15 (x, rows, cols, dtype). */
template <void (*kernel)(const HostMatrix&, float*)>
std::unique_ptr<Job> makeProjection(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  float* y = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { kernel(x, y); });
  return job;
}

/** cpuSparsemaxBackward / cpuEntmax15Backward (x, dy, rows, cols, dtype). */
template <void (*kernel)(const HostMatrix&, const float*, float*)>
std::unique_ptr<Job> makeProjectionBackward(const Napi::CallbackInfo& info, bool async) {
  MatrixArgs m = readMatrixArgs(info, 1, "x");
  m.data = info[0];
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const float* dy = viewUpstream(*job, info[1], m);
  float* dx = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { kernel(x, dy, dx); });
  return job;
}

/** cpuGumbelSoftmax(x, rows, cols, dtype, tau, hard, seed). */
std::unique_ptr<Job> makeGumbelSoftmax(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const float tau = readPositiveFloat(info[4], "tau");
  const bool hard = readBool(info[5], "hard");
  const uint64_t seed = readSeed(info[6], "seed");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  float* y = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { gumbelSoftmax(x, tau, hard, seed, y); });
  return job;
}

/** cpuGumbelSoftmaxBackward(x, dy, rows, cols, dtype, tau, seed). */
std::unique_ptr<Job> makeGumbelSoftmaxBackward(const Napi::CallbackInfo& info, bool async) {
  MatrixArgs m = readMatrixArgs(info, 1, "x");
  m.data = info[0];
  const float tau = readPositiveFloat(info[5], "tau");
  const uint64_t seed = readSeed(info[6], "seed");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const float* dy = viewUpstream(*job, info[1], m);
  float* dx = job->output(info.Env(), elementsOf(m));
  job->setWork([=] { gumbelSoftmaxBackward(x, dy, tau, seed, dx); });
  return job;
}

// ---------------------------------------------------------------- losses

/** An optional argument: absent when null or undefined. */
bool given(const Napi::Value& v) { return !v.IsNull() && !v.IsUndefined(); }

/**
 * cpuCrossEntropy(logits, rows, cols, dtype, labels, params, classWeights, scaleWeighted,
 * scaleUnweighted, dLogitsOut?) → { lse, weighted, unweighted, dLogits? }. With the scales (each
 * row's s_W and s_U, formed by the caller from the labels) the gradient comes in the same pass,
 * into dLogitsOut when given (a Float32Array [rows·cols], which may be the f32 logits themselves).
 */
std::unique_ptr<Job> makeCrossEntropy(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "logits");
  LossParams p = readLossParams(info[5], m.cols);
  const bool grad = !info[7].IsNull() && !info[7].IsUndefined();
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const int32_t* labels = viewLabels(*job, info[4], m.rows, m.cols, p.ignoreIndex);
  viewClassWeights(*job, info[6], m.cols, p);
  const size_t N = static_cast<size_t>(m.rows);
  const float* sW = grad ? viewFloats(*job, info[7], "scaleWeighted", N) : nullptr;
  const float* sU = grad ? viewFloats(*job, info[8], "scaleUnweighted", N) : nullptr;
  Napi::Env env = info.Env();
  LossRowsOut out{job->output(env, N, "lse"), job->output(env, N, "weighted"), job->output(env, N, "unweighted")};
  if (!grad && given(info[9])) throw ArgError("E_OPTION", "a dLogits output needs the gradient scales");
  float* dLogits = !grad ? nullptr
                   : given(info[9]) ? job->outputInto(info[9], "dLogits", elementsOf(m), Fill::Overwritten, x.data)
                                    : job->output(env, elementsOf(m), "dLogits", Fill::Overwritten);
  job->setWork([=] { crossEntropy(x, labels, p, sW, sU, out, dLogits); });
  return job;
}

/**
 * cpuLinearCrossEntropy(E, N, D, eDtype, W, V, wDtype, labels, params, classWeights, bias,
 * scaleWeighted, scaleUnweighted, filterEps, workspaceBytes, dEOut?, dWOut?, dBiasOut?) → { lse,
 * weighted, unweighted, dEmbeddings?, dClassifier?, dBias?, chunkRows, tileCols, chunks,
 * workspaceBytes, blocks, skippedBlocks, ... }; gradients given an output Float32Array go there instead.
 */
std::unique_ptr<Job> makeLinearCrossEntropy(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs e = readMatrixArgs(info, 0, "embeddings");
  MatrixArgs w{info[4], "classifier", 0, 0, DType::F32};
  w.rows = readCount(info[5], "classifier rows", kMaxDim);
  w.cols = e.cols;
  w.dtype = readDType(info[6], "classifier dtype");
  if (w.rows < 1) throw ArgError("E_SHAPE", "classifier must have at least one row (class)");
  if (w.rows * w.cols > kMaxElements) throw ArgError("E_SHAPE", "classifier has more than 2^53 elements");
  const int64_t N = e.rows, D = e.cols, V = w.rows;
  LossParams p = readLossParams(info[8], V);
  const bool grad = !info[11].IsNull() && !info[11].IsUndefined();
  const float filterEps = readFloatInRange(info[13], "filterEps", 0, 3.4e38, "a finite number >= 0");
  const int64_t workspace = readCount(info[14], "workspaceBytes", kMaxElements);
  if (workspace < 1) throw ArgError("E_OPTION", "workspaceBytes must be at least 1");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix E = viewMatrix(*job, e);
  const HostMatrix W = viewMatrix(*job, w);
  const int32_t* labels = viewLabels(*job, info[7], N, V, p.ignoreIndex);
  viewClassWeights(*job, info[9], V, p);
  const float* bias = viewOptionalFloats(*job, info[10], "bias", static_cast<size_t>(V));
  const float* sW = grad ? viewFloats(*job, info[11], "scaleWeighted", static_cast<size_t>(N)) : nullptr;
  const float* sU = grad ? viewFloats(*job, info[12], "scaleUnweighted", static_cast<size_t>(N)) : nullptr;
  Napi::Env env = info.Env();
  const size_t n = static_cast<size_t>(N);
  LinearCrossEntropyOut out{{job->output(env, n, "lse"), job->output(env, n, "weighted"), job->output(env, n, "unweighted")},
                            nullptr, nullptr, nullptr};
  if ((!grad && (given(info[15]) || given(info[16]) || given(info[17]))) || (bias == nullptr && given(info[17]))) {
    throw ArgError("E_OPTION", "gradient outputs need the gradient scales (and dBias a bias)");
  }
  // the kernel writes every element of dE and dW, and accumulates into a zeroed dBias
  auto gradient = [&](const Napi::Value& dest, const char* name, size_t length, Fill fill) {
    return given(dest) ? job->outputInto(dest, name, length, fill) : job->output(env, length, name, fill);
  };
  if (grad) {
    out.dE = gradient(info[15], "dEmbeddings", static_cast<size_t>(N * D), Fill::Overwritten);
    out.dW = gradient(info[16], "dClassifier", static_cast<size_t>(V * D), Fill::Overwritten);
    if (bias != nullptr) out.dBias = gradient(info[17], "dBias", static_cast<size_t>(V), Fill::Zero);
  }
  auto stats = std::make_shared<LinearCrossEntropyStats>();
  job->setWork([=] {
    *stats = linearCrossEntropy(E, W, bias, labels, p, sW, sU, filterEps, static_cast<size_t>(workspace), out);
  });
  job->setExtra([stats](Napi::Env env, Napi::Object& o) {
    o.Set("chunkRows", Napi::Number::New(env, static_cast<double>(stats->chunkRows)));
    o.Set("tileCols", Napi::Number::New(env, static_cast<double>(stats->tileCols)));
    o.Set("chunks", Napi::Number::New(env, static_cast<double>(stats->chunks)));
    o.Set("workspaceBytes", Napi::Number::New(env, static_cast<double>(stats->workspaceBytes)));
    o.Set("blocks", Napi::Number::New(env, static_cast<double>(stats->blocks)));
    o.Set("skippedBlocks", Napi::Number::New(env, static_cast<double>(stats->skippedBlocks)));
    o.Set("sparseBlocks", Napi::Number::New(env, static_cast<double>(stats->sparseBlocks)));
    o.Set("gradEntries", Napi::Number::New(env, static_cast<double>(stats->gradEntries)));
    o.Set("gradEntriesUsed", Napi::Number::New(env, static_cast<double>(stats->gradEntriesUsed)));
    o.Set("deferredEntries", Napi::Number::New(env, static_cast<double>(stats->deferredEntries)));
  });
  return job;
}

/**
 * cpuSgemm(transA, transB, M, N, K, A, B, out?) → C = op(A)·op(B), Float32Array [M, N] (into out
 * where given): the GEMM the losses use.
 */
std::unique_ptr<Job> makeSgemm(const Napi::CallbackInfo& info, bool async) {
  const bool transA = readBool(info[0], "transA");
  const bool transB = readBool(info[1], "transB");
  const int64_t M = readCount(info[2], "M", kMaxDim);
  const int64_t N = readCount(info[3], "N", kMaxDim);
  const int64_t K = readCount(info[4], "K", kMaxDim);
  if (M * K > kMaxElements || K * N > kMaxElements || M * N > kMaxElements) {
    throw ArgError("E_SHAPE", "sgemm operands have more than 2^53 elements");
  }
  auto job = std::make_unique<CpuJob>(async);
  const float* A = viewFloats(*job, info[5], "A", static_cast<size_t>(M * K));
  const float* B = viewFloats(*job, info[6], "B", static_cast<size_t>(K * N));
  float* C = given(info[7]) ? job->outputInto(info[7], "C", static_cast<size_t>(M * N), Fill::Overwritten)
                            : job->output(info.Env(), static_cast<size_t>(M * N));
  job->setWork([=] {
    sgemm(transA, transB, M, N, K, 1.0f, A, transA ? M : K, B, transB ? K : N, 0.0f, C, N);
  });
  return job;
}

/**
 * cpuBf16Gemm(transA, transB, M, N, K, A, B, out?) → C = op(A)·op(B), Float32Array [M, N], A and B bf16
 * bits: the bf16 linearCrossEntropy's GEMM (slices of 512 columns of C on the pool), for the
 * benchmark's bf16 GEMM limit.
 */
std::unique_ptr<Job> makeBf16Gemm(const Napi::CallbackInfo& info, bool async) {
  const bool transA = readBool(info[0], "transA");
  const bool transB = readBool(info[1], "transB");
  const int64_t M = readCount(info[2], "M", kMaxDim);
  const int64_t N = readCount(info[3], "N", kMaxDim);
  const int64_t K = readCount(info[4], "K", kMaxDim);
  if (M * K > kMaxElements || K * N > kMaxElements || M * N > kMaxElements) {
    throw ArgError("E_SHAPE", "bf16 GEMM operands have more than 2^53 elements");
  }
  auto job = std::make_unique<CpuJob>(async);
  const auto viewBf16 = [&](const Napi::Value& v, const char* name, size_t n) {
    HostView view = readTypedView(v, name, napi_uint16_array);
    if (view.byteLength != n * sizeof(uint16_t)) {
      throw ArgError("E_SHAPE", std::string(name) + " must have " + std::to_string(n) + " elements, got " +
                                    std::to_string(view.byteLength / sizeof(uint16_t)));
    }
    return static_cast<const uint16_t*>(job->input(view));
  };
  const uint16_t* A = viewBf16(info[5], "A", static_cast<size_t>(M * K));
  const uint16_t* B = viewBf16(info[6], "B", static_cast<size_t>(K * N));
  float* C = given(info[7]) ? job->outputInto(info[7], "C", static_cast<size_t>(M * N), Fill::Overwritten)
                            : job->output(info.Env(), static_cast<size_t>(M * N));
  job->setWork([=] {
    SerialGemmScope serial;
    // tiles of 512 columns, and of rows too where the columns alone would leave threads idle
    constexpr int64_t kSlice = 512;
    const int64_t slices = (N + kSlice - 1) / kSlice;
    const int64_t rowBlocks = std::min<int64_t>(M, std::max<int64_t>(1, threadCount() / slices));
    const int64_t blockRows = (M + rowBlocks - 1) / rowBlocks;
    parallelFor(slices * rowBlocks, 1, [&](int64_t t0, int64_t t1, int) {
      for (int64_t t = t0; t < t1; t++) {
        const int64_t j0 = (t % slices) * kSlice, j1 = std::min(N, j0 + kSlice);
        const int64_t i0 = (t / slices) * blockRows, i1 = std::min(M, i0 + blockRows);
        if (i0 >= i1) continue;
        bf16GemmSerial(transA, transB, i1 - i0, j1 - j0, K, transA ? A + i0 : A + i0 * K, transA ? M : K,
                       transB ? B + j0 * K : B + j0, transB ? K : N, 0.0f, C + i0 * N + j0, N);
      }
    });
  });
  return job;
}

/**
 * cpuRoundToBf16(values) → Uint16Array: the values rounded to bf16 (nearest even; NaN stays NaN)
 * on every thread, into pooled memory: large bf16 results of any op, which in JS cost a page
 * fault per 4 KiB of fresh memory and one thread.
 */
std::unique_ptr<Job> makeRoundToBf16(const Napi::CallbackInfo& info, bool async) {
  auto job = std::make_unique<CpuJob>(async);
  const HostView view = readTypedView(info[0], "values", napi_float32_array);
  const auto n = static_cast<int64_t>(view.byteLength / sizeof(float));
  const auto* src = static_cast<const float*>(job->input(view));
  uint16_t* dst = job->outputBf16(info.Env(), static_cast<size_t>(n));
  job->setWork([=] {
    parallelFor(n, int64_t{1} << 16, [&](int64_t i0, int64_t i1, int) { roundToBf16(src + i0, 0, 1, i1 - i0, dst + i0, nullptr); });
  });
  return job;
}

/**
 * cpuRecycle(values) → whether values' memory went back to the output pool now: a result of this
 * addon that its caller has consumed (a gradient the facade just rounded to bf16). Its ArrayBuffer
 * is detached first, so nothing in JavaScript can reach the memory again; anything else
 * (a caller's array, a view of part of a buffer, V8's own memory) is left alone.
 */
Napi::Value Recycle(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (!info[0].IsTypedArray()) return Napi::Boolean::New(env, false);
    Napi::TypedArray view = info[0].As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = view.ArrayBuffer();
    if (view.ByteOffset() != 0 || view.ByteLength() != ab.ByteLength()) return Napi::Boolean::New(env, false);
    const uint64_t id = outputPool::liveAt(ab.Data(), ab.ByteLength());
    if (id == 0 || napi_detach_arraybuffer(env, ab) != napi_ok) return Napi::Boolean::New(env, false);
    outputPool::endLive(id);
    return Napi::Boolean::New(env, true);
  });
}

// ---------------------------------------------------------------- pairwise sigmoid loss (SigLIP)

/**
 * cpuSigmoidPairLoss(x, N, D, xDtype, y, M, yDtype, temperature, bias, gradScale, yStart,
 * withGrad, workspaceBytes) → { dX?, dY?, lossSum, dTemperature, dBias } (sums as float64 numbers).
 */
std::unique_ptr<Job> makeSigmoidPairLoss(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs xm = readMatrixArgs(info, 0, "x");
  MatrixArgs ym{info[4], "y", 0, xm.cols, DType::F32};
  ym.rows = readCount(info[5], "y rows", kMaxDim);
  ym.dtype = readDType(info[6], "y dtype");
  if (ym.rows * ym.cols > kMaxElements) throw ArgError("E_SHAPE", "y has more than 2^53 elements");
  SigmoidPairParams p;
  p.temperature = static_cast<float>(readFinite(info[7], "temperature"));
  p.bias = static_cast<float>(readFinite(info[8], "bias"));
  p.gradScale = static_cast<float>(readFinite(info[9], "gradScale"));
  p.yStart = readCount(info[10], "yStart", kMaxDim);
  const bool grad = readBool(info[11], "withGrad");
  const int64_t workspace = readCount(info[12], "workspaceBytes", kMaxElements);
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, xm);
  const HostMatrix y = viewMatrix(*job, ym);
  Napi::Env env = info.Env();
  float* dX = grad ? job->output(env, elementsOf(xm), "dX", Fill::Overwritten) : nullptr;
  float* dY = grad ? job->output(env, elementsOf(ym), "dY", Fill::Overwritten) : nullptr;
  auto sums = std::make_shared<SigmoidPairSums>();
  job->setWork([=] { *sums = sigmoidPairLoss(x, y, p, static_cast<size_t>(workspace), dX, dY); });
  job->setExtra([sums](Napi::Env env, Napi::Object& o) {
    o.Set("lossSum", Napi::Number::New(env, sums->lossSum));
    o.Set("dTemperature", Napi::Number::New(env, sums->dTemperature));
    o.Set("dBias", Napi::Number::New(env, sums->dBias));
  });
  return job;
}

/**
 * cpuZscoreLinear(E, N, D, eDtype, W, V, wDtype, labels, bias, a, b, ignoreIndex, rowScale)
 * → { rowLoss, zt, dEmbeddings?, dClassifier?, dBias? } (gradients when rowScale is given).
 */
std::unique_ptr<Job> makeZscoreLinear(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs e = readMatrixArgs(info, 0, "embeddings");
  MatrixArgs w{info[4], "classifier", 0, e.cols, DType::F32};
  w.rows = readCount(info[5], "classifier rows", kMaxDim);
  w.dtype = readDType(info[6], "classifier dtype");
  if (w.rows < 1) throw ArgError("E_SHAPE", "classifier must have at least one row (class)");
  if (w.rows * w.cols > kMaxElements) throw ArgError("E_SHAPE", "classifier has more than 2^53 elements");
  const int64_t N = e.rows, D = e.cols, V = w.rows;
  const float a = readPositiveFloat(info[9], "a");
  const float b = static_cast<float>(readFinite(info[10], "b"));
  const auto ignoreIndex = static_cast<int32_t>(readFinite(info[11], "ignoreIndex"));
  const bool grad = !info[12].IsNull() && !info[12].IsUndefined();
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix E = viewMatrix(*job, e);
  const HostMatrix W = viewMatrix(*job, w);
  const int32_t* labels = viewLabels(*job, info[7], N, V, ignoreIndex);
  const float* bias = viewOptionalFloats(*job, info[8], "bias", static_cast<size_t>(V));
  const float* rowScale = grad ? viewFloats(*job, info[12], "rowScale", static_cast<size_t>(N)) : nullptr;
  Napi::Env env = info.Env();
  ZscoreOut out{job->output(env, static_cast<size_t>(N), "rowLoss"), job->output(env, static_cast<size_t>(N), "zt"),
                nullptr, nullptr, nullptr};
  if (grad) {
    out.dE = job->output(env, static_cast<size_t>(N * D), "dEmbeddings", Fill::Overwritten);
    out.dW = job->output(env, static_cast<size_t>(V * D), "dClassifier", Fill::Overwritten);
    if (bias != nullptr) out.dBias = job->output(env, static_cast<size_t>(V), "dBias", Fill::Overwritten);
  }
  auto phases = std::make_shared<std::array<double, 2>>();
  job->setWork([=] {
    ZscoreOut o = out;
    o.phaseMs = phases->data();
    zscoreLinear(E, W, bias, labels, ignoreIndex, a, b, rowScale, o);
  });
  job->setExtra([phases](Napi::Env env, Napi::Object& o) {
    o.Set("classifierMs", Napi::Number::New(env, (*phases)[0]));
    o.Set("tokenMs", Napi::Number::New(env, (*phases)[1]));
  });
  return job;
}

/** cpuUnitRows(x, rows, cols, dtype, scale) → { rows: Float32Array, norms: Float64Array }. */
std::unique_ptr<Job> makeUnitRows(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const double scale = readFinite(info[4], "scale");
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  Napi::Env env = info.Env();
  float* y = job->output(env, elementsOf(m), "rows", Fill::Overwritten);
  // norms are float64 (the back-projection divides by them), out of JavaScript's reach until result()
  const auto count = static_cast<size_t>(m.rows);
  auto norms = std::make_shared<Napi::Reference<Napi::Float64Array>>(
      Napi::Persistent(Napi::Float64Array::New(env, count, newOutputBuffer(env, count * sizeof(double), Fill::Overwritten), 0)));
  double* n = norms->Value().Data();
  job->setWork([=] { unitRows(x, scale, y, n); });
  job->setExtra([norms](Napi::Env, Napi::Object& o) { o.Set("norms", norms->Value()); });
  return job;
}

/**
 * cpuUnitRowsBackward(x, rows, cols, dtype, norms: Float64Array [rows], scale, g, gDtype, dxOut?) → Float32Array dx,
 * or into dxOut (f32; may be g itself, each element read before it is written).
 */
std::unique_ptr<Job> makeUnitRowsBackward(const Napi::CallbackInfo& info, bool async) {
  const MatrixArgs m = readMatrixArgs(info, 0, "x");
  const double scale = readFinite(info[5], "scale");
  MatrixArgs gm{info[6], "gradient", m.rows, m.cols, readDType(info[7], "gradient dtype")};
  auto job = std::make_unique<CpuJob>(async);
  const HostMatrix x = viewMatrix(*job, m);
  const HostView nv = readTypedView(info[4], "norms", napi_float64_array);
  if (nv.byteLength != static_cast<size_t>(m.rows) * sizeof(double)) {
    throw ArgError("E_SHAPE", "norms must have rows = " + std::to_string(m.rows) + " elements, got " +
                                  std::to_string(nv.byteLength / sizeof(double)));
  }
  const auto* norms = static_cast<const double*>(job->input(nv));
  const HostMatrix g = viewMatrix(*job, gm);
  float* dx = given(info[8]) ? job->outputInto(info[8], "dx", elementsOf(m), Fill::Overwritten, g.data)
                             : job->output(info.Env(), elementsOf(m), nullptr, Fill::Overwritten);
  job->setWork([=] { unitRowsBackward(x, norms, scale, g, dx); });
  return job;
}

// ---------------------------------------------------------------- configuration

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const GemmInfo g = gemmInfo();
  Napi::Object gemm = Napi::Object::New(env);
  gemm.Set("library", g.library);
  gemm.Set("kernel", g.kernel);
  gemm.Set("kernelNote", g.kernelNote);
  gemm.Set("blasLinked", g.blasLinked);
  Napi::Object out = Napi::Object::New(env);
  out.Set("gemm", gemm);
  const Bf16GemmInfo b = bf16GemmInfo();
  Napi::Object bf16 = Napi::Object::New(env);
  bf16.Set("path", b.path);
  bf16.Set("isa", b.isa);
  bf16.Set("note", b.note);
  out.Set("bf16Gemm", bf16);
  out.Set("simd", simdLevel());
  out.Set("threads", threadCount());
  out.Set("defaultThreads", defaultThreadCount());
  out.Set("flushesDenormals", flushesDenormals());
  return out;
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t n = readCount(info[0], "threads", kMaxThreads);
    if (n < 1) throw ArgError("E_OPTION", "threads must be an integer in [1, " + std::to_string(kMaxThreads) + "]");
    setThreadCount(static_cast<int>(n));
    return info.Env().Undefined();
  });
}

Napi::Value SetGemm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsString()) throw ArgError("E_OPTION", "gemm must be 'blas' or 'portable'");
    const std::string name = info[0].As<Napi::String>().Utf8Value();
    if (name != "blas" && name != "portable") throw ArgError("E_OPTION", "gemm must be 'blas' or 'portable'");
    return Napi::Boolean::New(info.Env(), setGemm(name));
  });
}

Napi::Value SetBf16Gemm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const std::string name = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (name != "auto" && name != "split" && name != "onednn" && name != "off") {
      throw ArgError("E_OPTION", "bf16 GEMM must be 'auto', 'split', 'onednn' or 'off'");
    }
    return Napi::Boolean::New(info.Env(), setBf16Gemm(name));
  });
}

template <Factory make>
Napi::Value callNow(const Napi::CallbackInfo& info) {
  return guarded(info, [&] { return runNow(info.Env(), make(info, false)); });
}

template <Factory make>
Napi::Value callLater(const Napi::CallbackInfo& info) {
  return guarded(info, [&] { return runLater(info.Env(), make(info, true)); });
}

template <Factory make>
void exportOp(Napi::Env env, Napi::Object exports, const std::string& name) {
  exports.Set(name, Napi::Function::New(env, callNow<make>, name));
  exports.Set(name + "Async", Napi::Function::New(env, callLater<make>, name + "Async"));
}

}  // namespace

void registerCpu(Napi::Env env, Napi::Object exports) {
  restoreBlasEnvironment();
  exportOp<makeLogSumExp>(env, exports, "cpuLogSumExp");
  exportOp<makeSoftmax>(env, exports, "cpuSoftmax");
  exportOp<makeSoftmaxBackward>(env, exports, "cpuSoftmaxBackward");
  exportOp<makeStablemax>(env, exports, "cpuStablemax");
  exportOp<makeStablemaxBackward>(env, exports, "cpuStablemaxBackward");
  exportOp<makeProjection<sparsemax>>(env, exports, "cpuSparsemax");
  exportOp<makeProjectionBackward<sparsemaxBackward>>(env, exports, "cpuSparsemaxBackward");
  exportOp<makeProjection<entmax15>>(env, exports, "cpuEntmax15");
  exportOp<makeProjectionBackward<entmax15Backward>>(env, exports, "cpuEntmax15Backward");
  exportOp<makeGumbelSoftmax>(env, exports, "cpuGumbelSoftmax");
  exportOp<makeGumbelSoftmaxBackward>(env, exports, "cpuGumbelSoftmaxBackward");
  exportOp<makeCrossEntropy>(env, exports, "cpuCrossEntropy");
  exportOp<makeLinearCrossEntropy>(env, exports, "cpuLinearCrossEntropy");
  exportOp<makeSgemm>(env, exports, "cpuSgemm");
  exportOp<makeBf16Gemm>(env, exports, "cpuBf16Gemm");
  exportOp<makeRoundToBf16>(env, exports, "cpuRoundToBf16");
  exports.Set("cpuRecycle", Napi::Function::New(env, Recycle, "cpuRecycle"));
  exportOp<makeSigmoidPairLoss>(env, exports, "cpuSigmoidPairLoss");
  exportOp<makeZscoreLinear>(env, exports, "cpuZscoreLinear");
  exportOp<makeUnitRows>(env, exports, "cpuUnitRows");
  exportOp<makeUnitRowsBackward>(env, exports, "cpuUnitRowsBackward");
  exports.Set("cpuInfo", Napi::Function::New(env, Info, "cpuInfo"));
  exports.Set("cpuSetThreads", Napi::Function::New(env, SetThreads, "cpuSetThreads"));
  exports.Set("cpuSetGemm", Napi::Function::New(env, SetGemm, "cpuSetGemm"));
  exports.Set("cpuSetBf16Gemm", Napi::Function::New(env, SetBf16Gemm, "cpuSetBf16Gemm"));
}

}  // namespace cutloss::cpu
