// Exercises cuda/linear_cross_entropy.cu and every tile product of cuda/tile_gemm.cuh under the emulator.
// The fused linear + cross-entropy kernels (cuda/linear_cross_entropy.cu) on the CPU under the
// SIMT emulator, against the float64 re-computation of test/reference64.ts and the JS backend:
// every option of test/losses.test.ts's matrix, with and without bias, f32 and bf16, on odd
// shapes (N, D, V multiples of no tile, V crossing several 64-class tiles, a vocabulary split
// walking several tiles), forward and backward; the FMA, bf16 and tf32 tensor-core tile
// products; gradient filtering (skipped tiles counted and really skipped); deterministic mode;
// sparsemax rows that overflow their candidates (Michelot passes over the vocabulary); and
// the public API on the cuda-emu backend, host and device tensors, sync and async. Every
// kernel run is repeated in the three fiber orders and must give the very same bytes.
// Tolerances per DESIGN.md "Numerics": fp32 ~1e-5 relative, bf16 (and tf32) ~1e-2.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

// Batches of emulated kernel runs take seconds: each test (or its beforeAll) gets this long.
const SLOW = 60_000;
import * as lib from '../../lib/index.js';
import { jsBackend } from '../../lib/js/index.js';
import { native, setEmulatorOrder } from '../../lib/native.js';
import { gradientScales, reduceLoss } from '../../lib/nativeBackend.js';
import { resolveLossOptions, type LinearCrossEntropyOptions, type ResolvedLossOptions } from '../../lib/options.js';
import type { Matrix } from '../../lib/tensor.js';
import { meanLogitOrder, skippedTiles, trainedLikeHead } from '../../bench/gpu-model.js';
import { casesFor } from '../cases.js';
import { expectClose, lossList } from '../helpers.js';
import * as ref from '../reference64.js';
import {
  ORDERS, asRows, blobBytes, blobValues, buildRunner, matrix, runInAllOrders, runKernels, sameBits, type KernelRequest,
  type KernelResponse,
} from './kernel-runner.js';

type Dtype = 'f32' | 'bf16';
const exe = buildRunner();

const GEMM = { auto: 0, fma: 1, wmma: 2 } as const;
type Gemm = keyof typeof GEMM;

// ---------------------------------------------------------------- inputs


/** Odd shapes [N, D, V]: V from one partial tile to five, N up to 37 rows. */
const SHAPES: [number, number, number][] = [[9, 5, 37], [37, 19, 300], [21, 13, 150], [7, 8, 129], [33, 17, 65], [16, 11, 200]];

interface Problem {
  E: Matrix;
  W: Matrix;
  labels: Int32Array;
  bias: Float32Array | null;
}

function problem(seed: number, [N, D, V]: [number, number, number], dtype: Dtype, withBias: boolean, ignoreIndex = -100,
  spread = { e: 1, w: 1 }): Problem {
  const rng = ref.mulberry32(seed);
  const E = matrix(ref.randomRows(rng, N, D, spread.e), dtype);
  const W = matrix(ref.randomRows(rng, V, D, spread.w), dtype);
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[Math.min(1, N - 1)] = ignoreIndex;
  const bias = withBias ? Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!) : null;
  return { E, W, labels, bias };
}

interface KernelRun {
  loss: number | Float32Array;
  lse: Float32Array;
  dE: Float32Array | null;
  dW: Float32Array | null;
  dBias: Float32Array | null;
  visited: number;
  skipped: number;
  michelotPasses: number;
  /** Blocks of the tensor-core forward (cp.async, ldmatrix, mma.sync); 0 when the FloatTile forward ran. */
  mmaBlocks: number;
  /** Blocks of the tensor-core backward; 0 when the FloatTile backward ran. */
  mmaBackwardBlocks: number;
  splits: number;
  tilesPerSplit: number;
  /** Deterministic mode's dE splits (1 otherwise). */
  ownerSplits: number;
  workspaceBytes: number;
  raw: KernelResponse;
}

interface KernelSettings {
  gemm?: Gemm;
  tf32?: boolean;
  deterministic?: boolean;
  filterEps?: number;
  vocabSplits?: number;
}

function resolved(p: Problem, options: LinearCrossEntropyOptions): ResolvedLossOptions {
  return resolveLossOptions({ ...options, ...(p.bias ? { bias: p.bias } : {}) }, p.E.rows, p.W.rows, p.E.dtype, true);
}

function linearRequest(p: Problem, o: ResolvedLossOptions, s: KernelSettings): Omit<KernelRequest, 'order'> {
  const [N, D, V] = [p.E.rows, p.E.cols, p.W.rows];
  const sumWeights = o.classWeights === null ? V : o.classWeights.reduce((a, w) => a + w, 0);
  const keys = {
    rows: N, cols: V, dim: D, eDtype: p.E.dtype, wDtype: p.W.dtype, normalizer: o.normalizer, smoothing: o.smoothing,
    focalGamma: o.focalGamma, polyEpsilon: o.polyEpsilon, zLoss: o.zLoss, squentropy: o.squentropy, softcap: o.softcap,
    invTemperature: o.invTemperature, ignoreIndex: o.ignoreIndex, sumWeights, gemm: GEMM[s.gemm ?? 'auto'],
    tf32: s.tf32 ?? false, deterministic: s.deterministic ?? false, filterEps: s.filterEps ?? 0, vocabSplits: s.vocabSplits ?? 0,
  };
  const blobs: KernelRequest['blobs'] = { E: p.E.data, W: p.W.data, labels: p.labels };
  if (p.bias !== null) blobs.bias = p.bias;
  if (o.classWeights !== null) blobs.classWeights = o.classWeights;
  if (o.computeGrad) {
    const sc = gradientScales(p.labels, o);
    blobs.scaleWeighted = sc.scaleWeighted;
    blobs.scaleUnweighted = sc.scaleUnweighted;
  }
  return { op: 'linearCrossEntropy', keys, blobs };
}

function decode(r: KernelResponse, p: Problem, o: ResolvedLossOptions): KernelRun {
  const info = new Uint32Array(blobBytes(r, 'info').slice().buffer);
  const grad = o.computeGrad;
  return {
    loss: reduceLoss(p.labels, blobValues(r, 'weighted'), blobValues(r, 'unweighted'), o).loss,
    lse: blobValues(r, 'lse'),
    dE: grad ? blobValues(r, 'dE', p.E.dtype) : null,
    dW: grad ? blobValues(r, 'dW', p.W.dtype) : null,
    dBias: grad && p.bias !== null ? blobValues(r, 'dBias') : null,
    visited: info[0]!, skipped: info[1]!, michelotPasses: info[3]!, splits: info[4]!, tilesPerSplit: info[5]!, mmaBlocks: info[8]!,
    mmaBackwardBlocks: info[9]!, ownerSplits: info[10]!,
    workspaceBytes: info[6]! + info[7]! * 2 ** 32, raw: r,
  };
}

/** Runs linearCrossEntropy through the launcher, in all three fiber orders. */
function onKernels(runs: [Problem, LinearCrossEntropyOptions, KernelSettings][]): KernelRun[] {
  const os = runs.map(([p, options]) => resolved(p, options));
  const out = runInAllOrders(exe, runs.map(([p], i) => linearRequest(p, os[i]!, runs[i]![2])));
  return out.map((r, i) => decode(r, runs[i]![0], os[i]!));
}


/** reference64's gradients cost O(V²) per row (forward-mode duals): wider problems check gradients against JS only. */
const REFERENCE_MAX_V = 150;

function refOptions(options: LinearCrossEntropyOptions): ref.CeOptions {
  const { deterministic: _d, tf32: _t, filterEps: _f, bias: _b, ...ce } = options;
  return ce as ref.CeOptions;
}

/** The float64 re-computation with gradients (materializes N×V: small problems only). */
function refOf(p: Problem, options: LinearCrossEntropyOptions) {
  return ref.linearCrossEntropy(asRows(p.E), asRows(p.W), p.labels, { ...refOptions(options), ...(p.bias ? { bias: p.bias } : {}) });
}

/** The float64 loss and lse alone: O(N·V·D). */
function refLossOf(p: Problem, options: LinearCrossEntropyOptions) {
  const E = asRows(p.E);
  const W = asRows(p.W);
  const logits = E.map((e) => W.map((w, v) => {
    let acc = p.bias ? p.bias[v]! : 0;
    for (let d = 0; d < e.length; d++) acc += e[d]! * w[d]!;
    return acc;
  }));
  return ref.crossEntropyLoss(logits, p.labels, refOptions(options));
}

function jsOf(p: Problem, options: LinearCrossEntropyOptions) {
  return jsBackend.linearCrossEntropy(p.E, p.W, p.labels, resolved(p, { ...options, filterEps: 0 }));
}

/** Gradient tolerance: fp32 inputs through FMA tiles, or bf16 / tf32 operands. */
const gradTol = (lowPrecision: boolean) => (lowPrecision ? { rtol: 1e-2, atol: 1e-6 } : { rtol: 1e-5, atol: 1e-7 });

/** Loss and lse against float64, gradients against float64 (V ≤ REFERENCE_MAX_V) and the JS backend. */
function expectMatches(g: KernelRun, p: Problem, options: LinearCrossEntropyOptions, lowPrecision: boolean, label: string,
  againstJs = true, gradTolerance?: { rtol: number; atol: number; rowTol: number }): void {
  const small = p.W.rows <= REFERENCE_MAX_V;
  const full = small ? refOf(p, options) : null;
  const want = full ?? refLossOf(p, options);
  // loss and lse are fp32 reductions of fp32 logits; low-precision tiles round the operands of those logits
  const lossTol = lowPrecision && p.E.dtype === 'f32' ? { rtol: 1e-2, atol: 1e-4 } : { rtol: 1e-5, atol: 1e-6 };
  expectClose(lossList(g.loss), lossList(want.loss), { ...lossTol, label: `${label} loss` });
  expectClose(g.lse, want.lse, { ...lossTol, label: `${label} lse` });
  if (g.dE === null) return;
  const tol = gradTolerance === undefined ? gradTol(lowPrecision) : { ...gradTolerance, cols: p.E.cols };
  if (full !== null) {
    expectClose(g.dE, full.dE, { ...tol, label: `${label} dE` });
    expectClose(g.dW!, full.dW, { ...tol, label: `${label} dW` });
    if (p.bias !== null) expectClose(g.dBias!, full.dBias!, { ...tol, label: `${label} dBias` });
  }
  if (!againstJs && small) return;
  const js = jsOf(p, options);
  expectClose(lossList(g.loss), lossList(js.loss), { ...lossTol, label: `${label} loss vs js` });
  expectClose(g.dE, js.dEmbeddings!, { ...tol, label: `${label} dE vs js` });
  expectClose(g.dW!, js.dClassifier!, { ...tol, label: `${label} dW vs js` });
  if (p.bias !== null) expectClose(g.dBias!, js.dBias!, { ...tol, label: `${label} dBias vs js` });
}

// ---------------------------------------------------------------- every option

describe('linearCrossEntropy kernels under the emulator: every option, odd shapes, three fiber orders', () => {
  interface Case {
    label: string;
    p: Problem;
    options: LinearCrossEntropyOptions;
    settings: KernelSettings;
    lowPrecision: boolean;
  }
  const cases: Case[] = [];
  let k = 0;
  for (const dtype of ['f32', 'bf16'] as const) {
    for (const withBias of dtype === 'f32' ? [false, true] : [k % 2 === 0]) {
      casesFor(1, 1).forEach(([name], c) => {
        const shape = SHAPES[(c + k) % SHAPES.length]!;
        const options = casesFor(shape[0], shape[2])[c]![1];
        const p = problem(100 + c, shape, dtype, dtype === 'f32' ? withBias : c % 2 === 0, options.ignoreIndex ?? -100);
        // f32 through the FMA tile (split into 2 so a split walks several tiles); bf16 through wmma tiles
        const settings: KernelSettings = dtype === 'f32' ? { vocabSplits: 2 } : {};
        cases.push({
          label: `${name}, ${dtype}${p.bias ? ', bias' : ''} [${shape.join(', ')}]`, p, options, settings, lowPrecision: dtype === 'bf16',
        });
      });
      k++;
    }
  }
  let results: KernelRun[] = [];
  beforeAll(() => {
    results = onKernels(cases.map((c) => [c.p, c.options, c.settings]));
  }, SLOW);
  const got = () => results;

  cases.forEach((c, i) => {
    it(c.label, () => {
      const g = got()[i]!;
      expectMatches(g, c.p, c.options, c.lowPrecision, c.label);
      expect(g.skipped, 'filterEps 0 skips nothing').toBe(0);
      expect(g.michelotPasses, 'candidates sufficed').toBe(0);
    });
  });

  it('covers splits that walk several vocabulary tiles', () => {
    const walks = cases.filter((_, i) => got()[i]!.tilesPerSplit > 1).length;
    expect(walks).toBeGreaterThan(10);
  });
});

// ---------------------------------------------------------------- float32 edges across tiles

describe('float32 edges across tiles, splits and warp columns: temperature at |x| ≫ 1, StableMax sums past FLT_MAX', () => {
  // E and W hold small values exact in bf16 and tf32 (so are their products); the bias carries the
  // magnitude, so every tile product and forward sees the same fp32 logits bias + e·w. The classes
  // near each row's max sit in different 64-class tiles and 128-class mma tiles: the online state's
  // rescaling across tiles, splits and warp columns is what is checked, against float64.
  const [N, D, V] = [6, 16, 150];
  const steps = [-0.25, 0, 0.25];
  const rng = ref.mulberry32(4242);
  const eRows = Array.from({ length: N }, () => Array.from({ length: D }, () => steps[Math.floor(rng() * 3)]!));
  const wRows = Array.from({ length: V }, () => Array.from({ length: D }, () => steps[Math.floor(rng() * 3)]!));
  const labels = Int32Array.of(5, 70, 140, 100, 5, 31);
  const biasOf = (top: Record<number, number>, rest: (j: number) => number) =>
    Float32Array.from({ length: V }, (_, j) => top[j] ?? rest(j));
  const CASES: [string, Float32Array, LinearCrossEntropyOptions[]][] = [
    // gaps of a few units at 1e4: x/T rounded first would cost ~1e-3 of each
    ['maxima near 1e4', biasOf({ 5: 1e4, 70: 1e4 - 1, 100: 1e4 - 2, 140: 1e4 - 0.5 }, (j) => -1e4 + (j % 7)), [
      { temperature: 0.7, reduction: 'none' },
      { temperature: 1.5, reduction: 'none' },
      { temperature: 0.7, normalizer: 'sparsemax', reduction: 'none' },
      { temperature: 0.7, focalGamma: 2, reduction: 'none' },
      // smoothing's gap sum, moved with the max across tiles (Σ w·lse − Σ w·z would cancel here)
      { labelSmoothing: 0.1, classWeights: Float32Array.from({ length: V }, (_, j) => 0.5 + (j % 4) / 2), reduction: 'none' },
    ]],
    // ties at 3e38 in tiles 0 and 2: x/T overflows where T < 1
    ['ties at 3e38', biasOf({ 5: 3e38, 140: 3e38 }, (j) => (j % 3) - 1e30 * (j % 2)), [
      { temperature: 0.7, reduction: 'none' },
      { temperature: 0.7, normalizer: 'sparsemax', reduction: 'none' },
      { temperature: 0.7, labelSmoothing: 0.1, reduction: 'none' }, // gaps past FLT_MAX, scaled by α/V per term
    ]],
    // S = Σ s(z) > FLT_MAX, its terms in three tiles; a later tile's larger max rescales the earlier partials
    ['StableMax S past FLT_MAX', biasOf({ 10: 2e38, 70: 1e4, 100: 2.5e38, 140: 1.5e38 }, (j) => (j % 5) - 2 - 1e20 * (j % 3)), [
      { normalizer: 'stablemax', reduction: 'none' },
      { normalizer: 'stablemax', polyEpsilon: 0.5, reduction: 'none' },
    ]],
  ];
  const PATHS: [string, Dtype, KernelSettings][] = [
    ['FMA, one split', 'f32', { gemm: 'fma', vocabSplits: 1 }],
    ['FMA, three splits', 'f32', { gemm: 'fma', vocabSplits: 3 }],
    ['FMA, deterministic', 'f32', { gemm: 'fma', vocabSplits: 2, deterministic: true }],
    ['tf32 mma forward', 'f32', { tf32: true, vocabSplits: 1 }],
    ['bf16 mma forward and backward', 'bf16', { vocabSplits: 2 }],
  ];
  const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
  const labelsOf: string[] = [];
  for (const [name, bias, optionsList] of CASES) {
    for (const options of optionsList) {
      for (const [path, dtype, settings] of PATHS) {
        runs.push([{ E: matrix(eRows, dtype), W: matrix(wRows, dtype), labels, bias }, options, settings]);
        labelsOf.push(`${name}, ${JSON.stringify(options)}, ${path}`);
      }
    }
  }
  let results: KernelRun[] = [];
  beforeAll(() => {
    results = onKernels(runs);
  }, SLOW);

  runs.forEach(([p, options, settings], i) => {
    it(labelsOf[i]!, () => {
      const g = results[i]!;
      const want = refOf(p, options);
      // the logits are exact fp32 on every path, so the loss and lse are fp32's (overflowing where float32 does);
      // the tensor-core backwards round G to bf16 or tf32
      expectClose(lossList(g.loss), lossList(want.loss), { rtol: 1e-5, atol: 1e-6, storedAsF32: true, label: 'loss' });
      expectClose(g.lse, want.lse, { rtol: 1e-6, atol: 1e-6, storedAsF32: true, label: 'lse' });
      const tol = p.E.dtype === 'bf16' ? { rtol: 2 ** -7, atol: 1e-6 } : settings.tf32 ? { rtol: 2 ** -10, atol: 1e-6 } : { rtol: 1e-5, atol: 1e-7 };
      expectClose(g.dE!, want.dE, { ...tol, label: 'dE' });
      expectClose(g.dW!, want.dW, { ...tol, label: 'dW' });
      expectClose(g.dBias!, want.dBias!, { ...tol, label: 'dBias' });
      if (p.E.dtype === 'bf16' && options.normalizer !== 'sparsemax') expect(g.mmaBlocks, 'the mma forward ran').toBeGreaterThan(0);
      if (i % PATHS.length === 1) expect(g.splits, 'three splits').toBe(3);
    });
  });
});

// ---------------------------------------------------------------- tile products

describe('tile products: FMA, bf16 wmma and tf32 wmma give the same losses and gradients', () => {
  it('every normalizer, with and without bias, across several splits', { timeout: SLOW }, () => {
    const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
    const expectations: [string, boolean][] = [];
    const normalizers = ['softmax', 'stablemax', 'sparsemax'] as const;
    normalizers.forEach((normalizer, n) => {
      const opts: LinearCrossEntropyOptions = { normalizer, labelSmoothing: 0.1, zLoss: 1e-3, focalGamma: 1 };
      const f32 = problem(300 + n, [29, 23, 141], 'f32', n !== 1);
      const bf16 = problem(300 + n, [29, 23, 141], 'bf16', n !== 1);
      runs.push([f32, opts, { gemm: 'wmma' }]); // f32 inputs on tensor cores: tf32
      expectations.push([`${normalizer} tf32 via gemm wmma`, true]);
      runs.push([f32, opts, { tf32: true, vocabSplits: 1 }]); // tf32 by the option
      expectations.push([`${normalizer} tf32 option, one split`, true]);
      runs.push([bf16, opts, { gemm: 'fma', vocabSplits: 3 }]); // bf16 inputs on the FMA tile: fp32 products
      expectations.push([`${normalizer} bf16 on FMA`, false]);
    });
    const out = onKernels(runs);
    out.forEach((g, i) => {
      const [label, lowPrecision] = expectations[i]!;
      // bf16 on FMA: exact fp32 products, then one rounding of the result to bf16
      const p = runs[i]![0];
      if (p.E.dtype === 'bf16') {
        const want = refOf(p, runs[i]![1]);
        expectClose(lossList(g.loss), lossList(want.loss), { rtol: 1e-5, label: `${label} loss` });
        expectClose(g.dE!, want.dE, { rtol: 2 ** -8, atol: 1e-7, label: `${label} dE` });
        expectClose(g.dW!, want.dW, { rtol: 2 ** -8, atol: 1e-7, label: `${label} dW` });
      } else {
        expectMatches(g, p, runs[i]![1], lowPrecision, label, false);
      }
    });
  });
});

// ---------------------------------------------------------------- tensor-core forward

describe('tensor-core forward: cp.async ring, ldmatrix, mma.sync, epilogue from the accumulator fragments', () => {
  // Rows of D·(element bytes) a multiple of 16 take the mma forward: several 128-row blocks, class
  // tiles of 128 with a partial last one, splits that end inside a tile, K tails inside a stage.
  const SHAPES_MMA: [number, number, number][] = [[37, 40, 300], [130, 24, 260], [9, 64, 129]];
  // {} and the focal row run the plain softmax epilogue (linearCeForwardMmaKernel<Op, false>), the others the general one
  const OPTIONS: LinearCrossEntropyOptions[] = [
    {},
    { labelSmoothing: 0.1, zLoss: 1e-3, softcap: 5, temperature: 0.7 },
    { normalizer: 'stablemax', labelSmoothing: 0.2, squentropy: true },
    { focalGamma: 2, polyEpsilon: 0.5, reduction: 'none' },
  ];
  it('bf16 and tf32 match the float64 reference and the JS backend; bf16 matches the FMA forward to fp32 rounding', { timeout: SLOW }, () => {
    const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
    const labels: string[] = [];
    SHAPES_MMA.forEach((shape, si) => {
      OPTIONS.forEach((opts, oi) => {
        let options = opts;
        const k = si * OPTIONS.length + oi;
        const bf16 = problem(700 + k, shape, 'bf16', k % 2 === 0);
        const f32 = problem(700 + k, shape, 'f32', k % 2 === 1);
        // the backward is the FloatTile one: its gradients once per shape are enough here
        options = oi === 0 ? options : { ...options, computeGrad: false };
        runs.push([bf16, options, { vocabSplits: k % 3 === 0 ? 3 : 0 }]);
        labels.push(`bf16 mma ${JSON.stringify(options)} [${shape.join(', ')}]`);
        runs.push([bf16, { ...options, computeGrad: false }, { gemm: 'fma', vocabSplits: k % 3 === 0 ? 3 : 0 }]);
        labels.push(`bf16 FMA ${JSON.stringify(options)} [${shape.join(', ')}]`);
        runs.push([f32, options, { tf32: true, vocabSplits: k % 2 === 0 ? 2 : 0 }]);
        labels.push(`tf32 mma ${JSON.stringify(options)} [${shape.join(', ')}]`);
      });
    });
    const out = onKernels(runs);
    for (let i = 0; i < runs.length; i += 3) {
      const [mma, fma, tf32] = [out[i]!, out[i + 1]!, out[i + 2]!];
      expect(mma.mmaBlocks, labels[i]).toBeGreaterThan(0);
      expect(fma.mmaBlocks, labels[i + 1]).toBe(0);
      expect(tf32.mmaBlocks, labels[i + 2]).toBeGreaterThan(0);
      // the mma backward: bf16 with gradients; tf32 keeps the FloatTile backward
      expect(mma.mmaBackwardBlocks > 0, labels[i]).toBe(mma.dE !== null);
      expect(tf32.mmaBackwardBlocks, labels[i + 2]).toBe(0);
      expectMatches(mma, runs[i]![0], runs[i]![1], true, labels[i]!);
      expectMatches(tf32, runs[i + 2]![0], runs[i + 2]![1], true, labels[i + 2]!);
      // bf16 products are exact in fp32 on both paths: only the order of the fp32 sums differs
      expectClose(lossList(mma.loss), lossList(fma.loss), { rtol: 1e-5, atol: 1e-6, label: `${labels[i]} vs FMA loss` });
      expectClose(mma.lse, fma.lse, { rtol: 1e-5, atol: 1e-6, label: `${labels[i]} vs FMA lse` });
    }
  });
  it('planted bugs in the mma forward are caught: a missing wait_group, B fragments from the wrong chunk', { timeout: 3 * SLOW }, () => {
    const plant = (from: string, to: string) => {
      let planted = false;
      const runner = buildRunner((file, text) => {
        if ((file !== 'linear_cross_entropy.cu' && file !== 'tile_gemm.cuh') || !text.includes(from)) return text;
        planted = true;
        return text.replace(from, to);
      });
      expect(planted, `"${from}" is no longer in the kernel`).toBe(true);
      return runner;
    };
    const p = problem(811, [37, 40, 300], 'bf16', false);
    const o = resolved(p, { computeGrad: false });
    const request = { ...linearRequest(p, o, {}), order: 'forward' as const };
    const noWait = plant('    cpAsyncWait<kMmaStages - 2>();  // this thread', '    // this thread');
    const [r1] = runKernels(noWait, [request]);
    expect(r1!.ok).toBe(false);
    if (!r1!.ok) expect(r1!.error).toMatch(/shared-memory race in kernel linearCeForwardMma, block \(0,0,0\): thread \(\d+,0,0\) wrote \(cp.async in flight\)/);
    const wrongChunk = plant('8 * (lane / 16), 2 * ks + (lane / 8) % 2)', '8 * (lane / 16), 2 * ks + lane / 16)');
    const [r2] = runKernels(wrongChunk, [request]);
    const g = decode(r2!, p, o);
    expect(g.mmaBlocks).toBeGreaterThan(0);
    expect(() => expectMatches(g, p, { computeGrad: false }, true, 'wrong chunk')).toThrow();
  });
  it('sparsemax, and rows that are no 16-byte multiple, keep the FloatTile forward', { timeout: SLOW }, () => {
    const sparse = problem(801, [37, 40, 300], 'bf16', false);
    const odd = problem(802, [37, 19, 300], 'bf16', true);
    const out = onKernels([[sparse, { normalizer: 'sparsemax', computeGrad: false }, {}], [odd, { computeGrad: false }, {}]]);
    expect(out.map((g) => g.mmaBlocks)).toEqual([0, 0]);
    expectMatches(out[0]!, sparse, { normalizer: 'sparsemax', computeGrad: false }, true, 'sparsemax');
    expectMatches(out[1]!, odd, { computeGrad: false }, true, 'D = 19');
  });
});

// ---------------------------------------------------------------- filtering

describe('gradient filtering (filterEps)', () => {
  it('skips tiles of peaked rows, really skips them, and stays within the filtered mass', { timeout: SLOW }, () => {
    const [N, D, V] = [6, 8, 1280];
    // a trained model's spread (σ ≈ 20): most of each row's softmax is far below 2^-12, so the
    // tiles that hold neither a label nor a row's few likely classes can be skipped
    const p = problem(31, [N, D, V], 'f32', true, -100, { e: 1, w: 7 });
    const [exact, filtered, everything] = onKernels([
      [p, {}, { filterEps: 0 }], [p, {}, { filterEps: 2 ** -12 }], [p, {}, { filterEps: 1e30 }],
    ]);
    expect(exact!.visited).toBe(20);
    expect(exact!.skipped).toBe(0);
    expect(filtered!.skipped).toBeGreaterThan(0);
    expect(filtered!.skipped).toBeLessThan(filtered!.visited);
    expect(everything!.skipped).toBe(everything!.visited);
    // the forward is never filtered
    expect(sameBits(blobBytes(filtered!.raw, 'lse'), blobBytes(exact!.raw, 'lse'))).toBe(true);
    expect(filtered!.loss).toBe(exact!.loss);
    // skipped tiles contribute nothing at all
    expect(Array.from(everything!.dE!).every((v) => v === 0)).toBe(true);
    expect(Array.from(everything!.dW!).every((v) => v === 0)).toBe(true);
    expect(Array.from(everything!.dBias!).every((v) => v === 0)).toBe(true);
    // every skipped coefficient is < 2^-12 times the mean's scale 1/n; at most V of them meet each W row
    const n = p.labels.filter((t) => t !== -100).length;
    const wMax = Math.max(...Array.from(p.W.data as Float32Array, Math.abs));
    let maxDiff = 0;
    for (let i = 0; i < exact!.dE!.length; i++) maxDiff = Math.max(maxDiff, Math.abs(exact!.dE![i]! - filtered!.dE![i]!));
    expect(maxDiff).toBeLessThanOrEqual((2 ** -12 / n) * V * wMax);
    expectMatches(exact!, p, {}, false, 'exact');
    console.log(`kernel filterEps 2^-12 skipped ${filtered!.skipped} of ${filtered!.visited} tiles; max |ΔdE| ${maxDiff.toExponential(2)}`);
  });

  it('bf16 with auto filtering (2^-12) stays within bf16 tolerance of the exact gradient', { timeout: SLOW }, () => {
    const p = problem(22, [8, 16, 300], 'bf16', false, 0, { e: 1, w: 2 });
    const [g] = onKernels([[p, {}, { filterEps: 2 ** -12 }]]);
    expectMatches(g!, p, {}, true, 'bf16 filtered', false);
  });
});

// ---------------------------------------------------------------- tensor-core backward

/** G is rounded to bf16 (relative 2^-9) before both products: where a gradient's terms cancel, the error is
 *  relative to the row's largest gradient rather than to the element, on top of the bf16 output's rounding. */
const MMA_BACKWARD_TOL = { rtol: 1e-2, atol: 1e-6, rowTol: 2 ** -8 };

describe('tensor-core backward: G once, dE += G·W and dW += Gᵀ·E on mma.sync over D-slices', () => {
  // bf16, rows a 16-byte multiple: the mma backward in atomic mode. Several 128-row blocks, a
  // partial last class tile, splits ending inside a tile, D tails inside a 32-column slice.
  const SHAPES_BWD: [number, number, number][] = [[37, 40, 300], [130, 24, 150], [9, 64, 129], [20, 8, 70]];
  // {} and the focal row run the plain softmax epilogue (linearCeForwardMmaKernel<Op, false>), the others the general one
  const OPTIONS: LinearCrossEntropyOptions[] = [
    {},
    { labelSmoothing: 0.1, zLoss: 1e-3, softcap: 5, temperature: 0.7 },
    { normalizer: 'stablemax', labelSmoothing: 0.2, squentropy: true },
    { focalGamma: 2, polyEpsilon: 0.5, reduction: 'sum' },
  ];
  it('matches the float64 reference and the JS backend, in every option, with and without bias and splits', { timeout: SLOW }, () => {
    const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
    SHAPES_BWD.forEach((shape, si) => {
      OPTIONS.forEach((options, oi) => {
        const k = si * OPTIONS.length + oi;
        runs.push([problem(900 + k, shape, 'bf16', k % 2 === 0), options, { vocabSplits: k % 3 === 0 ? 3 : 0 }]);
      });
    });
    const out = onKernels(runs);
    out.forEach((g, i) => {
      const [p, options, settings] = runs[i]!;
      const label = `mma backward ${JSON.stringify(options)} [${p.E.rows}, ${p.E.cols}, ${p.W.rows}] splits ${settings.vocabSplits}`;
      expect(g.mmaBackwardBlocks, label).toBe(Math.ceil(p.E.rows / 128) * g.splits);
      expect(g.skipped, label).toBe(0);
      expectMatches(g, p, options, true, label, true, MMA_BACKWARD_TOL);
    });
  });
  it('agrees with the deterministic FMA backward; filtering skips whole tiles', { timeout: SLOW }, () => {
    const p = problem(951, [37, 40, 300], 'bf16', true, -100, { e: 1, w: 7 });
    // few rows with a trained model's spread: most 128-class tiles hold no coefficient ≥ 2^-12
    const peaked = problem(952, [6, 16, 1280], 'bf16', true, -100, { e: 1, w: 7 });
    const [mma, owner, filtered, everything, exact] = onKernels([
      [p, { labelSmoothing: 0.1 }, {}], [p, { labelSmoothing: 0.1 }, { deterministic: true, gemm: 'fma' }],
      [peaked, {}, { filterEps: 2 ** -12, vocabSplits: 1 }], [p, {}, { filterEps: 1e30 }], [peaked, {}, { vocabSplits: 1 }],
    ]);
    expect(mma!.mmaBackwardBlocks).toBeGreaterThan(0);
    expect(owner!.mmaBackwardBlocks).toBe(0);  // the FloatTile owner kernels, fp32 products of the bf16 inputs
    const tol = { rtol: 1e-2, atol: 1e-6 };
    expectClose(mma!.dE!, owner!.dE!, { ...tol, label: 'dE mma vs owner kernels' });
    expectClose(mma!.dW!, owner!.dW!, { ...tol, label: 'dW mma vs owner kernels' });
    expectClose(mma!.dBias!, owner!.dBias!, { ...tol, label: 'dBias mma vs owner kernels' });
    // one split: one row block walks 10 class tiles of 128
    expect(filtered!.visited).toBe(10);
    expect(filtered!.skipped).toBeGreaterThan(0);
    expect(filtered!.skipped).toBeLessThan(filtered!.visited);
    expect(everything!.skipped).toBe(everything!.visited);
    expect(Array.from(everything!.dE!).every((v) => v === 0)).toBe(true);
    expect(Array.from(everything!.dW!).every((v) => v === 0)).toBe(true);
    expect(Array.from(everything!.dBias!).every((v) => v === 0)).toBe(true);
    // skipped coefficients are < 2^-12 times the mean's scale 1/n; at most V of them meet each W row
    const n = peaked.labels.filter((t) => t !== -100).length;
    const wMax = Math.max(...asRows(peaked.W).flat().map(Math.abs));
    let maxDiff = 0;
    for (let i = 0; i < exact!.dE!.length; i++) maxDiff = Math.max(maxDiff, Math.abs(exact!.dE![i]! - filtered!.dE![i]!));
    expect(maxDiff).toBeLessThanOrEqual((2 ** -12 / n) * 1280 * wMax);
    console.log(`mma backward, filterEps 2^-12: skipped ${filtered!.skipped} of ${filtered!.visited} tiles`);
  });
  it('planted bugs in the mma backward are caught: Gᵀ without .trans, a missing barrier after G, a row pair\'s dW flushed twice', { timeout: SLOW }, () => {
    const plant = (from: string, to: string) => {
      let planted = false;
      const runner = buildRunner((file, text) => {
        if (file !== 'linear_ce_backward.cuh' || !text.includes(from)) return text;
        planted = true;
        return text.replace(from, to);
      });
      expect(planted, `"${from}" is no longer in the kernel`).toBe(true);
      return runner;
    };
    const p = problem(961, [37, 40, 150], 'bf16', true);
    const o = resolved(p, {});
    const request = { ...linearRequest(p, o, {}), order: 'forward' as const };
    const noTrans = plant('ldmatrixX4Trans(aTiles[mt], gTile', 'ldmatrixX4(aTiles[mt], gTile');
    const g = decode(runKernels(noTrans, [request])[0]!, p, o);
    expect(g.mmaBackwardBlocks).toBeGreaterThan(0);
    expect(() => expectMatches(g, p, {}, true, 'no .trans', true, MMA_BACKWARD_TOL)).toThrow(/dW/);
    const noBarrier = plant('keep = __syncthreads_or(keep) != 0;', 'keep = keep || __any_sync(0xffffffffu, keep);');
    const [r] = runKernels(noBarrier, [request]);
    expect(r!.ok).toBe(false);
    if (!r!.ok) expect(r!.error).toMatch(/shared-memory race in kernel linearCeBackwardMma/);
    // deterministic dW owners hold a row pair's dW across its steps: a flush at every step adds the first row block's twice
    // (dE owners here walk one class tile each: nothing held, nothing doubled)
    const pairs = problem(962, [200, 40, 150], 'bf16', true);
    const po = resolved(pairs, {});
    const flushEveryStep = plant('if (hold && !sliceEnd) return;', 'if (hold && !sliceEnd && !hold) return;');
    const owners = decode(runKernels(flushEveryStep, [{ ...linearRequest(pairs, po, { deterministic: true }), order: 'forward' as const }])[0]!, pairs, po);
    expect(owners.ownerSplits).toBeGreaterThan(1);
    expect(() => expectMatches(owners, pairs, {}, true, 'dW flushed at every step', true, MMA_BACKWARD_TOL)).toThrow(/dW/);
  });
});

// ---------------------------------------------------------------- vocabulary order

describe('vocabulary order: with filterEps > 0 the backward walks the classes by mean logit', () => {
  it('changes only the summation order: every backward path, bias, class weights and smoothing', { timeout: SLOW }, () => {
    // filterEps 1e-30 sorts the vocabulary and skips nothing these logits hold
    const mma = problem(971, [37, 40, 300], 'bf16', true);     // the tensor-core backward (gathered W rows)
    const odd = problem(972, [21, 13, 150], 'bf16', true);     // D·2 not a multiple of 16: the FloatTile backward
    const f32 = problem(973, [33, 17, 200], 'f32', true);      // FMA tiles
    const weights = Float32Array.from({ length: 300 }, (_, i) => 0.5 + (i % 7) / 7);
    const cases: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [
      [mma, { labelSmoothing: 0.1, classWeights: weights, softcap: 5 }, {}],
      [odd, { normalizer: 'stablemax', zLoss: 1e-3 }, {}],
      [f32, { focalGamma: 1, labelSmoothing: 0.05 }, {}],
      [mma, { labelSmoothing: 0.1 }, { deterministic: true }],
    ];
    const runs = cases.flatMap(([p, o, s]): [Problem, LinearCrossEntropyOptions, KernelSettings][] =>
      [[p, o, { ...s, filterEps: 0 }], [p, o, { ...s, filterEps: 1e-30, vocabSplits: 2 }]]);
    const out = onKernels(runs);
    for (let i = 0; i < out.length; i += 2) {
      const [exact, sorted] = [out[i]!, out[i + 1]!];
      const [p, options] = runs[i]!;
      const label = `sorted ${JSON.stringify(Object.keys(options))} ${runs[i]![2].deterministic ? 'deterministic' : ''} [${p.E.rows}, ${p.E.cols}, ${p.W.rows}] ${p.E.dtype}`;
      expect(sorted.skipped, label).toBe(0);
      // deterministic dE's partials differ with the split count: (splits − 1)·N·D floats, 256-byte aligned
      const partials = (g: KernelRun) => g.ownerSplits > 1 ? Math.ceil(((g.ownerSplits - 1) * p.E.rows * p.E.cols * 4) / 256) * 256 : 0;
      expect(sorted.workspaceBytes - partials(sorted), `${label}: the order's keys are in the workspace`)
        .toBeGreaterThan(exact.workspaceBytes - partials(exact));
      const tol = p.E.dtype === 'f32' ? { rtol: 1e-5, atol: 1e-7 } : { rtol: 2 ** -7, atol: 1e-6 };
      expectClose(sorted.dE!, exact.dE!, { ...tol, label: `${label} dE` });
      expectClose(sorted.dW!, exact.dW!, { ...tol, label: `${label} dW` });
      expectClose(sorted.dBias!, exact.dBias!, { ...tol, label: `${label} dBias` });
      expectMatches(sorted, p, options, p.E.dtype === 'bf16', label, true, p.E.dtype === 'bf16' ? MMA_BACKWARD_TOL : undefined);
    }
  });

  it('skips the tiles a host-side count of the sorted walk skips, on a trained-like head', { timeout: SLOW }, () => {
    const [N, D, V] = [256, 32, 4096];
    const head = trainedLikeHead(7, N, D, V);
    const rows = (m: Float32Array, r: number) => Array.from({ length: r }, (_, i) => Array.from(m.subarray(i * D, (i + 1) * D)));
    const p: Problem = { E: matrix(rows(head.E, N), 'bf16'), W: matrix(rows(head.W, V), 'bf16'), labels: head.labels, bias: null };
    // the host count sees the very values the kernel does (bf16-decoded)
    const seen = { ...head, E: Float32Array.from(asRows(p.E).flat()), W: Float32Array.from(asRows(p.W).flat()) };
    const eps = 2 ** -12;
    const [exact, filtered] = onKernels([[p, {}, { vocabSplits: 1 }], [p, {}, { filterEps: eps, vocabSplits: 1 }]]);
    const host = skippedTiles(seen, meanLogitOrder(seen), eps);
    const unsorted = skippedTiles(seen, null, eps);
    expect(filtered!.mmaBackwardBlocks).toBeGreaterThan(0);
    expect(filtered!.visited).toBe(host.visited);
    // fp32 logits against float64 ones: a tile whose largest coefficient sits at eps may go either way
    expect(Math.abs(filtered!.skipped - host.skipped)).toBeLessThanOrEqual(1);
    expect(filtered!.skipped).toBeGreaterThan(unsorted.skipped + host.visited / 5);
    const n = N;
    const absMax = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    let maxDiff = 0;
    for (let i = 0; i < exact!.dE!.length; i++) maxDiff = Math.max(maxDiff, Math.abs(exact!.dE![i]! - filtered!.dE![i]!));
    // what the filter may drop, plus the bf16 output's rounding of a different summation order
    expect(maxDiff).toBeLessThanOrEqual((eps / n) * V * absMax(seen.W) + 2 ** -8 * absMax(exact!.dE!));
    console.log(`trained-like head [${N}, ${D}, ${V}], filterEps 2^-12: the kernel skipped ${filtered!.skipped} of ` +
      `${filtered!.visited} tiles by mean logit (host count ${host.skipped}), ${unsorted.skipped} in class-id order`);
  });
});

// ---------------------------------------------------------------- deterministic mode

describe('deterministic mode', () => {
  it('gives bit-identical gradients from run to run and order to order, equal to the atomic mode within rounding', { timeout: SLOW }, () => {
    const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
    for (const [i, normalizer] of (['softmax', 'stablemax', 'sparsemax'] as const).entries()) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const p = problem(400 + i, [70, 9, 140], dtype, true); // two row tiles, three vocabulary tiles
        const opts: LinearCrossEntropyOptions = { normalizer, squentropy: true, labelSmoothing: 0.05 };
        runs.push([p, opts, { deterministic: true }], [p, opts, {}]);
      }
    }
    // onKernels runs each three times (fiber orders) and requires the same bytes every time
    const out = onKernels(runs);
    for (let i = 0; i < out.length; i += 2) {
      const [a, atomic] = [out[i]!, out[i + 1]!];
      const p = runs[i]![0];
      const tol = p.E.dtype === 'f32' ? { rtol: 1e-6, atol: 1e-8 } : { rtol: 2 ** -7, atol: 1e-7 };
      expectClose(a.dE!, atomic.dE!, { ...tol, label: 'dE deterministic vs atomic' });
      expectClose(a.dW!, atomic.dW!, { ...tol, label: 'dW deterministic vs atomic' });
      expectClose(a.dBias!, atomic.dBias!, { ...tol, label: 'dBias deterministic vs atomic' });
      expectMatches(a, p, runs[i]![1], p.E.dtype === 'bf16', `deterministic ${i / 2}`, false);
    }
  });
});

describe('deterministic mode on tensor cores', () => {
  it('owner kernels: dE by vocabulary splits summed in order, dW and dBias by class tiles over row-block pairs', { timeout: SLOW }, () => {
    // three row blocks of 128 (a pair, then one alone, partial), 9 class tiles of 64 (4.5 of 128), bias
    const p = problem(981, [290, 48, 560], 'bf16', true);
    const weights = Float32Array.from({ length: 560 }, (_, i) => 0.5 + (i % 5) / 5);
    const cases: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [
      [p, { labelSmoothing: 0.1, classWeights: weights }, { deterministic: true }],
      [p, { labelSmoothing: 0.1, classWeights: weights }, {}],
      [p, { softcap: 4, zLoss: 1e-3, reduction: 'sum' }, { deterministic: true, vocabSplits: 2 }],
      [p, { softcap: 4, zLoss: 1e-3, reduction: 'sum' }, { deterministic: true, filterEps: 1e-30 }],  // sorted walk
      [p, { softcap: 4, zLoss: 1e-3, reduction: 'sum' }, { deterministic: true, gemm: 'fma' }],
    ];
    // onKernels runs each in three fiber orders and requires the same bytes every time
    const [owners, atomic, twoSplits, sorted, fma] = onKernels(cases);
    const rowBlocks = Math.ceil(290 / 128);
    // ⌈512 / ⌈290/64⌉⌉ = 103 splits wanted, one per 64-class tile at most: 9
    expect(owners!.ownerSplits).toBe(9);
    expect(owners!.mmaBackwardBlocks).toBe(rowBlocks * 9);
    expect(twoSplits!.ownerSplits).toBe(2);
    expect(twoSplits!.mmaBackwardBlocks).toBe(rowBlocks * 2);
    expect(atomic!.ownerSplits).toBe(1);
    expect(fma!.mmaBackwardBlocks).toBe(0);
    // the partials are in the workspace: (splits − 1)·N·D floats more than one split needs
    expect(owners!.workspaceBytes - twoSplits!.workspaceBytes).toBeGreaterThanOrEqual(7 * 290 * 48 * 4);
    // each split visits its class tiles once per row block: no tile twice, none left out
    expect(owners!.visited).toBe(rowBlocks * 9);
    expect(twoSplits!.visited).toBe(rowBlocks * 5);  // splits of 5 and 4 tiles of 64: 3 and 2 of 128
    cases.forEach(([, options], i) => {
      const g = [owners, atomic, twoSplits, sorted, fma][i]!;
      expectMatches(g, p, options, true, `case ${i}`, true, MMA_BACKWARD_TOL);
    });
    const tol = { rtol: 2 ** -7, atol: 1e-6 };
    expectClose(owners!.dE!, atomic!.dE!, { ...tol, label: 'dE owners vs atomic' });
    expectClose(owners!.dW!, atomic!.dW!, { ...tol, label: 'dW owners vs atomic' });
    expectClose(owners!.dBias!, atomic!.dBias!, { ...tol, label: 'dBias owners vs atomic' });
    for (const g of [twoSplits!, sorted!]) {
      expectClose(g.dE!, fma!.dE!, { ...tol, label: 'dE mma owners vs FMA owners' });
      expectClose(g.dW!, fma!.dW!, { ...tol, label: 'dW mma owners vs FMA owners' });
      expectClose(g.dBias!, fma!.dBias!, { ...tol, label: 'dBias mma owners vs FMA owners' });
    }
  });
});

// ---------------------------------------------------------------- sparsemax thresholds

describe('sparsemax: crowded rows fall back to Michelot passes over the vocabulary', () => {
  it('rows with more than 64 logits within 1 of the max per split, and peaked rows beside them', { timeout: SLOW }, () => {
    const [N, D, V] = [13, 6, 150];
    const rng = ref.mulberry32(61);
    // W rows almost equal: every logit of a row lies within 1 of its max
    const base = ref.randomRows(rng, 1, D, 1)[0]!;
    const Wv = Array.from({ length: V }, () => base.map((b) => b + 0.02 * ref.randn(rng)));
    const Ev = ref.randomRows(rng, N, D, 1).map((row, i) => row.map((x) => (i % 3 === 0 ? 30 * x : x)));
    for (const dtype of ['f32', 'bf16'] as const) {
      const p: Problem = {
        E: matrix(Ev, dtype), W: matrix(Wv, dtype), labels: Int32Array.from(ref.randomLabels(rng, N, V)), bias: null,
      };
      p.labels[4] = -100;
      const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [
        [p, { normalizer: 'sparsemax' }, { vocabSplits: 1 }],
        [p, { normalizer: 'sparsemax', labelSmoothing: 0.1, focalGamma: 1 }, { vocabSplits: 2, deterministic: true }],
      ];
      onKernels(runs).forEach((g, i) => {
        expect(g.michelotPasses, 'Michelot passes').toBeGreaterThan(0);
        if (dtype === 'f32') {
          expectMatches(g, p, runs[i]![1], false, `crowded f32 ${i}`);
          return;
        }
        // Nearly equal W rows: dE = Σ_j G_ij·W_j cancels almost entirely, so the bf16 rounding
        // of G in the tensor-core products shows relative to dE itself; it stays below 2^-8 of
        // the terms Σ_j |G_ij|·|W_j|, which is what bf16 operands promise.
        const want = refOf(p, runs[i]![1]);
        expectClose(lossList(g.loss), lossList(want.loss), { rtol: 1e-5, label: `crowded bf16 ${i} loss` });
        const wMax = Math.max(...Array.from(asRows(p.W), (r) => Math.max(...Array.from(r, Math.abs))));
        const gSum = Math.max(...want.dLogits.map((r) => r.reduce((a, v) => a + Math.abs(v), 0)));
        expectClose(g.dE!, want.dE, { rtol: 0, atol: 2 ** -8 * gSum * wMax, label: `crowded bf16 ${i} dE` });
      });
    }
  });
});

// ---------------------------------------------------------------- edges

describe('edges', () => {
  it('V = 1, D = 1, N = 70 (two row tiles), all rows ignored, a NaN embedding', { timeout: SLOW }, () => {
    const runs: [Problem, LinearCrossEntropyOptions, KernelSettings][] = [];
    const v1 = problem(1, [6, 4, 1], 'f32', true);
    const d1 = problem(2, [11, 1, 90], 'f32', true);
    const tall = problem(3, [70, 7, 100], 'f32', false);
    const ignored = problem(4, [5, 3, 70], 'f32', true);
    ignored.labels.fill(-100);
    const nan = problem(5, [4, 3, 80], 'f32', false);
    (nan.E.data as Float32Array)[0] = NaN;
    for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
      runs.push([v1, { normalizer }, {}], [d1, { normalizer, zLoss: 1e-2 }, {}], [tall, { normalizer, reduction: 'sum' }, {}]);
    }
    runs.push([ignored, {}, {}], [ignored, { reduction: 'sum' }, {}], [nan, { reduction: 'none' }, {}]);
    const out = onKernels(runs);
    out.slice(0, 9).forEach((g, i) => expectMatches(g, runs[i]![0], runs[i]![1], false, `edge ${i}`));
    const [mean, sum, none] = out.slice(9) as [KernelRun, KernelRun, KernelRun];
    expect(mean.loss).toBeNaN();
    expect(sum.loss).toBe(0);
    for (const g of [mean, sum]) {
      for (const grad of [g.dE!, g.dW!, g.dBias!]) expect(Array.from(grad).every((v) => v === 0)).toBe(true);
      expectClose(g.lse, refOf(ignored, {}).lse, { rtol: 1e-6 }); // every row's lse, ignored ones too
    }
    // the NaN in E reaches row 0's logits (0·NaN is NaN) and nothing else
    const perRow = none.loss as Float32Array;
    expect(perRow[0]).toBeNaN();
    expect(Array.from(perRow.subarray(2)).every(Number.isFinite)).toBe(true);
  });
});

// ---------------------------------------------------------------- workspace

describe('workspace: O(N + V), never N×V', () => {
  it('the plan grows with N and V, not with N·V, and fp32 accumulators only for bf16 gradients', () => {
    const bytes = (N: number, D: number, V: number, o: lib.LinearCrossEntropyWorkspaceOptions = {}) =>
      lib.linearCrossEntropyWorkspaceBytes(N, D, V, { backend: 'cuda-emu', ...o });
    const [N, D, V] = [8192, 4096, 128000];
    const logits = N * V * 4;
    const fwd = bytes(N, D, V, { computeGrad: false });
    const f32 = bytes(N, D, V, { filterEps: 0 });
    const bf16 = bytes(N, D, V, { dtype: 'bf16', filterEps: 0 });
    const sparse = bytes(N, D, V, { normalizer: 'sparsemax' });
    console.log(`N=${N} D=${D} V=${V}: logits ${(logits / 2 ** 20).toFixed(0)} MiB; workspace forward ${(fwd / 2 ** 20).toFixed(2)} MiB, ` +
      `f32 grads ${(f32 / 2 ** 20).toFixed(2)} MiB, sparsemax ${(sparse / 2 ** 20).toFixed(2)} MiB, ` +
      `bf16 grads ${(bf16 / 2 ** 20).toFixed(0)} MiB (fp32 accumulators ${((N + V) * D * 4 / 2 ** 20).toFixed(0)} MiB)`);
    expect(fwd).toBe(f32); // f32 gradients accumulate in the outputs themselves
    expect(fwd).toBeLessThan(logits / 500);
    expect(sparse).toBeLessThan(logits / 20);
    expect(bf16 - f32).toBeGreaterThanOrEqual((N + V) * D * 4);
    expect(bf16 - f32).toBeLessThan((N + V) * D * 4 + 4096);
    // filtering walks the vocabulary by mean logit: 32 partial mean rows, 2^17 8-byte keys, V classes
    const order = 32 * (D + 1) * 4 + 2 ** 17 * 8 + V * 4;
    expect(bytes(N, D, V, { filterEps: 1e-6 }) - f32).toBeGreaterThanOrEqual(order);
    expect(bytes(N, D, V, { filterEps: 1e-6 }) - f32).toBeLessThan(order + 1024);
    // doubling V (at many rows: one split per row tile) leaves the forward's workspace as it is
    expect(bytes(65536, D, 2 * V, { computeGrad: false })).toBe(bytes(65536, D, V, { computeGrad: false }));
    // and it is linear in N
    expect(bytes(2 * 65536, D, V, { computeGrad: false })).toBeLessThanOrEqual(2 * bytes(65536, D, V, { computeGrad: false }));
    expect(bytes(0, D, V)).toBe(0);
  });

  it('deterministic mode adds dE partials for its vocabulary splits, bounded whatever N is', () => {
    const bytes = (N: number, D: number, V: number, o: lib.LinearCrossEntropyWorkspaceOptions = {}) =>
      lib.linearCrossEntropyWorkspaceBytes(N, D, V, { backend: 'cuda-emu', filterEps: 0, ...o });
    const [D, V] = [512, 32000];
    const extra = (N: number) => bytes(N, D, V, { deterministic: true }) - bytes(N, D, V);
    // splits = min(16, ⌈512 / ⌈N/64⌉⌉): (splits − 1)·N·D floats, 256-byte aligned
    const partials = (N: number, splits: number) => Math.ceil(((splits - 1) * N * D * 4) / 256) * 256;
    expect(extra(1024)).toBe(partials(1024, 16));
    expect(extra(8192)).toBe(partials(8192, 4));
    expect(extra(20000)).toBe(partials(20000, 2));  // ⌈512 / 313⌉
    expect(extra(32768)).toBe(0);                   // 512 row tiles fill the GPU alone
    expect(extra(1 << 20)).toBe(0);
    for (const N of [1, 100, 1024, 5000, 8192, 20000, 32767]) expect(extra(N)).toBeLessThan(32768 * D * 4);
    // no gradients, no partials; a tiny vocabulary caps the splits at its 64-class tiles
    expect(bytes(1024, D, V, { deterministic: true, computeGrad: false })).toBe(bytes(1024, D, V, { computeGrad: false }));
    expect(bytes(1024, D, 130, { deterministic: true }) - bytes(1024, D, 130)).toBe(partials(1024, 3));
  });

  it('the launcher uses the plan the binding reports', { timeout: SLOW }, () => {
    const p = problem(9, [37, 19, 300], 'bf16', true);
    for (const options of [{}, { normalizer: 'sparsemax' as const }, { computeGrad: false }]) {
      const [g] = onKernels([[p, options, { filterEps: 2 ** -12 }]]);  // bf16's 'auto'
      const planned = lib.linearCrossEntropyWorkspaceBytes(37, 19, 300, { ...options, dtype: 'bf16', backend: 'cuda-emu' });
      expect(g!.workspaceBytes).toBe(planned);
    }
  });
});

// ---------------------------------------------------------------- the public API on cuda-emu

describe('linearCrossEntropy on the cuda-emu backend (the addon running these kernels)', () => {
  beforeAll(() => {
    const info = lib.backends().find((b) => b.name === 'cuda-emu')!;
    expect(info.available, `cuda-emu: ${info.reason}`).toBe(true);
  });
  afterAll(() => {
    setEmulatorOrder('forward');
    lib.setBackend('auto');
  });
  const decoded = (t: lib.Tensor) => (t.dtype === 'bf16' ? Array.from(t.data as Uint16Array, ref.bf16ToF32) : Array.from(t.data));
  const on = <T>(backend: 'js' | 'cuda-emu', fn: () => T): T => {
    lib.setBackend(backend);
    return fn();
  };

  const calls = (dtype: Dtype) => {
    const [N, D, V] = [19, 10, 170];
    const p = problem(77, [N, D, V], dtype, true);
    const E = lib.tensor(p.E.data, [N, D], dtype);
    const W = lib.tensor(p.W.data, [V, D], dtype);
    const options: [string, LinearCrossEntropyOptions][] = [
      ['bias', { bias: p.bias!, returnLse: true, filterEps: 0 }],
      ['stablemax, smoothing, deterministic', { normalizer: 'stablemax', labelSmoothing: 0.1, deterministic: true, filterEps: 0 }],
      ['sparsemax, none', { normalizer: 'sparsemax', reduction: 'none', filterEps: 0 }],
      ['no gradients', { computeGrad: false, zLoss: 1e-3 }],
    ];
    return { p, E, W, options };
  };

  const seen = new Map<string, number[]>();
  for (const order of ORDERS) {
    it(`host tensors, f32 and bf16, sync and async, ${order} fiber order`, { timeout: SLOW }, async () => {
      setEmulatorOrder(order, 99);
      for (const dtype of ['f32', 'bf16'] as const) {
        const { p, E, W, options } = calls(dtype);
        for (const [name, o] of options) {
          const label = `${name}, ${dtype}`;
          const got = on('cuda-emu', () => lib.linearCrossEntropy(E, W, p.labels, o));
          const gotAsync = await on('cuda-emu', () => lib.linearCrossEntropyAsync(E, W, p.labels, o));
          const js = on('js', () => lib.linearCrossEntropy(E, W, p.labels, o));
          expect(got.workspaceBytes, label).toBe(lib.linearCrossEntropyWorkspaceBytes(19, 10, 170, { ...o, dtype, backend: 'cuda-emu' }));
          expect(js.workspaceBytes).toBeUndefined();
          expectClose(lossList(got.loss), lossList(js.loss), { rtol: 1e-5, label: `${label} loss` });
          const values = [...lossList(got.loss)];
          if (o.computeGrad !== false) {
            expect(got.dEmbeddings!.dtype, label).toBe(dtype);
            expect(got.dClassifier!.dtype, label).toBe(dtype);
            const tol = dtype === 'f32' ? { rtol: 1e-5, atol: 1e-7 } : { rtol: 1e-2, atol: 1e-6 };
            expectClose(decoded(got.dEmbeddings!), decoded(js.dEmbeddings!), { ...tol, label: `${label} dE` });
            expectClose(decoded(got.dClassifier!), decoded(js.dClassifier!), { ...tol, label: `${label} dW` });
            if (o.bias !== undefined) expectClose(got.dBias!, js.dBias!, { ...tol, label: `${label} dBias` });
            else expect(got.dBias).toBeUndefined();
            values.push(...decoded(got.dEmbeddings!), ...decoded(got.dClassifier!));
            expect(decoded(gotAsync.dEmbeddings!), `${label} async`).toEqual(decoded(got.dEmbeddings!));
          } else {
            expect(got.dEmbeddings).toBeUndefined();
          }
          if (o.returnLse) expectClose(got.lse!, js.lse!, { rtol: 1e-5, label: `${label} lse` });
          expect(lossList(gotAsync.loss), `${label} async`).toEqual(lossList(got.loss));
          const first = seen.get(label);
          if (first === undefined) seen.set(label, values);
          else expect(values, `${label}: differs between fiber orders`).toEqual(first);
        }
      }
    });
  }

  it('device tensors in, device gradients out; every temporary freed', { timeout: SLOW }, async () => {
    setEmulatorOrder('forward');
    const live = () => native().addon!.stats().buffers;
    const { p, E, W } = calls('bf16');
    const before = live();
    const Ed = lib.upload(E, { backend: 'cuda-emu' });
    const Wd = lib.upload(W, { backend: 'cuda-emu' });
    const o: LinearCrossEntropyOptions = { bias: p.bias!, labelSmoothing: 0.1 };
    const d = lib.linearCrossEntropy(Ed, Wd, p.labels, o);
    const da = await lib.linearCrossEntropyAsync(Ed, Wd, p.labels, o);
    lib.setBackend('cuda-emu');
    const h = lib.linearCrossEntropy(E, W, p.labels, o);
    expect(d.loss).toBe(h.loss);
    expect(da.loss).toBe(h.loss);
    expect(d.dEmbeddings!.backend).toBe('cuda-emu');
    expect([d.dEmbeddings!.dtype, d.dClassifier!.dtype]).toEqual(['bf16', 'bf16']);
    expect(d.dEmbeddings!.download().data).toEqual(h.dEmbeddings!.data);
    expect(d.dClassifier!.download().data).toEqual(h.dClassifier!.data);
    expect(d.dBias).toEqual(h.dBias);
    expect(d.workspaceBytes).toBe(h.workspaceBytes);
    expect(live()).toBe(before + 6); // E, W and the two gradients of each device call
    for (const t of [Ed, Wd, d.dEmbeddings!, d.dClassifier!, da.dEmbeddings!, da.dClassifier!]) t.dispose();
    expect(live()).toBe(before);
  });

  it('bad input is refused with the same codes as the other backends', async () => {
    lib.setBackend('cuda-emu');
    const { p, E, W } = calls('f32');
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as lib.CutlossError).code;
      }
      return 'none';
    };
    expect(code(() => lib.linearCrossEntropy(E, W, p.labels.subarray(1)))).toBe('E_SHAPE');
    expect(code(() => lib.linearCrossEntropy(E, W, Int32Array.from(p.labels, () => 170)))).toBe('E_LABEL');
    expect(code(() => lib.linearCrossEntropy(E, W, p.labels, { deterministic: 1 as never }))).toBe('E_OPTION');
    expect(code(() => lib.linearCrossEntropyWorkspaceBytes(-1, 2, 3))).toBe('E_SHAPE');
    await expect(lib.linearCrossEntropyAsync(E, W, p.labels, { tf32: 'yes' as never })).rejects.toMatchObject({ code: 'E_OPTION' });
  });
});
