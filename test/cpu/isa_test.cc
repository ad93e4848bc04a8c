// The CPU kernels as one instruction set compiles them: test/isa.test.ts builds this driver
// with CUTLOSS_CPU_NO_CLONES for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the x86-64
// baseline, runs each build the CPU supports, and compares their results. The addon runs only
// the clone this CPU picks; these builds run the others. Inputs are deterministic (an LCG) and
// include the edge values the kernels branch on: −inf entries, a row of huge logits, an ignored
// label. Prints blocks of values (see print) one value per line (%.9g).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../src/cpu/kernels.h"
#include "../../src/cpu/parallel.h"

using cutloss::DType;
using cutloss::LossParams;
using cutloss::SoftmaxParams;
using namespace cutloss::cpu;

namespace {

uint64_t state = 88172645463325252ull;
float uniform() {  // [0, 1)
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  return static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
}

std::vector<float> logits(int rows, int cols, float spread) {
  std::vector<float> x(static_cast<size_t>(rows) * cols);
  for (auto& v : x) v = (uniform() - 0.5f) * 2.0f * spread;
  if (rows > 2) {
    for (int j = 0; j < cols; j += 7) x[static_cast<size_t>(cols) + j] = -INFINITY;  // row 1: −inf entries
    for (int j = 0; j < cols; j++) x[2 * static_cast<size_t>(cols) + j] = 1e4f + static_cast<float>(j % 13);  // row 2: huge
  }
  return x;
}

std::vector<uint16_t> toBf16(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    b[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return b;
}

/**
 * Prints `v` as `rows` blocks "<name> row=<r> scale=<s> <count>": s is the largest |effective
 * logit| of the input row the block comes from (the rounding of fp32 inputs that large bounds
 * how far two correct evaluations may differ); one block with the largest for outputs per row.
 */
void print(const std::string& name, const float* v, size_t n, size_t rows, const std::vector<float>& rowScale) {
  const size_t cols = n / rows;
  for (size_t r = 0; r < rows; r++) {
    const float scale = rows == 1 ? *std::max_element(rowScale.begin(), rowScale.end()) : rowScale[r];
    std::printf("%s row=%zu scale=%.9g %zu\n", name.c_str(), r, static_cast<double>(scale), cols);
    for (size_t i = r * cols; i < (r + 1) * cols; i++) std::printf("%.9g\n", static_cast<double>(v[i]));
  }
}

/** max |x_j|·invT per row (−inf entries skipped). */
std::vector<float> rowScales(const std::vector<float>& x, size_t rows, float invT) {
  const size_t cols = x.size() / rows;
  std::vector<float> s(rows, 1.0f);
  for (size_t r = 0; r < rows; r++) {
    for (size_t j = 0; j < cols; j++) {
      const float a = std::fabs(x[r * cols + j]) * invT;
      if (std::isfinite(a) && a > s[r]) s[r] = a;
    }
  }
  return s;
}

void crossEntropyCases() {
  const int N = 6;
  for (int V : {37, 1000}) {
    const std::vector<float> x = logits(N, V, 3.0f);
    const std::vector<uint16_t> xb = toBf16(x);
    std::vector<int32_t> labels(N);
    for (int i = 0; i < N; i++) labels[i] = static_cast<int32_t>(uniform() * V);
    labels[3] = -100;
    std::vector<float> weights(V), sW(N, 1.0f / N), sU(N, 0.5f / N);
    double sumWeights = 0;
    for (auto& w : weights) sumWeights += (w = 0.25f + uniform());
    for (int normalizer = 0; normalizer < 4; normalizer++) {  // softmax, stablemax, sparsemax, gumbel
      for (int general = 0; general < 2; general++) {
        for (DType dtype : {DType::F32, DType::BF16}) {
          LossParams p;
          p.vocab = V;
          p.normalizer = normalizer;
          p.sumWeights = static_cast<float>(V);
          if (general) {
            p.smoothing = 0.1f;
            p.focalGamma = 1.5f;
            p.polyEpsilon = 0.3f;
            p.zLoss = 1e-3f;
            p.squentropy = 1.0f;
            p.softcap = 20.0f;
            p.invTemperature = 1.0f / 1.3f;
            p.classWeights = weights.data();
            p.sumWeights = static_cast<float>(sumWeights);
          }
          std::vector<float> lse(N), fc(N), u(N), d(static_cast<size_t>(N) * V);
          const HostMatrix m{dtype == DType::F32 ? static_cast<const void*>(x.data()) : xb.data(), dtype, N, V};
          CpuSession session;
          crossEntropy(m, labels.data(), p, sW.data(), sU.data(), LossRowsOut{lse.data(), fc.data(), u.data()}, d.data());
          const std::string name = "crossEntropy V=" + std::to_string(V) + " normalizer=" + std::to_string(normalizer) +
                                   (general ? " every option" : " plain") + (dtype == DType::F32 ? " f32" : " bf16");
          const std::vector<float> scale = rowScales(x, N, p.invTemperature);
          print(name + " lse", lse.data(), lse.size(), 1, scale);
          print(name + " weighted", fc.data(), fc.size(), 1, scale);
          print(name + " unweighted", u.data(), u.size(), 1, scale);
          print(name + " dLogits", d.data(), d.size(), N, scale);
        }
      }
    }
  }
}

void rowwiseCases() {
  const int R = 5, C = 700;
  const std::vector<float> x = logits(R, C, 4.0f);
  std::vector<float> dy(x.size());
  for (auto& v : dy) v = uniform() - 0.5f;
  std::vector<uint8_t> mask(x.size());
  for (auto& m : mask) m = uniform() < 0.8f ? 1 : 0;
  const HostMatrix m{x.data(), DType::F32, R, C};
  std::vector<float> y(x.size()), lse(R);
  SoftmaxParams sp;
  sp.invTemperature = 1.0f / 0.7f;
  sp.mask = mask.data();
  const std::vector<float> scaleT = rowScales(x, R, sp.invTemperature), scale = rowScales(x, R, 1.0f);
  CpuSession session;
  logSumExp(m, sp, lse.data());
  print("logSumExp masked", lse.data(), lse.size(), 1, scaleT);
  for (int log = 0; log < 2; log++) {
    softmax(m, sp, log != 0, y.data());
    print(std::string(log ? "logSoftmax" : "softmax") + " masked", y.data(), y.size(), R, scaleT);
    softmaxBackward(m, dy.data(), sp, log != 0, y.data());
    print(std::string(log ? "logSoftmaxBackward" : "softmaxBackward") + " masked", y.data(), y.size(), R, scaleT);
    stablemax(m, log != 0, y.data());
    print(std::string(log ? "logStablemax" : "stablemax"), y.data(), y.size(), R, scale);
    stablemaxBackward(m, dy.data(), log != 0, y.data());
    print(std::string(log ? "logStablemaxBackward" : "stablemaxBackward"), y.data(), y.size(), R, scale);
  }
  softmax(m, SoftmaxParams{}, false, y.data());
  print("softmax", y.data(), y.size(), R, scale);
  sparsemax(m, y.data());
  print("sparsemax", y.data(), y.size(), R, scale);
  sparsemaxBackward(m, dy.data(), y.data());
  print("sparsemaxBackward", y.data(), y.size(), R, scale);
  entmax15(m, y.data());
  print("entmax15", y.data(), y.size(), R, scale);
  entmax15Backward(m, dy.data(), y.data());
  print("entmax15Backward", y.data(), y.size(), R, scale);
  std::vector<float> perturbedScale = rowScales(x, R, 1.0f / 0.6f);
  for (auto& v : perturbedScale) v += 30.0f / 0.6f;  // Gumbel noise stays within ±30 in fp32
  gumbelSoftmax(m, 0.6f, false, 17, y.data());
  print("gumbelSoftmax", y.data(), y.size(), R, perturbedScale);
  gumbelSoftmaxBackward(m, dy.data(), 0.6f, 17, y.data());
  print("gumbelSoftmaxBackward", y.data(), y.size(), R, perturbedScale);
}

void linearCases() {
  const int N = 9, D = 17, V = 1100;
  std::vector<float> E(static_cast<size_t>(N) * D), W(static_cast<size_t>(V) * D), bias(V);
  for (auto& v : E) v = uniform() - 0.5f;
  for (auto& v : W) v = (uniform() - 0.5f) * 0.8f;
  for (auto& v : bias) v = (uniform() - 0.5f) * 0.2f;
  std::vector<int32_t> labels(N);
  for (int i = 0; i < N; i++) labels[i] = static_cast<int32_t>(uniform() * V);
  std::vector<float> sW(N, 1.0f / N), sU(N, 1.0f / N);
  for (int smoothing = 0; smoothing < 2; smoothing++) {
    for (float filterEps : {0.0f, 1e-3f}) {
      LossParams p;
      p.vocab = V;
      p.sumWeights = static_cast<float>(V);
      p.smoothing = smoothing ? 0.1f : 0.0f;
      std::vector<float> lse(N), fc(N), u(N), dE(E.size()), dW(W.size()), dBias(V);
      CpuSession session;
      linearCrossEntropy(HostMatrix{E.data(), DType::F32, N, D}, HostMatrix{W.data(), DType::F32, V, D}, bias.data(),
                         labels.data(), p, sW.data(), sU.data(), filterEps, 4 * sizeof(float) * V,
                         LinearCrossEntropyOut{LossRowsOut{lse.data(), fc.data(), u.data()}, dE.data(), dW.data(), dBias.data()});
      const std::string name = std::string("linearCrossEntropy") + (smoothing ? " smoothing" : " plain") +
                               (filterEps > 0 ? " filterEps" : "");
      const std::vector<float> one{1.0f};
      print(name + " lse", lse.data(), lse.size(), 1, one);
      print(name + " weighted", fc.data(), fc.size(), 1, one);
      print(name + " dE", dE.data(), dE.size(), 1, one);
      print(name + " dW", dW.data(), dW.size(), 1, one);
      print(name + " dBias", dBias.data(), dBias.size(), 1, one);
    }
  }
}

}  // namespace

int main() {
  setThreadCount(2);
  crossEntropyCases();
  rowwiseCases();
  linearCases();
  return 0;
}
