// The spherical Z-loss (de Brébisson & Vincent 2016) of the logits z = E·Wᵀ + b on the
// reference backend, from moments of the classifier instead of the logits: over the V classes,
//   μ_i  = e_i·w̄ + b̄,
//   σ_i² = e_iᵀ·C·e_i + 2·e_i·c + var(b),  C = (1/V)·Σ_j u_j u_jᵀ, c = (1/V)·Σ_j u_j β_j,
// with u_j = w_j − w̄ and β_j = b_j − b̄ (centred first: no cancellation of e·mean against the
// second moment). Then z̃_i = (e_i·u_t + β_t)/σ_i and loss_i = (1/a)·softplus(a·(b − z̃_i)).
// Per call C costs O(V·D²) once; each token then costs O(D²), whatever V is. No N×V anywhere.
//
// Gradients, with q_i = dL/dz̃_i, a_i = q_i/σ_i and p_i = q_i·z̃_i/(σ_i²·V):
//   dE_i = a_i·(u_t − z̃_i·(C·e_i + c)/σ_i)
//   dW_k = Σ_{i: t_i = k} a_i·e_i − (1/V)·Σ_i a_i·e_i − (M·u_k + m·β_k),  M = Σ_i p_i e_i e_iᵀ, m = Σ_i p_i e_i
//   db_k = Σ_{i: t_i = k} a_i − (1/V)·Σ_i a_i − (m·u_k + P·β_k),           P = Σ_i p_i
// A row whose logits are all equal (σ = 0) has z̃ = 0 by convention, and no gradient.

import { allocate, f32Copy } from '../alloc.js';
import { toF32, type Matrix } from '../tensor.js';
import { zscoreLossTerm } from './pairMath.js';

export interface ZscoreSettings {
  a: number;
  b: number;
  bias: Float32Array | null;
  ignoreIndex: number;
  /** Per row: dL/dloss_i (the reduction's scale times the target's class weight); null: forward only. */
  rowScale: Float32Array | null;
}

export interface ZscoreOutput {
  /** loss_i before class weights and reduction (0 for ignored rows). */
  rowLoss: Float32Array;
  /** z̃ of each row's label (0 for ignored rows). */
  zt: Float32Array;
  dE: Float32Array | null;
  dW: Float32Array | null;
  dBias: Float32Array | null;
}

export function zscoreLinearJs(Em: Matrix, Wm: Matrix, labels: Int32Array, s: ZscoreSettings): ZscoreOutput {
  const N = Em.rows;
  const V = Wm.rows;
  const D = Em.cols;
  const E = toF32(Em);
  const W = toF32(Wm);
  const bias = s.bias;
  // classifier moments: w̄, b̄, C, c, var(b)
  const wMean = new Float64Array(D);
  for (let j = 0; j < V; j++) for (let d = 0; d < D; d++) wMean[d] += W[j * D + d]!;
  for (let d = 0; d < D; d++) wMean[d] /= V;
  let bMean = 0;
  if (bias !== null) for (let j = 0; j < V; j++) bMean += bias[j]!;
  bMean /= V;
  const C = new Float64Array(D * D);
  const c = new Float64Array(D);
  let varB = 0;
  const u = new Float64Array(D);
  for (let j = 0; j < V; j++) {
    for (let d = 0; d < D; d++) u[d] = W[j * D + d]! - wMean[d]!;
    const beta = bias === null ? 0 : bias[j]! - bMean;
    for (let p = 0; p < D; p++) {
      const up = u[p]!;
      for (let q = 0; q < D; q++) C[p * D + q] += up * u[q]!;
      c[p] += up * beta;
    }
    varB += beta * beta;
  }
  for (let k = 0; k < D * D; k++) C[k] /= V;
  for (let d = 0; d < D; d++) c[d] /= V;
  varB /= V;

  const rowLoss = allocate(Float32Array, N, 'rowLoss');
  const zt = allocate(Float32Array, N, 'zt');
  const grad = s.rowScale !== null;
  const dE = grad ? allocate(Float32Array, N * D, 'dEmbeddings') : null;
  const aRow = new Float64Array(N); // a_i = q_i/σ_i
  const pRow = new Float64Array(N); // p_i = q_i·z̃_i/(σ_i²·V)
  const Ce = new Float64Array(D);
  for (let i = 0; i < N; i++) {
    const t = labels[i]!;
    if (t === s.ignoreIndex) continue;
    const eo = i * D;
    let quad = 0;
    let lin = 0;
    let dLabel = 0;
    for (let p = 0; p < D; p++) {
      let acc = 0;
      for (let q = 0; q < D; q++) acc += C[p * D + q]! * E[eo + q]!;
      Ce[p] = acc;
      quad += E[eo + p]! * acc;
      lin += E[eo + p]! * c[p]!;
      dLabel += E[eo + p]! * (W[t * D + p]! - wMean[p]!);
    }
    if (bias !== null) dLabel += bias[t]! - bMean;
    const variance = quad + 2 * lin + varB;
    const sigma = variance > 0 ? Math.sqrt(variance) : 0;
    const z = sigma > 0 ? dLabel / sigma : 0; // all logits equal: z̃ = 0 by convention
    const term = zscoreLossTerm(z, s.a, s.b);
    rowLoss[i] = term.loss;
    zt[i] = z;
    if (!grad || sigma === 0) continue;
    const q = s.rowScale![i]! * term.dLogit;
    const ai = q / sigma;
    aRow[i] = ai;
    pRow[i] = (q * z) / (variance * V);
    for (let p = 0; p < D; p++) {
      dE![eo + p] = ai * (W[t * D + p]! - wMean[p]! - (z * (Ce[p]! + c[p]!)) / sigma);
    }
  }
  if (!grad) return { rowLoss, zt, dE: null, dW: null, dBias: null };

  // M = Σ p_i e_i e_iᵀ, m = Σ p_i e_i, P = Σ p_i, r = Σ a_i e_i, A = Σ a_i
  const M = new Float64Array(D * D);
  const m = new Float64Array(D);
  const r = new Float64Array(D);
  let P = 0;
  let A = 0;
  for (let i = 0; i < N; i++) {
    const pi = pRow[i]!;
    const ai = aRow[i]!;
    if (pi === 0 && ai === 0) continue;
    const eo = i * D;
    for (let p = 0; p < D; p++) {
      const ep = E[eo + p]!;
      m[p] += pi * ep;
      r[p] += ai * ep;
      const scaled = pi * ep;
      for (let q = 0; q < D; q++) M[p * D + q] += scaled * E[eo + q]!;
    }
    P += pi;
    A += ai;
  }
  const dW = new Float64Array(V * D);
  const dB = bias === null ? null : new Float64Array(V);
  for (let k = 0; k < V; k++) {
    for (let d = 0; d < D; d++) u[d] = W[k * D + d]! - wMean[d]!;
    const beta = bias === null ? 0 : bias[k]! - bMean;
    const ko = k * D;
    let mu = 0;
    for (let p = 0; p < D; p++) {
      let acc = 0;
      for (let q = 0; q < D; q++) acc += M[p * D + q]! * u[q]!;
      dW[ko + p] = -r[p]! / V - acc - m[p]! * beta;
      mu += m[p]! * u[p]!;
    }
    if (dB !== null) dB[k] = -A / V - mu - P * beta;
  }
  for (let i = 0; i < N; i++) {
    const ai = aRow[i]!;
    if (ai === 0) continue;
    const t = labels[i]!;
    for (let p = 0; p < D; p++) dW[t * D + p] += ai * E[i * D + p]!;
    if (dB !== null) dB[t] += ai;
  }
  return { rowLoss, zt, dE, dW: f32Copy(dW, 'dClassifier'), dBias: dB === null ? null : f32Copy(dB, 'dBias') };
}
