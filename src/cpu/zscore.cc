// The spherical Z-loss on the CPU: the classifier's centred moments by GEMMs over chunks of W
// rows, every token's C·e_i by one GEMM, O(D) per token after that, and the backward's W-side
// terms by two more GEMMs. Nothing of size N×V exists; the largest buffers are N×D and D×D
// (and a chunk of W rows). lib/js/zscore.ts states the formulas this follows.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "../../cuda/math/bf16.cuh"
#include "../../cuda/math/pairwise.cuh"
#include "gemm.h"
#include "pairwise.h"
#include "parallel.h"

namespace cutloss::cpu {

namespace {

/** Rows [r0, r0 + n) of m as contiguous f32 in `out`. */
void rowsF32(const HostMatrix& m, int64_t r0, int64_t n, float* out) {
  const int64_t D = m.cols;
  if (m.dtype == DType::F32) {
    std::memcpy(out, static_cast<const float*>(m.data) + r0 * D, static_cast<size_t>(n * D) * sizeof(float));
    return;
  }
  const auto* bits = static_cast<const uint16_t*>(m.data) + r0 * D;
  for (int64_t k = 0; k < n * D; k++) out[k] = bf16ToF32(bits[k]);
}

constexpr int64_t kChunkRows = 2048;  // rows of W per GEMM: a chunk of U is 2048 × D floats

}  // namespace

void zscoreLinear(const HostMatrix& E, const HostMatrix& W, const float* bias, const int32_t* labels,
                  int32_t ignoreIndex, float a, float b, const float* rowScale, const ZscoreOut& out) {
  const int64_t N = E.rows, V = W.rows, D = E.cols;
  const auto d = static_cast<size_t>(D);
  // phase clocks for the benchmark: the classifier side is O(V·D²) per call, the tokens O(D²) each
  using Clock = std::chrono::steady_clock;
  double classifierMs = 0, tokenMs = 0;
  auto mark = Clock::now();
  const auto lap = [&](double& into) {
    const auto now = Clock::now();
    into += std::chrono::duration<double, std::milli>(now - mark).count();
    mark = now;
  };
  const auto report = [&] {
    if (out.phaseMs != nullptr) {
      out.phaseMs[0] = classifierMs;
      out.phaseMs[1] = tokenMs;
    }
  };
  // w̄ and b̄ in float64
  std::vector<double> wMean(d, 0.0);
  std::vector<float> chunk(static_cast<size_t>(std::min(V, kChunkRows)) * d);
  for (int64_t j0 = 0; j0 < V; j0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, V - j0);
    rowsF32(W, j0, n, chunk.data());
    for (int64_t j = 0; j < n; j++)
      for (int64_t k = 0; k < D; k++) wMean[static_cast<size_t>(k)] += chunk[static_cast<size_t>(j * D + k)];
  }
  std::vector<float> wBar(d);
  for (size_t k = 0; k < d; k++) wBar[k] = static_cast<float>(wMean[k] / static_cast<double>(V));
  double bSum = 0;
  if (bias != nullptr) for (int64_t j = 0; j < V; j++) bSum += bias[j];
  const float bBar = static_cast<float>(bSum / static_cast<double>(V));
  const auto beta = [&](int64_t j) { return bias == nullptr ? 0.0f : bias[j] - bBar; };

  // C = UᵀU/V, c = Uᵀβ/V, var(b), one chunk of U = W − w̄ at a time
  std::vector<float> C(d * d, 0.0f), c(d, 0.0f), betaChunk(static_cast<size_t>(std::min(V, kChunkRows)));
  double varB = 0;
  const float invV = 1.0f / static_cast<float>(V);
  const auto centredChunk = [&](int64_t j0, int64_t n) {
    rowsF32(W, j0, n, chunk.data());
    parallelFor(n, 64, [&](int64_t s, int64_t e, int) {
      for (int64_t j = s; j < e; j++)
        for (int64_t k = 0; k < D; k++) chunk[static_cast<size_t>(j * D + k)] -= wBar[static_cast<size_t>(k)];
    });
    for (int64_t j = 0; j < n; j++) betaChunk[static_cast<size_t>(j)] = beta(j0 + j);
  };
  for (int64_t j0 = 0; j0 < V; j0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, V - j0);
    centredChunk(j0, n);
    sgemm(true, false, D, D, n, invV, chunk.data(), D, chunk.data(), D, 1.0f, C.data(), D);
    if (bias != nullptr) {
      sgemm(true, false, D, 1, n, invV, chunk.data(), D, betaChunk.data(), 1, 1.0f, c.data(), 1);
      for (int64_t j = 0; j < n; j++) varB += static_cast<double>(betaChunk[static_cast<size_t>(j)]) * betaChunk[static_cast<size_t>(j)];
    }
  }
  varB /= static_cast<double>(V);

  lap(classifierMs);
  // every token's C·e_i (C is symmetric), then O(D) per token
  std::vector<float> Ef(static_cast<size_t>(N) * d), CE(static_cast<size_t>(N) * d);
  parallelFor(N, 256, [&](int64_t s, int64_t e, int) { rowsF32(E, s, e - s, Ef.data() + s * D); });
  if (N > 0) sgemm(false, false, N, D, D, 1.0f, Ef.data(), D, C.data(), D, 0.0f, CE.data(), D);
  const bool grad = rowScale != nullptr;
  std::vector<double> aRow(grad ? static_cast<size_t>(N) : 0, 0.0), pRow(grad ? static_cast<size_t>(N) : 0, 0.0);
  std::vector<float> labelRow(static_cast<size_t>(threadCount()) * d);
  parallelFor(N, 16, [&](int64_t s, int64_t e, int worker) {
    float* ut = labelRow.data() + static_cast<size_t>(worker) * d;
    for (int64_t i = s; i < e; i++) {
      const int32_t t = labels[i];
      float* dEi = grad ? out.dE + i * D : nullptr;
      if (t == ignoreIndex) {
        out.rowLoss[i] = 0.0f;
        out.zt[i] = 0.0f;
        if (dEi != nullptr) std::memset(dEi, 0, d * sizeof(float));
        continue;
      }
      rowsF32(W, t, 1, ut);
      const float* ei = Ef.data() + i * D;
      const float* cei = CE.data() + i * D;
      double quad = 0, lin = 0, dl = 0;
      for (int64_t k = 0; k < D; k++) {
        ut[k] -= wBar[static_cast<size_t>(k)];
        quad += static_cast<double>(ei[k]) * cei[k];
        lin += static_cast<double>(ei[k]) * c[static_cast<size_t>(k)];
        dl += static_cast<double>(ei[k]) * ut[k];
      }
      dl += beta(t);
      const double variance = quad + 2 * lin + varB;
      const double sigma = variance > 0 ? std::sqrt(variance) : 0.0;
      const float z = sigma > 0 ? static_cast<float>(dl / sigma) : 0.0f;  // all logits equal: z̃ = 0
      const PairTerm term = zscoreLossTerm(z, a, b);
      out.rowLoss[i] = term.loss;
      out.zt[i] = z;
      if (dEi == nullptr) continue;
      if (sigma == 0) {
        std::memset(dEi, 0, d * sizeof(float));
        continue;
      }
      const double q = static_cast<double>(rowScale[i]) * term.dLogit;
      const double ai = q / sigma;
      aRow[static_cast<size_t>(i)] = ai;
      pRow[static_cast<size_t>(i)] = q * z / (variance * static_cast<double>(V));
      const double k2 = z / sigma;
      for (int64_t k = 0; k < D; k++) {
        dEi[k] = static_cast<float>(ai * (ut[k] - k2 * (cei[k] + c[static_cast<size_t>(k)])));
      }
    }
  });
  if (!grad) {
    lap(tokenMs);
    report();
    return;
  }

  // M = Eᵀ·diag(p)·E, m = Σ p_i e_i, r = Σ a_i e_i, P = Σ p_i, A = Σ a_i
  std::vector<float> Ep(static_cast<size_t>(N) * d), M(d * d, 0.0f);
  std::vector<double> m(d, 0.0), r(d, 0.0);
  double P = 0, A = 0;
  for (int64_t i = 0; i < N; i++) {
    const double pi = pRow[static_cast<size_t>(i)], ai = aRow[static_cast<size_t>(i)];
    P += pi;
    A += ai;
    for (int64_t k = 0; k < D; k++) {
      const float ek = Ef[static_cast<size_t>(i * D + k)];
      Ep[static_cast<size_t>(i * D + k)] = static_cast<float>(pi * ek);
      m[static_cast<size_t>(k)] += pi * ek;
      r[static_cast<size_t>(k)] += ai * ek;
    }
  }
  if (N > 0) sgemm(true, false, D, D, N, 1.0f, Ep.data(), D, Ef.data(), D, 0.0f, M.data(), D);
  std::vector<float> mf(d), rV(d);
  for (size_t k = 0; k < d; k++) {
    mf[k] = static_cast<float>(m[k]);
    rV[k] = static_cast<float>(r[k] / static_cast<double>(V));
  }
  lap(tokenMs);
  // dW_k = −U_k·M − β_k·m − r/V (+ the label rows below); db_k = −u_k·m − P·β_k − A/V
  for (int64_t j0 = 0; j0 < V; j0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, V - j0);
    centredChunk(j0, n);
    sgemm(false, false, n, D, D, -1.0f, chunk.data(), D, M.data(), D, 0.0f, out.dW + j0 * D, D);
    parallelFor(n, 64, [&](int64_t s, int64_t e, int) {
      for (int64_t j = s; j < e; j++) {
        float* row = out.dW + (j0 + j) * D;
        const float bj = betaChunk[static_cast<size_t>(j)];
        double um = 0;
        for (int64_t k = 0; k < D; k++) {
          row[k] -= bj * mf[static_cast<size_t>(k)] + rV[static_cast<size_t>(k)];
          um += static_cast<double>(chunk[static_cast<size_t>(j * D + k)]) * m[static_cast<size_t>(k)];
        }
        if (out.dBias != nullptr) out.dBias[j0 + j] = static_cast<float>(-um - P * bj - A / static_cast<double>(V));
      }
    });
  }
  lap(classifierMs);
  for (int64_t i = 0; i < N; i++) {  // the label rows, in row order (deterministic)
    const double ai = aRow[static_cast<size_t>(i)];
    if (ai == 0) continue;
    const int32_t t = labels[i];
    float* row = out.dW + static_cast<int64_t>(t) * D;
    for (int64_t k = 0; k < D; k++) row[k] += static_cast<float>(ai * Ef[static_cast<size_t>(i * D + k)]);
    if (out.dBias != nullptr) out.dBias[t] += static_cast<float>(ai);
  }
  lap(tokenMs);
  report();
}

}  // namespace cutloss::cpu
