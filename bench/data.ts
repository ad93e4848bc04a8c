// Deterministic benchmark inputs: every worker process regenerates the same E, W and labels
// from (N, D, V, seed), so cutloss and tfjs see bit-identical data without shipping arrays
// between processes.

import { mulberry32 } from '../lib/random.js';

/** Fills `out` with N(0, std²) draws (Box–Muller, both outputs used). */
function fillNormal(out: Float32Array, std: number, next: () => number): Float32Array {
  let i = 0;
  for (; i + 1 < out.length; i += 2) {
    const u = 1 - next(); // (0, 1]
    const v = next();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  if (i < out.length) out[i] = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()) * std;
  return out;
}

export interface Inputs {
  N: number;
  D: number;
  V: number;
  /** [N, D], entries N(0, 1). */
  E: Float32Array;
  /** [V, D], entries N(0, 0.05²): logits E·Wᵀ then have std ≈ 0.05·√D (≈ 1.1 at D = 512). */
  W: Float32Array;
  /** [N], uniform in [0, V). */
  labels: Int32Array;
}

export const E_STD = 1;
export const W_STD = 0.05;

export function makeInputs(N: number, D: number, V: number, seed: number): Inputs {
  const next = mulberry32(seed);
  const E = fillNormal(new Float32Array(N * D), E_STD, next);
  const W = fillNormal(new Float32Array(V * D), W_STD, next);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) labels[i] = Math.floor(next() * V);
  return { N, D, V, E, W, labels };
}

/**
 * Flat indices of gradient entries that both contestants report, for the agreement check:
 * dE entries at random positions; dW entries in the rows of the first labels (where the
 * −1/N target term lands, the largest entries) and at random positions.
 */
export function sampleIndices(inp: Inputs, seed: number, count = 16): { dE: number[]; dW: number[] } {
  const next = mulberry32(seed ^ 0x5bd1e995);
  const { N, D, V, labels } = inp;
  const dE: number[] = [];
  const dW: number[] = [];
  for (let k = 0; k < count; k++) dE.push(Math.floor(next() * N * D));
  for (let k = 0; k < count / 2; k++) dW.push(labels[k % N]! * D + Math.floor(next() * D));
  for (let k = 0; k < count / 2; k++) dW.push(Math.floor(next() * V * D));
  return { dE, dW };
}
