// Sparse normalizers on the reference backend: sparsemax (Martins & Astudillo 2016) and
// entmax-1.5 (Peters et al. 2019), with exact sort-based thresholds, and their VJPs.

import { allocate } from '../alloc.js';
import type { RowwiseInput } from './rowwise.js';

export interface SparsemaxThreshold {
  tau: number;
  support: number;
  /** Σ_{supp} (z − τ)² = ‖p‖², for the sparsemax loss's Ω = τ + ½(1 + ‖p‖²). */
  sumSqP: number;
}

/**
 * Exact τ with Σ max(z_j − τ, 0) = 1 over the values in `v[0..n)` (sorted in place,
 * descending). Callers may pass only the values above any lower bound of τ.
 */
export function sparsemaxThreshold(v: Float64Array, n: number): SparsemaxThreshold {
  const sorted = v.subarray(0, n).sort().reverse();
  let cum = 0;
  let tau = sorted[0]! - 1;
  let support = 1;
  for (let k = 0; k < n; k++) {
    const zk = sorted[k]!;
    cum += zk;
    const t = (cum - 1) / (k + 1);
    if (zk > t) {
      tau = t;
      support = k + 1;
    } else break; // the support condition fails for every larger k once it fails
  }
  let sumSqP = 0;
  for (let k = 0; k < support; k++) sumSqP += (sorted[k]! - tau) * (sorted[k]! - tau);
  return { tau, support, sumSqP };
}

/** Loads a row relative to its max (huge logits keep their gaps) and returns the max. */
function loadShifted(x: Float32Array, base: number, cols: number, buf: Float64Array): number {
  let max = -Infinity;
  for (let j = 0; j < cols; j++) max = Math.max(max, x[base + j]!);
  for (let j = 0; j < cols; j++) buf[j] = x[base + j]! - max;
  return max;
}

/** τ of a row, relative to its max. */
function sparsemaxRowThreshold(x: Float32Array, base: number, cols: number, buf: Float64Array, sortBuf: Float64Array): number {
  loadShifted(x, base, cols, buf);
  sortBuf.set(buf);
  return sparsemaxThreshold(sortBuf, cols).tau;
}

/**
 * entmax-1.5 threshold for u = (z − max)/2: p_j = max(u_j − τ, 0)², Σ p = 1. For a support
 * of the k largest, τ solves k τ² − 2 τ Σu + Σu² − 1 = 0 (the smaller root); the support
 * is the largest k whose τ_k stays below u_(k).
 */
function entmaxThreshold(u: Float64Array, n: number, sortBuf: Float64Array): number {
  for (let j = 0; j < n; j++) sortBuf[j] = u[j]!;
  const sorted = sortBuf.subarray(0, n).sort().reverse();
  let cum = 0;
  let cumSq = 0;
  let tau = NaN;
  for (let k = 1; k <= n; k++) {
    const uk = sorted[k - 1]!;
    cum += uk;
    cumSq += uk * uk;
    const mean = cum / k;
    const delta = Math.max((1 - (cumSq / k - mean * mean) * k) / k, 0);
    const t = mean - Math.sqrt(delta);
    if (t <= uk) tau = t; // holds for a prefix of k: the support
    else break;
  }
  return tau;
}

/** τ of a row for u = (z − max)/2, left in `u`. */
function entmaxRowThreshold(x: Float32Array, base: number, cols: number, u: Float64Array, sortBuf: Float64Array): number {
  loadShifted(x, base, cols, u);
  for (let j = 0; j < cols; j++) u[j] = u[j]! / 2;
  return entmaxThreshold(u, cols, sortBuf);
}

type RowThreshold = typeof sparsemaxRowThreshold;

/**
 * A new [rows, cols] array whose row r is written by `writeRow(out, base, v, tau)`, where v holds
 * the row's values as `threshold` left them (shifted by the max, halved for entmax) and tau its τ.
 */
function byRow(
  inp: RowwiseInput,
  threshold: RowThreshold,
  writeRow: (out: Float32Array, base: number, v: Float64Array, tau: number) => void,
): Float32Array {
  const { x, rows, cols } = inp;
  const out = allocate(Float32Array, rows * cols, 'the output');
  const v = allocate(Float64Array, cols, 'v');
  const sortBuf = allocate(Float64Array, cols, 'sortBuf');
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    writeRow(out, base, v, threshold(x, base, cols, v, sortBuf));
  }
  return out;
}

export function sparsemax(inp: RowwiseInput): Float32Array {
  return byRow(inp, sparsemaxRowThreshold, (out, base, v, tau) => {
    for (let j = 0; j < inp.cols; j++) out[base + j] = Math.max(v[j]! - tau, 0);
  });
}

/** dx_k = [k ∈ supp]·(dy_k − mean over supp of dy). */
export function sparsemaxBackward(inp: RowwiseInput, dy: Float32Array): Float32Array {
  return byRow(inp, sparsemaxRowThreshold, (out, base, v, tau) => {
    if (Number.isNaN(tau)) {
      out.fill(NaN, base, base + inp.cols); // a row without a finite distribution (+inf, NaN, all −inf), as its forward
      return;
    }
    let sum = 0;
    let count = 0;
    for (let j = 0; j < inp.cols; j++) {
      if (v[j]! > tau) {
        sum += dy[base + j]!;
        count++;
      }
    }
    const mean = count > 0 ? sum / count : 0;
    for (let j = 0; j < inp.cols; j++) out[base + j] = v[j]! > tau ? dy[base + j]! - mean : 0;
  });
}

export function entmax15(inp: RowwiseInput): Float32Array {
  return byRow(inp, entmaxRowThreshold, (out, base, u, tau) => {
    for (let j = 0; j < inp.cols; j++) {
      const d = Math.max(u[j]! - tau, 0);
      out[base + j] = d * d;
    }
  });
}

/** dx_k = √y_k·dy_k − √y_k·Σ_j √y_j dy_j / Σ_j √y_j. */
export function entmax15Backward(inp: RowwiseInput, dy: Float32Array): Float32Array {
  return byRow(inp, entmaxRowThreshold, (out, base, u, tau) => {
    let sumRoot = 0;
    let dot = 0;
    for (let j = 0; j < inp.cols; j++) {
      const root = Math.max(u[j]! - tau, 0); // √y_j
      sumRoot += root;
      dot += root * dy[base + j]!;
    }
    const q = dot / sumRoot;
    for (let j = 0; j < inp.cols; j++) {
      const root = Math.max(u[j]! - tau, 0);
      out[base + j] = root * (dy[base + j]! - q);
    }
  });
}
