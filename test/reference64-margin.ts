// Float64 re-computation of margin softmax (linearCrossEntropy with logits kind 'cosine'),
// written from the definitions, independent of lib/: F.normalize of E and W (x / max(‖x‖, 1e-12)),
// logits s·cos θ_ij with s·(cos(θ + m2) − m) at the label (insightface's continuation
// cos θ − m2·sin m2 − m where θ + m2 > π), reference64's cross-entropy on them, and the
// chain rule back through the label map and both normalizations. `lossOnly` is the plain
// function of E and W that finite differences check the gradients against.
import { crossEntropyGrad, crossEntropyLoss, type CeOptions, type Rows } from './reference64.js';

export interface CosineOptions {
  scale?: number;
  margin?: number;
  angularMargin?: number;
}

const EPS = 1e-12;

function normalize(rows: Rows): { unit: number[][]; norms: number[] } {
  const norms = rows.map((r) => Math.sqrt(Array.from(r).reduce((a, v) => a + v * v, 0)));
  return { unit: rows.map((r, i) => Array.from(r, (v) => v / Math.max(norms[i]!, EPS))), norms };
}

/** φ(c) = cos(acos(c) + m2) − m, the continuation past θ + m2 = π. */
export function phi(c: number, m: number, m2: number): number {
  const cc = Math.min(1, Math.max(-1, c));
  const theta = Math.acos(cc);
  if (m2 > 0 && theta + m2 > Math.PI) return cc - m2 * Math.sin(m2) - m;
  return Math.cos(theta + m2) - m;
}

/** φ'(c) = sin(θ + m2)/sin θ (from d cos(θ + m2)/dθ · dθ/dc), 1 on the continuation. */
export function phiSlope(c: number, m2: number): number {
  const theta = Math.acos(Math.min(1, Math.max(-1, c)));
  if (m2 === 0 || theta + m2 > Math.PI) return 1;
  return Math.sin(theta + m2) / Math.sin(theta);
}

function cosineLogits(E: Rows, W: Rows, labels: ArrayLike<number>, o: CosineOptions) {
  const s = o.scale ?? 64;
  const m = o.margin ?? 0;
  const m2 = o.angularMargin ?? 0;
  const e = normalize(E);
  const w = normalize(W);
  const cos = e.unit.map((ei) => w.unit.map((wj) => ei.reduce((a, v, d) => a + v * wj[d]!, 0)));
  const logits = cos.map((row, i) => row.map((c, j) => (j === labels[i] ? s * phi(c, m, m2) : s * c)));
  return { s, m2, e, w, cos, logits };
}

export function lossOnly(E: Rows, W: Rows, labels: ArrayLike<number>, o: CosineOptions, ce: CeOptions): number | number[] {
  return crossEntropyLoss(cosineLogits(E, W, labels, o).logits, labels, ce).loss;
}

/** dL/dx of y = x / max(‖x‖, eps) given dL/dy. */
function backNormalize(x: ArrayLike<number>, norm: number, y: number[], dy: number[]): number[] {
  if (norm < EPS) return dy.map((v) => v / EPS);
  const dot = y.reduce((a, v, k) => a + v * dy[k]!, 0);
  return dy.map((v, k) => (v - y[k]! * dot) / norm);
}

export function cosineLinearCrossEntropy(E: Rows, W: Rows, labels: ArrayLike<number>, o: CosineOptions, ce: CeOptions) {
  const { s, m2, e, w, cos, logits } = cosineLogits(E, W, labels, o);
  const { loss, lse } = crossEntropyLoss(logits, labels, ce);
  const dLogits = crossEntropyGrad(logits, labels, ce);
  // dL/dc_ij = s·dL/dz_ij, times φ'(c) at the label
  const dCos = dLogits.map((row, i) => row.map((g, j) => s * g * (j === labels[i] ? phiSlope(cos[i]![j]!, m2) : 1)));
  const D = E.length ? E[0]!.length : W[0]!.length;
  const dUnitE = dCos.map((row) => Array.from({ length: D }, (_, d) => row.reduce((a, g, j) => a + g * w.unit[j]![d]!, 0)));
  const dUnitW = W.map((_, j) => Array.from({ length: D }, (_, d) => dCos.reduce((a, row, i) => a + row[j]! * e.unit[i]![d]!, 0)));
  const dE = E.map((x, i) => backNormalize(x, e.norms[i]!, e.unit[i]!, dUnitE[i]!));
  const dW = W.map((x, j) => backNormalize(x, w.norms[j]!, w.unit[j]!, dUnitW[j]!));
  return { loss, lse, dE, dW, cos };
}
