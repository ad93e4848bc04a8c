// The CPU backend's pairwise and moment-based losses (issue: SigLIP's sigmoid loss, the
// spherical Z-loss): GEMM tiles from gemm.h, threads from parallel.h. Callers (binding.cc)
// validate shapes and hold a CpuSession.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace cutloss::cpu {

struct SigmoidPairSums {
  double lossSum = 0;  // Σ softplus over this call's pairs (unscaled)
  double dTemperature = 0;
  double dBias = 0;
};

/**
 * The pairwise sigmoid loss of x [N, D] against y [M, D] (y holds the global rows
 * [p.yStart, p.yStart + M)), a chunk of y rows at a time: per chunk S = X·Y_cᵀ by one GEMM into
 * an N × chunk block (chunk chosen so the block stays under workspaceBytes), then dX += t·G·Y_c
 * and dY_c = t·Gᵀ·X. dX and dY (f32) are written when not null.
 */
SigmoidPairSums sigmoidPairLoss(const HostMatrix& x, const HostMatrix& y, const SigmoidPairParams& p,
                                size_t workspaceBytes, float* dX, float* dY);

}  // namespace cutloss::cpu

namespace cutloss::cpu {

/** Outputs of zscoreLinear (f32): per row, and the gradients when rowScale is given. */
struct ZscoreOut {
  float* rowLoss;  // [N] loss_i before class weights (0 for ignored rows)
  float* zt;       // [N] z̃ of the label
  float* dE;       // [N, D] or null
  float* dW;       // [V, D] or null
  float* dBias;    // [V] or null
  /** Out: milliseconds spent on the classifier side (O(V·D²): moments, dW) and on the tokens (O(N·D²)). */
  double* phaseMs = nullptr;
};

/**
 * The spherical Z-loss of E·Wᵀ + b from the classifier's moments (lib/js/zscore.ts has the
 * formulas): C = UᵀU/V by GEMMs over chunks of W rows, C·E for every token by one GEMM, then
 * O(D) per token; the backward's W-side terms are M = Eᵀ·diag(p)·E and U·M, two more GEMMs.
 * rowScale [N] is each row's dL/dloss_i, or null for the forward only.
 */
void zscoreLinear(const HostMatrix& E, const HostMatrix& W, const float* bias, const int32_t* labels,
                  int32_t ignoreIndex, float a, float b, const float* rowScale, const ZscoreOut& out);

}  // namespace cutloss::cpu
