// Gumbel-softmax (Jang et al. 2017) with counter-based noise: the same seed gives the
// same samples on every backend (see math.ts, philox4x32).

import { allocate, f32Copy } from '../alloc.js';
import { expMinusLse, gumbelFromUniform, lseOfBlock, philox4x32, uniformFromWord } from './math.js';
import type { RowwiseInput } from './rowwise.js';

const TWO_32 = 4294967296;

/** Gumbel noise for elements [0, count) of a tensor, seeded by an integer in [0, 2^53). */
export function gumbelNoise(seed: number, count: number): Float64Array {
  const noise = allocate(Float64Array, count, 'noise');
  const words = new Uint32Array(4);
  const k0 = seed % TWO_32;
  const k1 = Math.floor(seed / TWO_32);
  for (let e = 0; e < count; e += 4) {
    const q = e / 4;
    philox4x32(q % TWO_32, Math.floor(q / TWO_32), 0, 0, k0, k1, words);
    for (let w = 0; w < 4 && e + w < count; w++) noise[e + w] = gumbelFromUniform(uniformFromWord(words[w]!));
  }
  return noise;
}

/**
 * Soft samples y = softmax((x + g)/τ) as float64, row-major, formed as ((x − max) + g)/τ with the
 * row's largest finite x (cuda/math/philox.cuh, gumbelPerturbed): at |x| ≳ 1e16, x + g would
 * round g away even in float64 (ties at 1e30 would stay ties).
 */
function softSamples(inp: RowwiseInput, tau: number, seed: number): Float64Array {
  const { x, rows, cols } = inp;
  const y = gumbelNoise(seed, rows * cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let max = -Infinity;
    for (let j = 0; j < cols; j++) if (!(x[base + j]! <= max)) max = x[base + j]!; // NaN wins
    const shift = Number.isFinite(max) ? max : 0;
    for (let j = base; j < base + cols; j++) y[j] = (x[j]! - shift + y[j]!) / tau;
  }
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const { max, sum } = lseOfBlock(y, base, base + cols);
    const logSum = Math.log(sum);
    for (let j = 0; j < cols; j++) y[base + j] = expMinusLse(y[base + j]!, max, logSum);
  }
  return y;
}

export function gumbelSoftmax(inp: RowwiseInput, tau: number, hard: boolean, seed: number): Float32Array {
  const { rows, cols } = inp;
  const y = softSamples(inp, tau, seed);
  if (!hard) return f32Copy(y, 'the output');
  const out = allocate(Float32Array, rows * cols, 'the output');
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let best = 0;
    let nan = false;
    for (let j = 0; j < cols; j++) {
      const v = y[base + j]!;
      if (Number.isNaN(v)) nan = true;
      else if (v > y[base + best]!) best = j; // the first maximum wins ties
    }
    if (nan) out.fill(NaN, base, base + cols); // no argmax exists: say so rather than guess
    else out[base + best] = 1;
  }
  return out;
}

/** Straight-through: hard and soft samples share the soft gradient (1/τ)·y ⊙ (dy − Σ dy⊙y). */
export function gumbelSoftmaxBackward(inp: RowwiseInput, dy: Float32Array, tau: number, seed: number): Float32Array {
  const { rows, cols } = inp;
  const y = softSamples(inp, tau, seed);
  const out = allocate(Float32Array, rows * cols, 'the output');
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let dot = 0;
    for (let j = 0; j < cols; j++) dot += dy[base + j]! * y[base + j]!;
    for (let j = 0; j < cols; j++) out[base + j] = (y[base + j]! * (dy[base + j]! - dot)) / tau;
  }
  return out;
}
