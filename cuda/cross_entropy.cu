// Cross-entropy from logits with every option of README "Losses" (label smoothing, class
// weights, z-loss, softcap, temperature, softmax / StableMax / sparsemax / Gumbel normalizers, focal,
// Poly-1, squentropy). The forward reads each row once: the online log-sum-exp and the few
// sums the options need are reduced together (plus, for sparsemax, Michelot's threshold
// passes, and for label smoothing Σ w_j (max − z_j) / V once the max is known), and the row's loss is finished by rowLoss of cuda/math/loss.cuh. It leaves
// RowStats per row so the backward, after the host has formed the reduction scales, writes
// dLogits in a second pass from gradCoefficient alone, with no reduction and no barrier.
// This is lib/js/fusedLoss.ts with a dense logit source, one block per row.
#include "common.cuh"

namespace cutloss {
namespace CUTLOSS_KERNEL_NS {

// ---------------------------------------------------------------- kernels

/** Everything the forward reduces over a row, in one pass. */
struct RowSums {
  LseState lse;
  float sumSqOthers, stableSum, sumWeightedLogS;
};
__device__ __forceinline__ RowSums shuffleXor(RowSums v, int lane) {
  return RowSums{shuffleXor(v.lse, lane), shuffleXor(v.sumSqOthers, lane), shuffleXor(v.stableSum, lane),
                 shuffleXor(v.sumWeightedLogS, lane)};
}
struct CombineRowSums {
  __device__ __forceinline__ RowSums operator()(RowSums a, RowSums b) const {
    return RowSums{mergeLse(a.lse, b.lse), a.sumSqOthers + b.sumSqOthers, a.stableSum + b.stableSum,
                   a.sumWeightedLogS + b.sumWeightedLogS};
  }
};

/**
 * What a row's logits are shifted by before ÷ T (shiftedEffectiveLogit): where
 * shiftedBeforeTemperature, the row's largest capped logit, found in an extra pass; else 0.
 */
__device__ float lossRowShift(const MatrixRef& logits, const LossParams& p, int64_t row) {
  if (!shiftedBeforeTemperature(p.normalizer, p.squentropy, p.invTemperature)) return 0.0f;  // uniform across the block
  float max = negativeInfinity();
  for (int j = threadIdx.x; j < static_cast<int>(logits.cols); j += blockDim.x) {
    const float x = loadElement(logits.data, logits.dtype, row * logits.cols + j);
    max = maxPropagatingNaN(max, effectiveLogit(x, p.softcap, 1.0f));
  }
  return effectiveShift(blockMax(max));
}

__global__ void __launch_bounds__(kMaxRowThreads)
    crossEntropyForwardKernel(MatrixRef logits, const int32_t* labels, LossParams p, CrossEntropyForwardOut out) {
  const int cols = static_cast<int>(logits.cols);
  const LossConstants k = lossConstants(p);
  // which sums the options need (uniform: every thread takes the same branches)
  const bool smoothing = p.smoothing > 0.0f;
  const bool squentropy = p.squentropy != 0.0f;
  const bool stable = p.normalizer == kNormalizerStablemax;
  const bool gumbel = p.normalizer == kNormalizerGumbel;
  const RowSums empty{lseEmpty(), 0.0f, 0.0f, 0.0f};
  for (int64_t row = blockIdx.x; row < logits.rows; row += gridDim.x) {
    const int64_t base = row * logits.cols;  // int64: N·V may exceed 2^31
    const int label = labels[row];
    const float shift = lossRowShift(logits, p, row);
    const float zShift = shift * p.invTemperature;
    const auto z = [&](int j) {
      return shiftedEffectiveLogit(loadElement(logits.data, logits.dtype, base + j), p.softcap, p.invTemperature, shift);
    };
    RowSums s = empty;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float zj = z(j);
      s.lse = lsePush(s.lse, zj);
      if (squentropy && j != label) s.sumSqOthers += zj * zj;  // never shifted (lossRowShift)
      if (stable) {
        s.stableSum += stablemaxS(zj);
        if (smoothing) s.sumWeightedLogS += classWeight(p, j) * stablemaxLogS(zj);
      }
      if (gumbel && j != label) s.stableSum += gumbelPsi(zj);  // Gumbel's row sum takes stableSum's slot
    }
    s = blockAllReduce(s, CombineRowSums(), empty);
    if (stable) {
      // RowStats keeps S·scale (S may overflow float32). Scaling the one-pass sum by the power of
      // two is the same sum unless it overflowed or went subnormal: only those rows sum again.
      const float scale = stablemaxSumScale(s.lse.max);
      if (s.stableSum < 1e30f && s.stableSum > 1e-30f) {  // uniform after the reduction
        s.stableSum *= scale;
      } else {
        float part = 0.0f;
        for (int j = threadIdx.x; j < cols; j += blockDim.x) part += stablemaxS(z(j)) * scale;
        s.stableSum = blockSum(part);
      }
    }

    RowStats st;
    st.lse = lseValue(s.lse) + zShift;
    st.logSum = logf(s.lse.sum);
    st.zLabel = isClass(label, cols) ? z(label) : quietNaN();
    // (α/V)·Σ w_j (zMax − z_j) once the max is known: a second read of the row, for smoothing only. A
    // shifted row's gaps come from its capped logits, (shift − c_j)/T: its z_j overflow where c spans ±1.7e38
    float gap = 0.0f;
    if (smoothing) {
      const float spreadScale = p.smoothing / static_cast<float>(cols);
      const bool shifted = shiftedBeforeTemperature(p.normalizer, p.squentropy, p.invTemperature);
      for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        const float term = shifted
            ? scaledGap(shift, effectiveLogit(loadElement(logits.data, logits.dtype, base + j), p.softcap, 1.0f), spreadScale) * p.invTemperature
            : scaledGap(s.lse.max, z(j), spreadScale);
        gap += classWeight(p, j) * term;
      }
      gap = blockSum(gap);
    }
    st.spreadGap = gap;
    st.sumSqOthers = s.sumSqOthers;
    st.stableSum = s.stableSum;
    st.sumWeightedLogS = s.sumWeightedLogS;
    st.zMax = s.lse.max;
    st.tau = 0.0f;
    st.omega = 0.0f;
    st.support = 0.0f;
    st.shift = shift;
    if (p.normalizer == kNormalizerSparsemax) {
      const float zMax = st.zMax;
      const SparsemaxThreshold th = sparsemaxThresholdOfRow([&](int j) { return z(j) - zMax; }, cols, zMax);
      st.tau = th.tau;
      st.support = th.support;
      st.omega = th.tau + 0.5f * (1.0f + th.sumSqP);
    }

    if (threadIdx.x == 0) {
      storeRowStats(out.rowStats, row, st);
      out.lse[row] = st.lse;  // every row's, ignored ones too
      if (label == p.ignoreIndex) {
        out.weighted[row] = 0.0f;
        out.unweighted[row] = 0.0f;
      } else {
        const float wLabel = isClass(label, cols) ? classWeight(p, label) : quietNaN();
        const RowLoss rl = rowLoss(k, st, wLabel, p.sumWeights);
        out.weighted[row] = rl.weighted;
        out.unweighted[row] = rl.unweighted;
      }
    }
  }
}

/**
 * dLogits = gradCoefficient(z)·dz/dx per element. Each thread rebuilds the row's RowGrad
 * from the stored RowStats (a few scalar operations), so threads never wait on each other.
 */
__global__ void __launch_bounds__(kMaxRowThreads)
    crossEntropyBackwardKernel(MatrixRef logits, const int32_t* labels, LossParams p, const float* rowStats,
                               const float* scaleWeighted, const float* scaleUnweighted, MutMatrixRef dLogits) {
  const int cols = static_cast<int>(logits.cols);
  const LossConstants k = lossConstants(p);
  for (int64_t row = blockIdx.x; row < logits.rows; row += gridDim.x) {
    const int64_t base = row * logits.cols;
    const int label = labels[row];
    if (label == p.ignoreIndex) {  // no loss, no gradient
      for (int j = threadIdx.x; j < cols; j += blockDim.x) storeElement(dLogits.data, dLogits.dtype, base + j, 0.0f);
      continue;
    }
    const RowStats st = loadRowStats(rowStats, row);
    const float wLabel = isClass(label, cols) ? classWeight(p, label) : quietNaN();
    const RowLoss rl = rowLoss(k, st, wLabel, p.sumWeights);
    const RowGrad rg = rowGrad(k, st, rl, wLabel, scaleWeighted[row], scaleUnweighted[row]);
    const float shift = rowStats[row * kRowStatFloats + kStatShift];  // read alone: st need not live through the loop
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float x = loadElement(logits.data, logits.dtype, base + j);
      const float zj = shiftedEffectiveLogit(x, p.softcap, p.invTemperature, shift);
      const float coef = gradCoefficient(rg, zj, j == label, classWeight(p, j));
      storeElement(dLogits.data, dLogits.dtype, base + j, coef * effectiveSlope(x, p.softcap, p.invTemperature));
    }
  }
}

// ---------------------------------------------------------------- launchers

inline void checkLossShape(const char* op, const MatrixRef& logits, const LossParams& p) {
  checkRowShape(op, logits.rows, logits.cols);
  if (p.vocab != logits.cols) {
    throwInvalid(op, "vocab " + std::to_string(p.vocab) + " but logits have " + std::to_string(logits.cols) + " columns");
  }
  if (p.normalizer < kNormalizerSoftmax || p.normalizer > kNormalizerGumbel) {
    throwInvalid(op, "unknown normalizer " + std::to_string(p.normalizer));
  }
}

void crossEntropyForward(const MatrixRef& logits, const int32_t* labels, const LossParams& p,
                         const CrossEntropyForwardOut& out, Stream s) {
  checkLossShape("crossEntropyForward", logits, p);
  if (logits.rows == 0) return;
  CUTLOSS_RUN("crossEntropyForward", crossEntropyForwardKernel, rowBlocks(logits.rows), rowThreads(logits.cols), 0, s,
              logits, labels, p, out);
}

void crossEntropyBackward(const MatrixRef& logits, const int32_t* labels, const LossParams& p, const float* rowStats,
                          const float* scaleWeighted, const float* scaleUnweighted, const MutMatrixRef& dLogits,
                          Stream s) {
  checkLossShape("crossEntropyBackward", logits, p);
  checkSameShape("crossEntropyBackward", "dLogits", logits.rows, logits.cols, dLogits.rows, dLogits.cols);
  if (logits.rows == 0) return;
  CUTLOSS_RUN("crossEntropyBackward", crossEntropyBackwardKernel, rowBlocks(logits.rows), rowThreads(logits.cols), 0, s,
              logits, labels, p, rowStats, scaleWeighted, scaleUnweighted, dLogits);
}

}  // namespace CUTLOSS_KERNEL_NS
}  // namespace cutloss
