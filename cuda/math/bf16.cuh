// bf16 is the top half of an f32: widening is a shift, narrowing rounds to nearest even and
// keeps a NaN a NaN. Mirrors bf16ToF32 / f32ToBf16 of lib/tensor.ts bit for bit.
#pragma once

#include "scalar.cuh"

namespace cutloss {

CUTLOSS_HD float bf16ToF32(uint16_t bits) { return floatFromBits(static_cast<uint32_t>(bits) << 16); }

CUTLOSS_HD uint16_t f32ToBf16(float x) {
  const uint32_t u = floatBits(x);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace cutloss
