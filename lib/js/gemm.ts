// The three tile products of the fused linear cross-entropy, in plain TypeScript, all one
// accumulate-product kernel (gemmAcc) with different strides:
//   logits  X += E·Wᵀ_tile  (gemmNNAcc, with the W tile transposed once per class tile)
//   dE     += G·W           (gemmNNAcc)
//   dW     += Gᵀ·E          (gemmTNAcc)
// Accumulation is float64.

type Vec = Float32Array | Float64Array;

/**
 * C[p·ldc + d] += Σ_q K(p, q)·M[mOff + q·ldm + d] for p < P, d < Dk (q < Q), where
 * K(p, q) = G[gOff + p·kp + q·kq]: with (kp, kq) = (ldg, 1) this is G·M, with (1, ldg) Gᵀ·M.
 * A 4 × 4 block of K sits in locals while the d loop streams four rows of M and four of C,
 * so each C element is loaded and stored once per sixteen products.
 */
function gemmAcc(
  P: number, Q: number, Dk: number,
  G: Vec, gOff: number, kp: number, kq: number,
  M: Vec, mOff: number, ldm: number,
  C: Float64Array, cOff: number, ldc: number,
  skipZeros: boolean,
): void {
  let p = 0;
  for (; p + 4 <= P; p += 4) {
    const c0 = cOff + p * ldc;
    const c1 = c0 + ldc;
    const c2 = c1 + ldc;
    const c3 = c2 + ldc;
    let q = 0;
    for (; q + 4 <= Q; q += 4) {
      const g = gOff + p * kp + q * kq;
      const k00 = G[g]!, k01 = G[g + kq]!, k02 = G[g + 2 * kq]!, k03 = G[g + 3 * kq]!;
      const k10 = G[g + kp]!, k11 = G[g + kp + kq]!, k12 = G[g + kp + 2 * kq]!, k13 = G[g + kp + 3 * kq]!;
      const k20 = G[g + 2 * kp]!, k21 = G[g + 2 * kp + kq]!, k22 = G[g + 2 * kp + 2 * kq]!, k23 = G[g + 2 * kp + 3 * kq]!;
      const k30 = G[g + 3 * kp]!, k31 = G[g + 3 * kp + kq]!, k32 = G[g + 3 * kp + 2 * kq]!, k33 = G[g + 3 * kp + 3 * kq]!;
      if (
        skipZeros && k00 === 0 && k01 === 0 && k02 === 0 && k03 === 0 && k10 === 0 && k11 === 0 && k12 === 0 && k13 === 0 &&
        k20 === 0 && k21 === 0 && k22 === 0 && k23 === 0 && k30 === 0 && k31 === 0 && k32 === 0 && k33 === 0
      ) continue; // ignored rows cost nothing in the backward (the forward keeps 0·NaN = NaN)
      const m0 = mOff + q * ldm;
      const m1 = m0 + ldm;
      const m2 = m1 + ldm;
      const m3 = m2 + ldm;
      for (let d = 0; d < Dk; d++) {
        const a = M[m0 + d]!, b = M[m1 + d]!, c = M[m2 + d]!, e = M[m3 + d]!;
        C[c0 + d] += k00 * a + k01 * b + k02 * c + k03 * e;
        C[c1 + d] += k10 * a + k11 * b + k12 * c + k13 * e;
        C[c2 + d] += k20 * a + k21 * b + k22 * c + k23 * e;
        C[c3 + d] += k30 * a + k31 * b + k32 * c + k33 * e;
      }
    }
    for (; q < Q; q++) {
      const g = gOff + p * kp + q * kq;
      const k0 = G[g]!, k1 = G[g + kp]!, k2 = G[g + 2 * kp]!, k3 = G[g + 3 * kp]!;
      const m0 = mOff + q * ldm;
      for (let d = 0; d < Dk; d++) {
        const a = M[m0 + d]!;
        C[c0 + d] += k0 * a;
        C[c1 + d] += k1 * a;
        C[c2 + d] += k2 * a;
        C[c3 + d] += k3 * a;
      }
    }
  }
  for (; p < P; p++) {
    const c0 = cOff + p * ldc;
    for (let q = 0; q < Q; q++) {
      const k = G[gOff + p * kp + q * kq]!;
      if (skipZeros && k === 0) continue;
      const m0 = mOff + q * ldm;
      for (let d = 0; d < Dk; d++) C[c0 + d] += k * M[m0 + d]!;
    }
  }
}

/**
 * C[cOff + i·ldc + d] += Σ_j G[gOff + i·ldg + j]·B[bOff + j·ldb + d] for i < m, d < k (j < n):
 * logits += E·Wᵀ_tile, dE += G·W. `skipZeros` skips 4 × 4 blocks of G that are all zero.
 */
export function gemmNNAcc(
  m: number, n: number, k: number,
  G: Vec, gOff: number, ldg: number,
  B: Vec, bOff: number, ldb: number,
  C: Float64Array, cOff: number, ldc: number,
  skipZeros = false,
): void {
  gemmAcc(m, n, k, G, gOff, ldg, 1, B, bOff, ldb, C, cOff, ldc, skipZeros);
}

/** C[cOff + j·ldc + d] += Σ_i G[gOff + i·ldg + j]·A[aOff + i·lda + d] for j < n, d < k (i < m): dW += Gᵀ·E. */
export function gemmTNAcc(
  m: number, n: number, k: number,
  G: Vec, gOff: number, ldg: number,
  A: Vec, aOff: number, lda: number,
  C: Float64Array, cOff: number, ldc: number,
  skipZeros = false,
): void {
  gemmAcc(n, m, k, G, gOff, 1, ldg, A, aOff, lda, C, cOff, ldc, skipZeros);
}
