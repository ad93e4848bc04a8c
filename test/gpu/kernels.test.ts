// The cross-backend comparisons of test/native/kernels-emu.test.ts repeated on a real GPU at
// realistic sizes: every row-wise op forward and backward, crossEntropy with the option
// matrix, linearCrossEntropy (when the cuda backend has its kernel), against the JS backend
// (and the float64 reference where rows are short enough for it). Rows up to 10^6 long, and a
// matrix of more than 2^31 elements for the int64 offsets. Skipped, saying why, without a GPU.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { casesFor, labelsFor } from '../cases.js';
import { expectClose, lossList } from '../helpers.js';
import * as ref from '../reference64.js';
import { cuda, onGpu } from './device.js';

type Dtype = 'f32' | 'bf16';
type Tol = { rtol: number; atol: number };
type Output = lib.Tensor | Float32Array | number;

// DESIGN.md "Numerics", with a little room for reductions over 10^6 elements
const F32: Tol = { rtol: 2e-5, atol: 1e-7 };
const F32_LOG: Tol = { rtol: 2e-5, atol: 1e-5 };
const F32_LINEAR: Tol = { rtol: 5e-5, atol: 1e-7 };
const BF16_FORWARD: Tol = { rtol: 2 ** -7, atol: 1e-5 };
const BF16_BACKWARD: Tol = { rtol: 1e-2, atol: 1e-6 };

const runs = onGpu('test/gpu/kernels.test.ts');
const linearNative = String(cuda.details.nativeOps ?? '').split(', ').includes('linearCrossEntropy');

function randomTensor(rng: () => number, rows: number, cols: number, std: number, dtype: Dtype): lib.Tensor {
  const values = Float32Array.from({ length: rows * cols }, () => ref.randn(rng) * std);
  const data = dtype === 'f32' ? values : Uint16Array.from(values, (v) => ref.f32ToBf16(v));
  return lib.tensor(data, [rows, cols], dtype);
}

const valuesOf = (out: Output): number[] | Float32Array => {
  if (typeof out === 'number') return [out];
  if (out instanceof Float32Array) return out;
  return out.dtype === 'bf16' ? Array.from(out.data as Uint16Array, ref.bf16ToF32) : (out.data as Float32Array);
};

/** Runs `fn` on cuda and on js; every output within its tolerance of the JS backend's. */
function againstJs(label: string, tol: Tol | Tol[], fn: () => Output[]): Output[] {
  lib.setBackend('cuda');
  const got = fn();
  lib.setBackend('js');
  const want = fn();
  got.forEach((g, k) => expectClose(valuesOf(g), valuesOf(want[k]!), { ...(Array.isArray(tol) ? tol[k]! : tol), label: `${label} [${k}]` }));
  return got;
}

describe.skipIf(!runs)('row-wise kernels on the GPU match the JS backend', () => {
  afterAll(() => lib.setBackend('auto'));
  // 1-wide rows, odd widths, rows longer than a block, and rows of 10^6
  const SHAPES: [number, number][] = [[1, 1], [2, 1], [7, 37], [33, 1100], [256, 32000], [64, 50257], [4, 262147], [2, 1_000_003]];

  for (const [rows, cols] of SHAPES) {
    for (const dtype of ['f32', 'bf16'] as const) {
      it(`every op forward and backward, [${rows}, ${cols}] ${dtype}`, () => {
        const rng = ref.mulberry32(rows * 131 + cols);
        const x = randomTensor(rng, rows, cols, 3, dtype);
        const dy = randomTensor(rng, rows, cols, 1, dtype);
        const mask = Uint8Array.from({ length: rows * cols }, () => (rng() < 0.2 ? 0 : 1));
        const seed = 2 ** 40 + rows;
        const [fwd, log, bwd] = dtype === 'f32' ? [F32, F32_LOG, F32] : [BF16_FORWARD, BF16_FORWARD, BF16_BACKWARD];
        const cases: [string, Tol, () => Output][] = [
          ['logSumExp', F32, () => lib.logSumExp(x, { temperature: 0.7, mask })],
          ['softmax', fwd, () => lib.softmax(x, { temperature: 1.3, mask })],
          ['logSoftmax', log, () => lib.logSoftmax(x, { temperature: 0.8 })],
          ['softmaxBackward', bwd, () => lib.softmaxBackward(x, dy, { temperature: 1.3, mask })],
          ['logSoftmaxBackward', bwd, () => lib.logSoftmaxBackward(x, dy)],
          ['stablemax', fwd, () => lib.stablemax(x)],
          ['logStablemax', log, () => lib.logStablemax(x)],
          ['stablemaxBackward', bwd, () => lib.stablemaxBackward(x, dy)],
          ['logStablemaxBackward', bwd, () => lib.logStablemaxBackward(x, dy)],
          ['sparsemax', fwd, () => lib.sparsemax(x)],
          ['sparsemaxBackward', bwd, () => lib.sparsemaxBackward(x, dy)],
          ['entmax15', fwd, () => lib.entmax15(x)],
          ['entmax15Backward', bwd, () => lib.entmax15Backward(x, dy)],
          ['gumbelSoftmax', fwd, () => lib.gumbelSoftmax(x, { tau: 0.7, seed })],
          ['gumbelSoftmax hard', { rtol: 0, atol: 0 }, () => lib.gumbelSoftmax(x, { tau: 0.7, seed, hard: true })],
          ['gumbelSoftmaxBackward', bwd, () => lib.gumbelSoftmaxBackward(x, dy, { tau: 0.7, seed })],
        ];
        for (const [name, tol, fn] of cases) againstJs(`${name} [${rows}, ${cols}] ${dtype}`, tol, () => [fn()]);
      }, 600_000);
    }
  }

  it('short rows also match the float64 reference', () => {
    const rng = ref.mulberry32(5);
    const X = ref.randomRows(rng, 7, 37, 3);
    const DY = ref.randomRows(rng, 7, 37, 1);
    const x = lib.tensor(ref.rowsToF32(X), [7, 37]);
    const dy = lib.tensor(ref.rowsToF32(DY), [7, 37]);
    lib.setBackend('cuda');
    const pairs: [string, Output, number[][] | number[]][] = [
      ['softmax', lib.softmax(x), ref.softmax(X)],
      ['logSoftmaxBackward', lib.logSoftmaxBackward(x, dy), ref.logSoftmaxBackward(X, DY)],
      ['stablemaxBackward', lib.stablemaxBackward(x, dy), ref.stablemaxBackward(X, DY)],
      ['sparsemax', lib.sparsemax(x), ref.sparsemax(X)],
      ['entmax15Backward', lib.entmax15Backward(x, dy), ref.entmax15Backward(X, DY)],
      ['gumbelSoftmax', lib.gumbelSoftmax(x, { tau: 0.5, seed: 3 }), ref.gumbelSoftmax(X, { tau: 0.5, seed: 3 })],
    ];
    for (const [name, got, want] of pairs) expectClose(valuesOf(got), want, { ...F32, label: name });
  });

  it('device tensors give the very same results as host tensors, and stay on the GPU', () => {
    lib.setBackend('cuda');
    const x = randomTensor(ref.mulberry32(9), 100, 5003, 2, 'f32');
    const d = lib.upload(x, { backend: 'cuda' });
    const y = lib.softmax(d);
    expect([y.backend, y.device]).toEqual(['cuda', 'cuda:0']);
    expect(y.download().data).toEqual(lib.softmax(x).data);
    for (const t of [d, y]) t.dispose();
  });

  it('more than 2^31 elements: int64 offsets reach the last rows', () => {
    const [rows, cols] = [65537, 32771]; // 2 147 713 027 elements, 8.6 GB
    const big = new Float32Array(rows * cols);
    const rng = ref.mulberry32(1);
    const last = Float32Array.from({ length: cols }, () => ref.randn(rng) * 3);
    big.set(last, (rows - 1) * cols);
    lib.setBackend('cuda');
    const d = lib.upload(lib.tensor(big, [rows, cols]), { backend: 'cuda' });
    try {
      const lse = lib.logSumExp(d);
      const lseHost = lse.download().data;
      lse.dispose();
      lib.setBackend('js');
      const want = lib.logSumExp(lib.tensor(last, [cols]))[0]!;
      expectClose([lseHost[rows - 1]!, lseHost[0]!], [want, Math.log(cols)], { rtol: 2e-6, label: 'lse of the last and first rows' });
      const y = lib.softmax(d);
      const yHost = y.download().data;
      y.dispose();
      expectClose(yHost.subarray((rows - 1) * cols), lib.softmax(lib.tensor(last, [cols])).data, { ...F32, label: 'softmax of the last row' });
    } finally {
      d.dispose();
    }
  }, 600_000);
});


describe.skipIf(!runs)('crossEntropy on the GPU, every option, matches the JS backend and the float64 reference', () => {
  afterAll(() => lib.setBackend('auto'));
  for (const [N, V] of [[9, 37], [5, 1], [512, 32003], [8, 131072]] as const) {
    for (const dtype of ['f32', 'bf16'] as const) {
      it(`[${N}, ${V}] ${dtype}`, () => {
        for (const [name, options] of casesFor(N, V)) {
          const rng = ref.mulberry32(N * 7 + V);
          const x = randomTensor(rng, N, V, 2.5, dtype);
          const labels = labelsFor(rng, N, V, options);
          const o = { ...options, returnLse: true };
          const label = `${name} [${N}, ${V}] ${dtype}`;
          const [loss, lse, dLogits] = againstJs(label, [F32, F32, dtype === 'f32' ? F32 : BF16_BACKWARD], () => {
            const r = lib.crossEntropy(x, labels, o);
            return [r.loss, r.lse!, r.dLogits!];
          });
          if (V <= 64) {
            const want = ref.crossEntropy(ref.toF64Rows(x.data, N, V), labels, options as ref.CeOptions);
            expectClose(valuesOf(loss!), lossList(want.loss), { ...F32, label: `${label} loss vs reference` });
            expectClose(valuesOf(lse!), want.lse, { ...F32, label: `${label} lse vs reference` });
            expectClose(valuesOf(dLogits!), want.dLogits, { ...(dtype === 'f32' ? F32 : BF16_BACKWARD), label: `${label} dLogits vs reference` });
          }
        }
      }, 600_000);
    }
  }
});

describe.skipIf(!runs || !linearNative)('linearCrossEntropy on the GPU matches the JS backend', () => {
  afterAll(() => lib.setBackend('auto'));
  const linearOptions = (N: number, V: number): [string, lib.LinearCrossEntropyOptions][] => [
    ...casesFor(N, V).map(([name, o]): [string, lib.LinearCrossEntropyOptions] => [name, { ...o, filterEps: 0 }]),
    ['bias', { bias: Float32Array.from({ length: V }, (_, j) => Math.sin(j) / 4), filterEps: 0 }],
    ['deterministic', { deterministic: true, filterEps: 0 }],
    ['tf32', { tf32: true, filterEps: 0 }],
    ['bias + smoothing + z-loss + softcap', {
      bias: Float32Array.from({ length: V }, (_, j) => Math.cos(j) / 4), labelSmoothing: 0.1, zLoss: 1e-4, softcap: 20, filterEps: 0,
    }],
  ];

  function check(N: number, D: number, V: number, dtype: Dtype, cases: [string, lib.LinearCrossEntropyOptions][]) {
    const rng = ref.mulberry32(N + D + V);
    const E = randomTensor(rng, N, D, 1, dtype);
    const W = randomTensor(rng, V, D, 1 / Math.sqrt(D), dtype);
    for (const [name, options] of cases) {
      const labels = labelsFor(rng, N, V, options);
      const o = { ...options, returnLse: true };
      // tiles that round their operands (bf16 inputs, tf32 tensor cores) get the bf16 tolerance
      const rounded = dtype === 'bf16' || o.tf32 === true;
      const grad = rounded ? BF16_BACKWARD : F32_LINEAR;
      const loss = o.tf32 === true ? BF16_BACKWARD : F32_LINEAR;
      const withBias = o.bias !== undefined;
      againstJs(`${name} [N ${N}, D ${D}, V ${V}] ${dtype}`, [loss, loss, grad, grad, grad], () => {
        const r = lib.linearCrossEntropy(E, W, labels, o);
        return [r.loss, r.lse!, r.dEmbeddings!, r.dClassifier!, ...(withBias ? [r.dBias!] : [])];
      });
    }
  }

  for (const dtype of ['f32', 'bf16'] as const) {
    it(`every option on odd shapes, ${dtype}`, () => {
      for (const [N, D, V] of [[9, 17, 37], [67, 129, 5003]] as const) check(N, D, V, dtype, linearOptions(N, V));
    }, 600_000);
    it(`realistic size, N 1024, D 512, V 32003, ${dtype}`, () => {
      const realistic = ['plain mean', 'bias + smoothing + z-loss + softcap', 'deterministic'];
      check(1024, 512, 32003, dtype, linearOptions(1024, 32003).filter(([name]) => realistic.includes(name)));
    }, 600_000);
  }
  // Blocks race only on hardware: deterministic mode's owners (dE split over the vocabulary, its
  // partials summed in order) must give the same bits every time, the atomic mode need not.
  it('deterministic mode gives the same bits run after run, with and without filtering, bf16 and f32', () => {
    lib.setBackend('cuda');
    for (const [dtype, filterEps] of [['bf16', 0], ['bf16', 2 ** -12], ['f32', 0]] as const) {
      const [N, D, V] = [1024, 512, 32000];
      const rng = ref.mulberry32(N + V + (filterEps > 0 ? 1 : 0));
      const E = randomTensor(rng, N, D, 1, dtype);
      const W = randomTensor(rng, V, D, 1 / Math.sqrt(D), dtype);
      const labels = labelsFor(rng, N, V, {});
      const o: lib.LinearCrossEntropyOptions = { deterministic: true, filterEps, bias: Float32Array.from({ length: V }, (_, j) => Math.sin(j) / 4) };
      const bytes = (r: lib.LinearCrossEntropyResult) => [r.dEmbeddings!.data, r.dClassifier!.data, r.dBias!].map((a) =>
        Buffer.from(a.buffer, a.byteOffset, a.byteLength));
      const first = bytes(lib.linearCrossEntropy(E, W, labels, o));
      for (let run = 0; run < 3; run++) {
        bytes(lib.linearCrossEntropy(E, W, labels, o)).forEach((b, k) =>
          expect(b.equals(first[k]!), `${dtype} filterEps ${filterEps}: output ${k} differs in run ${run + 2}`).toBe(true));
      }
    }
  }, 600_000);
});
