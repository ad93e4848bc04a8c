// Every CUDA kernel run on the CPU under the SIMT emulator, in all three fiber orders, against
// the JS backend (the executable specification) and the float64 re-computation of
// test/reference64.ts: the row-wise ops forward and backward (temperature, masks, Gumbel
// seeds), and crossEntropy with every option, reduction and normalizer, on odd shapes (V = 1,
// 2, 37, and V = 1100: longer than a 512-thread block and not a multiple of it), f32 and bf16,
// with edge values. A kernel whose result depends on the fiber order has a race: results must
// be bit-identical across orders. Tolerances per DESIGN.md "Numerics": fp32 ~1e-5, bf16 ~1e-2.
//
// Two ways in: the launchers called directly through test/kernels/kernel_runner.cc, so each
// kernel is tested exactly at the contract of cuda/kernels.h (the host-side reduction of the
// loss between its two kernels is written out here from README "Losses"); and the public API
// on the `cuda-emu` backend, the addon running the same kernels, with its fiber order set by
// setEmulatorOrder.
import { CASES, V_ODD, weights, type Case } from '../cases.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { jsBackend } from '../../lib/js/index.js';
import { setEmulatorOrder } from '../../lib/native.js';
import { resolveLossOptions, type CrossEntropyOptions } from '../../lib/options.js';
import type { Matrix } from '../../lib/tensor.js';
import { LOSS_TOL, expectClose, flat, lossList, tolerance as dtypeTolerance } from '../helpers.js';
import * as ref from '../reference64.js';
import {
  ORDERS, asRows, blobBytes, blobValues, buildRunner, matrix, runInAllOrders, runKernels, sameBits, type FiberOrder,
  type KernelRequest, type KernelResponse,
} from './kernel-runner.js';

type Dtype = 'f32' | 'bf16';
const exe = buildRunner();

// ---------------------------------------------------------------- inputs

const asF32 = (m: Matrix) => Float32Array.from(flat(asRows(m)));

// dy of the row-wise cases is drawn at unit scale; the losses' upstream gradient is 1/N or 1
const tolerance = (dtype: Dtype, backward: boolean, against: 'reference' | 'rounded' = 'rounded') =>
  dtypeTolerance(dtype, backward ? 'grad' : 'value', { against });

// ---------------------------------------------------------------- row-wise ops

interface RowOp {
  name: string;
  kernel: string;
  backwardKernel: string;
  keys: Record<string, string | number | boolean>;
  js(x: Matrix): Float32Array;
  jsBackward(x: Matrix, dy: Float32Array): Float32Array;
  ref?(x: ref.Rows): number[][];
  refBackward?(x: ref.Rows, dy: ref.Rows): number[][];
}

const noSoftmaxOptions = { invTemperature: 1, mask: null };
const ROW_OPS: RowOp[] = [
  { name: 'softmax', kernel: 'softmax', backwardKernel: 'softmaxBackward', keys: { log: false, invTemperature: 1 },
    js: (x) => jsBackend.softmax(x, noSoftmaxOptions, false), jsBackward: (x, dy) => jsBackend.softmaxBackward(x, dy, noSoftmaxOptions, false),
    ref: ref.softmax, refBackward: ref.softmaxBackward },
  { name: 'logSoftmax', kernel: 'softmax', backwardKernel: 'softmaxBackward', keys: { log: true, invTemperature: 1 },
    js: (x) => jsBackend.softmax(x, noSoftmaxOptions, true), jsBackward: (x, dy) => jsBackend.softmaxBackward(x, dy, noSoftmaxOptions, true),
    ref: ref.logSoftmax, refBackward: ref.logSoftmaxBackward },
  { name: 'stablemax', kernel: 'stablemax', backwardKernel: 'stablemaxBackward', keys: { log: false },
    js: (x) => jsBackend.stablemax(x, false), jsBackward: (x, dy) => jsBackend.stablemaxBackward(x, dy, false),
    ref: ref.stablemax, refBackward: ref.stablemaxBackward },
  { name: 'logStablemax', kernel: 'stablemax', backwardKernel: 'stablemaxBackward', keys: { log: true },
    js: (x) => jsBackend.stablemax(x, true), jsBackward: (x, dy) => jsBackend.stablemaxBackward(x, dy, true),
    ref: ref.logStablemax, refBackward: ref.logStablemaxBackward },
  { name: 'sparsemax', kernel: 'sparsemax', backwardKernel: 'sparsemaxBackward', keys: {},
    js: (x) => jsBackend.sparsemax(x), jsBackward: (x, dy) => jsBackend.sparsemaxBackward(x, dy),
    ref: ref.sparsemax, refBackward: ref.sparsemaxBackward },
  { name: 'entmax15', kernel: 'entmax15', backwardKernel: 'entmax15Backward', keys: {},
    js: (x) => jsBackend.entmax15(x), jsBackward: (x, dy) => jsBackend.entmax15Backward(x, dy),
    ref: ref.entmax15, refBackward: ref.entmax15Backward },
];

/** [rows, cols]: 1 and 2 columns, odd widths, and rows longer than a block (512) and not a multiple of it. */
const SHAPES: [number, number][] = [[1, 1], [1, 2], [2, 1], [7, 37], [3, 33], [2, 600], [2, 1100]];
const REFERENCE_MAX_COLS = 64; // reference64's VJPs cost O(cols²) per row: wider rows use the JS backend only

function rowRequests(op: RowOp, x: Matrix, dy: Matrix, extraKeys: Record<string, string | number | boolean> = {},
  extraBlobs: KernelRequest['blobs'] = {}): Omit<KernelRequest, 'order'>[] {
  const common = { rows: x.rows, cols: x.cols, xDtype: x.dtype, dyDtype: dy.dtype, outDtype: x.dtype, ...op.keys, ...extraKeys };
  return [
    { op: op.kernel, keys: common, blobs: { x: x.data, ...extraBlobs } },
    { op: op.backwardKernel, keys: common, blobs: { x: x.data, dy: dy.data, ...extraBlobs } },
  ];
}

describe('row-wise kernels under the emulator match the JS backend and the float64 reference', () => {
  interface Case {
    label: string;
    op: RowOp;
    x: Matrix;
    dy: Matrix;
  }
  const cases: Case[] = [];
  for (const op of ROW_OPS) {
    for (const [rows, cols] of SHAPES) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const rng = ref.mulberry32(rows * 1000 + cols);
        const x = matrix(ref.randomRows(rng, rows, cols, 3), dtype);
        const dy = matrix(ref.randomRows(rng, rows, cols, 1), dtype);
        cases.push({ label: `${op.name} [${rows}, ${cols}] ${dtype}`, op, x, dy });
      }
    }
  }
  let responses: KernelResponse[] | null = null;
  const results = () => (responses ??= runInAllOrders(exe, cases.flatMap((c) => rowRequests(c.op, c.x, c.dy))));

  cases.forEach((c, i) => {
    it(c.label, () => {
      const [fwd, bwd] = [results()[2 * i]!, results()[2 * i + 1]!];
      const y = blobValues(fwd, 'y', c.x.dtype);
      const dx = blobValues(bwd, 'dx', c.x.dtype);
      const dyF32 = asF32(c.dy);
      // log-space outputs of one-column rows are 0 up to the rounding of log S (a few 2^-24)
      const logAtol = c.op.keys.log === true ? { atol: 2 ** -20 } : {};
      const tol = (backward: boolean, against: 'reference' | 'rounded') =>
        ({ ...tolerance(c.x.dtype, backward, against), ...(backward ? {} : logAtol), cols: c.x.cols });
      expectClose(y, c.op.js(c.x), { ...tol(false, 'rounded'), label: 'y vs js' });
      expectClose(dx, c.op.jsBackward(c.x, dyF32), { ...tol(true, 'rounded'), label: 'dx vs js' });
      if (c.x.cols <= REFERENCE_MAX_COLS) {
        expectClose(y, c.op.ref!(asRows(c.x)), { ...tol(false, 'reference'), label: 'y vs reference' });
        expectClose(dx, c.op.refBackward!(asRows(c.x), asRows(c.dy)), { ...tol(true, 'reference'), label: 'dx vs reference' });
      }
    });
  });

  it('edge values: ±1e4, ±3e38, equal entries, NaN, ±inf, fully −inf rows', () => {
    const inf = Infinity;
    const X = [
      [1e4, -1e4, 0, 1e4 - 2], [3e38, -3e38, 0, 1], [0.5, 0.5, 0.5, 0.5], [NaN, 1, 2, 0],
      [-inf, 0, 1, -inf], [inf, 0, 1, 2], [-inf, -inf, -inf, -inf], [1e-30, -1e-30, 0, 3e38],
    ];
    const x = matrix(X, 'f32');
    const dy = matrix(X.map(() => [0.3, -1, 2, 0.5]), 'f32');
    const out = runInAllOrders(exe, ROW_OPS.flatMap((op) => rowRequests(op, x, dy)));
    ROW_OPS.forEach((op, k) => {
      const y = blobValues(out[2 * k]!, 'y');
      const dx = blobValues(out[2 * k + 1]!, 'dx');
      // NaN and ±inf must sit exactly where the JS backend has them; finite values within fp32 rounding
      expectClose(y, op.js(x), { rtol: 1e-5, atol: 1e-7, label: `${op.name} y` });
      expectClose(dx, op.jsBackward(x, asF32(dy)), { rtol: 1e-5, atol: 1e-7, label: `${op.name} dx` });
    });
  });

  it('logSumExp, temperature, per-row and shared masks, a fully masked row', () => {
    const rng = ref.mulberry32(77);
    const [rows, cols] = [4, 11];
    const x = matrix(ref.randomRows(rng, rows, cols, 2), 'f32');
    const dy = matrix(ref.randomRows(rng, rows, cols, 1), 'f32');
    const perRow = Uint8Array.from({ length: rows * cols }, (_, i) => ((i * 5) % 7 === 0 ? 0 : 1));
    perRow.fill(0, 2 * cols, 3 * cols);
    const shared = Uint8Array.from({ length: cols }, (_, j) => (j % 3 === 1 ? 0 : 1));
    const settings: [string, number, Uint8Array | null][] = [
      ['temperature 0.5', 0.5, null], ['temperature 3', 3, null], ['per-row mask', 1, perRow], ['shared mask, T = 1.7', 1.7, shared],
    ];
    const requests: Omit<KernelRequest, 'order'>[] = [];
    for (const [, T, mask] of settings) {
      const keys = { rows, cols, xDtype: 'f32', dyDtype: 'f32', outDtype: 'f32', invTemperature: 1 / T, maskShared: mask === shared };
      const blobs: KernelRequest['blobs'] = mask === null ? { x: x.data } : { x: x.data, mask };
      requests.push({ op: 'logSumExp', keys, blobs });
      for (const log of [false, true]) {
        requests.push({ op: 'softmax', keys: { ...keys, log }, blobs });
        requests.push({ op: 'softmaxBackward', keys: { ...keys, log }, blobs: { ...blobs, dy: dy.data } });
      }
    }
    const out = runInAllOrders(exe, requests);
    settings.forEach(([name, T, mask], s) => {
      const o = { invTemperature: 1 / T, mask };
      const r = { temperature: T, mask: mask ?? undefined };
      const [lse, sm, smB, lsm, lsmB] = out.slice(5 * s, 5 * s + 5) as KernelResponse[];
      const X = asRows(x);
      const DY = asRows(dy);
      expectClose(blobValues(lse!, 'lse'), ref.logSumExp(X, r), { rtol: 1e-6, label: `${name} lse` });
      expectClose(blobValues(lse!, 'lse'), jsBackend.logSumExp(x, o), { rtol: 1e-6, label: `${name} lse vs js` });
      expectClose(blobValues(sm!, 'y'), ref.softmax(X, r), { rtol: 1e-5, label: `${name} softmax` });
      expectClose(blobValues(smB!, 'dx'), ref.softmaxBackward(X, DY, r), { rtol: 1e-5, label: `${name} softmax dx` });
      expectClose(blobValues(lsm!, 'y'), ref.logSoftmax(X, r), { rtol: 1e-5, label: `${name} logSoftmax` });
      expectClose(blobValues(lsmB!, 'dx'), ref.logSoftmaxBackward(X, DY, r), { rtol: 1e-5, label: `${name} logSoftmax dx` });
      for (const [resp, name2, want] of [
        [sm!, 'softmax', jsBackend.softmax(x, o, false)], [lsm!, 'logSoftmax', jsBackend.softmax(x, o, true)],
      ] as const) {
        expectClose(blobValues(resp, 'y'), want, { rtol: 1e-5, label: `${name} ${name2} vs js` });
      }
      if (mask === perRow) {
        expect(blobValues(lse!, 'lse')[2]).toBe(-Infinity);
        expect(Array.from(blobValues(sm!, 'y').subarray(2 * cols, 3 * cols)).every(Number.isNaN)).toBe(true);
        expect(Array.from(blobValues(smB!, 'dx').subarray(2 * cols, 3 * cols)).every(Number.isNaN)).toBe(true);
      }
    });
  });

  it('gumbelSoftmax: the same Philox noise as the JS backend for every seed; hard = one-hot argmax; straight-through backward', () => {
    const seeds = [0, 1, 2 ** 32 + 5, 2 ** 53 - 1];
    const shapes: [number, number][] = [[6, 13], [2, 1100], [1, 1]];
    const requests: Omit<KernelRequest, 'order'>[] = [];
    const expected: [string, Float32Array, 'f32' | 'bf16', string, boolean, number][] = [];
    for (const [rows, cols] of shapes) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const rng = ref.mulberry32(rows + cols);
        const x = matrix(ref.randomRows(rng, rows, cols, 1), dtype);
        const dy = matrix(ref.randomRows(rng, rows, cols, 1), dtype);
        for (const seed of seeds) {
          for (const tau of [0.5, 1, 2]) {
            const keys = { rows, cols, xDtype: dtype, dyDtype: dtype, outDtype: dtype, tau, seed };
            const label = `[${rows}, ${cols}] ${dtype} seed ${seed} tau ${tau}`;
            for (const hard of [false, true]) {
              requests.push({ op: 'gumbelSoftmax', keys: { ...keys, hard }, blobs: { x: x.data } });
              expected.push([`${label}${hard ? ' hard' : ''}`, jsBackend.gumbelSoftmax(x, tau, hard, seed), dtype, 'y', hard, cols]);
            }
            requests.push({ op: 'gumbelSoftmaxBackward', keys, blobs: { x: x.data, dy: dy.data } });
            expected.push([`${label} backward`, jsBackend.gumbelSoftmaxBackward(x, asF32(dy), tau, seed), dtype, 'dx', false, cols]);
          }
        }
      }
    }
    const out = runInAllOrders(exe, requests);
    expected.forEach(([label, want, dtype, blob, hard, cols], i) => {
      const got = blobValues(out[i]!, blob, dtype);
      if (hard) expect(Array.from(got), label).toEqual(Array.from(want)); // one-hot: exactly the JS argmax
      else expectClose(got, want, { ...tolerance(dtype, blob === 'dx'), cols, label });
    });
    // the 1×1 case and the NaN row of the edge test in the JS suite: a NaN row is NaN, hard or soft
    const nanRow = matrix([[NaN, 1, 2], [0, 1, 2]], 'f32');
    const nan = runInAllOrders(exe, [false, true].map((hard) => ({
      op: 'gumbelSoftmax', keys: { rows: 2, cols: 3, xDtype: 'f32', outDtype: 'f32', tau: 1, seed: 3, hard }, blobs: { x: nanRow.data },
    })));
    for (const r of nan) {
      const y = blobValues(r, 'y');
      expect(Array.from(y.subarray(0, 3)).every(Number.isNaN)).toBe(true);
      expect(Array.from(y.subarray(3)).every(Number.isFinite)).toBe(true);
    }
  });

  it('sparse thresholds are exact on rows built to stress them (ties, long supports, one-element support)', () => {
    const rows = [
      Array.from({ length: 1100 }, () => 1.5), // all equal: support of 1100
      Array.from({ length: 1100 }, (_, j) => j / 1100), // evenly spaced: many Michelot / bisection steps
      Array.from({ length: 1100 }, (_, j) => (j === 517 ? 10 : -j / 997)), // one dominant element
      Array.from({ length: 1100 }, (_, j) => ((j * 37) % 101) / 50 - (j % 2) * 1e-3), // many near-ties
    ];
    const x = matrix(rows, 'f32');
    const dy = matrix(rows.map((r) => r.map((_, j) => Math.sin(j))), 'f32');
    const ops = ROW_OPS.filter((o) => o.name === 'sparsemax' || o.name === 'entmax15');
    const out = runInAllOrders(exe, ops.flatMap((op) => rowRequests(op, x, dy)));
    ops.forEach((op, k) => {
      const y = blobValues(out[2 * k]!, 'y');
      expectClose(y, op.js(x), { rtol: 1e-5, atol: 1e-7, label: `${op.name} y` });
      expectClose(blobValues(out[2 * k + 1]!, 'dx'), op.jsBackward(x, asF32(dy)), { rtol: 1e-5, atol: 1e-7, label: `${op.name} dx` });
      for (let r = 0; r < rows.length; r++) {
        const sum = y.subarray(r * 1100, (r + 1) * 1100).reduce((s, v) => s + v, 0);
        expect(Math.abs(sum - 1), `${op.name} row ${r} sums to ${sum}`).toBeLessThan(1e-5);
      }
    });
  });
});

// ---------------------------------------------------------------- cross-entropy

// The option matrix shared with test/losses.test.ts (test/cases.ts).

interface LossRun {
  loss: number | Float32Array;
  lse: Float32Array;
  dLogits: Float32Array | null;
}

function lossKeys(x: Matrix, options: CrossEntropyOptions) {
  const o = resolveLossOptions(options, x.rows, x.cols, x.dtype, false);
  let sumWeights = x.cols;
  if (o.classWeights !== null) sumWeights = o.classWeights.reduce((s, w) => s + w, 0);
  const keys = {
    rows: x.rows, cols: x.cols, xDtype: x.dtype, outDtype: x.dtype, normalizer: o.normalizer, smoothing: o.smoothing,
    focalGamma: o.focalGamma, polyEpsilon: o.polyEpsilon, zLoss: o.zLoss, squentropy: o.squentropy, softcap: o.softcap,
    invTemperature: o.invTemperature, ignoreIndex: o.ignoreIndex, sumWeights,
  };
  return { o, keys };
}

/**
 * crossEntropy through the two loss kernels, with the host's part in between: the reduction
 * of README "Losses" over the per-row terms, and each row's scales s_W, s_U for the backward.
 */
function crossEntropyOnKernels(cases: [Matrix, Int32Array, CrossEntropyOptions][]): LossRun[] {
  const setups = cases.map(([x, labels, options]) => ({ x, labels, ...lossKeys(x, options) }));
  const weightBlob = (o: ReturnType<typeof lossKeys>['o']): KernelRequest['blobs'] =>
    o.classWeights === null ? {} : { classWeights: o.classWeights };
  const forward = runInAllOrders(exe, setups.map(({ x, labels, o, keys }) => ({
    op: 'crossEntropyForward', keys, blobs: { x: x.data, labels, ...weightBlob(o) },
  })));
  const reduced = setups.map(({ x, labels, o }, i) => {
    const weighted = blobValues(forward[i]!, 'weighted');
    const unweighted = blobValues(forward[i]!, 'unweighted');
    const N = x.rows;
    let nValid = 0;
    let sumTargetWeights = 0;
    let totalW = 0;
    let totalU = 0;
    for (let r = 0; r < N; r++) {
      if (labels[r] === o.ignoreIndex) continue;
      nValid++;
      sumTargetWeights += o.classWeights === null ? 1 : o.classWeights[labels[r]!]!;
      totalW += weighted[r]!;
      totalU += unweighted[r]!;
    }
    const sW = new Float32Array(N);
    const sU = new Float32Array(N);
    for (let r = 0; r < N; r++) {
      if (labels[r] === o.ignoreIndex) continue;
      const g = typeof o.gradScale === 'number' ? o.gradScale : o.gradScale[r]!;
      sW[r] = o.reduction === 'mean' ? (sumTargetWeights === 0 ? 0 : g / sumTargetWeights) : g;
      sU[r] = o.reduction === 'mean' ? g / nValid : g;
    }
    let loss: number | Float32Array;
    if (o.reduction === 'none') loss = Float32Array.from(weighted, (w, r) => w + unweighted[r]!);
    else if (o.reduction === 'sum') loss = totalW + totalU;
    else loss = nValid === 0 ? NaN : totalW / sumTargetWeights + totalU / nValid;
    return { loss, sW, sU, nValid };
  });
  const withGrad = setups.map((s, i) => s.o.computeGrad && reduced[i]!.nValid > 0);
  const backwardRequests = setups.flatMap(({ x, labels, o, keys }, i) => (withGrad[i] ? [{
    op: 'crossEntropyBackward', keys,
    blobs: {
      x: x.data, labels, rowStats: blobValues(forward[i]!, 'rowStats'), scaleWeighted: reduced[i]!.sW,
      scaleUnweighted: reduced[i]!.sU, ...weightBlob(o),
    },
  }] : []));
  const backward = runInAllOrders(exe, backwardRequests);
  let b = 0;
  return setups.map(({ x, o }, i) => {
    let dLogits: Float32Array | null = null;
    if (o.computeGrad) dLogits = withGrad[i] ? blobValues(backward[b++]!, 'dx', x.dtype) : new Float32Array(x.rows * x.cols);
    return { loss: reduced[i]!.loss, lse: blobValues(forward[i]!, 'lse'), dLogits };
  });
}


/** Random labels with one ignored row (label −100, or the custom ignoreIndex), as test/losses.test.ts. */
function labelsFor(rng: () => number, N: number, V: number, o: CrossEntropyOptions): Int32Array {
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[Math.min(1, N - 1)] = o.ignoreIndex ?? -100;
  return labels;
}

describe('crossEntropy kernels under the emulator match the float64 reference and the JS backend', () => {
  const runs: { name: string; dtype: Dtype; x: Matrix; labels: Int32Array; options: CrossEntropyOptions }[] = [];
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const [name, options] of CASES) {
      const rng = ref.mulberry32(17);
      const N = 9;
      const x = matrix(ref.randomRows(rng, N, V_ODD, 2.5), dtype);
      runs.push({ name, dtype, x, labels: labelsFor(rng, N, V_ODD, options), options });
    }
  }
  let results: LossRun[] | null = null;
  const got = () => (results ??= crossEntropyOnKernels(runs.map((r) => [r.x, r.labels, r.options])));

  runs.forEach((r, i) => {
    it(`${r.name}, ${r.dtype}`, () => {
      const g = got()[i]!;
      const want = ref.crossEntropy(asRows(r.x), r.labels, r.options as ref.CeOptions);
      // losses and lse are fp32 sums of fp32 row terms whatever the input dtype
      expectClose(lossList(g.loss), lossList(want.loss), { ...LOSS_TOL, label: 'loss' });
      expectClose(g.lse, want.lse, { ...LOSS_TOL, label: 'lse' });
      expectClose(g.dLogits!, want.dLogits, { ...tolerance(r.dtype, true, 'reference'), cols: r.x.cols, label: 'dLogits' });
      const js = jsBackend.crossEntropy(r.x, r.labels, resolveLossOptions(r.options, r.x.rows, r.x.cols, r.x.dtype, false));
      expectClose(lossList(g.loss), lossList(js.loss), { ...LOSS_TOL, label: 'loss vs js' });
      expectClose(g.dLogits!, js.dLogits!, { ...tolerance(r.dtype, true), cols: r.x.cols, label: 'dLogits vs js' });
    });
  });

  it('V = 1, V = 2, and V = 1100 (a row longer than the block), every normalizer, f32 and bf16', () => {
    const cases: [Matrix, Int32Array, CrossEntropyOptions][] = [];
    for (const dtype of ['f32', 'bf16'] as const) {
      for (const [N, V] of [[5, 1], [6, 2], [3, 1100]] as const) {
        for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
          for (const extra of [{}, { labelSmoothing: 0.1, zLoss: 1e-3, squentropy: true, focalGamma: 1.5, polyEpsilon: 0.25 }]) {
            const rng = ref.mulberry32(N * V);
            const x = matrix(ref.randomRows(rng, N, V, 3), dtype);
            cases.push([x, Int32Array.from(ref.randomLabels(rng, N, V)), { normalizer, ...extra }]);
          }
        }
      }
    }
    const out = crossEntropyOnKernels(cases);
    cases.forEach(([x, labels, options], i) => {
      const label = `[${x.rows}, ${x.cols}] ${x.dtype} ${JSON.stringify(options)}`;
      const js = jsBackend.crossEntropy(x, labels, resolveLossOptions(options, x.rows, x.cols, x.dtype, false));
      expectClose(lossList(out[i]!.loss), lossList(js.loss), { ...LOSS_TOL, label: `${label} loss` });
      expectClose(out[i]!.lse, js.lse, { ...LOSS_TOL, label: `${label} lse` });
      expectClose(out[i]!.dLogits!, js.dLogits!, { ...tolerance(x.dtype, true), cols: x.cols, label: `${label} dLogits` });
      if (x.cols === 1 && options.normalizer !== 'stablemax' && Object.keys(options).length === 1) {
        // V = 1 without extra terms: exactly zero loss and gradient (StableMax's log S − log s(z) rounds in fp32)
        expect(lossList(out[i]!.loss)).toEqual([0]);
        expect(Array.from(out[i]!.dLogits!).every((v) => v === 0)).toBe(true);
      }
    });
  });

  it('edge values: ±1e4, ±3e38, equal rows, −inf logits off the label, NaN; every normalizer and reduction', () => {
    const edge: [string, number[][], number[]][] = [
      ['logits of ±1e4', [[1e4, -1e4, 0, 1e4 - 1], [-1e4, -1e4, -1e4, -1e4]], [3, 0]],
      ['logits of ±3e38', [[3e38, -3e38, 0, 1], [-3e38, 2e38, -3e38, 0]], [1, 1]],
      ['equal rows', [[2, 2, 2, 2], [2, 2, 2, 2]], [0, 3]],
      ['-inf logits off the label', [[-Infinity, 0, 1, -Infinity], [0, 0, -Infinity, 0]], [1, 3]],
      ['a NaN logit', [[NaN, 1, 2, 0], [0, 1, 2, 3]], [1, 2]],
    ];
    const cases: [Matrix, Int32Array, CrossEntropyOptions][] = [];
    const labels: string[] = [];
    for (const [name, X, t] of edge) {
      for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
        for (const reduction of ['mean', 'sum', 'none'] as const) {
          cases.push([matrix(X, 'f32'), Int32Array.from(t), { normalizer, reduction }]);
          labels.push(`${name} (${normalizer}, ${reduction})`);
        }
      }
    }
    const out = crossEntropyOnKernels(cases);
    cases.forEach(([x, t, options], i) => {
      const js = jsBackend.crossEntropy(x, t, resolveLossOptions(options, x.rows, x.cols, 'f32', false));
      const g = out[i]!;
      // Per-row terms are fp32, where a gap of 6e38 is +inf: the JS backend keeps float64 until
      // the end, so its mean and sum of such a row stay finite (3e38) where fp32 overflows.
      const overflows = labels[i]!.startsWith('logits of ±3e38') && options.reduction !== 'none' && options.normalizer !== 'stablemax';
      // fp32 rows of huge logits agree to |lse|·ε, the rounding of lse itself (DESIGN.md "Numerics")
      const lseScale = Math.max(...Array.from(js.lse).filter(Number.isFinite).map(Math.abs));
      const tol = { rtol: 1e-5, atol: 8 * lseScale * 2 ** -24 };
      if (overflows) expect(lossList(g.loss)).toEqual([Infinity]);
      else expectClose(lossList(g.loss), lossList(js.loss), { ...tol, storedAsF32: true, label: `${labels[i]} loss` });
      expectClose(g.lse, js.lse, { rtol: 1e-6, label: `${labels[i]} lse` });
      expectClose(g.dLogits!, js.dLogits!, { ...tol, label: `${labels[i]} dLogits` });
    });
  });

  it('all rows ignored: NaN mean, zero sum, zeros for none; lse of every row', () => {
    const x = matrix([[1, 2, 3], [4, 5, 6]], 'f32');
    const labels = Int32Array.from([-100, -100]);
    const out = crossEntropyOnKernels((['mean', 'sum', 'none'] as const).map((reduction) => [x, labels, { reduction }]));
    expect(out[0]!.loss).toBeNaN();
    expect(out[1]!.loss).toBe(0);
    expect(lossList(out[2]!.loss)).toEqual([0, 0]);
    for (const o of out) expect(Array.from(o.dLogits!).every((v) => v === 0)).toBe(true);
    expectClose(out[0]!.lse, ref.logSumExp(asRows(x)), { rtol: 1e-6 });
  });
});

describe('a broken kernel is caught', () => {
  // blockAllReduce with the barrier between the warps' partial writes and their reads removed:
  // a classic missing __syncthreads. The first fiber to pass reads partials other warps have
  // not written yet (stale values from the previous reduction), in some fiber order; the race
  // checker reports the unordered write and read in every order.
  const brokenExe = buildRunner((file, text) => {
    if (file !== 'common.cuh') return text;
    const barrier = "  __syncthreads();  // every warp's partial is written before any is read\n";
    if (!text.includes(barrier)) throw new Error('the barrier to remove is not in cuda/common.cuh any more');
    return text.replace(barrier, '');
  });
  it('a missing barrier in the block reduction is reported by the race checker, or gives wrong softmax values', () => {
    const rng = ref.mulberry32(5);
    const x = matrix(ref.randomRows(rng, 3, 1100, 2), 'f32');
    const want = jsBackend.softmax(x, noSoftmaxOptions, false);
    const keys = { rows: 3, cols: 1100, xDtype: 'f32', outDtype: 'f32', log: false, invTemperature: 1 };
    const requests = ORDERS.map((order: FiberOrder) => ({ op: 'softmax', order, keys, blobs: { x: x.data } }));
    const wrongOrders = (runner: string) => runKernels(runner, requests).flatMap((r, i) => {
      try {
        expectClose(blobValues(r, 'y'), want, { rtol: 1e-5 });
        return [];
      } catch {
        return [ORDERS[i]!];
      }
    });
    expect(wrongOrders(exe), 'the intact kernel').toEqual([]);
    const caught = wrongOrders(brokenExe);
    expect(caught.length, 'fiber orders in which the broken kernel gives wrong values').toBeGreaterThan(0);
    console.log(`missing barrier caught in the ${caught.join(' and ')} fiber order(s)`);
    // The shared-memory race checker names it in every order, whatever values the order gives.
    for (const r of runKernels(brokenExe, requests)) {
      expect(r.ok).toBe(false);
      if (!r.ok) expect(r.error).toMatch(/shared-memory race in kernel \S+, block \(0,0,0\): thread \(\d+,0,0\) (wrote|read) and thread \(\d+,0,0\) (read|wrote) the word at static __shared__ address/);
    }
  });
});

// ---------------------------------------------------------------- the cuda-emu backend

describe('the cuda-emu backend (the addon running these kernels) matches the JS backend in every fiber order', () => {
  beforeAll(() => {
    const info = lib.backends().find((b) => b.name === 'cuda-emu')!;
    expect(info.available, `cuda-emu: ${info.reason}`).toBe(true);
  });
  afterAll(() => {
    setEmulatorOrder('forward');
    lib.setBackend('auto');
  });

  const on = <T>(backend: 'js' | 'cuda-emu', fn: () => T): T => {
    lib.setBackend(backend);
    return fn();
  };
  const decoded = (t: lib.Tensor) => (t.dtype === 'bf16' ? Array.from(t.data as Uint16Array, ref.bf16ToF32) : Array.from(t.data));

  type Call = [label: string, run: () => lib.Tensor | Float32Array, backward: boolean, cols: number];
  function rowCalls(dtype: Dtype): Call[] {
    const calls: Call[] = [];
    for (const [rows, cols] of [[1, 1], [3, 2], [7, 37], [2, 1100]] as const) {
      const rng = ref.mulberry32(rows * 31 + cols);
      const mk = (std: number) => {
        const m = matrix(ref.randomRows(rng, rows, cols, std), dtype);
        return lib.tensor(m.data, [rows, cols], dtype);
      };
      const x = mk(3);
      const dy = mk(1);
      const mask = Uint8Array.from({ length: rows * cols }, (_, i) => (i % 5 === 2 ? 0 : 1));
      const shape = `[${rows}, ${cols}] ${dtype}`;
      const opts = { temperature: 0.8, mask };
      const here: [string, () => lib.Tensor | Float32Array, boolean][] = [
        [`logSumExp ${shape}`, () => lib.logSumExp(x, opts), false],
        [`softmax ${shape}`, () => lib.softmax(x, opts), false],
        [`logSoftmax ${shape}`, () => lib.logSoftmax(x, { temperature: 1.3 }), false],
        [`softmaxBackward ${shape}`, () => lib.softmaxBackward(x, dy, opts), true],
        [`logSoftmaxBackward ${shape}`, () => lib.logSoftmaxBackward(x, dy, { temperature: 1.3 }), true],
        [`stablemax ${shape}`, () => lib.stablemax(x), false],
        [`logStablemax ${shape}`, () => lib.logStablemax(x), false],
        [`stablemaxBackward ${shape}`, () => lib.stablemaxBackward(x, dy), true],
        [`logStablemaxBackward ${shape}`, () => lib.logStablemaxBackward(x, dy), true],
        [`sparsemax ${shape}`, () => lib.sparsemax(x), false],
        [`sparsemaxBackward ${shape}`, () => lib.sparsemaxBackward(x, dy), true],
        [`entmax15 ${shape}`, () => lib.entmax15(x), false],
        [`entmax15Backward ${shape}`, () => lib.entmax15Backward(x, dy), true],
        [`gumbelSoftmax ${shape}`, () => lib.gumbelSoftmax(x, { tau: 0.7, seed: 2 ** 40 + 3 }), false],
        [`gumbelSoftmax hard ${shape}`, () => lib.gumbelSoftmax(x, { tau: 0.7, seed: 9, hard: true }), false],
        [`gumbelSoftmaxBackward ${shape}`, () => lib.gumbelSoftmaxBackward(x, dy, { tau: 0.7, seed: 2 ** 40 + 3 }), true],
      ];
      // logSumExp has one value per row
      calls.push(...here.map(([l, r, b]): Call => [l, r, b, l.startsWith('logSumExp') ? 1 : cols]));
    }
    return calls;
  }

  const seen = new Map<string, number[]>(); // results of the first order, by label: later orders must match bit for bit
  const sameAsFirstOrder = (label: string, values: number[]) => {
    const first = seen.get(label);
    if (first === undefined) {
      seen.set(label, values);
      return;
    }
    const a = Float32Array.from(values);
    const b = Float32Array.from(first);
    expect(sameBits(new Uint8Array(a.buffer), new Uint8Array(b.buffer)), `${label}: differs between fiber orders`).toBe(true);
  };

  for (const order of ORDERS) {
    it(`every row-wise op, f32 and bf16, ${order} fiber order`, () => {
      setEmulatorOrder(order, 1234);
      for (const dtype of ['f32', 'bf16'] as const) {
        for (const [label, run, backward, cols] of rowCalls(dtype)) {
          const got = on('cuda-emu', run);
          const want = on('js', run);
          const [g, w] = got instanceof Float32Array ? [Array.from(got), Array.from(want as Float32Array)]
            : [decoded(got), decoded(want as lib.Tensor)];
          if (!(got instanceof Float32Array)) expect((got).dtype ?? 'f32', label).toBe(dtype);
          // both results are rounded to the output dtype: bf16 ones may differ by one bf16 step
          const tol = { ...tolerance(dtype, backward), ...(label.startsWith('log') ? { atol: 2 ** -20 } : {}) };
          expectClose(g, w, { ...tol, cols, label });
          sameAsFirstOrder(label, g);
        }
      }
    });

    it(`crossEntropy, every option, f32 and bf16, ${order} fiber order`, () => {
      setEmulatorOrder(order, 1234);
      for (const dtype of ['f32', 'bf16'] as const) {
        for (const [name, options] of CASES) {
          const rng = ref.mulberry32(17);
          const N = 9;
          const x = matrix(ref.randomRows(rng, N, V_ODD, 2.5), dtype);
          const labels = labelsFor(rng, N, V_ODD, options);
          const t = lib.tensor(x.data, [N, V_ODD], dtype);
          const got = on('cuda-emu', () => lib.crossEntropy(t, labels, { ...options, returnLse: true }));
          const js = on('js', () => lib.crossEntropy(t, labels, { ...options, returnLse: true }));
          const want = ref.crossEntropy(asRows(x), labels, options as ref.CeOptions);
          const label = `${name}, ${dtype}`;
          expect(got.dLogits!.dtype, label).toBe(dtype);
          expectClose(lossList(got.loss), lossList(want.loss), { ...LOSS_TOL, label: `${label} loss` });
          expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: `${label} loss vs js` });
          expectClose(got.lse!, want.lse, { ...LOSS_TOL, label: `${label} lse` });
          expectClose(decoded(got.dLogits!), want.dLogits, { ...tolerance(dtype, true, 'reference'), cols: V_ODD, label: `${label} dLogits` });
          sameAsFirstOrder(`ce ${label}`, [...lossList(got.loss), ...got.lse!, ...decoded(got.dLogits!)]);
        }
      }
    });
  }
});
