/**
 * Float64 references of the pairwise sigmoid loss (SigLIP) and the spherical Z-loss, written
 * straight from their papers' definitions: every logit materialized, no chunks, no moments.
 * Gradients come from forward-mode automatic differentiation (reference64.ts's dual numbers)
 * of the same forward code, one pass per input element, never from hand-derived formulas.
 *
 * Like reference64.ts, this file must not import anything from lib/.
 */
import { Dual, dualSum, type Rows } from './reference64.js';

type D = Dual;
const c = (v: number): D => new Dual(v);

/** log(1 + e^v) for a dual, from the side where the exponential cannot overflow. */
function softplus(v: D): D {
  return v.v > 0 ? v.add(v.neg().exp().add(1).log()) : v.exp().add(1).log();
}

// ---------------------------------------------------------------- SigLIP

/** −(1/N)·Σ_ij log σ(z_ij·(t·x_i·y_j + b)), z = +1 for i = j (global row of y), else −1. */
function sigmoidPairD(x: D[][], y: D[][], t: D, b: D, N: number, yStart: number): D {
  const terms: D[] = [];
  for (let i = 0; i < x.length; i++) {
    for (let j = 0; j < y.length; j++) {
      const u = dualSum(x[i]!.map((xv, d) => xv.mul(y[j]![d]!))).mul(t).add(b);
      const z = yStart + j === i ? 1 : -1;
      terms.push(softplus(u.mul(-z))); // −log σ(z·u) = softplus(−z·u)
    }
  }
  return dualSum(terms).div(N);
}

export interface SigmoidPair64 {
  loss: number;
  dX: number[][];
  dY: number[][];
  dTemperature: number;
  dBias: number;
}

const lift = (rows: Rows): D[][] => Array.from(rows, (r) => Array.from(r, (v) => c(v)));

/** The loss over x [N, D] and y rows [yStart, yStart + M), and its exact gradients (N = x rows). */
export function sigmoidPairLoss64(x: Rows, y: Rows, t: number, b: number, yStart = 0): SigmoidPair64 {
  const N = x.length;
  const X = lift(x);
  const Y = lift(y);
  const f = (xx: D[][], yy: D[][], tt: D, bb: D) => sigmoidPairD(xx, yy, tt, bb, N, yStart);
  const loss = f(X, Y, c(t), c(b)).v;
  const grad = (M: D[][], run: () => D) =>
    M.map((row) => row.map((_, d) => {
      const keep = row[d]!;
      row[d] = new Dual(keep.v, 1);
      const g = run().d;
      row[d] = keep;
      return g;
    }));
  const dX = grad(X, () => f(X, Y, c(t), c(b)));
  const dY = grad(Y, () => f(X, Y, c(t), c(b)));
  const dTemperature = f(X, Y, new Dual(t, 1), c(b)).d;
  const dBias = f(X, Y, c(t), new Dual(b, 1)).d;
  return { loss, dX, dY, dTemperature, dBias };
}

/** The loss alone, for finite differences. */
export function sigmoidPairLossValue64(x: Rows, y: Rows, t: number, b: number, yStart = 0): number {
  return sigmoidPairD(lift(x), lift(y), c(t), c(b), x.length, yStart).v;
}

// ---------------------------------------------------------------- spherical Z-loss

export interface Zscore64Options {
  a: number;
  b: number;
  bias?: ArrayLike<number>;
  classWeights?: ArrayLike<number>;
  reduction?: 'mean' | 'sum' | 'none';
  ignoreIndex?: number;
}

/** Per-row losses from every logit z_ij = e_i·w_j + b_j: z̃ = (z_t − mean)/std over j (0 when std = 0). */
function zscoreRowsD(E: D[][], W: D[][], bias: D[] | null, labels: ArrayLike<number>, o: Zscore64Options): (D | null)[] {
  const V = W.length;
  return E.map((e, i) => {
    const t = labels[i]!;
    if (t === (o.ignoreIndex ?? -100)) return null;
    const z = W.map((w, j) => {
      const dot = dualSum(e.map((ev, d) => ev.mul(w[d]!)));
      return bias === null ? dot : dot.add(bias[j]!);
    });
    const mean = dualSum(z).div(V);
    const variance = dualSum(z.map((zj) => zj.sub(mean).square())).div(V);
    const zt = variance.v > 0 ? z[t]!.sub(mean).div(variance.sqrt()) : c(0);
    const weight = o.classWeights === undefined ? 1 : o.classWeights[t]!;
    return softplus(zt.neg().add(o.b).mul(o.a)).div(o.a).mul(weight);
  });
}

function zscoreReduceD(rows: (D | null)[], labels: ArrayLike<number>, o: Zscore64Options): D | D[] {
  const kept = rows.filter((r): r is D => r !== null);
  if (o.reduction === 'none') return rows.map((r) => r ?? c(0));
  const total = dualSum(kept);
  if (o.reduction === 'sum') return total;
  let denom = 0;
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] === (o.ignoreIndex ?? -100)) continue;
    denom += o.classWeights === undefined ? 1 : o.classWeights[labels[i]!]!;
  }
  return total.div(denom);
}

/**
 * The spherical Z-loss (de Brébisson & Vincent 2016) of E·Wᵀ + b, reduced like weighted
 * cross-entropy, and the gradients of Σ_i g_i·loss_i (g: gradScale, one per row for 'none').
 */
export function zscoreLoss64(E: Rows, W: Rows, labels: ArrayLike<number>, o: Zscore64Options, gradScale: number | ArrayLike<number> = 1) {
  const Ed = lift(E);
  const Wd = lift(W);
  const bd = o.bias === undefined ? null : Array.from(o.bias, (v) => c(v));
  const scalar = (): D => {
    const r = zscoreReduceD(zscoreRowsD(Ed, Wd, bd, labels, o), labels, o);
    if (Array.isArray(r)) return dualSum(r.map((v, i) => v.mul(typeof gradScale === 'number' ? gradScale : gradScale[i]!)));
    return (r as D).mul(gradScale as number);
  };
  const lossRaw = zscoreReduceD(zscoreRowsD(Ed, Wd, bd, labels, o), labels, o);
  const loss = Array.isArray(lossRaw) ? lossRaw.map((v) => v.v) : (lossRaw as D).v;
  const gradOf = (M: D[][]) =>
    M.map((row) => row.map((_, d) => {
      const keep = row[d]!;
      row[d] = new Dual(keep.v, 1);
      const g = scalar().d;
      row[d] = keep;
      return g;
    }));
  const dE = gradOf(Ed);
  const dW = gradOf(Wd);
  const dBias = bd === null ? null : gradOf([bd])[0]!;
  return { loss, dE, dW, dBias };
}
