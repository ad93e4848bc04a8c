// Float64 reference of harmonic logits (Baek et al. 2025) for linearCrossEntropy's
// `logits: { kind: 'harmonic', exponent }`: d²_ij = Σ_d (e_id − w_jd)² straight from the
// differences (not the library's ‖e‖² + ‖w‖² − 2e·w), z_ij = −(n/2)·log max(d²_ij, FLT_MIN),
// then reference64.ts's cross-entropy on those logits and the chain rule by hand:
// ∂z_ij/∂e_i = −n·(e_i − w_j)/d²_ij, ∂z_ij/∂w_j = −n·(w_j − e_i)/d²_ij (0 below the floor).
import { crossEntropyGrad, crossEntropyLoss, type CeOptions, type Rows } from './reference64.js';

export const FLT_MIN = 2 ** -126;

export interface HarmonicResult {
  loss: number | number[];
  logits: number[][];
  dE: number[][];
  dW: number[][];
}

export function harmonicSqDistances64(E: Rows, W: Rows): number[][] {
  return Array.from(E, (e) =>
    Array.from(W, (w) => {
      let s = 0;
      for (let d = 0; d < e.length; d++) s += (e[d] - w[d]) ** 2;
      return s;
    }),
  );
}

export function harmonicLinearCrossEntropy64(
  E: Rows, W: Rows, labels: ArrayLike<number>, exponent: number, options: CeOptions = {},
): HarmonicResult {
  const D = E[0]!.length;
  const sq = harmonicSqDistances64(E, W);
  const logits = sq.map((row) => row.map((d2) => -0.5 * exponent * Math.log(Math.max(d2, FLT_MIN))));
  const { loss } = crossEntropyLoss(logits, labels, options);
  const G = crossEntropyGrad(logits, labels, options);
  // H_ij = n·G_ij/d²_ij: dloss/de_i = Σ_j H_ij·(w_j − e_i), dloss/dw_j = Σ_i H_ij·(e_i − w_j)
  const slope = sq.map((row, i) => row.map((d2, j) => (d2 < FLT_MIN ? 0 : (exponent * G[i]![j]!) / d2)));
  const dE = Array.from(E, (e, i) => Array.from({ length: D }, (_, d) =>
    Array.from(W).reduce((acc, w, j) => acc + slope[i]![j]! * (w[d] - e[d]), 0)));
  const dW = Array.from(W, (w, j) => Array.from({ length: D }, (_, d) =>
    Array.from(E).reduce((acc, e, i) => acc + slope[i]![j]! * (e[d] - w[d]), 0)));
  return { loss, logits, dE, dW };
}
