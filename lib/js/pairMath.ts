// Per-element math of the pairwise sigmoid loss (SigLIP) and the spherical Z-loss: the
// executable specification of cuda/math/pairwise.cuh (same formulas, same branches).

/** softplus(v) = log(1 + e^v) without overflow: max(v, 0) + log1p(e^−|v|). */
export function softplusStable(v: number): number {
  return Math.max(v, 0) + Math.log1p(Math.exp(-Math.abs(v)));
}

/** σ(u) = 1/(1 + e^−u) from the side where the exponential cannot overflow. */
export function sigmoidStable(u: number): number {
  if (u >= 0) return 1 / (1 + Math.exp(-u));
  const e = Math.exp(u);
  return e / (1 + e);
}

export interface PairTerm {
  loss: number;
  dLogit: number;
}

/**
 * One pair of the sigmoid loss at logit u = t·s + b: −log σ(z·u) = softplus(−z·u) with z = +1
 * on the diagonal, −1 elsewhere, and dloss/du = σ(u) − [diagonal].
 */
export function sigmoidPairTerm(u: number, diagonal: boolean): PairTerm {
  return { loss: softplusStable(diagonal ? -u : u), dLogit: sigmoidStable(u) - (diagonal ? 1 : 0) };
}

/** The spherical Z-loss at z̃: (1/a)·softplus(a·(b − z̃)), and its derivative −σ(a·(b − z̃)). */
export function zscoreLossTerm(zt: number, a: number, b: number): PairTerm {
  const v = a * (b - zt);
  return { loss: softplusStable(v) / a, dLogit: -sigmoidStable(v) };
}
