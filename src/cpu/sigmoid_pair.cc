// The pairwise sigmoid loss (SigLIP) on the CPU: three GEMMs per chunk of y rows (S, dX, dY)
// around a per-pair epilogue shared with the CUDA kernel (cuda/math/pairwise.cuh). The
// epilogue keeps per-row float64 sums, added in row order at the end, so the result does not
// depend on how the rows were split across threads.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../../cuda/math/bf16.cuh"
#include "../../cuda/math/pairwise.cuh"
#include "gemm.h"
#include "pairwise.h"
#include "parallel.h"

namespace cutloss::cpu {

namespace {

/** The matrix as contiguous f32: itself, or a widened copy of its bf16 bits in `copy`. */
const float* asF32(const HostMatrix& m, std::vector<float>& copy) {
  if (m.dtype == DType::F32) return static_cast<const float*>(m.data);
  const int64_t n = m.rows * m.cols;
  copy.resize(static_cast<size_t>(n));
  const auto* bits = static_cast<const uint16_t*>(m.data);
  parallelFor(n, 1 << 16, [&](int64_t b, int64_t e, int) {
    for (int64_t k = b; k < e; k++) copy[static_cast<size_t>(k)] = bf16ToF32(bits[k]);
  });
  return copy.data();
}

}  // namespace

SigmoidPairSums sigmoidPairLoss(const HostMatrix& x, const HostMatrix& y, const SigmoidPairParams& p,
                                size_t workspaceBytes, float* dX, float* dY) {
  const int64_t N = x.rows, M = y.rows, D = x.cols;
  SigmoidPairSums out;
  if (N == 0 || M == 0) {
    if (dX != nullptr) std::memset(dX, 0, static_cast<size_t>(N * D) * sizeof(float));
    return out;
  }
  std::vector<float> xCopy, yCopy;
  const float* X = asF32(x, xCopy);
  const float* Y = asF32(y, yCopy);
  // An N × chunk block; at least 16 columns so the GEMMs keep some width.
  const int64_t budget = static_cast<int64_t>(workspaceBytes / sizeof(float)) / N;
  const int64_t chunk = std::min<int64_t>(M, std::max<int64_t>(16, budget));
  std::vector<float> block(static_cast<size_t>(N * chunk));
  std::vector<double> rowLoss(static_cast<size_t>(N), 0.0), rowDt(static_cast<size_t>(N), 0.0),
      rowDb(static_cast<size_t>(N), 0.0);
  for (int64_t j0 = 0; j0 < M; j0 += chunk) {
    const int64_t nc = std::min(chunk, M - j0);
    float* S = block.data();
    sgemm(false, true, N, nc, D, 1.0f, X, D, Y + j0 * D, D, 0.0f, S, nc);
    parallelFor(N, 64, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; i++) {
        double l = 0, dt = 0, db = 0;
        float* row = S + i * nc;
        for (int64_t c = 0; c < nc; c++) {
          const float s = row[c];
          const PairTerm term = sigmoidPairTerm(p.temperature * s + p.bias, p.yStart + j0 + c == i);
          const float g = p.gradScale * term.dLogit;
          l += term.loss;
          dt += static_cast<double>(g) * s;
          db += g;
          row[c] = g;  // the block now holds G
        }
        rowLoss[static_cast<size_t>(i)] += l;
        rowDt[static_cast<size_t>(i)] += dt;
        rowDb[static_cast<size_t>(i)] += db;
      }
    });
    if (dX == nullptr) continue;
    sgemm(false, false, N, D, nc, p.temperature, S, nc, Y + j0 * D, D, j0 == 0 ? 0.0f : 1.0f, dX, D);
    sgemm(true, false, nc, D, N, p.temperature, S, nc, X, D, 0.0f, dY + j0 * D, D);
  }
  for (int64_t i = 0; i < N; i++) {
    out.lossSum += rowLoss[static_cast<size_t>(i)];
    out.dTemperature += rowDt[static_cast<size_t>(i)];
    out.dBias += rowDb[static_cast<size_t>(i)];
  }
  return out;
}

}  // namespace cutloss::cpu
