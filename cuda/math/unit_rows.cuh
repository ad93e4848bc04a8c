// Unit rows for margin softmax (lib/cosine.ts): y = scale·x / max(‖x‖, eps), PyTorch's
// F.normalize times scale, and the gradient back through it. The per-row formulas shared by
// cuda/normalize.cu and src/cpu/unit_rows.cc (lib/cosine.ts states the same in TypeScript);
// the callers form ‖x‖ and Σ x·g in float64 their own way (a block reduction, a SIMD loop).
#pragma once

#include "scalar.cuh"

namespace cutloss {

/** F.normalize's eps. */
constexpr double kNormalizeEps = 1e-12;

/** The factor a row of norm `norm` is multiplied by: scale / max(norm, eps). */
CUTLOSS_HD double unitRowFactor(double norm, double scale) {
  return scale / (norm > kNormalizeEps ? norm : kNormalizeEps);
}

/** Whether the row took F.normalize's eps branch (y = x/eps: no projection on the way back). */
CUTLOSS_HD bool unitRowOnEps(double norm) { return norm < kNormalizeEps; }

/** dx on the eps branch: scale·g/eps. */
CUTLOSS_HD double unitRowEpsGradient(double g, double scale) { return scale * g / kNormalizeEps; }

/**
 * dx = scale·(g − ŷ(ŷ·g))/‖x‖ for one element, with invNorm = 1/‖x‖ and dot = ŷ·g =
 * (Σ x·g)/‖x‖; sd = scale·invNorm.
 */
CUTLOSS_HD double unitRowGradient(double x, double g, double invNorm, double dot, double sd) {
  return sd * (g - x * invNorm * dot);
}

}  // namespace cutloss
