// crossEntropy and linearCrossEntropy against the independent float64 re-computation
// (test/reference64.ts), central finite differences, closed forms and PyTorch facts, for
// every option, reduction and normalizer, on odd shapes and across tile boundaries.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  crossEntropy, linearCrossEntropy, setBackend, tensor, type CrossEntropyOptions, type LinearCrossEntropyOptions,
} from '../lib/index.js';
import { linearCrossEntropyJs } from '../lib/js/losses.js';
import { resolveLossOptions } from '../lib/options.js';
import { expectClose, expectLinearCeClose, flat, gridRows, lossList } from './helpers.js';
import * as ref from './reference64.js';
import { CASES, EDGE_ROWS, V_ODD, labelsFor, linearCeProblem, weights } from './cases.js';

// The reference backend's suite (float64 inside, which the finite differences need); the cpu
// backend runs the same matrix in test/native/cpu.test.ts.
beforeAll(() => setBackend('js'));
afterAll(() => setBackend('auto'));

function refOptions(o: CrossEntropyOptions): ref.CeOptions {
  return o as ref.CeOptions;
}

describe('crossEntropy matches the float64 re-computation for every option', () => {
  for (const [name, options] of CASES) {
    it(name, () => {
      const rng = ref.mulberry32(17);
      const N = 9;
      const X = ref.randomRows(rng, N, V_ODD, 2.5);
      const labels = labelsFor(rng, N, V_ODD, options);
      const logits = tensor(ref.rowsToF32(X), [N, V_ODD]);
      const X32 = ref.toF64Rows(logits.data, N, V_ODD);
      const got = crossEntropy(logits, labels, { ...options, returnLse: true });
      const want = ref.crossEntropy(X32, labels, refOptions(options));
      expectClose(lossList(got.loss), lossList(want.loss), { rtol: 1e-6, label: 'loss' });
      expectClose(got.lse!, want.lse, { rtol: 1e-6, label: 'lse' });
      expectClose(got.dLogits!.data, want.dLogits, { rtol: 1e-5, label: 'dLogits' });
    });
  }
});

describe('linearCrossEntropy matches the float64 re-computation for every option', () => {
  for (const [name, options] of CASES) {
    for (const withBias of [false, true]) {
      it(`${name}${withBias ? ', with bias' : ''}`, () => {
        const { N, D, V, E, W, bias, labels } = linearCeProblem(options, withBias);
        const Et = tensor(ref.rowsToF32(E), [N, D]);
        const Wt = tensor(ref.rowsToF32(W), [V, D]);
        const opts: LinearCrossEntropyOptions = { ...options, returnLse: true, ...(bias ? { bias } : {}) };
        const got = linearCrossEntropy(Et, Wt, labels, opts);
        const want = ref.linearCrossEntropy(
          ref.toF64Rows(Et.data, N, D), ref.toF64Rows(Wt.data, V, D), labels, { ...refOptions(options), bias },
        );
        expectLinearCeClose(got, want, withBias);

        // The same through tiny tiles (4 rows × 6 classes): every tile edge is exercised.
        const resolved = resolveLossOptions(opts, N, V, 'f32', true);
        const tiled = linearCrossEntropyJs(
          Et.data as Float32Array, Wt.data as Float32Array, resolved.bias, N, D, V, labels,
          { ...resolved, tileRows: 4, tileCols: 6 },
        );
        expectClose(lossList(tiled.loss), lossList(want.loss), { rtol: 1e-6, label: 'tiled loss' });
        expectClose(tiled.dEmbeddings!, want.dE, { rtol: 1e-5, label: 'tiled dE' });
        expectClose(tiled.dClassifier!, want.dW, { rtol: 1e-5, label: 'tiled dW' });
      });
    }
  }
});

describe('gradients match central finite differences of the loss (float64 probes)', () => {
  // Inputs on a 2^-12 grid and a step of 2^-10 keep x ± h exact in f32, and mean/sum losses
  // come back as float64 numbers, so the difference quotient is accurate to O(h²).
  const h = 2 ** -10;
  const fdCases = CASES.filter(([, o]) => o.reduction !== 'none');
  for (const [name, options] of fdCases) {
    it(name, () => {
      const rng = ref.mulberry32(5);
      const [N, V] = [3, V_ODD];
      const X = gridRows(rng, N, V, 3);
      const labels = Int32Array.from([4, 0, 36]);
      const data = ref.rowsToF32(X);
      const lossAt = (d: Float32Array) => crossEntropy(tensor(d, [N, V]), labels, { ...options, computeGrad: false }).loss as number;
      const grad = crossEntropy(tensor(data, [N, V]), labels, options).dLogits!.data;
      const g = typeof options.gradScale === 'number' ? options.gradScale : 1; // gradients are of g·loss
      for (let i = 0; i < data.length; i += 3) {
        const plus = data.slice();
        const minus = data.slice();
        plus[i] += h;
        minus[i] -= h;
        const fd = (g * (lossAt(plus) - lossAt(minus))) / (2 * h);
        expect(Math.abs(fd - grad[i]!), `element ${i}: fd ${fd} vs ${grad[i]}`).toBeLessThan(2e-5 + 2e-3 * Math.abs(fd));
      }
    });
  }
  it('linearCrossEntropy dE, dW, dBias', () => {
    const rng = ref.mulberry32(8);
    const [N, D, V] = [4, 3, 11];
    const E = ref.rowsToF32(gridRows(rng, N, D, 1));
    const W = ref.rowsToF32(gridRows(rng, V, D, 1));
    const bias = ref.rowsToF32(gridRows(rng, 1, V, 1));
    const labels = Int32Array.from([3, 10, 0, 5]);
    const o: LinearCrossEntropyOptions = { labelSmoothing: 0.1, zLoss: 0.01, softcap: 2, focalGamma: 1 };
    const lossAt = (e: Float32Array, w: Float32Array, b: Float32Array) =>
      linearCrossEntropy(tensor(e, [N, D]), tensor(w, [V, D]), labels, { ...o, bias: b, computeGrad: false }).loss as number;
    const got = linearCrossEntropy(tensor(E, [N, D]), tensor(W, [V, D]), labels, { ...o, bias });
    const probe = (arr: Float32Array, which: number, grad: ArrayLike<number>) => {
      for (let i = 0; i < arr.length; i++) {
        const p = arr.slice();
        const m = arr.slice();
        p[i] += h;
        m[i] -= h;
        const args = (x: Float32Array): [Float32Array, Float32Array, Float32Array] =>
          which === 0 ? [x, W, bias] : which === 1 ? [E, x, bias] : [E, W, x];
        const fd = (lossAt(...args(p)) - lossAt(...args(m))) / (2 * h);
        expect(Math.abs(fd - grad[i]!)).toBeLessThan(2e-5 + 2e-3 * Math.abs(fd));
      }
    };
    probe(E, 0, got.dEmbeddings!.data);
    probe(W, 1, got.dClassifier!.data);
    probe(bias, 2, got.dBias!);
  });
});

describe('closed forms and PyTorch facts', () => {
  it('F.cross_entropy([[1, 2, 3]], [0]) = 2.4076059644443806', () => {
    const r = crossEntropy(tensor(new Float32Array([1, 2, 3]), [1, 3]), new Int32Array([0]));
    expect(r.loss).toBeCloseTo(2.4076059644443806, 12);
    // softmax − onehot
    const p = [1, 2, 3].map((v) => Math.exp(v - 3.4076059644443806));
    expectClose(r.dLogits!.data, [p[0]! - 1, p[1]!, p[2]!], { rtol: 1e-7 });
  });
  it('uniform logits give log V, for every V including 1 and 2', () => {
    for (const V of [1, 2, 3, 257, 1000]) {
      const r = crossEntropy(tensor(new Float32Array(V).fill(0.25), [1, V]), new Int32Array([V - 1]));
      expect(r.loss as number).toBeCloseTo(Math.log(V), 6);
    }
  });
  it('V = 1: zero loss and zero gradient', () => {
    const r = crossEntropy(tensor(new Float32Array([5, -7]), [2, 1]), new Int32Array([0, 0]), { reduction: 'none' });
    expect(Array.from(r.loss as Float32Array)).toEqual([0, 0]);
    expect(Array.from(r.dLogits!.data)).toEqual([0, 0]);
  });
  it('label smoothing: PyTorch mixes (1 − α)·NLL with α·mean_j(−log p_j)', () => {
    const x = [1, 2, 3];
    const lse = 3.4076059644443806;
    const alpha = 0.1;
    const expected = (1 - alpha) * (lse - 1) + (alpha / 3) * x.reduce((s, v) => s + (lse - v), 0);
    const r = crossEntropy(tensor(Float32Array.from(x), [1, 3]), new Int32Array([0]), { labelSmoothing: alpha });
    expect(r.loss as number).toBeCloseTo(expected, 10);
  });
  it('class weights: the mean divides by the summed weights of the targets', () => {
    const x = Float32Array.from([1, 2, 3, 0, 0, 0]);
    const w = Float32Array.from([2, 1, 0.5]);
    const r = crossEntropy(tensor(x, [2, 3]), new Int32Array([0, 2]), { classWeights: w });
    const expected = (2 * (3.4076059644443806 - 1) + 0.5 * Math.log(3)) / 2.5;
    expect(r.loss as number).toBeCloseTo(expected, 10);
  });
  it('all rows ignored: NaN mean with zero gradients, 0 sum, zeros for none', () => {
    const x = tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
    const labels = new Int32Array([-100, -100]);
    const mean = crossEntropy(x, labels);
    expect(mean.loss).toBeNaN();
    expect(Array.from(mean.dLogits!.data)).toEqual([0, 0, 0, 0, 0, 0]);
    expect(crossEntropy(x, labels, { reduction: 'sum' }).loss).toBe(0);
    expect(Array.from(crossEntropy(x, labels, { reduction: 'none' }).loss as Float32Array)).toEqual([0, 0]);
    const E = tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
    const W = tensor(Float32Array.from([1, 0, 0, 1, 1, 1]), [3, 2]);
    const lin = linearCrossEntropy(E, W, labels, { bias: new Float32Array(3) });
    expect(lin.loss).toBeNaN();
    expect(flat([lin.dEmbeddings!.data, lin.dClassifier!.data, lin.dBias!]).every((v) => v === 0)).toBe(true);
  });
  it('sparsemax loss of an equal row of V is ½ − 1/(2V) (exercises the crowded-row passes)', () => {
    for (const V of [3, 40, 600]) {
      const r = crossEntropy(tensor(new Float32Array(V).fill(1.5), [1, V]), new Int32Array([0]), { normalizer: 'sparsemax' });
      expect(r.loss as number).toBeCloseTo(0.5 - 1 / (2 * V), 9);
      // gradient p − onehot with p uniform
      expectClose(r.dLogits!.data, Array.from({ length: V }, (_, j) => 1 / V - (j === 0 ? 1 : 0)), { rtol: 1e-6 });
    }
  });
});

describe('edge values', () => {
  for (const [name, X, labels] of EDGE_ROWS) {
    for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
      it(`${name} (${normalizer})`, () => {
        const t = tensor(ref.rowsToF32(X), [X.length, 4]);
        const X32 = ref.toF64Rows(t.data, X.length, 4);
        const lab = Int32Array.from(labels);
        for (const reduction of ['mean', 'sum', 'none'] as const) {
          const got = crossEntropy(t, lab, { normalizer, reduction, returnLse: true });
          const want = ref.crossEntropyLoss(X32, labels, { normalizer, reduction });
          // per-row losses are stored in f32, where 6e38 is +inf
          const wanted = typeof want.loss === 'number' ? [want.loss] : want.loss.map(Math.fround);
          expectClose(lossList(got.loss), wanted, { rtol: 1e-6, label: `${reduction} loss` });
          expectClose(got.lse!, want.lse, { rtol: 1e-6, label: 'lse' });
          for (const v of got.dLogits!.data) expect(Number.isFinite(v)).toBe(true);
        }
      });
    }
  }
  it('a NaN logit gives a NaN loss for its row and never throws', () => {
    const t = tensor(Float32Array.from([NaN, 1, 2, 0, 1, 2]), [2, 3]);
    const r = crossEntropy(t, new Int32Array([1, 2]), { reduction: 'none' });
    const loss = r.loss as Float32Array;
    expect(loss[0]).toBeNaN();
    expect(loss[1]).toBeCloseTo(Math.log(Math.exp(0) + Math.exp(1) + Math.exp(2)) - 2, 6);
    expect(crossEntropy(t, new Int32Array([1, 2])).loss).toBeNaN();
  });
  it('linearCrossEntropy keeps IEEE semantics: 0·NaN in E·Wᵀ is NaN', () => {
    const E = tensor(Float32Array.from([0, 1, 0, 1, 0, 1, 0, 1]), [4, 2]);
    const W = tensor(Float32Array.from([NaN, 1, 1, 1]), [2, 2]);
    expect(linearCrossEntropy(E, W, new Int32Array([1, 1, 1, 1]), { computeGrad: false }).loss).toBeNaN();
  });
  it('a label at −inf has infinite loss', () => {
    const r = crossEntropy(tensor(Float32Array.from([-Infinity, 0]), [1, 2]), new Int32Array([0]));
    expect(r.loss).toBe(Infinity);
  });
});

describe('tile boundaries at realistic tile sizes', () => {
  it('crossEntropy with V = 600 (three class tiles), gradients of the first rows', () => {
    const rng = ref.mulberry32(3);
    const [N, V] = [70, 600];
    const X = ref.randomRows(rng, N, V, 3);
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    const t = tensor(ref.rowsToF32(X), [N, V]);
    const X32 = ref.toF64Rows(t.data, N, V);
    for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
      const o: CrossEntropyOptions = { normalizer, labelSmoothing: 0.1, zLoss: 1e-3 };
      const got = crossEntropy(t, labels, o);
      expectClose([got.loss as number], [ref.crossEntropyLoss(X32, labels, o).loss as number], { rtol: 1e-6 });
      // a row's gradient depends on its own logits and the mean's 1/N only
      const rows = 2;
      const want = ref.crossEntropyGrad(X32.slice(0, rows), labels.slice(0, rows), { ...o, reduction: 'sum', gradScale: 1 / N });
      expectClose(got.dLogits!.data.subarray(0, rows * V), want, { rtol: 1e-5, label: normalizer });
    }
  });
  it('linearCrossEntropy with N = 70 rows (two row tiles) and with V = 600 (three class tiles)', () => {
    for (const [N, D, V] of [[70, 6, 23], [5, 7, 600]] as const) {
      const rng = ref.mulberry32(N + V);
      const E = ref.randomRows(rng, N, D, 1);
      const W = ref.randomRows(rng, V, D, 1);
      const labels = Int32Array.from(ref.randomLabels(rng, N, V));
      const Et = tensor(ref.rowsToF32(E), [N, D]);
      const Wt = tensor(ref.rowsToF32(W), [V, D]);
      const o: LinearCrossEntropyOptions = { labelSmoothing: 0.05, squentropy: true };
      const got = linearCrossEntropy(Et, Wt, labels, o);
      const want = ref.linearCrossEntropy(ref.toF64Rows(Et.data, N, D), ref.toF64Rows(Wt.data, V, D), labels, o);
      expectClose([got.loss as number], [want.loss as number], { rtol: 1e-6 });
      expectClose(got.dEmbeddings!.data, want.dE, { rtol: 1e-5 });
      expectClose(got.dClassifier!.data, want.dW, { rtol: 1e-5 });
    }
  });
});

describe('bf16 inputs', () => {
  it('crossEntropy: loss from the decoded values, bf16 gradient within bf16 rounding', () => {
    const rng = ref.mulberry32(21);
    const [N, V] = [6, 29];
    const bits = ref.rowsToBf16(ref.randomRows(rng, N, V, 2));
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    const got = crossEntropy(tensor(bits, [N, V], 'bf16'), labels, { labelSmoothing: 0.1 });
    expect(got.dLogits!.dtype).toBe('bf16');
    expect(got.dLogits!.data).toBeInstanceOf(Uint16Array);
    const X = ref.toF64Rows(bits, N, V);
    const want = ref.crossEntropy(X, labels, { labelSmoothing: 0.1 });
    expectClose([got.loss as number], [want.loss as number], { rtol: 1e-6 });
    const grad = Array.from(got.dLogits!.data as Uint16Array, ref.bf16ToF32);
    expectClose(grad, want.dLogits, { rtol: 1e-2, atol: 1e-6 });
  });
  it('linearCrossEntropy: bf16 E and W, default filterEps (auto) stays within bf16 tolerance', () => {
    const rng = ref.mulberry32(22);
    const [N, D, V] = [8, 16, 300];
    const E = ref.rowsToBf16(ref.randomRows(rng, N, D, 1));
    const W = ref.rowsToBf16(ref.randomRows(rng, V, D, 2));
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    const got = linearCrossEntropy(tensor(E, [N, D], 'bf16'), tensor(W, [V, D], 'bf16'), labels);
    expect(got.dEmbeddings!.dtype).toBe('bf16');
    const want = ref.linearCrossEntropy(ref.toF64Rows(E, N, D), ref.toF64Rows(W, V, D), labels);
    expectClose([got.loss as number], [want.loss as number], { rtol: 1e-6 });
    expectClose(Array.from(got.dEmbeddings!.data as Uint16Array, ref.bf16ToF32), want.dE, { rtol: 1e-2, atol: 1e-5 });
    expectClose(Array.from(got.dClassifier!.data as Uint16Array, ref.bf16ToF32), want.dW, { rtol: 1e-2, atol: 1e-5 });
  });
});

describe('gradient filtering (filterEps)', () => {
  it('skips tiles of peaked rows and stays within the filtered mass of the exact gradient', () => {
    const rng = ref.mulberry32(31);
    const [N, D, V] = [32, 8, 2000];
    // a trained model's spread (σ ≈ 20): most of each row's softmax is far below 2^-12
    const E = ref.rowsToF32(ref.randomRows(rng, N, D, 1));
    const W = ref.rowsToF32(ref.randomRows(rng, V, D, 7));
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    const exact = resolveLossOptions({}, N, V, 'f32', true);
    const run = (filterEps: number) =>
      linearCrossEntropyJs(E, W, null, N, D, V, labels, { ...exact, filterEps, tileRows: 8, tileCols: 64 });
    const a = run(0);
    const b = run(2 ** -12);
    expect(a.skippedTiles).toBe(0);
    expect(b.skippedTiles).toBeGreaterThan(0);
    expect(b.loss).toBe(a.loss); // the forward is never filtered
    // every skipped coefficient is < 2^-12/N; at most V of them meet each W row
    let maxDiff = 0;
    for (let i = 0; i < a.dEmbeddings!.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a.dEmbeddings![i]! - b.dEmbeddings![i]!));
    const wMax = Math.max(...Array.from(W, Math.abs));
    expect(maxDiff).toBeLessThanOrEqual((2 ** -12 / N) * V * wMax);
    console.log(`filterEps 2^-12 skipped ${b.skippedTiles} of ${b.visitedTiles} backward tiles; max |ΔdE| ${maxDiff.toExponential(2)}`);
  });
});
