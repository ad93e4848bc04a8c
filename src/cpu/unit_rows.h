// Unit rows for margin softmax on host memory (lib/cosine.ts; cuda/normalize.cu on a GPU):
// the formulas of cuda/math/unit_rows.cuh, a row at a time on the backend's threads, with
// float64 row sums in SIMD loops. Callers (binding.cc) validate shapes and hold a CpuSession.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace cutloss::cpu {

/** y = scale·x/max(‖x‖, eps) as f32 [rows, cols], and each row's ‖x‖ (float64). */
void unitRows(const HostMatrix& x, double scale, float* y, double* norms);

/** dx (f32, x's shape) from g = dL/dy of unitRows (f32 or bf16, x's shape) and unitRows' norms. */
void unitRowsBackward(const HostMatrix& x, const double* norms, double scale, const HostMatrix& g, float* dx);

}  // namespace cutloss::cpu
