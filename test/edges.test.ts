// The float32 edge matrix (test/edge-cases.ts) on every backend against the float64
// reference (test/reference64.ts), plus the bugs it caught, each pinned by a direct case:
// a huge max losing log Σ, StableMax's gradient cancelling at |z| ≈ 1e4, ±inf and NaN
// rows, inputs detached after an async call, and class weights whose target sum is 0.
import { describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import type { CrossEntropyOptions } from '../lib/index.js';
import { EDGE_MATRIX } from './edge-cases.js';
import * as ref from './reference64.js';

const BACKENDS = lib.backends().filter((b) => b.available && (b.name === 'js' || b.name === 'cpu' || b.name === 'cuda-emu'))
  .map((b) => b.name);

/** Per element: NaN and ±inf exactly (after f32 rounding), else |a − e| ≤ rtol·|e| + atol. */
function expectElementsClose(actual: ArrayLike<number>, expected: ArrayLike<number>, label: string, rtol = 2e-5, atol = 1e-6) {
  expect(actual.length, label).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const e = Math.fround(expected[i]!);
    const a = actual[i]!;
    if (!Number.isFinite(e)) {
      expect(a, `${label}[${i}]`).toBe(e);
      continue;
    }
    if (!(Math.abs(a - expected[i]!) <= rtol * Math.abs(expected[i]!) + atol)) {
      throw new Error(`${label}[${i}]: got ${a}, expected ${expected[i]}`);
    }
  }
}

const f32 = (rows: number[][]) => Float32Array.from(rows.flat());
const flat = (rows: number[][]) => rows.flat();

function withBackend<T>(name: string, fn: () => T): T {
  const before = lib.getBackend();
  lib.setBackend(name as never);
  try {
    return fn();
  } finally {
    lib.setBackend(before as never);
  }
}

const MASK = Uint8Array.of(1, 1, 0, 1, 1); // shared by every row
const GUMBEL = { tau: 0.5, seed: 7 };

/**
 * README's rule for a row without a finite distribution (a NaN or +inf among its unmasked
 * entries, or none above −inf): all of its outputs are NaN, masked ones too (as PyTorch's
 * masked_fill(−inf) then softmax). The float64 references of entmax-1.5 and of masks do not
 * follow it on their own.
 */
function nanRows(rows: ref.Rows, out: number[][], mask?: Uint8Array): number[][] {
  return out.map((o, i) => {
    const live = Array.from(rows[i]!).filter((_, j) => mask === undefined || mask[j] !== 0);
    const none = live.some((v) => Number.isNaN(v) || v === Infinity) || live.every((v) => v === -Infinity);
    return none ? o.map(() => NaN) : o;
  });
}

const ROW_OPS: [string, (x: lib.Tensor) => lib.Tensor, (r: ref.Rows) => number[][]][] = [
  ['softmax', (x) => lib.softmax(x), (r) => ref.softmax(r)],
  ['logSoftmax', (x) => lib.logSoftmax(x), (r) => ref.logSoftmax(r)],
  ['softmax T=0.5', (x) => lib.softmax(x, { temperature: 0.5 }), (r) => ref.softmax(r, { temperature: 0.5 })],
  ['logSoftmax T=0.5', (x) => lib.logSoftmax(x, { temperature: 0.5 }), (r) => ref.logSoftmax(r, { temperature: 0.5 })],
  ['stablemax', lib.stablemax, ref.stablemax],
  ['logStablemax', lib.logStablemax, ref.logStablemax],
  ['sparsemax', lib.sparsemax, ref.sparsemax],
  ['entmax15', lib.entmax15, (r) => nanRows(r, ref.entmax15(r))],
  ['softmax masked', (x) => lib.softmax(x, { mask: MASK }), (r) => nanRows(r, ref.softmax(r, { mask: MASK }), MASK)],
  ['logSoftmax masked T=0.5', (x) => lib.logSoftmax(x, { mask: MASK, temperature: 0.5 }),
    (r) => nanRows(r, ref.logSoftmax(r, { mask: MASK, temperature: 0.5 }), MASK)],
  ['gumbelSoftmax τ=0.5', (x) => lib.gumbelSoftmax(x, GUMBEL), (r) => ref.gumbelSoftmax(r, GUMBEL)],
];

const LOSS_OPTIONS: [string, CrossEntropyOptions][] = [
  ['plain', { reduction: 'none' }],
  ['temperature', { reduction: 'none', temperature: 0.7 }],
  ['softcap + temperature', { reduction: 'none', softcap: 5, temperature: 0.7 }],
  ['softcap', { reduction: 'none', softcap: 5 }],
  ['focal', { reduction: 'none', focalGamma: 2 }],
  ['Poly-1', { reduction: 'none', polyEpsilon: 0.5 }],
  ['stablemax', { reduction: 'none', normalizer: 'stablemax' }],
  ['sparsemax', { reduction: 'none', normalizer: 'sparsemax' }],
  ['sparsemax + temperature', { reduction: 'none', normalizer: 'sparsemax', temperature: 0.7 }],
  ['class weights', { reduction: 'none', classWeights: Float32Array.of(0.5, 1, 2, 1, 1.5) }],
  ['z-loss', { reduction: 'none', zLoss: 1e-4 }],
  ['squentropy', { reduction: 'none', squentropy: true }],
  ['generalized CE', { reduction: 'none', generalizedCE: 0.5 }],
  ['label smoothing', { reduction: 'none', labelSmoothing: 0.1 }],
  ['label smoothing + temperature', { reduction: 'none', labelSmoothing: 0.1, temperature: 0.7 }],
];

describe.each(BACKENDS)('float32 edge matrix on %s', (backend) => {
  for (const [name, rows, labels] of EDGE_MATRIX) {
    it(`${name}: row-wise ops and their VJPs`, () => {
      const x = lib.tensor(f32(rows), [rows.length, rows[0]!.length]);
      for (const [op, run, want] of ROW_OPS) {
        const got = withBackend(backend, () => run(x));
        expectElementsClose(got.data as Float32Array, flat(want(rows)), `${op}`);
      }
      const dy = rows.map((r) => r.map((_, j) => ((j % 3) - 1) * 0.5));
      const gotDx = withBackend(backend, () => lib.softmaxBackward(x, lib.tensor(f32(dy), [rows.length, rows[0]!.length])));
      expectElementsClose(gotDx.data as Float32Array, flat(ref.softmaxBackward(rows, dy)), 'softmaxBackward');
      const dyT = lib.tensor(f32(dy), [rows.length, rows[0]!.length]);
      for (const log of [false, true]) {
        const got = withBackend(backend, () => (log ? lib.logSoftmaxBackward : lib.softmaxBackward)(x, dyT, { temperature: 0.5 }));
        const want = (log ? ref.logSoftmaxBackward : ref.softmaxBackward)(rows, dy, { temperature: 0.5 });
        expectElementsClose(got.data as Float32Array, flat(want), `${log ? 'logSoftmax' : 'softmax'}Backward T=0.5`);
        const gotS = withBackend(backend, () => (log ? lib.logStablemaxBackward : lib.stablemaxBackward)(x, dyT));
        const wantS = (log ? ref.logStablemaxBackward : ref.stablemaxBackward)(rows, dy);
        expectElementsClose(gotS.data as Float32Array, flat(wantS), `${log ? 'logStablemax' : 'stablemax'}Backward`);
      }
      const VJPS: [string, (x: lib.Tensor, dy: lib.Tensor) => lib.Tensor, (x: ref.Rows, dy: ref.Rows) => number[][]][] = [
        ['sparsemaxBackward', lib.sparsemaxBackward, ref.sparsemaxBackward],
        ['entmax15Backward', lib.entmax15Backward, (a, b) => nanRows(a, ref.entmax15Backward(a, b))],
        ['gumbelSoftmaxBackward', (a, b) => lib.gumbelSoftmaxBackward(a, b, GUMBEL), (a, b) => ref.gumbelSoftmaxBackward(a, b, GUMBEL)],
      ];
      for (const [op, run, want] of VJPS) {
        const got = withBackend(backend, () => run(x, dyT));
        expectElementsClose(got.data as Float32Array, flat(want(rows, dy)), op);
      }
      // logSumExp of a row with +inf is +inf (as torch.logsumexp), of an all −inf row −inf; at
      // T = 0.5 a finite row's lse may exceed float32 (+inf), its softmax does not
      for (const temperature of [1, 0.5]) {
        const lse = withBackend(backend, () => lib.logSumExp(x, { temperature }));
        const wantLse = rows.map((r) => (r.some(Number.isNaN) ? NaN : r.includes(Infinity) ? Infinity : ref.logSumExp([r], { temperature })[0]!));
        expectElementsClose(lse as Float32Array, wantLse, `logSumExp T=${temperature}`);
      }
    });
    for (const [opt, o] of LOSS_OPTIONS) {
      it(`${name}: crossEntropy with ${opt}`, () => {
        const x = lib.tensor(f32(rows), [rows.length, rows[0]!.length]);
        const got = withBackend(backend, () => lib.crossEntropy(x, Int32Array.from(labels), o));
        const want = ref.crossEntropy(rows, labels, { ...o, reduction: 'none' } as ref.CeOptions);
        expectElementsClose(got.loss as Float32Array, want.loss as number[], `${opt} loss`);
        expectElementsClose(got.dLogits!.data as Float32Array, flat(want.dLogits), `${opt} dLogits`);
      });
    }
  }
});

describe.each(BACKENDS)('the edge bugs, pinned, on %s', (backend) => {
  it('a max near the float32 limit keeps log Σ: ties at 3e38 give 1/2, nine at −3e37 give −log 9', () => {
    withBackend(backend, () => {
      expectElementsClose(lib.softmax(lib.tensor(Float32Array.of(3e38, 3e38, 0), [3])).data as Float32Array, [0.5, 0.5, 0], 'softmax');
      expectElementsClose(lib.logSoftmax(lib.tensor(new Float32Array(9).fill(-3e37), [9])).data as Float32Array,
        new Array(9).fill(-Math.log(9)), 'logSoftmax');
      const ce = lib.crossEntropy(lib.tensor(Float32Array.of(3e38, 3e38, 0), [1, 3]), Int32Array.of(0));
      expectElementsClose([ce.loss as number], [Math.LN2], 'loss');
      expectElementsClose(ce.dLogits!.data as Float32Array, [-0.5, 0.5, 0], 'dLogits');
    });
  });

  it('StableMax CE gradient at |z| ≈ 1e4 is exact to fp32: a_t·s\'/s is not formed as a_t − a_t(1 − s\'/s)', () => {
    const z = [1e4, -1e4, 12345.5, -3e38, 7];
    const got = withBackend(backend, () => lib.crossEntropy(lib.tensor(Float32Array.from(z), [1, 5]), Int32Array.of(1),
      { normalizer: 'stablemax' }));
    const want = ref.crossEntropy([z], [1], { normalizer: 'stablemax' });
    expectElementsClose(got.dLogits!.data as Float32Array, flat(want.dLogits), 'dLogits', 1e-6, 1e-30);
    // ℓ = log(S·scale) − log(s_t·scale), not log S − log s_t, which cancels at |log S| ≈ 9
    const rows = [[1e4, 1e4 - 1, -1e4, 0, 1e4 - 0.5], [3e38, 3e38, 0, -3e38, 1]];
    const loss = withBackend(backend, () => lib.crossEntropy(lib.tensor(f32(rows), [2, 5]), Int32Array.of(1, 1),
      { normalizer: 'stablemax', reduction: 'none' })).loss as Float32Array;
    expectElementsClose(loss, ref.crossEntropy(rows, [1, 1], { normalizer: 'stablemax', reduction: 'none' }).loss as number[],
      'loss', 1e-6, 0);
  });

  it('+inf anywhere in a row gives a NaN row; −inf entries get probability 0; class weights summing to 0', () => {
    withBackend(backend, () => {
      for (const row of [[Infinity, Infinity, 3], [Infinity, 1, 2]]) {
        const x = lib.tensor(Float32Array.from(row), [3]);
        for (const y of [lib.softmax(x), lib.logSoftmax(x), lib.stablemax(x), lib.sparsemax(x)]) {
          expect(Array.from(y.data as Float32Array).every(Number.isNaN)).toBe(true);
        }
      }
      expectElementsClose(lib.softmax(lib.tensor(Float32Array.of(-Infinity, 0, 0), [3])).data as Float32Array, [0, 0.5, 0.5], 'masked');
      const logits = lib.tensor(Float32Array.of(1, 2, 3, 1, 2, 3), [2, 3]);
      // Σ w_t·ℓ_t / Σ w_t as PyTorch: 0/0 when every target weight is 0, ±x/0 when they cancel
      const zero = lib.crossEntropy(logits, Int32Array.of(0, 1), { classWeights: Float32Array.of(0, 0, 1) });
      expect(zero.loss).toBeNaN();
      expect(Array.from(zero.dLogits!.data as Float32Array).every(Number.isNaN)).toBe(true);
      const cancel = lib.crossEntropy(logits, Int32Array.of(0, 1), { classWeights: Float32Array.of(1, -1, 1) });
      expect(cancel.loss).toBe(Infinity); // ℓ_0 > ℓ_1: (ℓ_0 − ℓ_1)/0
      const ignored = lib.crossEntropy(logits, Int32Array.of(-100, -100));
      expect(ignored.loss).toBeNaN();
      expect(Array.from(ignored.dLogits!.data as Float32Array).every((v) => v === 0)).toBe(true);
    });
  });

  it.runIf(backend === 'js')('an async call takes its inputs at call time: a buffer transferred right after gives the same result', async () => {
    const data = Float32Array.of(0.5, -1, 2, 0.25, 3, -2);
    const labels = Int32Array.of(2, 0);
    const want = withBackend(backend, () => lib.crossEntropy(lib.tensor(data.slice(), [2, 3]), labels.slice()));
    lib.setBackend(backend as never);
    try {
      const pending = lib.crossEntropyAsync(lib.tensor(data, [2, 3]), labels);
      structuredClone(data.buffer, { transfer: [data.buffer] });
      structuredClone(labels.buffer, { transfer: [labels.buffer] });
      expect(data.length).toBe(0); // detached
      const got = await pending;
      expect(got.loss).toBe(want.loss);
      expect(Array.from(got.dLogits!.data as Float32Array)).toEqual(Array.from(want.dLogits!.data as Float32Array));
    } finally {
      lib.setBackend('js');
    }
  });
});

describe.each(BACKENDS)('linearCrossEntropy on the float32 edge matrix, on %s', (backend) => {
  // E = the rows, W = I (D = V): each logit is one exact product, so the fused loss sees the
  // matrix's values; rows with ±inf or NaN are left out (inf·0 is NaN inside any GEMM)
  for (const [name, rows, labels] of EDGE_MATRIX) {
    if (!rows.flat().every(Number.isFinite)) continue;
    const V = rows[0]!.length;
    const eye = Float32Array.from({ length: V * V }, (_, k) => (k % (V + 1) === 0 ? 1 : 0));
    for (const [opt, o] of LOSS_OPTIONS) {
      it(`${name}: ${opt}: loss and dEmbeddings equal crossEntropy's float64 loss and dLogits`, () => {
        const E = lib.tensor(f32(rows), [rows.length, V]);
        const W = lib.tensor(eye, [V, V]);
        const got = withBackend(backend, () => lib.linearCrossEntropy(E, W, Int32Array.from(labels), { ...o, filterEps: 0 }));
        const want = ref.crossEntropy(rows, labels, { ...o, reduction: 'none' } as ref.CeOptions);
        expectElementsClose(got.loss as Float32Array, want.loss as number[], `${opt} loss`);
        expectElementsClose(got.dEmbeddings!.data as Float32Array, flat(want.dLogits), `${opt} dEmbeddings`);
      });
    }
  }
});
