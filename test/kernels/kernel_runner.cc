// Drives the emulated kernel launchers (cutloss::emu, cuda/*.cu built with g++ against the
// SIMT emulator) from a stream of requests, so tests can call every launcher directly, in a
// chosen fiber order, and compare with the JS backend and the float64 reference. It computes
// nothing itself.
//
// A request is one header line of space-separated tokens, then raw little-endian blobs:
//   op=<launcher> order=forward|reverse|shuffled orderSeed=<n> rows=<n> cols=<n> key=value ...
//   @name=<bytes> ...   (blobs follow the newline in the order of their @ tokens)
// Each response is "ok @name=<bytes> ...\n" followed by the blobs, or "error <KernelError name>: <message>\n".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../../cuda/cross_entropy.cu"
#include "../../cuda/gumbel.cu"
#include "../../cuda/linear_cross_entropy.cu"
#include "../../cuda/rowwise.cu"
#include "../../cuda/sparse.cu"

namespace {

using namespace cutloss;
using Bytes = std::vector<unsigned char>;

struct Request {
  std::map<std::string, std::string> keys;
  std::map<std::string, Bytes> blobs;

  const std::string& str(const std::string& k) const {
    auto it = keys.find(k);
    if (it == keys.end()) throw std::runtime_error("missing key " + k);
    return it->second;
  }
  bool has(const std::string& k) const { return keys.count(k) != 0; }
  int64_t i64(const std::string& k) const { return std::stoll(str(k)); }
  uint64_t u64(const std::string& k) const { return std::stoull(str(k)); }
  float f32(const std::string& k) const { return static_cast<float>(std::strtod(str(k).c_str(), nullptr)); }
  bool flag(const std::string& k) const { return has(k) && str(k) == "1"; }
  DType dtype(const std::string& k) const { return has(k) && str(k) == "bf16" ? DType::BF16 : DType::F32; }
  Bytes& blob(const std::string& k) {
    auto it = blobs.find(k);
    if (it == blobs.end()) throw std::runtime_error("missing blob " + k);
    return it->second;
  }
  const void* ptr(const std::string& k) { return blobs.count(k) ? static_cast<const void*>(blob(k).data()) : nullptr; }
};

size_t elementSize(DType d) { return d == DType::BF16 ? 2 : 4; }

struct Response {
  std::vector<std::pair<std::string, Bytes>> blobs;
  Bytes& add(const std::string& name, size_t bytes) {
    blobs.emplace_back(name, Bytes(bytes));
    return blobs.back().second;
  }
};

MatrixRef input(Request& q, const std::string& name, const std::string& dtypeKey) {
  const int64_t rows = q.i64("rows"), cols = q.i64("cols");
  const DType dt = q.dtype(dtypeKey);
  Bytes& b = q.blob(name);
  if (b.size() != static_cast<size_t>(rows * cols) * elementSize(dt)) throw std::runtime_error("blob " + name + " has the wrong size");
  return MatrixRef{b.data(), dt, rows, cols};
}

MutMatrixRef output(Request& q, Response& r, const std::string& name) {
  const int64_t rows = q.i64("rows"), cols = q.i64("cols");
  const DType dt = q.dtype("outDtype");
  Bytes& b = r.add(name, static_cast<size_t>(rows * cols) * elementSize(dt));
  return MutMatrixRef{b.data(), dt, rows, cols};
}

SoftmaxParams softmaxParams(Request& q) {
  SoftmaxParams p;
  p.invTemperature = q.f32("invTemperature");
  p.mask = static_cast<const uint8_t*>(q.ptr("mask"));
  p.maskShared = q.flag("maskShared");
  return p;
}

LossParams lossParams(Request& q) {
  LossParams p;
  p.vocab = static_cast<int32_t>(q.i64("cols"));
  p.normalizer = static_cast<int32_t>(q.i64("normalizer"));
  p.smoothing = q.f32("smoothing");
  p.focalGamma = q.f32("focalGamma");
  p.polyEpsilon = q.f32("polyEpsilon");
  p.zLoss = q.f32("zLoss");
  p.squentropy = q.f32("squentropy");
  p.softcap = q.f32("softcap");
  p.invTemperature = q.f32("invTemperature");
  p.ignoreIndex = static_cast<int32_t>(q.i64("ignoreIndex"));
  p.classWeights = static_cast<const float*>(q.ptr("classWeights"));
  p.sumWeights = q.f32("sumWeights");
  return p;
}

void run(Request& q, Response& r) {
  const std::string& op = q.str("op");
  const std::string order = q.has("order") ? q.str("order") : "forward";
  simt::setOrder(order == "reverse"    ? simt::Order::Reverse
                 : order == "shuffled" ? simt::Order::Shuffled
                                       : simt::Order::Forward,
                 q.has("orderSeed") ? q.u64("orderSeed") : 0);
  const int64_t rows = q.i64("rows");
  Stream s = nullptr;
  if (op == "logSumExp") {
    Bytes& out = r.add("lse", static_cast<size_t>(rows) * 4);
    emu::logSumExp(input(q, "x", "xDtype"), softmaxParams(q), reinterpret_cast<float*>(out.data()), s);
  } else if (op == "softmax") {
    emu::softmax(input(q, "x", "xDtype"), softmaxParams(q), q.flag("log"), output(q, r, "y"), s);
  } else if (op == "softmaxBackward") {
    emu::softmaxBackward(input(q, "x", "xDtype"), input(q, "dy", "dyDtype"), softmaxParams(q), q.flag("log"),
                         output(q, r, "dx"), s);
  } else if (op == "stablemax") {
    emu::stablemax(input(q, "x", "xDtype"), q.flag("log"), output(q, r, "y"), s);
  } else if (op == "stablemaxBackward") {
    emu::stablemaxBackward(input(q, "x", "xDtype"), input(q, "dy", "dyDtype"), q.flag("log"), output(q, r, "dx"), s);
  } else if (op == "sparsemax") {
    emu::sparsemax(input(q, "x", "xDtype"), output(q, r, "y"), s);
  } else if (op == "sparsemaxBackward") {
    emu::sparsemaxBackward(input(q, "x", "xDtype"), input(q, "dy", "dyDtype"), output(q, r, "dx"), s);
  } else if (op == "entmax15") {
    emu::entmax15(input(q, "x", "xDtype"), output(q, r, "y"), s);
  } else if (op == "entmax15Backward") {
    emu::entmax15Backward(input(q, "x", "xDtype"), input(q, "dy", "dyDtype"), output(q, r, "dx"), s);
  } else if (op == "gumbelSoftmax") {
    emu::gumbelSoftmax(input(q, "x", "xDtype"), q.f32("tau"), q.flag("hard"), q.u64("seed"), output(q, r, "y"), s);
  } else if (op == "gumbelSoftmaxBackward") {
    emu::gumbelSoftmaxBackward(input(q, "x", "xDtype"), input(q, "dy", "dyDtype"), q.f32("tau"), q.u64("seed"),
                               output(q, r, "dx"), s);
  } else if (op == "crossEntropyForward") {
    CrossEntropyForwardOut out;
    out.lse = reinterpret_cast<float*>(r.add("lse", static_cast<size_t>(rows) * 4).data());
    out.weighted = reinterpret_cast<float*>(r.add("weighted", static_cast<size_t>(rows) * 4).data());
    out.unweighted = reinterpret_cast<float*>(r.add("unweighted", static_cast<size_t>(rows) * 4).data());
    out.rowStats = reinterpret_cast<float*>(r.add("rowStats", static_cast<size_t>(rows) * kRowStatFloats * 4).data());
    emu::crossEntropyForward(input(q, "x", "xDtype"), static_cast<const int32_t*>(q.ptr("labels")), lossParams(q), out, s);
  } else if (op == "crossEntropyBackward") {
    emu::crossEntropyBackward(input(q, "x", "xDtype"), static_cast<const int32_t*>(q.ptr("labels")), lossParams(q),
                              static_cast<const float*>(q.ptr("rowStats")), static_cast<const float*>(q.ptr("scaleWeighted")),
                              static_cast<const float*>(q.ptr("scaleUnweighted")), output(q, r, "dx"), s);
  } else if (op == "linearCrossEntropy") {
    // rows = N, cols = V, dim = D; E [N × D] in eDtype, W [V × D] in wDtype; gradients when scaleWeighted is given
    const int64_t V = q.i64("cols"), D = q.i64("dim");
    const DType eType = q.dtype("eDtype"), wType = q.dtype("wDtype");
    Bytes& e = q.blob("E");
    Bytes& w = q.blob("W");
    if (e.size() != static_cast<size_t>(rows * D) * elementSize(eType) || w.size() != static_cast<size_t>(V * D) * elementSize(wType)) {
      throw std::runtime_error("E or W has the wrong size");
    }
    LinearCeConfig c;
    c.filterEps = q.has("filterEps") ? q.f32("filterEps") : 0.0f;
    c.deterministic = q.flag("deterministic");
    c.tf32 = q.flag("tf32");
    c.gemm = static_cast<TileGemm>(q.has("gemm") ? q.i64("gemm") : 0);
    c.vocabSplits = static_cast<int32_t>(q.has("vocabSplits") ? q.i64("vocabSplits") : 0);
    const bool withGrad = q.ptr("scaleWeighted") != nullptr;
    LinearCeOut out;
    out.lse = reinterpret_cast<float*>(r.add("lse", static_cast<size_t>(rows) * 4).data());
    out.weighted = reinterpret_cast<float*>(r.add("weighted", static_cast<size_t>(rows) * 4).data());
    out.unweighted = reinterpret_cast<float*>(r.add("unweighted", static_cast<size_t>(rows) * 4).data());
    if (withGrad) {
      out.scaleWeighted = static_cast<const float*>(q.ptr("scaleWeighted"));
      out.scaleUnweighted = static_cast<const float*>(q.ptr("scaleUnweighted"));
      out.dE = MutMatrixRef{r.add("dE", static_cast<size_t>(rows * D) * elementSize(eType)).data(), eType, rows, D};
      out.dW = MutMatrixRef{r.add("dW", static_cast<size_t>(V * D) * elementSize(wType)).data(), wType, V, D};
      if (q.ptr("bias") != nullptr) out.dBias = reinterpret_cast<float*>(r.add("dBias", static_cast<size_t>(V) * 4).data());
    }
    const LossParams p = lossParams(q);
    const LinearCePlan plan = linearCrossEntropyPlan(rows, D, V, p.normalizer, c, withGrad, eType, wType);
    Bytes workspace(plan.bytes, 0xff);  // never assumed zero: the kernels initialize what they read
    emu::linearCrossEntropy(MatrixRef{e.data(), eType, rows, D}, MatrixRef{w.data(), wType, V, D},
                            static_cast<const float*>(q.ptr("bias")), static_cast<const int32_t*>(q.ptr("labels")), p, c,
                            out, workspace.data(), s);
    // the counters (tiles visited, skipped, Michelot rows left, passes), the plan's figures, mma forward and backward
    // blocks, deterministic dE's splits
    Bytes& info = r.add("info", 11 * 4);
    const uint32_t* counters = reinterpret_cast<const uint32_t*>(workspace.data() + plan.counters);
    const uint32_t words[11] = {counters[0], counters[1], counters[2], counters[3], static_cast<uint32_t>(plan.splits),
                               static_cast<uint32_t>(plan.tilesPerSplit), static_cast<uint32_t>(plan.bytes),
                               static_cast<uint32_t>(plan.bytes >> 32), counters[4], counters[5],
                               static_cast<uint32_t>(plan.ownerSplits)};
    std::memcpy(info.data(), words, sizeof words);
  } else {
    throw std::runtime_error("unknown op " + op);
  }
}

}  // namespace

int main() {
  std::string header;
  while (std::getline(std::cin, header)) {
    if (header.empty()) continue;
    Request q;
    std::vector<std::pair<std::string, size_t>> blobOrder;
    std::istringstream tokens(header);
    std::string token;
    while (tokens >> token) {
      const size_t eq = token.find('=');
      if (eq == std::string::npos) continue;
      if (token[0] == '@') {
        blobOrder.emplace_back(token.substr(1, eq - 1), std::stoull(token.substr(eq + 1)));
      } else {
        q.keys[token.substr(0, eq)] = token.substr(eq + 1);
      }
    }
    for (const auto& [name, bytes] : blobOrder) {
      Bytes b(bytes);
      if (bytes > 0 && !std::cin.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(bytes))) {
        std::fprintf(stderr, "truncated blob %s\n", name.c_str());
        return 2;
      }
      q.blobs[name] = std::move(b);
    }
    Response r;
    try {
      run(q, r);
    } catch (const KernelError& e) {
      std::printf("error %s: %s\n", e.name.c_str(), e.what());
      std::fflush(stdout);
      continue;
    } catch (const std::exception& e) {
      std::printf("error request: %s\n", e.what());
      std::fflush(stdout);
      continue;
    }
    std::printf("ok");
    for (const auto& [name, b] : r.blobs) std::printf(" @%s=%zu", name.c_str(), b.size());
    std::printf("\n");
    for (const auto& [name, b] : r.blobs) std::fwrite(b.data(), 1, b.size(), stdout);
    std::fflush(stdout);
  }
  return 0;
}
