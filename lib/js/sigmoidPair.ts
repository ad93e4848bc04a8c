// The pairwise sigmoid loss (SigLIP, Zhai et al. 2023) on the reference backend: the N×M
// logits t·X·Yᵀ + b are visited a chunk of y rows at a time, so only an N × chunk block
// exists at once; the forward and the gradients come from the same block.

import { allocate, f32Copy } from '../alloc.js';
import { toF32, type Matrix } from '../tensor.js';
import { sigmoidPairTerm } from './pairMath.js';

/** Rows of y per chunk: the block held at once is N × PAIR_CHUNK_ROWS float64s. */
export const PAIR_CHUNK_ROWS = 64;

/** What every backend's kernel takes: y holds the global rows [yStart, yStart + M). */
export interface PairSettings {
  temperature: number;
  bias: number;
  yStart: number;
  /** Each pair's gradient dloss/du is multiplied by this (gradScale / N). */
  gradScale: number;
  computeGrad: boolean;
}

/** Sums over this call's pairs: Σ softplus (unscaled), and the scaled gradients. */
export interface PairOutput {
  lossSum: number;
  dTemperature: number;
  dBias: number;
  dX: Float32Array | null;
  dY: Float32Array | null;
}

export function sigmoidPairLossJs(x: Matrix, y: Matrix, s: PairSettings): PairOutput {
  const N = x.rows;
  const M = y.rows;
  const D = x.cols;
  const X = toF32(x);
  const Y = toF32(y);
  const dX = s.computeGrad ? allocate(Float64Array, N * D, 'dX accumulator') : null;
  const dY = s.computeGrad ? allocate(Float32Array, M * D, 'dY') : null;
  const block = allocate(Float64Array, N * Math.min(PAIR_CHUNK_ROWS, Math.max(M, 1)), 'pair block');
  const acc = new Float64Array(D);
  let lossSum = 0;
  let dT = 0;
  let dB = 0;
  for (let j0 = 0; j0 < M; j0 += PAIR_CHUNK_ROWS) {
    const nc = Math.min(PAIR_CHUNK_ROWS, M - j0);
    // block[i·nc + c] = g·dloss/du of pair (i, j0 + c)
    for (let i = 0; i < N; i++) {
      for (let c = 0; c < nc; c++) {
        let dot = 0;
        const xo = i * D;
        const yo = (j0 + c) * D;
        for (let d = 0; d < D; d++) dot += X[xo + d]! * Y[yo + d]!;
        const dotF = Math.fround(dot);
        const term = sigmoidPairTerm(s.temperature * dotF + s.bias, s.yStart + j0 + c === i);
        lossSum += term.loss;
        const g = s.gradScale * term.dLogit;
        dT += g * dotF;
        dB += g;
        block[i * nc + c] = g;
      }
    }
    if (dX === null || dY === null) continue;
    for (let i = 0; i < N; i++) {
      for (let c = 0; c < nc; c++) {
        const g = block[i * nc + c]! * s.temperature;
        if (g === 0) continue;
        const yo = (j0 + c) * D;
        for (let d = 0; d < D; d++) dX[i * D + d] += g * Y[yo + d]!;
      }
    }
    for (let c = 0; c < nc; c++) {
      acc.fill(0);
      for (let i = 0; i < N; i++) {
        const g = block[i * nc + c]! * s.temperature;
        if (g === 0) continue;
        for (let d = 0; d < D; d++) acc[d] += g * X[i * D + d]!;
      }
      dY.set(acc, (j0 + c) * D);
    }
  }
  return { lossSum, dTemperature: dT, dBias: dB, dX: dX === null ? null : f32Copy(dX, 'dX'), dY };
}
