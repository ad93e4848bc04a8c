// The test matrices the backends share: every loss option alone and in combination, and the
// row-wise ops with their shapes. test/losses.test.ts and test/rowwise.test.ts run them on the
// reference backend (with finite differences); test/native/cpu.test.ts runs them on cpu.
import * as lib from '../lib/index.js';
import type { CrossEntropyOptions, Tensor } from '../lib/index.js';
import * as ref from './reference64.js';

export type Case = [name: string, options: CrossEntropyOptions];

export const V_ODD = 37;

/** Class weights of length V: uneven, all positive. */
export const classWeightsFor = (V: number) => Float32Array.from({ length: V }, (_, j) => 0.25 + ((j * 7) % 11) / 8);
export const weights = classWeightsFor(V_ODD);

/**
 * Every option alone, then in combination, for all three reductions and normalizers, for a
 * problem of N rows and V classes (class weights of length V, per-row gradScale of length N).
 */
export function casesFor(N: number, V: number): Case[] {
  const w = classWeightsFor(V);
  return [
    ['plain mean', {}],
    ['sum', { reduction: 'sum' }],
    ['none', { reduction: 'none' }],
    ['none with per-row gradScale', { reduction: 'none', gradScale: Float32Array.from({ length: N }, (_, i) => (i % 3) - 0.5) }],
    ['mean with gradScale', { gradScale: 2.5 }],
    ['custom ignoreIndex', { ignoreIndex: 3 }],
    ['label smoothing', { labelSmoothing: 0.1 }],
    ['class weights', { classWeights: w }],
    ['class weights + smoothing', { classWeights: w, labelSmoothing: 0.2 }],
    ['z-loss', { zLoss: 1e-2 }],
    ['softcap', { softcap: 2.5 }],
    ['temperature', { temperature: 0.7 }],
    ['softcap + temperature', { softcap: 3, temperature: 1.7 }],
    ['focal γ=2', { focalGamma: 2 }],
    ['focal γ=0.5', { focalGamma: 0.5 }],
    ['Poly-1', { polyEpsilon: 1 }],
    ['Poly-1 negative ε', { polyEpsilon: -0.5 }],
    ['squentropy', { squentropy: true }],
    ['stablemax', { normalizer: 'stablemax' }],
    ['stablemax + smoothing + weights', { normalizer: 'stablemax', labelSmoothing: 0.15, classWeights: w }],
    ['stablemax + focal + Poly-1', { normalizer: 'stablemax', focalGamma: 1.5, polyEpsilon: 0.3 }],
    ['sparsemax', { normalizer: 'sparsemax' }],
    ['sparsemax + smoothing', { normalizer: 'sparsemax', labelSmoothing: 0.1 }],
    ['sparsemax + focal + weights', { normalizer: 'sparsemax', focalGamma: 2, classWeights: w }],
    ['everything, sum', {
      reduction: 'sum', labelSmoothing: 0.05, classWeights: w, zLoss: 1e-3, softcap: 4, temperature: 1.3,
      focalGamma: 1, polyEpsilon: 0.5, squentropy: true,
    }],
    ['everything, mean, stablemax', {
      normalizer: 'stablemax', labelSmoothing: 0.05, classWeights: w, zLoss: 1e-3, softcap: 4,
      temperature: 0.8, focalGamma: 0.7, polyEpsilon: 0.2, squentropy: true, gradScale: 0.5,
    }],
  ];
}

/** The matrix for 9 rows of V_ODD classes. */
export const CASES: Case[] = casesFor(9, V_ODD);

/** Random labels with one ignored row (label −100, or the custom ignoreIndex). */
export function labelsFor(rng: () => number, N: number, V: number, o: CrossEntropyOptions): Int32Array {
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[Math.min(1, N - 1)] = o.ignoreIndex ?? -100;
  return labels;
}

/**
 * The linearCrossEntropy problem every backend's option matrix runs: E [9, 5], W [V_ODD, 5],
 * a bias when asked, labels for the case (f32-exact rows; the same draws on every suite).
 */
export function linearCeProblem(options: CrossEntropyOptions, withBias: boolean) {
  const rng = ref.mulberry32(99);
  const [N, D, V] = [9, 5, V_ODD];
  const E = ref.randomRows(rng, N, D, 1);
  const W = ref.randomRows(rng, V, D, 1);
  const bias = withBias ? Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!) : undefined;
  const labels = labelsFor(rng, N, V, options);
  return { N, D, V, E, W, bias, labels };
}

/** Rows of 4 logits that stress a loss: huge, overflowing, tied, and −inf entries, with their labels. */
export const EDGE_ROWS: [name: string, rows: number[][], labels: number[]][] = [
  ['logits of ±1e4', [[1e4, -1e4, 0, 1e4 - 1], [-1e4, -1e4, -1e4, -1e4]], [3, 0]],
  ['logits of ±3e38', [[3e38, -3e38, 0, 1], [-3e38, 2e38, -3e38, 0]], [1, 1]],
  ['equal rows', [[2, 2, 2, 2], [2, 2, 2, 2]], [0, 3]],
  ['-inf logits off the label', [[-Infinity, 0, 1, -Infinity], [0, 0, -Infinity, 0]], [1, 3]],
];

/** A small linearCrossEntropy problem made from a formula, for code in another process to share. */
export function addressLimitProblem() {
  const [N, D, V] = [48, 24, 700];
  const E = Float32Array.from({ length: N * D }, (_, i) => Math.fround(Math.sin(i * 0.37)));
  const W = Float32Array.from({ length: V * D }, (_, i) => Math.fround(0.5 * Math.cos(i * 0.11)));
  const labels = Int32Array.from({ length: N }, (_, i) => (i * 37) % V);
  return { N, D, V, E, W, labels };
}

// ---------------------------------------------------------------- row-wise ops

export const SHAPES: [number, number][] = [[1, 1], [1, 2], [2, 1], [3, 7], [5, 33], [2, 300]];

export type Forward = (x: Tensor) => Tensor;
export type Backward = (x: Tensor, dy: Tensor) => Tensor;
export type RefForward = (rows: ref.Rows) => number[][];
export type RefBackward = (x: ref.Rows, dy: ref.Rows) => number[][];

export const OPS: [string, Forward, Backward, RefForward, RefBackward][] = [
  ['softmax', (x) => lib.softmax(x), (x, dy) => lib.softmaxBackward(x, dy), ref.softmax, ref.softmaxBackward],
  ['logSoftmax', (x) => lib.logSoftmax(x), (x, dy) => lib.logSoftmaxBackward(x, dy), ref.logSoftmax, ref.logSoftmaxBackward],
  ['stablemax', lib.stablemax, lib.stablemaxBackward, ref.stablemax, ref.stablemaxBackward],
  ['logStablemax', lib.logStablemax, lib.logStablemaxBackward, ref.logStablemax, ref.logStablemaxBackward],
  ['sparsemax', lib.sparsemax, lib.sparsemaxBackward, ref.sparsemax, ref.sparsemaxBackward],
  ['entmax15', lib.entmax15, lib.entmax15Backward, ref.entmax15, ref.entmax15Backward],
];

