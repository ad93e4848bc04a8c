// Float64 reference of the Gumbel optimized loss (Alexandridis et al. 2022), written from the
// paper's definition rather than from lib/js/math.ts: per class p_j = exp(−exp(−z_j)), the
// binary cross-entropy of the one-hot target, ℓ = −log p_t − Σ_{j≠t} log(1 − p_j), and its
// derivative by hand (∂/∂z_t = −u_t, ∂/∂z_j = u_j/(e^{u_j} − 1), u = e^{−z}); softcap,
// temperature, class weights, zLoss, squentropy and the reductions as README "Losses" says.
// The tests hold this reference to finite differences of itself and to the naive formula.

export interface GumbelRefOptions {
  reduction?: 'mean' | 'sum' | 'none';
  ignoreIndex?: number;
  classWeights?: ArrayLike<number>;
  zLoss?: number;
  squentropy?: boolean;
  softcap?: number;
  temperature?: number;
  gradScale?: number | ArrayLike<number>;
}

/** −log(1 − e^{−u}) for u = e^{−z} ≥ 0, without forming 1 − e^{−u} where it cancels. */
export function psi64(z: number): number {
  if (z > 40) return z + Math.exp(-z) / 2; // log((1 − e^{−u})/u) = −u/2 + O(u²), u < 5e-18
  const u = Math.exp(-z);
  if (u < 0.5) return -Math.log(-Math.expm1(-u));
  return -Math.log1p(-Math.exp(-u));
}

/** dψ/dz = u·e^{−u}/(1 − e^{−u}) = u/(e^u − 1). */
export function dpsi64(z: number): number {
  const u = Math.exp(-z);
  if (u === 0) return 1;
  if (u > 745) return 0; // e^{−u} is 0 in float64
  return u / Math.expm1(u);
}

function effective(x: number, o: GumbelRefOptions): { z: number; slope: number } {
  const c = o.softcap ?? 0;
  const T = o.temperature ?? 1;
  if (c > 0) {
    const th = Math.tanh(x / c);
    return { z: (c * th) / T, slope: (1 - th * th) / T };
  }
  return { z: x / T, slope: 1 / T };
}

function lse64(z: number[]): number {
  const m = Math.max(...z);
  if (!Number.isFinite(m)) return m;
  return m + Math.log(z.reduce((a, v) => a + Math.exp(v - m), 0));
}

export interface GumbelRefResult {
  loss: number | number[];
  lse: number[];
  dLogits: number[][];
}

/** Loss, lse of the effective logits and dloss/dx of rows X [N][V]. */
export function gumbelCrossEntropy64(X: number[][], labels: ArrayLike<number>, o: GumbelRefOptions = {}): GumbelRefResult {
  const N = X.length;
  const V = N > 0 ? X[0]!.length : 0;
  const reduction = o.reduction ?? 'mean';
  const ignoreIndex = o.ignoreIndex ?? -100;
  const w = (j: number) => (o.classWeights ? o.classWeights[j]! : 1);
  const lambda = o.zLoss ?? 0;
  const sigma = o.squentropy ? 1 : 0;
  let nValid = 0;
  let weightSum = 0;
  for (let i = 0; i < N; i++) {
    if (labels[i] === ignoreIndex) continue;
    nValid++;
    weightSum += w(labels[i]!);
  }
  const perRow: number[] = new Array(N).fill(0);
  const weighted: number[] = new Array(N).fill(0);
  const unweighted: number[] = new Array(N).fill(0);
  const lse: number[] = [];
  const dLogits: number[][] = [];
  for (let i = 0; i < N; i++) {
    const eff = X[i]!.map((x) => effective(x, o));
    const z = eff.map((e) => e.z);
    const L = lse64(z);
    lse.push(L);
    const t = labels[i]!;
    if (t === ignoreIndex) {
      dLogits.push(new Array(V).fill(0));
      continue;
    }
    let sumPsi = 0;
    let sumSq = 0;
    for (let j = 0; j < V; j++) {
      if (j === t) continue;
      sumPsi += psi64(z[j]!);
      sumSq += z[j]! * z[j]!;
    }
    weighted[i] = w(t) * (Math.exp(-z[t]!) + sumPsi);
    unweighted[i] = lambda * L * L + (V > 1 ? (sigma * sumSq) / (V - 1) : 0);
    perRow[i] = weighted[i]! + unweighted[i]!;
    const g = o.gradScale === undefined ? 1 : typeof o.gradScale === 'number' ? o.gradScale : o.gradScale[i]!;
    const sW = reduction === 'mean' ? g / weightSum : g;
    const sU = reduction === 'mean' ? g / nValid : g;
    dLogits.push(z.map((zj, j) => {
      let d = j === t ? -w(t) * Math.exp(-zj) * sW : w(t) * dpsi64(zj) * sW;
      if (lambda !== 0) d += sU * 2 * lambda * L * Math.exp(zj - L);
      if (sigma !== 0 && j !== t && V > 1) d += (sU * 2 * sigma * zj) / (V - 1);
      return d * eff[j]!.slope;
    }));
  }
  const sum = (a: number[]) => a.reduce((s, v) => s + v, 0);
  const loss = reduction === 'none' ? perRow
    : reduction === 'sum' ? sum(perRow)
    : nValid === 0 ? NaN : sum(weighted) / weightSum + sum(unweighted) / nValid;
  return { loss, lse, dLogits };
}

export interface GumbelLinearRefResult extends GumbelRefResult {
  dE: number[][];
  dW: number[][];
  dBias: number[];
}

/** The same on X = E·Wᵀ + b, materialized in float64, and the chain rule to E, W and b. */
export function gumbelLinearCrossEntropy64(
  E: number[][], W: number[][], labels: ArrayLike<number>, o: GumbelRefOptions & { bias?: ArrayLike<number> } = {},
): GumbelLinearRefResult {
  const D = E[0]!.length;
  const X = E.map((e) => W.map((wv, v) => {
    let acc = o.bias ? o.bias[v]! : 0;
    for (let d = 0; d < D; d++) acc += e[d]! * wv[d]!;
    return acc;
  }));
  const r = gumbelCrossEntropy64(X, labels, o);
  const G = r.dLogits;
  const dE = G.map((g) => Array.from({ length: D }, (_, d) => g.reduce((a, gv, v) => a + gv * W[v]![d]!, 0)));
  const dW = W.map((_, v) => Array.from({ length: D }, (_, d) => G.reduce((a, g, i) => a + g[v]! * E[i]![d]!, 0)));
  const dBias = W.map((_, v) => G.reduce((a, g) => a + g[v]!, 0));
  return { ...r, dE, dW, dBias };
}
