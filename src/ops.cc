// The kernel entry points. Each one reads and checks its arguments (device matrices by id,
// host side inputs such as masks and labels copied at once), allocates its outputs (or takes
// the caller's, options.out), and hands a KernelJob to runNow (name) or runLater (nameAsync).
#include <napi.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "boundary.h"
#include "device_buffer.h"
#include "job.h"
#include "ops.h"

namespace cutloss {

namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxElements = int64_t{1} << 53;

struct MatrixArg {
  std::shared_ptr<DeviceBuffer> buffer;
  DType dtype;
  int64_t rows;
  int64_t cols;

  Backend backend() const { return buffer->backend(); }
  size_t bytes() const { return static_cast<size_t>(rows * cols) * dtypeSize(dtype); }
  MatrixRef ref() const { return {buffer->data(), dtype, rows, cols}; }
};

/** A device matrix { id, dtype, rows, cols } whose buffer holds at least rows·cols elements. */
MatrixArg readMatrix(const Napi::Value& v, const std::string& name) {
  if (!v.IsObject()) {
    throw ArgError("E_SHAPE", name + " must be a device matrix { id, dtype, rows, cols }");
  }
  Napi::Object o = v.As<Napi::Object>();
  DType dtype = readDType(o.Get("dtype"), (name + ".dtype").c_str());
  int64_t rows = readCount(o.Get("rows"), (name + ".rows").c_str(), kMaxDim);
  int64_t cols = readCount(o.Get("cols"), (name + ".cols").c_str(), kMaxDim);
  if (cols < 1) throw ArgError("E_SHAPE", name + ".cols must be at least 1");
  if (rows * cols > kMaxElements) throw ArgError("E_SHAPE", name + " has more than 2^53 elements");
  // Looked up last: the getters above may run JavaScript that frees buffers.
  MatrixArg m{readBuffer(o.Get("id"), name.c_str()), dtype, rows, cols};
  if (m.bytes() > m.buffer->bytes()) {
    throw ArgError("E_SHAPE", name + ": [" + std::to_string(rows) + ", " + std::to_string(cols) + "] needs " +
                                  std::to_string(m.bytes()) + " bytes, its buffer has " +
                                  std::to_string(m.buffer->bytes()));
  }
  return m;
}

void requireSameBackend(const MatrixArg& x, const MatrixArg& other, const char* name) {
  if (other.backend() != x.backend()) {
    throw ArgError("E_BACKEND", std::string(name) + " is on " + backendName(other.backend()) + ", x is on " +
                                    backendName(x.backend()));
  }
}

void requireSameShape(const MatrixArg& x, const MatrixArg& dy) {
  if (dy.rows != x.rows || dy.cols != x.cols) {
    throw ArgError("E_SHAPE", "dy is [" + std::to_string(dy.rows) + ", " + std::to_string(dy.cols) + "], x is [" +
                                  std::to_string(x.rows) + ", " + std::to_string(x.cols) + "]");
  }
}

/** Whether two matrices share any byte (empty ones share none). */
bool sharesMemory(const MatrixArg& a, const MatrixArg& b) {
  const auto* lo = static_cast<const char*>(a.buffer->data());
  const auto* blo = static_cast<const char*>(b.buffer->data());
  const size_t n = a.bytes();
  const size_t bn = b.bytes();
  return n > 0 && bn > 0 && a.backend() == b.backend() && lo < blo + bn && blo < lo + n;
}

/**
 * A caller's output (options.out): a device matrix of `like`'s shape and dtype, on its backend,
 * sharing no memory with `inputs` except `inPlaceOf`, which it may be exactly (a kernel that
 * reads each element before writing its gradient there).
 */
MatrixArg readOutput(const Napi::Value& v, const std::string& name, const MatrixArg& like,
                     std::initializer_list<const MatrixArg*> inputs, const MatrixArg* inPlaceOf = nullptr) {
  MatrixArg out = readMatrix(v, name);
  if (out.backend() != like.backend()) {
    throw ArgError("E_BACKEND", name + " is on " + backendName(out.backend()) + ", the inputs are on " +
                                    backendName(like.backend()));
  }
  if (out.rows != like.rows || out.cols != like.cols) {
    throw ArgError("E_SHAPE", name + " is [" + std::to_string(out.rows) + ", " + std::to_string(out.cols) +
                                  "], the result is [" + std::to_string(like.rows) + ", " + std::to_string(like.cols) + "]");
  }
  if (out.dtype != like.dtype) throw ArgError("E_DTYPE", name + " must have the result's dtype");
  for (const MatrixArg* in : inputs) {
    if (!sharesMemory(out, *in)) continue;
    const bool same = in == inPlaceOf && out.buffer->data() == in->buffer->data() && out.bytes() == in->bytes();
    if (!same) throw ArgError("E_OPTION", name + " shares memory with an input or another output");
  }
  return out;
}

std::unique_ptr<KernelJob> jobFor(const MatrixArg& x) {
  auto job = std::make_unique<KernelJob>(x.backend());
  job->keep(x.buffer);
  return job;
}

/** The output like x: same dtype and shape. */
MutMatrixRef outputLike(KernelJob& job, const MatrixArg& x) {
  return {job.output(x.bytes()), x.dtype, x.rows, x.cols};
}

/** The mask argument: null, or a Uint8Array of rows·cols or cols (shared by every row). */
SoftmaxParams readSoftmaxParams(KernelJob& job, const MatrixArg& x, const Napi::Value& invTemperature,
                                const Napi::Value& mask) {
  SoftmaxParams p;
  p.invTemperature = readPositiveFloat(invTemperature, "invTemperature");
  if (mask.IsNull() || mask.IsUndefined()) return p;
  std::vector<uint8_t> m = copyUint8(mask, "mask");
  size_t full = static_cast<size_t>(x.rows * x.cols);
  if (m.size() != full && m.size() != static_cast<size_t>(x.cols)) {
    throw ArgError("E_SHAPE", "mask must have rows·cols = " + std::to_string(full) + " or cols = " +
                                  std::to_string(x.cols) + " elements, got " + std::to_string(m.size()));
  }
  auto buffer = DeviceBuffer::fromHost(x.backend(), m.data(), m.size());
  p.mask = static_cast<const uint8_t*>(buffer->data());
  p.maskShared = m.size() != full;
  job.keep(std::move(buffer));
  return p;
}

MatrixArg readUpstream(KernelJob& job, const MatrixArg& x, const Napi::Value& v) {
  MatrixArg dy = readMatrix(v, "dy");
  requireSameBackend(x, dy, "dy");
  requireSameShape(x, dy);
  job.keep(dy.buffer);
  return dy;
}

// ---------------------------------------------------------------- row-wise ops

std::unique_ptr<Job> makeLogSumExp(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  SoftmaxParams p = readSoftmaxParams(*job, x, info[1], info[2]);
  auto* out = static_cast<float*>(job->output(static_cast<size_t>(x.rows) * sizeof(float)));
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), p, out](const KernelTable& k, Stream s) { k.logSumExp(x, p, out, s); });
  }
  return job;
}

std::unique_ptr<Job> makeSoftmax(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  SoftmaxParams p = readSoftmaxParams(*job, x, info[1], info[2]);
  bool log = readBool(info[3], "log");
  MutMatrixRef y = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), p, log, y](const KernelTable& k, Stream s) { k.softmax(x, p, log, y, s); });
  }
  return job;
}

std::unique_ptr<Job> makeSoftmaxBackward(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  MatrixArg dy = readUpstream(*job, x, info[1]);
  SoftmaxParams p = readSoftmaxParams(*job, x, info[2], info[3]);
  bool log = readBool(info[4], "log");
  MutMatrixRef dx = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), dy = dy.ref(), p, log, dx](const KernelTable& k, Stream s) {
      k.softmaxBackward(x, dy, p, log, dx, s);
    });
  }
  return job;
}

std::unique_ptr<Job> makeStablemax(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  bool log = readBool(info[1], "log");
  MutMatrixRef y = outputLike(*job, x);
  if (x.rows > 0) job->setLaunch([x = x.ref(), log, y](const KernelTable& k, Stream s) { k.stablemax(x, log, y, s); });
  return job;
}

std::unique_ptr<Job> makeStablemaxBackward(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  MatrixArg dy = readUpstream(*job, x, info[1]);
  bool log = readBool(info[2], "log");
  MutMatrixRef dx = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), dy = dy.ref(), log, dx](const KernelTable& k, Stream s) {
      k.stablemaxBackward(x, dy, log, dx, s);
    });
  }
  return job;
}

/** sparsemax and entmax15, forward: y = f(x). */
template <void (*KernelTable::*kernel)(const MatrixRef&, const MutMatrixRef&, Stream)>
std::unique_ptr<Job> makeProjection(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  MutMatrixRef y = outputLike(*job, x);
  if (x.rows > 0) job->setLaunch([x = x.ref(), y](const KernelTable& k, Stream s) { (k.*kernel)(x, y, s); });
  return job;
}

/** sparsemax and entmax15, backward: dx from x and dy. */
template <void (*KernelTable::*kernel)(const MatrixRef&, const MatrixRef&, const MutMatrixRef&, Stream)>
std::unique_ptr<Job> makeProjectionBackward(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  MatrixArg dy = readUpstream(*job, x, info[1]);
  MutMatrixRef dx = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), dy = dy.ref(), dx](const KernelTable& k, Stream s) { (k.*kernel)(x, dy, dx, s); });
  }
  return job;
}

std::unique_ptr<Job> makeGumbelSoftmax(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  float tau = readPositiveFloat(info[1], "tau");
  bool hard = readBool(info[2], "hard");
  uint64_t seed = readSeed(info[3], "seed");
  MutMatrixRef y = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), tau, hard, seed, y](const KernelTable& k, Stream s) {
      k.gumbelSoftmax(x, tau, hard, seed, y, s);
    });
  }
  return job;
}

std::unique_ptr<Job> makeGumbelSoftmaxBackward(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  auto job = jobFor(x);
  MatrixArg dy = readUpstream(*job, x, info[1]);
  float tau = readPositiveFloat(info[2], "tau");
  uint64_t seed = readSeed(info[3], "seed");
  MutMatrixRef dx = outputLike(*job, x);
  if (x.rows > 0) {
    job->setLaunch([x = x.ref(), dy = dy.ref(), tau, seed, dx](const KernelTable& k, Stream s) {
      k.gumbelSoftmaxBackward(x, dy, tau, seed, dx, s);
    });
  }
  return job;
}

// ---------------------------------------------------------------- cross-entropy

/**
 * What the forward leaves for the backward. JavaScript holds it by id and cannot look inside,
 * so the backward always sees the forward's own logits, labels, options and row statistics.
 */
class CrossEntropyState : public OpState {
 public:
  CrossEntropyState() : OpState(Kind::CrossEntropy) {}
  MatrixArg logits;
  std::shared_ptr<DeviceBuffer> labels;
  std::shared_ptr<DeviceBuffer> classWeights;
  std::shared_ptr<DeviceBuffer> rowStats;
  LossParams params;
};

std::unique_ptr<Job> makeCrossEntropyForward(const Napi::CallbackInfo& info) {
  MatrixArg logits = readMatrix(info[0], "logits");
  const int64_t N = logits.rows;
  const int64_t V = logits.cols;
  std::vector<int32_t> labels = copyInt32(info[1], "labels");
  LossParams p = readLossParams(info[2], V);
  std::vector<float> weights;
  if (!info[3].IsNull() && !info[3].IsUndefined()) {
    weights = copyFloat32(info[3], "classWeights");
    if (static_cast<int64_t>(weights.size()) != V) {
      throw ArgError("E_SHAPE", "classWeights must have V = " + std::to_string(V) + " elements, got " +
                                    std::to_string(weights.size()));
    }
  }
  if (static_cast<int64_t>(labels.size()) != N) {
    throw ArgError("E_SHAPE", "labels must have N = " + std::to_string(N) + " elements, got " +
                                  std::to_string(labels.size()));
  }
  for (size_t i = 0; i < labels.size(); i++) {
    int32_t t = labels[i];
    if (t != p.ignoreIndex && (t < 0 || t >= V)) {
      throw ArgError("E_LABEL", "labels[" + std::to_string(i) + "] = " + std::to_string(t) + " is outside [0, " +
                                    std::to_string(V) + ") and is not ignoreIndex (" + std::to_string(p.ignoreIndex) +
                                    ")");
    }
  }
  double sumWeights = static_cast<double>(V);
  if (!weights.empty()) {
    sumWeights = 0;
    for (size_t j = 0; j < weights.size(); j++) {
      if (!std::isfinite(weights[j])) {
        throw ArgError("E_OPTION", "classWeights[" + std::to_string(j) + "] must be finite");
      }
      sumWeights += weights[j];
    }
  }
  p.sumWeights = static_cast<float>(sumWeights);

  const Backend backend = logits.backend();
  auto state = std::make_shared<CrossEntropyState>();
  state->logits = logits;
  state->labels = DeviceBuffer::fromHost(backend, labels.data(), labels.size() * sizeof(int32_t));
  if (!weights.empty()) {
    state->classWeights = DeviceBuffer::fromHost(backend, weights.data(), weights.size() * sizeof(float));
    p.classWeights = static_cast<const float*>(state->classWeights->data());
  }
  state->rowStats = DeviceBuffer::allocate(backend, static_cast<size_t>(N) * kRowStatFloats * sizeof(float));
  state->params = p;

  auto job = jobFor(logits);
  CrossEntropyForwardOut out{};
  const size_t rowBytes = static_cast<size_t>(N) * sizeof(float);
  out.lse = static_cast<float*>(job->output(rowBytes, "lse"));
  out.weighted = static_cast<float*>(job->output(rowBytes, "weighted"));
  out.unweighted = static_cast<float*>(job->output(rowBytes, "unweighted"));
  out.rowStats = static_cast<float*>(state->rowStats->data());
  if (N > 0) {
    job->setLaunch([x = logits.ref(), t = static_cast<const int32_t*>(state->labels->data()), p, out](
                       const KernelTable& k, Stream s) { k.crossEntropyForward(x, t, p, out, s); });
  }
  job->addState("state", std::move(state));
  return job;
}

std::unique_ptr<Job> makeCrossEntropyBackward(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw ArgError("E_DISPOSED", "state is not a cross-entropy forward state");
  auto found = handles::findState(info[0].As<Napi::Number>().DoubleValue());
  if (!found || found->kind != OpState::Kind::CrossEntropy) {
    throw ArgError("E_DISPOSED", "state does not name a live cross-entropy forward state");
  }
  auto state = std::static_pointer_cast<CrossEntropyState>(found);
  const int64_t N = state->logits.rows;
  // dLogits into the caller's buffer, which may be the logits themselves: each thread reads its
  // element before it writes the gradient there (cuda/cross_entropy.cu)
  const bool intoCaller = !info[3].IsNull() && !info[3].IsUndefined();
  MatrixArg dest = intoCaller ? readOutput(info[3], "dLogits", state->logits, {&state->logits}, &state->logits) : MatrixArg{};
  std::vector<float> scaleWeighted = copyFloat32(info[1], "scaleWeighted");
  std::vector<float> scaleUnweighted = copyFloat32(info[2], "scaleUnweighted");
  if (static_cast<int64_t>(scaleWeighted.size()) != N || static_cast<int64_t>(scaleUnweighted.size()) != N) {
    throw ArgError("E_SHAPE", "scaleWeighted and scaleUnweighted must have N = " + std::to_string(N) + " elements");
  }
  const Backend backend = state->logits.backend();
  auto sW = DeviceBuffer::fromHost(backend, scaleWeighted.data(), scaleWeighted.size() * sizeof(float));
  auto sU = DeviceBuffer::fromHost(backend, scaleUnweighted.data(), scaleUnweighted.size() * sizeof(float));

  auto job = jobFor(state->logits);
  job->keep(state->labels);
  job->keep(state->classWeights);
  job->keep(state->rowStats);
  job->keep(sW);
  job->keep(sU);
  MutMatrixRef dLogits = intoCaller ? MutMatrixRef{job->outputInto(dest.buffer), dest.dtype, dest.rows, dest.cols}
                                    : outputLike(*job, state->logits);
  if (N > 0) {
    job->setLaunch([x = state->logits.ref(), t = static_cast<const int32_t*>(state->labels->data()),
                    p = state->params, stats = static_cast<const float*>(state->rowStats->data()),
                    w = static_cast<const float*>(sW->data()), u = static_cast<const float*>(sU->data()),
                    dLogits](const KernelTable& k, Stream s) {
      k.crossEntropyBackward(x, t, p, stats, w, u, dLogits, s);
    });
  }
  return job;
}

// ---------------------------------------------------------------- fused linear + cross-entropy

/** Labels of N rows, each a class in [0, V) or ignoreIndex. */
std::vector<int32_t> readLabels(const Napi::Value& v, int64_t N, int64_t V, int32_t ignoreIndex) {
  std::vector<int32_t> labels = copyInt32(v, "labels");
  if (static_cast<int64_t>(labels.size()) != N) {
    throw ArgError("E_SHAPE", "labels must have N = " + std::to_string(N) + " elements, got " +
                                  std::to_string(labels.size()));
  }
  for (size_t i = 0; i < labels.size(); i++) {
    int32_t t = labels[i];
    if (t != ignoreIndex && (t < 0 || t >= V)) {
      throw ArgError("E_LABEL", "labels[" + std::to_string(i) + "] = " + std::to_string(t) + " is outside [0, " +
                                    std::to_string(V) + ") and is not ignoreIndex (" + std::to_string(ignoreIndex) +
                                    ")");
    }
  }
  return labels;
}

/** An optional Float32Array of exactly n elements (null or undefined: empty). */
std::vector<float> readOptionalVector(const Napi::Value& v, const char* name, int64_t n, const char* nName) {
  if (v.IsNull() || v.IsUndefined()) return {};
  std::vector<float> out = copyFloat32(v, name);
  if (static_cast<int64_t>(out.size()) != n) {
    throw ArgError("E_SHAPE", std::string(name) + " must have " + nName + " = " + std::to_string(n) +
                                  " elements, got " + std::to_string(out.size()));
  }
  return out;
}

/** { filterEps, deterministic, tf32, gemm (0 auto, 1 fma, 2 wmma), vocabSplits? }. */
LinearCeConfig readLinearConfig(const Napi::Value& v) {
  if (!v.IsObject()) throw ArgError("E_OPTION", "config must be an object { filterEps, deterministic, tf32, gemm }");
  Napi::Object o = v.As<Napi::Object>();
  LinearCeConfig c;
  c.filterEps = readFloatInRange(o.Get("filterEps"), "config.filterEps", 0, 3.4e38, "a float >= 0");
  c.deterministic = readBool(o.Get("deterministic"), "config.deterministic");
  c.tf32 = readBool(o.Get("tf32"), "config.tf32");
  double gemm = readFinite(o.Get("gemm"), "config.gemm");
  if (gemm != 0 && gemm != 1 && gemm != 2) throw ArgError("E_OPTION", "config.gemm must be 0 (auto), 1 (fma) or 2 (wmma)");
  c.gemm = static_cast<TileGemm>(static_cast<int32_t>(gemm));
  Napi::Value splits = o.Get("vocabSplits");
  if (!splits.IsUndefined()) c.vocabSplits = static_cast<int32_t>(readCount(splits, "config.vocabSplits", kLinearCeMaxSplits));
  return c;
}

/**
 * linearCrossEntropy(E, W, labels, params, classWeights, bias, config, scaleWeighted, scaleUnweighted,
 * dEOut?, dWOut?): the forward, and with the scales (each row's s_W, s_U, formed by the caller)
 * the backward in the same call. Returns ids { lse, weighted, unweighted } and, with the scales,
 * { dEmbeddings, dClassifier } in E's and W's dtypes (or writes them into dEOut, dWOut) and dBias
 * (f32) when there is a bias.
 */
std::unique_ptr<Job> makeLinearCrossEntropy(const Napi::CallbackInfo& info) {
  MatrixArg E = readMatrix(info[0], "embeddings");
  MatrixArg W = readMatrix(info[1], "classifier");
  requireSameBackend(E, W, "classifier");
  if (E.cols != W.cols) {
    throw ArgError("E_SHAPE", "embeddings [N, D] and classifier [V, D] must share D; got D = " + std::to_string(E.cols) +
                                  " and " + std::to_string(W.cols));
  }
  const int64_t N = E.rows;
  const int64_t D = E.cols;
  const int64_t V = W.rows;
  if (V < 1) throw ArgError("E_SHAPE", "classifier must have at least one row (class)");
  const bool intoE = !info[9].IsNull() && !info[9].IsUndefined();
  const bool intoW = !info[10].IsNull() && !info[10].IsUndefined();
  MatrixArg destE = intoE ? readOutput(info[9], "dEmbeddings", E, {&E, &W}) : MatrixArg{};
  MatrixArg destW = intoW ? readOutput(info[10], "dClassifier", W, {&E, &W}) : MatrixArg{};
  if (intoE && intoW && sharesMemory(destE, destW)) throw ArgError("E_OPTION", "dEmbeddings and dClassifier share memory");
  LossParams p = readLossParams(info[3], V);
  std::vector<int32_t> labels = readLabels(info[2], N, V, p.ignoreIndex);
  std::vector<float> weights = readOptionalVector(info[4], "classWeights", V, "V");
  std::vector<float> bias = readOptionalVector(info[5], "bias", V, "V");
  LinearCeConfig config = readLinearConfig(info[6]);
  const bool withGrad = !info[7].IsNull() && !info[7].IsUndefined();
  std::vector<float> scaleWeighted = withGrad ? readOptionalVector(info[7], "scaleWeighted", N, "N") : std::vector<float>{};
  std::vector<float> scaleUnweighted = withGrad ? readOptionalVector(info[8], "scaleUnweighted", N, "N") : std::vector<float>{};
  if (withGrad && static_cast<int64_t>(scaleUnweighted.size()) != N) {
    throw ArgError("E_SHAPE", "scaleUnweighted must have N = " + std::to_string(N) + " elements with scaleWeighted");
  }
  if (!withGrad && (intoE || intoW)) throw ArgError("E_OPTION", "gradient outputs need the gradient scales");
  double sumWeights = static_cast<double>(V);
  if (!weights.empty()) {
    sumWeights = 0;
    for (size_t j = 0; j < weights.size(); j++) {
      if (!std::isfinite(weights[j])) throw ArgError("E_OPTION", "classWeights[" + std::to_string(j) + "] must be finite");
      sumWeights += weights[j];
    }
  }
  p.sumWeights = static_cast<float>(sumWeights);

  const Backend backend = E.backend();
  auto job = jobFor(E);
  job->keep(W.buffer);
  auto upload = [&](const void* data, size_t bytes) -> const void* {
    if (bytes == 0) return nullptr;
    auto buffer = DeviceBuffer::fromHost(backend, data, bytes);
    const void* ptr = buffer->data();
    job->keep(std::move(buffer));
    return ptr;
  };
  const auto* t = static_cast<const int32_t*>(upload(labels.data(), labels.size() * sizeof(int32_t)));
  p.classWeights = static_cast<const float*>(upload(weights.data(), weights.size() * sizeof(float)));
  const auto* b = static_cast<const float*>(upload(bias.data(), bias.size() * sizeof(float)));

  LinearCeOut out;
  const size_t rowBytes = static_cast<size_t>(N) * sizeof(float);
  out.lse = static_cast<float*>(job->output(rowBytes, "lse"));
  out.weighted = static_cast<float*>(job->output(rowBytes, "weighted"));
  out.unweighted = static_cast<float*>(job->output(rowBytes, "unweighted"));
  if (withGrad) {
    out.scaleWeighted = static_cast<const float*>(upload(scaleWeighted.data(), rowBytes));
    out.scaleUnweighted = static_cast<const float*>(upload(scaleUnweighted.data(), rowBytes));
    // the kernels zero the gradients before accumulating, so a caller's buffers need no clearing
    out.dE = {intoE ? job->outputInto(destE.buffer) : job->output(E.bytes(), "dEmbeddings"), E.dtype, N, D};
    out.dW = {intoW ? job->outputInto(destW.buffer) : job->output(W.bytes(), "dClassifier"), W.dtype, V, D};
    if (b != nullptr) out.dBias = static_cast<float*>(job->output(static_cast<size_t>(V) * sizeof(float), "dBias"));
  }
  if (N == 0 && withGrad && intoW) {  // no launch: a caller's dW must still come back zeroed
    std::vector<char> zeros(W.bytes());
    destW.buffer->copyFromHost(zeros.data(), zeros.size());
  }
  const LinearCePlan plan = linearCrossEntropyPlan(N, D, V, p.normalizer, config, withGrad, E.dtype, W.dtype);
  void* workspace = nullptr;
  if (N > 0) {
    auto buffer = DeviceBuffer::allocate(backend, plan.bytes, Init::Uninitialized);  // the kernels zero what they accumulate
    workspace = buffer->data();
    job->keep(std::move(buffer));
    job->setLaunch([e = E.ref(), w = W.ref(), b, t, p, config, out, workspace](const KernelTable& k, Stream s) {
      k.linearCrossEntropy(e, w, b, t, p, config, out, workspace, s);
    });
  }
  return job;
}

/** linearCrossEntropyWorkspaceBytes(N, D, V, normalizer, config, withGrad, eDtype, wDtype): the plan's figure. */
Napi::Value LinearCrossEntropyWorkspaceBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t N = readCount(info[0], "N", kMaxDim);
    const int64_t D = readCount(info[1], "D", kMaxDim);
    const int64_t V = readCount(info[2], "V", kMaxDim);
    const double normalizer = readFinite(info[3], "normalizer");
    if (normalizer != 0 && normalizer != 1 && normalizer != 2 && normalizer != 3) {
      throw ArgError("E_OPTION", "normalizer must be 0 (softmax), 1 (stablemax), 2 (sparsemax) or 3 (gumbel)");
    }
    const LinearCeConfig config = readLinearConfig(info[4]);
    const bool withGrad = readBool(info[5], "withGrad");
    const DType eType = readDType(info[6], "eDtype");
    const DType wType = readDType(info[7], "wDtype");
    if (N == 0) return Napi::Number::New(info.Env(), 0);
    const LinearCePlan plan =
        linearCrossEntropyPlan(N, D, V, static_cast<int32_t>(normalizer), config, withGrad, eType, wType);
    return Napi::Number::New(info.Env(), static_cast<double>(plan.bytes));
  });
}

// ---------------------------------------------------------------- pairwise sigmoid loss (SigLIP)

/**
 * sigmoidPairLoss(x, y, temperature, bias, gradScale, yStart, withGrad) → ids { partials } (f32
 * [ceil(N / kPairTile) × 3]: Σ softplus, dTemperature, dBias per row tile of x) and, with
 * gradients, { dX, dY } in x's and y's dtypes.
 */
std::unique_ptr<Job> makeSigmoidPairLoss(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  MatrixArg y = readMatrix(info[1], "y");
  requireSameBackend(x, y, "y");
  if (x.cols != y.cols) {
    throw ArgError("E_SHAPE", "x [N, D] and y [M, D] must share D; got D = " + std::to_string(x.cols) + " and " +
                                  std::to_string(y.cols));
  }
  SigmoidPairParams p;
  p.temperature = static_cast<float>(readFinite(info[2], "temperature"));
  p.bias = static_cast<float>(readFinite(info[3], "bias"));
  p.gradScale = static_cast<float>(readFinite(info[4], "gradScale"));
  p.yStart = readCount(info[5], "yStart", kMaxDim);
  const bool withGrad = readBool(info[6], "withGrad");
  auto job = jobFor(x);
  job->keep(y.buffer);
  SigmoidPairOut out;
  const int64_t tiles = (x.rows + kPairTile - 1) / kPairTile;
  out.partials = static_cast<float*>(job->output(static_cast<size_t>(tiles > 0 ? tiles : 1) * 3 * sizeof(float), "partials"));
  if (withGrad) {
    out.dX = {job->output(x.bytes(), "dX"), x.dtype, x.rows, x.cols};
    out.dY = {job->output(y.bytes(), "dY"), y.dtype, y.rows, y.cols};
    auto accumulator = [&](const MatrixArg& m) -> float* {
      if (m.dtype != DType::BF16 || m.rows == 0) return nullptr;
      auto buffer = DeviceBuffer::allocate(m.backend(), static_cast<size_t>(m.rows * m.cols) * sizeof(float));
      auto* ptr = static_cast<float*>(buffer->data());
      job->keep(std::move(buffer));
      return ptr;
    };
    out.dXAccum = accumulator(x);
    out.dYAccum = accumulator(y);
  }
  if (x.rows > 0 && y.rows > 0) {
    job->setLaunch([x = x.ref(), y = y.ref(), p, out](const KernelTable& k, Stream s) { k.sigmoidPairLoss(x, y, p, out, s); });
  }
  return job;
}

// ---------------------------------------------------------------- spherical Z-loss

/**
 * zscoreLinear(E, W, labels, bias, a, b, ignoreIndex, rowScale) → ids { rowLoss, zt } (f32 [N])
 * and, when rowScale (f32 [N], dL/dloss_i) is given, { dEmbeddings, dClassifier } in E's and W's
 * dtypes and dBias (f32 [V]) when there is a bias.
 */
std::unique_ptr<Job> makeZscoreLinear(const Napi::CallbackInfo& info) {
  MatrixArg E = readMatrix(info[0], "embeddings");
  MatrixArg W = readMatrix(info[1], "classifier");
  requireSameBackend(E, W, "classifier");
  if (E.cols != W.cols) {
    throw ArgError("E_SHAPE", "embeddings [N, D] and classifier [V, D] must share D; got D = " + std::to_string(E.cols) +
                                  " and " + std::to_string(W.cols));
  }
  const int64_t N = E.rows, D = E.cols, V = W.rows;
  if (V < 1) throw ArgError("E_SHAPE", "classifier must have at least one row (class)");
  ZscoreParams p;
  p.a = readPositiveFloat(info[4], "a");
  p.b = static_cast<float>(readFinite(info[5], "b"));
  p.ignoreIndex = readInt32(info[6], "ignoreIndex");
  std::vector<int32_t> labels = readLabels(info[2], N, V, p.ignoreIndex);
  std::vector<float> bias = readOptionalVector(info[3], "bias", V, "V");
  const bool withGrad = !info[7].IsNull() && !info[7].IsUndefined();
  std::vector<float> rowScale = withGrad ? readOptionalVector(info[7], "rowScale", N, "N") : std::vector<float>{};

  const Backend backend = E.backend();
  auto job = jobFor(E);
  job->keep(W.buffer);
  auto upload = [&](const void* data, size_t bytes) -> const void* {
    if (bytes == 0) return nullptr;
    auto buffer = DeviceBuffer::fromHost(backend, data, bytes);
    const void* ptr = buffer->data();
    job->keep(std::move(buffer));
    return ptr;
  };
  auto scratch = [&](int64_t floats) -> float* {
    auto buffer = DeviceBuffer::allocate(backend, static_cast<size_t>(floats > 0 ? floats : 1) * sizeof(float), Init::Uninitialized);
    auto* ptr = static_cast<float*>(buffer->data());
    job->keep(std::move(buffer));
    return ptr;
  };
  const auto* t = static_cast<const int32_t*>(upload(labels.data(), labels.size() * sizeof(int32_t)));
  const auto* b = static_cast<const float*>(upload(bias.data(), bias.size() * sizeof(float)));
  p.rowScale = static_cast<const float*>(upload(rowScale.data(), rowScale.size() * sizeof(float)));

  ZscoreKernelOut out;
  const size_t rowBytes = static_cast<size_t>(N > 0 ? N : 1) * sizeof(float);
  out.rowLoss = static_cast<float*>(job->output(rowBytes, "rowLoss"));
  out.zt = static_cast<float*>(job->output(rowBytes, "zt"));
  if (withGrad) {
    out.dE = {job->output(E.bytes(), "dEmbeddings"), E.dtype, N, D};
    out.dW = {job->output(W.bytes(), "dClassifier"), W.dtype, V, D};
    if (W.dtype == DType::BF16) out.dWAccum = scratch(V * D);
    if (b != nullptr) out.dBias = static_cast<float*>(job->output(static_cast<size_t>(V) * sizeof(float), "dBias"));
  }
  const int64_t Da = D + 1;
  ZscoreWork w;
  w.partials = scratch(zscorePartialFloats(N, D, V));
  w.mean = scratch(Da);
  w.moments = scratch(Da * Da);
  w.M = scratch(Da * Da);
  w.rA = scratch(Da);
  w.CE = scratch(N * D);
  w.aRow = scratch(N);
  w.pRow = scratch(N);
  job->setLaunch([e = E.ref(), wm = W.ref(), b, t, p, out, w](const KernelTable& k, Stream s) {
    k.zscoreLinear(e, wm, b, t, p, out, w, s);
  });
  return job;
}

// ---------------------------------------------------------------- unit rows (margin softmax)

/** unitRows(x, scale, dtype) → ids { y (dtype 0 f32 / 1 bf16, x's shape), norms (f32 [rows]) }: y = scale·x/max(‖x‖, 1e-12). */
std::unique_ptr<Job> makeUnitRows(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  const float scale = readPositiveFloat(info[1], "scale");
  const DType dtype = readDType(info[2], "dtype");
  auto job = jobFor(x);
  const MutMatrixRef y{job->output(static_cast<size_t>(x.rows * x.cols) * dtypeSize(dtype), "y"), dtype, x.rows, x.cols};
  auto* norms = static_cast<float*>(job->output(static_cast<size_t>(x.rows > 0 ? x.rows : 1) * sizeof(float), "norms"));
  job->setLaunch([x = x.ref(), scale, y, norms](const KernelTable& k, Stream s) { k.unitRows(x, scale, y, norms, s); });
  return job;
}

/** unitRowsBackward(x, norms [rows, 1] f32, scale, g) → ids { dx } in x's dtype: dL/dx given g = dL/dy of unitRows. */
std::unique_ptr<Job> makeUnitRowsBackward(const Napi::CallbackInfo& info) {
  MatrixArg x = readMatrix(info[0], "x");
  MatrixArg norms = readMatrix(info[1], "norms");
  const float scale = readPositiveFloat(info[2], "scale");
  MatrixArg g = readMatrix(info[3], "g");
  requireSameBackend(x, norms, "norms");
  requireSameBackend(x, g, "g");
  if (norms.dtype != DType::F32 || norms.rows * norms.cols != x.rows) throw ArgError("E_SHAPE", "norms must be f32 with one value per row of x");
  if (g.rows != x.rows || g.cols != x.cols) throw ArgError("E_SHAPE", "g must have x's shape");
  auto job = jobFor(x);
  job->keep(norms.buffer);
  job->keep(g.buffer);
  const MutMatrixRef dx{job->output(x.bytes(), "dx"), x.dtype, x.rows, x.cols};
  job->setLaunch([x = x.ref(), n = static_cast<const float*>(norms.buffer->data()), scale, g = g.ref(), dx](const KernelTable& k, Stream s) {
    k.unitRowsBackward(x, n, scale, g, dx, s);
  });
  return job;
}

// ---------------------------------------------------------------- registration

using JobFactory = std::unique_ptr<Job> (*)(const Napi::CallbackInfo&);

template <JobFactory make>
Napi::Value callNow(const Napi::CallbackInfo& info) {
  return guarded(info, [&] { return runNow(info.Env(), make(info)); });
}

template <JobFactory make>
Napi::Value callLater(const Napi::CallbackInfo& info) {
  return guarded(info, [&] { return runLater(info.Env(), make(info)); });
}

template <JobFactory make>
void exportOp(Napi::Env env, Napi::Object exports, const std::string& name) {
  exports.Set(name, Napi::Function::New(env, callNow<make>, name));
  exports.Set(name + "Async", Napi::Function::New(env, callLater<make>, name + "Async"));
}

}  // namespace

void registerOps(Napi::Env env, Napi::Object exports) {
  exportOp<makeLogSumExp>(env, exports, "logSumExp");
  exportOp<makeSoftmax>(env, exports, "softmax");
  exportOp<makeSoftmaxBackward>(env, exports, "softmaxBackward");
  exportOp<makeStablemax>(env, exports, "stablemax");
  exportOp<makeStablemaxBackward>(env, exports, "stablemaxBackward");
  exportOp<makeProjection<&KernelTable::sparsemax>>(env, exports, "sparsemax");
  exportOp<makeProjectionBackward<&KernelTable::sparsemaxBackward>>(env, exports, "sparsemaxBackward");
  exportOp<makeProjection<&KernelTable::entmax15>>(env, exports, "entmax15");
  exportOp<makeProjectionBackward<&KernelTable::entmax15Backward>>(env, exports, "entmax15Backward");
  exportOp<makeGumbelSoftmax>(env, exports, "gumbelSoftmax");
  exportOp<makeGumbelSoftmaxBackward>(env, exports, "gumbelSoftmaxBackward");
  exportOp<makeCrossEntropyForward>(env, exports, "crossEntropyForward");
  exportOp<makeCrossEntropyBackward>(env, exports, "crossEntropyBackward");
  exportOp<makeLinearCrossEntropy>(env, exports, "linearCrossEntropy");
  exportOp<makeSigmoidPairLoss>(env, exports, "sigmoidPairLoss");
  exportOp<makeZscoreLinear>(env, exports, "zscoreLinear");
  exportOp<makeUnitRows>(env, exports, "unitRows");
  exportOp<makeUnitRowsBackward>(env, exports, "unitRowsBackward");
  exports.Set("linearCrossEntropyWorkspaceBytes",
              Napi::Function::New(env, LinearCrossEntropyWorkspaceBytes, "linearCrossEntropyWorkspaceBytes"));
}

}  // namespace cutloss
