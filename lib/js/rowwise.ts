// Row-wise normalizers on the reference backend: log-sum-exp, softmax and log-softmax
// (temperature, mask), StableMax and log-StableMax, and their vector-Jacobian products.
// Rows are reduced with the two-pass block scheme of math.ts; values are f32 in, f32 out,
// with float64 arithmetic in between.

import { allocate } from '../alloc.js';
import {
  expMinusLse, lseOfBlock, lseValue, minusLse, stablemaxDlogS, stablemaxDs, stablemaxLogS, stablemaxRowSum, stablemaxS,
  type LseState,
} from './math.js';

export interface RowwiseInput {
  x: Float32Array;
  rows: number;
  cols: number;
}

export interface SoftmaxOptions {
  invTemperature: number;
  /** 0 = masked; length rows·cols, or cols (shared by every row), or null. */
  mask: Uint8Array | null;
}

function maskOffset(mask: Uint8Array | null, row: number, cols: number): number {
  return mask !== null && mask.length !== cols ? row * cols : 0;
}

/** Scaled, masked row into `z` (masked → −inf); returns the row's log-sum-exp state. */
function loadRow(inp: RowwiseInput, row: number, o: SoftmaxOptions, z: Float64Array): LseState {
  const { x, cols } = inp;
  const base = row * cols;
  const mo = maskOffset(o.mask, row, cols);
  for (let j = 0; j < cols; j++) {
    z[j] = o.mask !== null && o.mask[mo + j] === 0 ? -Infinity : x[base + j]! * o.invTemperature;
  }
  return lseOfBlock(z, 0, cols);
}

export function logSumExp(inp: RowwiseInput, o: SoftmaxOptions): Float32Array {
  const out = allocate(Float32Array, inp.rows, 'the output');
  const z = allocate(Float64Array, inp.cols, 'z');
  for (let r = 0; r < inp.rows; r++) out[r] = lseValue(loadRow(inp, r, o, z));
  return out;
}

export function softmax(inp: RowwiseInput, o: SoftmaxOptions, log: boolean): Float32Array {
  const { rows, cols } = inp;
  const out = allocate(Float32Array, rows * cols, 'the output');
  const z = allocate(Float64Array, cols, 'z');
  for (let r = 0; r < rows; r++) {
    // outputs from (max, log Σ), never from a rounded lse; a fully masked or +inf row is NaN
    const { max, sum } = loadRow(inp, r, o, z);
    const logSum = Math.log(sum);
    const base = r * cols;
    if (log) for (let j = 0; j < cols; j++) out[base + j] = minusLse(z[j]!, max, logSum);
    else for (let j = 0; j < cols; j++) out[base + j] = expMinusLse(z[j]!, max, logSum);
  }
  return out;
}

/** dx = (1/T)·y ⊙ (dy − Σ dy⊙y) for softmax; dx = (1/T)·(dy − y·Σ dy) for log-softmax. */
export function softmaxBackward(inp: RowwiseInput, dy: Float32Array, o: SoftmaxOptions, log: boolean): Float32Array {
  const { rows, cols } = inp;
  const out = allocate(Float32Array, rows * cols, 'the output');
  const z = allocate(Float64Array, cols, 'z');
  const mo = (r: number) => maskOffset(o.mask, r, cols);
  for (let r = 0; r < rows; r++) {
    const { max, sum } = loadRow(inp, r, o, z);
    const logSum = Math.log(sum);
    const base = r * cols;
    if (max === Infinity || max === -Infinity) {
      out.fill(NaN, base, base + cols); // no finite distribution: NaN, as the forward
      continue;
    }
    let dot = 0;
    for (let j = 0; j < cols; j++) {
      const masked = o.mask !== null && o.mask[mo(r) + j] === 0;
      if (masked) continue; // a masked output is constant: its dy does not flow back
      dot += log ? dy[base + j]! : dy[base + j]! * expMinusLse(z[j]!, max, logSum);
    }
    for (let j = 0; j < cols; j++) {
      const y = expMinusLse(z[j]!, max, logSum);
      const masked = o.mask !== null && o.mask[mo(r) + j] === 0;
      out[base + j] = masked ? 0 : (log ? dy[base + j]! - y * dot : y * (dy[base + j]! - dot)) * o.invTemperature;
    }
  }
  return out;
}

/** Σ s(x) over a row, NaN where the row holds +inf or is all −inf (stablemaxRowSum). */
function stablemaxSumOfRow(x: Float32Array, base: number, cols: number): number {
  let sum = 0;
  let max = -Infinity;
  for (let j = 0; j < cols; j++) {
    sum += stablemaxS(x[base + j]!);
    max = Math.max(max, x[base + j]!);
  }
  return stablemaxRowSum(sum, max);
}

export function stablemax(inp: RowwiseInput, log: boolean): Float32Array {
  const { x, rows, cols } = inp;
  const out = allocate(Float32Array, rows * cols, 'the output');
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const sum = stablemaxSumOfRow(x, base, cols);
    const logSum = Math.log(sum);
    for (let j = 0; j < cols; j++) {
      const v = x[base + j]!;
      out[base + j] = log ? stablemaxLogS(v) - logSum : stablemaxS(v) / sum;
    }
  }
  return out;
}

/**
 * stablemax: dx_k = s'_k/S·(dy_k − Σ dy_j y_j);
 * log-stablemax: dx_k = dy_k·s'_k/s_k − s'_k/S·Σ dy_j.
 */
export function stablemaxBackward(inp: RowwiseInput, dy: Float32Array, log: boolean): Float32Array {
  const { x, rows, cols } = inp;
  const out = allocate(Float32Array, rows * cols, 'the output');
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    const sum = stablemaxSumOfRow(x, base, cols);
    let dot = 0;
    for (let j = 0; j < cols; j++) dot += log ? dy[base + j]! : (dy[base + j]! * stablemaxS(x[base + j]!)) / sum;
    for (let j = 0; j < cols; j++) {
      const v = x[base + j]!;
      const dsOverS = stablemaxDs(v) / sum;
      out[base + j] = log ? dy[base + j]! * stablemaxDlogS(v) - dsOverS * dot : dsOverS * (dy[base + j]! - dot);
    }
  }
  return out;
}
