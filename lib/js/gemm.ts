// The three tile products of the fused linear cross-entropy, in plain TypeScript:
//   logits  X  = E·Wᵀ      (gemmNT: both operands row-major with D contiguous)
//   dE     += G·W          (gemmNNAcc)
//   dW     += Gᵀ·E         (gemmTNAcc)
// Register blocking (4 rows × 2 or 4 columns held in locals) lets V8 keep partial sums in
// registers; accumulation is float64.

type Vec = Float32Array | Float64Array;

/** C[i·ldc + j] = Σ_d A[aOff + i·lda + d]·B[bOff + j·ldb + d] for i < m, j < n. */
export function gemmNT(
  m: number, n: number, k: number,
  A: Vec, aOff: number, lda: number,
  B: Vec, bOff: number, ldb: number,
  C: Float64Array, ldc: number,
): void {
  let i = 0;
  for (; i + 4 <= m; i += 4) {
    const a0 = aOff + i * lda;
    const a1 = a0 + lda;
    const a2 = a1 + lda;
    const a3 = a2 + lda;
    let j = 0;
    for (; j + 2 <= n; j += 2) {
      const b0 = bOff + j * ldb;
      const b1 = b0 + ldb;
      let c00 = 0, c01 = 0, c10 = 0, c11 = 0, c20 = 0, c21 = 0, c30 = 0, c31 = 0;
      for (let d = 0; d < k; d++) {
        const w0 = B[b0 + d]!;
        const w1 = B[b1 + d]!;
        const e0 = A[a0 + d]!;
        const e1 = A[a1 + d]!;
        const e2 = A[a2 + d]!;
        const e3 = A[a3 + d]!;
        c00 += e0 * w0; c01 += e0 * w1;
        c10 += e1 * w0; c11 += e1 * w1;
        c20 += e2 * w0; c21 += e2 * w1;
        c30 += e3 * w0; c31 += e3 * w1;
      }
      const c = i * ldc + j;
      C[c] = c00; C[c + 1] = c01;
      C[c + ldc] = c10; C[c + ldc + 1] = c11;
      C[c + 2 * ldc] = c20; C[c + 2 * ldc + 1] = c21;
      C[c + 3 * ldc] = c30; C[c + 3 * ldc + 1] = c31;
    }
    for (; j < n; j++) {
      const b0 = bOff + j * ldb;
      let c0 = 0, c1 = 0, c2 = 0, c3 = 0;
      for (let d = 0; d < k; d++) {
        const w = B[b0 + d]!;
        c0 += A[a0 + d]! * w; c1 += A[a1 + d]! * w; c2 += A[a2 + d]! * w; c3 += A[a3 + d]! * w;
      }
      const c = i * ldc + j;
      C[c] = c0; C[c + ldc] = c1; C[c + 2 * ldc] = c2; C[c + 3 * ldc] = c3;
    }
  }
  for (; i < m; i++) {
    const a0 = aOff + i * lda;
    for (let j = 0; j < n; j++) {
      const b0 = bOff + j * ldb;
      let s = 0;
      for (let d = 0; d < k; d++) s += A[a0 + d]! * B[b0 + d]!;
      C[i * ldc + j] = s;
    }
  }
}

/**
 * C[i·ldc + d] += Σ_j G[i·ldg + j]·B[bOff + j·ldb + d] for i < m, d < k (j < n).
 * Four j at a time, so each C element is loaded and stored once per four products.
 */
export function gemmNNAcc(
  m: number, n: number, k: number,
  G: Float64Array, ldg: number,
  B: Vec, bOff: number, ldb: number,
  C: Float64Array, cOff: number, ldc: number,
): void {
  for (let i = 0; i < m; i++) {
    const g = i * ldg;
    const c = cOff + i * ldc;
    let j = 0;
    for (; j + 4 <= n; j += 4) {
      const g0 = G[g + j]!, g1 = G[g + j + 1]!, g2 = G[g + j + 2]!, g3 = G[g + j + 3]!;
      if (g0 === 0 && g1 === 0 && g2 === 0 && g3 === 0) continue;
      const b0 = bOff + j * ldb;
      const b1 = b0 + ldb;
      const b2 = b1 + ldb;
      const b3 = b2 + ldb;
      for (let d = 0; d < k; d++) {
        C[c + d] += g0 * B[b0 + d]! + g1 * B[b1 + d]! + g2 * B[b2 + d]! + g3 * B[b3 + d]!;
      }
    }
    for (; j < n; j++) {
      const g0 = G[g + j]!;
      if (g0 === 0) continue;
      const b0 = bOff + j * ldb;
      for (let d = 0; d < k; d++) C[c + d] += g0 * B[b0 + d]!;
    }
  }
}

/**
 * C[j·ldc + d] += Σ_i G[i·ldg + j]·A[aOff + i·lda + d] for j < n, d < k (i < m).
 * Four i at a time, for the same reason as gemmNNAcc.
 */
export function gemmTNAcc(
  m: number, n: number, k: number,
  G: Float64Array, ldg: number,
  A: Vec, aOff: number, lda: number,
  C: Float64Array, cOff: number, ldc: number,
): void {
  for (let j = 0; j < n; j++) {
    const c = cOff + j * ldc;
    let i = 0;
    for (; i + 4 <= m; i += 4) {
      const g0 = G[i * ldg + j]!, g1 = G[(i + 1) * ldg + j]!, g2 = G[(i + 2) * ldg + j]!, g3 = G[(i + 3) * ldg + j]!;
      if (g0 === 0 && g1 === 0 && g2 === 0 && g3 === 0) continue;
      const a0 = aOff + i * lda;
      const a1 = a0 + lda;
      const a2 = a1 + lda;
      const a3 = a2 + lda;
      for (let d = 0; d < k; d++) {
        C[c + d] += g0 * A[a0 + d]! + g1 * A[a1 + d]! + g2 * A[a2 + d]! + g3 * A[a3 + d]!;
      }
    }
    for (; i < m; i++) {
      const g0 = G[i * ldg + j]!;
      if (g0 === 0) continue;
      const a0 = aOff + i * lda;
      for (let d = 0; d < k; d++) C[c + d] += g0 * A[a0 + d]!;
    }
  }
}
