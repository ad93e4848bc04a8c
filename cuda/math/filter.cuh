// Gradient filtering's f32 default, shared by every backend (lib/js/math.ts mirrors it as
// FILTER_ROW_MASS): entries with |∂loss_i/∂z_ij| below kFilterRowMass·s_i/V (s_i the row's
// gradient scale) are dropped, so a row's dropped entries sum to under kFilterRowMass·s_i:
// float32 rounding of the exact gradient's scale.
#pragma once

namespace cutloss {

constexpr double kFilterRowMass = 0x1p-24;

}  // namespace cutloss
