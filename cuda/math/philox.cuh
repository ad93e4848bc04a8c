// Counter-based Gumbel noise, mirroring lib/js/math.ts and lib/js/gumbel.ts: Philox-4x32-10
// (Salmon et al. 2011), the uint32 → uniform map, and the element → (counter, word) map, so
// every backend draws the same noise for the same seed from the element index alone.
#pragma once

#include "scalar.cuh"

namespace cutloss {

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

/** High 32 bits of the 64-bit product of two uint32. */
CUTLOSS_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

/** Philox-4x32 with 10 rounds. */
CUTLOSS_HD PhiloxWords philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t m0 = 0xd2511f53u, m1 = 0xcd9e8d57u;
  const uint32_t w0 = 0x9e3779b9u, w1 = 0xbb67ae85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(m0, c0), lo0 = m0 * c0;
    const uint32_t hi1 = mulhi32(m1, c2), lo1 = m1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += w0;
    k1 += w1;
  }
  return PhiloxWords{c0, c1, c2, c3};
}

/** A uint32 word → u in (0, 1), exact in fp32 (so never rounded to 1): 23 high bits plus half a step. */
CUTLOSS_HD float uniformFromWord(uint32_t word) {
  return (static_cast<float>(word >> 9) + 0.5f) * 1.1920928955078125e-7f;  // 2^-23
}

/** Standard Gumbel noise −log(−log u). */
CUTLOSS_HD float gumbelFromUniform(float u) { return -logf(-logf(u)); }

/**
 * The noise of flat element e of a tensor: word e mod 4 of Philox(counter ⌊e/4⌋ split in
 * 32-bit halves, key = seed split in 32-bit halves). The word is picked with selects, not an
 * indexed array, so it stays in registers.
 */
CUTLOSS_HD float gumbelNoiseAt(uint64_t seed, int64_t e) {
  const uint64_t q = static_cast<uint64_t>(e) >> 2;
  const PhiloxWords r = philox4x32(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32), 0u, 0u,
                                   static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const int w = static_cast<int>(e & 3);
  const uint32_t word = w == 0 ? r.w0 : w == 1 ? r.w1 : w == 2 ? r.w2 : r.w3;
  return gumbelFromUniform(uniformFromWord(word));
}

/**
 * Gumbel-softmax's perturbed logit ((x − shift) + g)/τ, with shift the row's largest finite x
 * (effectiveShift; softmax and the argmax are invariant to it): x + g formed first would round
 * g away at |x| ≫ 1 (1e-3 of it at 1e4) and overflow near FLT_MAX.
 */
CUTLOSS_HD float gumbelPerturbed(float x, float shift, float noise, float tau) { return ((x - shift) + noise) / tau; }

}  // namespace cutloss
