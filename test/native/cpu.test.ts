// The cpu backend (src/cpu) against the float64 re-computation (test/reference64.ts) and the
// JS backend (the executable specification), on the matrix of test/losses.test.ts and
// test/rowwise.test.ts (test/cases.ts): every loss option, reduction and normalizer, every
// row-wise op forward and backward, odd shapes and rows longer than any block, f32 and bf16,
// edge values; then what only the cpu backend has: chunked linearCrossEntropy at any
// workspace, both GEMMs (OpenBLAS and the portable kernel), filterEps blocks, peaked (denormal)
// rows, thread counts, async twins that leave the event loop free.
//
// Tolerances per DESIGN.md "Numerics": the cpu backend accumulates in fp32, so where the
// reference suite holds float64 to 1e-6 on losses this holds fp32 to 1e-6 relative (plus
// |lse|·2^-22 where huge logits make the rounding of lse itself the limit), 1e-5 on gradients.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import {
  backends, crossEntropy, crossEntropyAsync, linearCrossEntropy, linearCrossEntropyAsync, logSumExp, logSumExpAsync,
  setBackend, softmax, softmaxAsync, tensor, type CrossEntropyOptions, type LinearCrossEntropyOptions, type Tensor,
} from '../../lib/index.js';
import { DEFAULT_CPU_WORKSPACE_BYTES, cpuAddon } from '../../lib/cpuBackend.js';
import { jsBackend } from '../../lib/js/index.js';
import { native } from '../../lib/native.js';
import { resolveLossOptions } from '../../lib/options.js';
import type { Matrix } from '../../lib/tensor.js';
import { CASES, EDGE_ROWS, OPS, SHAPES, V_ODD, addressLimitProblem, labelsFor, linearCeProblem } from '../cases.js';
import { LOSS_TOL, PRODUCT_TOL, expectClose, expectLinearCeClose, flat, lossList, tolerance } from '../helpers.js';
import * as ref from '../reference64.js';

const cpuInfo = backends().find((b) => b.name === 'cpu')!;
const addon = cpuAddon(native().addon);

type Dtype = 'f32' | 'bf16';
const refOptions = (o: CrossEntropyOptions) => o as ref.CeOptions;

function input(values: number[][], dtype: Dtype): Tensor {
  const rows = values.length;
  const cols = values[0]!.length;
  return tensor(dtype === 'f32' ? ref.rowsToF32(values) : ref.rowsToBf16(values), [rows, cols], dtype);
}

/** The values a kernel sees (bf16 decoded), as float64 rows. */
const decoded = (t: Tensor) => ref.toF64Rows(t.data, t.shape.length === 2 ? t.shape[0] : 1, t.shape[t.shape.length - 1]!);
/** Results in the input's storage, as numbers. */
const values = (t: Tensor) => (t.dtype === 'bf16' ? Array.from(t.data as Uint16Array, ref.bf16ToF32) : Array.from(t.data));
// per element (helpers.ts): bf16 results may sit one bf16 step from the JS backend's
const gradTolerance = (dtype: Dtype) => tolerance(dtype, 'grad', { against: 'rounded' });

function onJs<T>(fn: () => T): T {
  setBackend('js');
  try {
    return fn();
  } finally {
    setBackend('cpu');
  }
}

describe.skipIf(!cpuInfo.available)('cpu backend', () => {
  beforeAll(() => setBackend('cpu'));
  afterAll(() => setBackend('auto'));

  it('is chosen automatically without a GPU and says what it runs', () => {
    const cuda = backends().find((b) => b.name === 'cuda')!;
    if (!cuda.available) {
      setBackend('auto');
      expect(lib.getBackend()).toBe('cpu');
      setBackend('cpu');
    }
    expect(cpuInfo.details.gemm).toMatch(/OpenBLAS \d+\.\d+\.\d+ \(linked statically\)|portable/);
    expect(String(cpuInfo.details.simd)).toMatch(/avx512|avx2|sse2|neon|default/);
    expect(cpuInfo.details.threads).toBeGreaterThanOrEqual(1);
    expect(cpuInfo.reason).toContain('GEMM');
  });

  // ---------------------------------------------------------------- losses, the shared matrix

  describe('crossEntropy matches the float64 re-computation and the JS backend for every option', () => {
    for (const [name, options] of CASES) {
      for (const dtype of ['f32', 'bf16'] as const) {
        it(`${name} (${dtype})`, () => {
          const rng = ref.mulberry32(17);
          const N = 9;
          const logits = input(ref.randomRows(rng, N, V_ODD, 2.5), dtype);
          const labels = labelsFor(rng, N, V_ODD, options);
          const got = crossEntropy(logits, labels, { ...options, returnLse: true });
          const want = ref.crossEntropy(decoded(logits), labels, refOptions(options));
          expectClose(lossList(got.loss), lossList(want.loss), { ...LOSS_TOL, label: 'loss' });
          expectClose(got.lse!, want.lse, { rtol: 1e-6, label: 'lse' });
          expect(got.dLogits!.dtype).toBe(dtype);
          expectClose(values(got.dLogits!), want.dLogits, { ...tolerance(dtype, 'grad'), cols: V_ODD, label: 'dLogits' });
          const js = onJs(() => crossEntropy(logits, labels, { ...options, returnLse: true }));
          expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: 'loss vs js' });
          expectClose(values(got.dLogits!), values(js.dLogits!), { ...gradTolerance(dtype), cols: V_ODD, label: 'dLogits vs js' });
        });
      }
    }
  });

  describe('linearCrossEntropy matches the float64 re-computation for every option, at every chunking', () => {
    for (const [name, options] of CASES) {
      for (const withBias of [false, true]) {
        it(`${name}${withBias ? ', with bias' : ''}`, () => {
          const { V, E, W, bias, labels } = linearCeProblem(options, withBias);
          const Et = input(E, 'f32');
          const Wt = input(W, 'f32');
          const want = ref.linearCrossEntropy(decoded(Et), decoded(Wt), labels, { ...refOptions(options), bias });
          // the whole batch in one chunk, one row per chunk, four rows per chunk (a partial last chunk)
          for (const workspaceBytes of [undefined, 1, 4 * V * 4]) {
            const opts: LinearCrossEntropyOptions = { ...options, returnLse: true, ...(bias ? { bias } : {}), ...(workspaceBytes ? { workspaceBytes } : {}) };
            const got = linearCrossEntropy(Et, Wt, labels, opts);
            expectLinearCeClose(got, want, withBias, `workspace ${workspaceBytes ?? 'default'}`);
          }
        });
      }
    }
  });

  describe('with the portable GEMM instead of OpenBLAS', () => {
    beforeAll(() => addon!.cpuSetGemm('portable'));
    afterAll(() => addon!.cpuSetGemm('blas'));
    it('reports it, and linearCrossEntropy still matches the reference (odd shapes, every chunking)', () => {
      expect(addon!.cpuInfo().gemm.library).toMatch(/portable/);
      for (const [N, D, V] of [[9, 5, 37], [70, 33, 601], [3, 130, 17]] as const) {
        const rng = ref.mulberry32(N * D + V);
        const Et = input(ref.randomRows(rng, N, D, 1), 'f32');
        const Wt = input(ref.randomRows(rng, V, D, 0.5), 'f32');
        const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!);
        const labels = Int32Array.from(ref.randomLabels(rng, N, V));
        const want = ref.linearCrossEntropy(decoded(Et), decoded(Wt), labels, { labelSmoothing: 0.1, bias });
        for (const workspaceBytes of [undefined, 1, 16 * V * 4]) {
          const got = linearCrossEntropy(Et, Wt, labels, { labelSmoothing: 0.1, bias, ...(workspaceBytes ? { workspaceBytes } : {}) });
          expectClose(lossList(got.loss), lossList(want.loss), { ...LOSS_TOL, label: 'loss' });
          expectClose(got.dEmbeddings!.data, want.dE, { ...PRODUCT_TOL, label: 'dE' });
          expectClose(got.dClassifier!.data, want.dW, { ...PRODUCT_TOL, label: 'dW' });
          expectClose(got.dBias!, want.dBias!, { ...PRODUCT_TOL, label: 'dBias' });
        }
      }
    }, 60_000);
  });

  it('cpuSgemm: every transpose, odd sizes, OpenBLAS and the portable kernel agree with a float64 product', () => {
    const rng = ref.mulberry32(5);
    for (const [M, N, K] of [[1, 1, 1], [7, 13, 5], [33, 17, 300], [130, 257, 9]] as const) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          const A = Float32Array.from({ length: M * K }, () => rng() - 0.5);
          const B = Float32Array.from({ length: K * N }, () => rng() - 0.5);
          const want: number[] = [];
          for (let i = 0; i < M; i++) {
            for (let j = 0; j < N; j++) {
              let s = 0;
              for (let k = 0; k < K; k++) s += A[transA ? k * M + i : i * K + k]! * B[transB ? j * K + k : k * N + j]!;
              want.push(s);
            }
          }
          for (const gemm of ['blas', 'portable'] as const) {
            if (!addon!.cpuSetGemm(gemm)) continue;
            expectClose(addon!.cpuSgemm(transA, transB, M, N, K, A, B), want, { ...PRODUCT_TOL, cols: N, label: `${gemm} ${M}×${N}×${K} ${transA}${transB}` });
          }
          addon!.cpuSetGemm('blas');
        }
      }
    }
  });

  describe('edge values', () => {
    for (const [name, X, labels] of EDGE_ROWS) {
      for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
        it(`${name} (${normalizer})`, () => {
          const t = input(X, 'f32');
          const lab = Int32Array.from(labels);
          // fp32 per-row terms: a row's loss of 6e38 is +inf, and the mean of it too
          const rows = ref.crossEntropyLoss(decoded(t), labels, { normalizer, reduction: 'none' });
          const perRow = (rows.loss as number[]).map(Math.fround);
          const lseScale = Math.max(...rows.lse.filter(Number.isFinite).map(Math.abs)) * 2 ** -22;
          for (const reduction of ['mean', 'sum', 'none'] as const) {
            const got = crossEntropy(t, lab, { normalizer, reduction, returnLse: true });
            const total = perRow.reduce((a, b) => a + b, 0);
            const wanted = reduction === 'none' ? perRow : [reduction === 'sum' ? total : total / perRow.length];
            expectClose(lossList(got.loss), wanted, { rtol: 1e-6, atol: lseScale, label: `${reduction} loss` });
            expectClose(got.lse!, rows.lse, { rtol: 1e-6, label: 'lse', storedAsF32: true });
            for (const v of got.dLogits!.data) expect(Number.isFinite(v)).toBe(true);
          }
        });
      }
    }
    it('NaN logits: a NaN loss for their row only; a label at −inf: infinite loss', () => {
      const r = crossEntropy(tensor(Float32Array.from([NaN, 1, 2, 0, 1, 2]), [2, 3]), new Int32Array([1, 2]), { reduction: 'none' });
      expect((r.loss as Float32Array)[0]).toBeNaN();
      expect((r.loss as Float32Array)[1]).toBeCloseTo(Math.log(Math.exp(0) + Math.exp(1) + Math.exp(2)) - 2, 6);
      expect(crossEntropy(tensor(Float32Array.from([-Infinity, 0]), [1, 2]), new Int32Array([0])).loss).toBe(Infinity);
      const E = tensor(Float32Array.from([0, 1, 0, 1, 0, 1, 0, 1]), [4, 2]);
      const W = tensor(Float32Array.from([NaN, 1, 1, 1]), [2, 2]);
      expect(linearCrossEntropy(E, W, new Int32Array([1, 1, 1, 1]), { computeGrad: false }).loss).toBeNaN();
    });
  });

  describe('closed forms and PyTorch facts (to fp32 precision)', () => {
    it('F.cross_entropy([[1, 2, 3]], [0]) = 2.4076059644443806, gradient softmax − onehot', () => {
      const r = crossEntropy(tensor(new Float32Array([1, 2, 3]), [1, 3]), new Int32Array([0]));
      expect(r.loss).toBeCloseTo(2.4076059644443806, 6);
      const p = [1, 2, 3].map((v) => Math.exp(v - 3.4076059644443806));
      expectClose(r.dLogits!.data, [p[0]! - 1, p[1]!, p[2]!], { rtol: 1e-6 });
    });
    it('uniform logits give log V, for every V including 1 and 2; V = 1 gives zero loss and gradient', () => {
      for (const V of [1, 2, 3, 257, 1000, 32000]) {
        const r = crossEntropy(tensor(new Float32Array(V).fill(0.25), [1, V]), new Int32Array([V - 1]));
        expect(r.loss as number).toBeCloseTo(Math.log(V), 5);
      }
      const r = crossEntropy(tensor(new Float32Array([5, -7]), [2, 1]), new Int32Array([0, 0]), { reduction: 'none' });
      expect(Array.from(r.loss as Float32Array)).toEqual([0, 0]);
      expect(Array.from(r.dLogits!.data)).toEqual([0, 0]);
    });
    it('all rows ignored: NaN mean with zero gradients, 0 sum, for both losses', () => {
      const x = tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
      const labels = new Int32Array([-100, -100]);
      const mean = crossEntropy(x, labels);
      expect(mean.loss).toBeNaN();
      expect(Array.from(mean.dLogits!.data)).toEqual([0, 0, 0, 0, 0, 0]);
      expect(crossEntropy(x, labels, { reduction: 'sum' }).loss).toBe(0);
      const E = tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]);
      const W = tensor(Float32Array.from([1, 0, 0, 1, 1, 1]), [3, 2]);
      const lin = linearCrossEntropy(E, W, labels, { bias: new Float32Array(3) });
      expect(lin.loss).toBeNaN();
      expect(flat([lin.dEmbeddings!.data, lin.dClassifier!.data, lin.dBias!]).every((v) => v === 0)).toBe(true);
    });
    it('sparsemax loss of an equal row of V is ½ − 1/(2V)', () => {
      for (const V of [3, 40, 600, 5000]) {
        const r = crossEntropy(tensor(new Float32Array(V).fill(1.5), [1, V]), new Int32Array([0]), { normalizer: 'sparsemax' });
        expect(r.loss as number).toBeCloseTo(0.5 - 1 / (2 * V), 6);
        expectClose(r.dLogits!.data, Array.from({ length: V }, (_, j) => 1 / V - (j === 0 ? 1 : 0)), { rtol: 1e-5 });
      }
    });
  });

  describe('long rows and many rows: the JS backend on the same inputs', () => {
    it('crossEntropy on [24, 32000] and [300, 1100], every normalizer, f32 and bf16', () => {
      for (const [N, V] of [[24, 32000], [300, 1100]] as const) {
        const rng = ref.mulberry32(N + V);
        const labels = Int32Array.from(ref.randomLabels(rng, N, V));
        labels[3] = -100;
        for (const dtype of ['f32', 'bf16'] as const) {
          const x = input(ref.randomRows(rng, N, V, 3), dtype);
          for (const normalizer of ['softmax', 'stablemax', 'sparsemax'] as const) {
            const o: CrossEntropyOptions = { normalizer, labelSmoothing: 0.1, zLoss: 1e-3, returnLse: true };
            const got = crossEntropy(x, labels, o);
            const js = onJs(() => crossEntropy(x, labels, o));
            expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: `${N}×${V} ${normalizer} loss` });
            expectClose(got.lse!, js.lse!, { rtol: 1e-6, label: 'lse' });
            expectClose(values(got.dLogits!), values(js.dLogits!), { ...gradTolerance(dtype), label: `${normalizer} dLogits` });
          }
        }
      }
    }, 60_000);
    it('crossEntropy streams each row\'s gradient out during the next row: every row gets its own, around rows on other paths', () => {
      // rows with +inf or NaN (no finite max: the online path keeps no exponentials) and ignored
      // rows between ordinary ones; a row width that leaves dLogits rows unaligned
      const [N, V] = [40, 1001];
      const rng = ref.mulberry32(41);
      const X = ref.randomRows(rng, N, V, 4).map((r) => Array.from(r));
      X[5]![17] = Infinity;
      X[6]![3] = NaN;
      X[20]![0] = Infinity;
      const labels = Int32Array.from(ref.randomLabels(rng, N, V));
      labels[7] = -100;
      labels[21] = -100;
      const x = input(X, 'f32');
      const js = onJs(() => crossEntropy(x, labels, { reduction: 'none' }));
      try {
        for (const threads of [1, 2, 3]) {
          lib.setThreads(threads);
          const got = crossEntropy(x, labels, { reduction: 'none' });
          expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: `${threads} threads: loss` });
          for (let r = 0; r < N; r++) {
            const row = (t: Tensor) => Array.from(t.data.subarray(r * V, (r + 1) * V));
            expectClose(row(got.dLogits!), row(js.dLogits!), { rtol: 1e-5, atol: 1e-7, label: `${threads} threads: row ${r}` });
          }
        }
      } finally {
        lib.setThreads(cpuInfo.details.threads as number);
      }
    });
    it('linearCrossEntropy on E [200, 64], W [5000, 64] with bias, chunked, f32 and bf16 (default filterEps)', () => {
      const [N, D, V] = [200, 64, 5000];
      const rng = ref.mulberry32(3);
      const labels = Int32Array.from(ref.randomLabels(rng, N, V));
      const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.2)[0]!);
      for (const dtype of ['f32', 'bf16'] as const) {
        const E = input(ref.randomRows(rng, N, D, 1), dtype);
        const W = input(ref.randomRows(rng, V, D, 0.3), dtype);
        const o: LinearCrossEntropyOptions = { bias, zLoss: 1e-4, workspaceBytes: 37 * V * 4 };
        const got = linearCrossEntropy(E, W, labels, o);
        const js = onJs(() => linearCrossEntropy(E, W, labels, o));
        expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: 'loss' });
        // bf16: the bf16 GEMMs round G to bf16 (README, Numerics): up to 2^-8 of the row's terms where they cancel
        const products = dtype === 'bf16' ? { rtol: 1e-2, atol: 1e-6, rowTol: 2 ** -8 } : gradTolerance(dtype);
        expectClose(values(got.dEmbeddings!), values(js.dEmbeddings!), { ...products, label: `${dtype} dE` });
        expectClose(values(got.dClassifier!), values(js.dClassifier!), { ...products, label: `${dtype} dW` });
        expectClose(got.dBias!, js.dBias!, { ...gradTolerance(dtype), label: `${dtype} dBias` });
      }
    }, 60_000);
  });

  describe('peaked rows (logits spread like a trained model\'s) and filterEps', () => {
    const [N, D, V] = [64, 16, 4000];
    const rng = ref.mulberry32(31);
    const E = input(ref.randomRows(rng, N, D, 1), 'f32');
    const W = input(ref.randomRows(rng, V, D, 5), 'f32'); // logits with std ≈ 20: most of G is far below FLT_MIN
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    it('the exact gradient matches the JS backend (denormals flushed below what fp32 sums resolve)', () => {
      const got = linearCrossEntropy(E, W, labels);
      const js = onJs(() => linearCrossEntropy(E, W, labels));
      expectClose(lossList(got.loss), lossList(js.loss), { ...LOSS_TOL, label: 'loss' });
      expectClose(got.dEmbeddings!.data, js.dEmbeddings!.data, { ...PRODUCT_TOL, label: 'dE' });
      expectClose(got.dClassifier!.data, js.dClassifier!.data, { ...PRODUCT_TOL, label: 'dW' });
    });
    it('filterEps 2^-12 skips vocabulary blocks and stays within the filtered mass of the exact gradient', () => {
      const o = resolveLossOptions({}, N, V, 'f32', true);
      const scales = { w: new Float32Array(N).fill(1 / N), u: new Float32Array(N).fill(1 / N) };
      const run = (filterEps: number) =>
        addon!.cpuLinearCrossEntropy(E.data, N, D, 0, W.data, V, 0, labels, {
          normalizer: o.normalizer, smoothing: 0, focalGamma: 0, polyEpsilon: 0, zLoss: 0, squentropy: 0, softcap: 0,
          invTemperature: 1, ignoreIndex: -100,
        }, null, null, scales.w, scales.u, filterEps, 2 * V * 4);
      const exact = run(0);
      const filtered = run(2 ** -12);
      expect(exact.skippedBlocks).toBe(0);
      expect(filtered.skippedBlocks).toBeGreaterThan(0);
      expect(filtered.chunks).toBe(32); // two rows a chunk: blocks are skipped only where no row of the chunk needs them
      expect(Array.from(filtered.weighted)).toEqual(Array.from(exact.weighted)); // the forward is never filtered
      let maxDiff = 0;
      for (let i = 0; i < exact.dEmbeddings!.length; i++) maxDiff = Math.max(maxDiff, Math.abs(exact.dEmbeddings![i]! - filtered.dEmbeddings![i]!));
      const wMax = Math.max(...Array.from(W.data as Float32Array, Math.abs));
      expect(maxDiff).toBeLessThanOrEqual((2 ** -12 / N) * V * wMax);
    });
  });

  // ---------------------------------------------------------------- row-wise ops, the shared matrix

  describe('row-wise ops match the float64 re-computation and the JS backend', () => {
    const jsOf: Record<string, [(m: Matrix) => Float32Array, (m: Matrix, dy: Float32Array) => Float32Array]> = {
      softmax: [(m) => jsBackend.softmax(m, { invTemperature: 1, mask: null }, false), (m, dy) => jsBackend.softmaxBackward(m, dy, { invTemperature: 1, mask: null }, false)],
      logSoftmax: [(m) => jsBackend.softmax(m, { invTemperature: 1, mask: null }, true), (m, dy) => jsBackend.softmaxBackward(m, dy, { invTemperature: 1, mask: null }, true)],
      stablemax: [(m) => jsBackend.stablemax(m, false), (m, dy) => jsBackend.stablemaxBackward(m, dy, false)],
      logStablemax: [(m) => jsBackend.stablemax(m, true), (m, dy) => jsBackend.stablemaxBackward(m, dy, true)],
      sparsemax: [(m) => jsBackend.sparsemax(m), (m, dy) => jsBackend.sparsemaxBackward(m, dy)],
      entmax15: [(m) => jsBackend.entmax15(m), (m, dy) => jsBackend.entmax15Backward(m, dy)],
    };
    const asMatrix = (t: Tensor): Matrix => ({ data: t.data, rows: t.shape[0], cols: t.shape[1]!, dtype: t.dtype ?? 'f32', shape: t.shape });
    for (const [name, fwd, bwd, refFwd, refBwd] of OPS) {
      for (const [rows, cols] of [...SHAPES, [2, 1100], [3, 32000]] as [number, number][]) {
        for (const dtype of ['f32', 'bf16'] as const) {
          it(`${name} [${rows}, ${cols}] ${dtype}`, () => {
            const rng = ref.mulberry32(rows * 1000 + cols);
            const x = input(ref.randomRows(rng, rows, cols, 3), dtype);
            const dy = input(ref.randomRows(rng, rows, cols, 1), dtype);
            const y = fwd(x);
            const dx = bwd(x, dy);
            expect(y.dtype).toBe(dtype);
            // log-space outputs of one-column rows are 0 up to the rounding of log S (a few 2^-24)
            const yTol = { ...tolerance(dtype, 'value', { against: 'rounded' }), ...(name.startsWith('log') ? { atol: 2 ** -20 } : {}), cols };
            const [jsFwd, jsBwd] = jsOf[name]!;
            const dyF32 = Float32Array.from(values(dy));
            expectClose(values(y), jsFwd(asMatrix(x)), { ...yTol, label: 'y vs js' });
            expectClose(values(dx), jsBwd(asMatrix(x), dyF32), { ...gradTolerance(dtype), cols, label: 'dx vs js' });
            if (cols <= 300) {
              expectClose(values(y), refFwd(decoded(x)), { ...yTol, label: 'y vs reference' });
              expectClose(values(dx), refBwd(decoded(x), decoded(dy)), { ...gradTolerance(dtype), cols, label: 'dx vs reference' });
            }
          });
        }
      }
    }

    it('edge values: ±1e4, ±3e38, equal entries, NaN, ±inf, fully −inf rows: NaN and ±inf where the JS backend has them', () => {
      const inf = Infinity;
      const X = [
        [1e4, -1e4, 0, 1e4 - 2], [3e38, -3e38, 0, 1], [0.5, 0.5, 0.5, 0.5], [NaN, 1, 2, 0],
        [-inf, 0, 1, -inf], [inf, 0, 1, 2], [-inf, -inf, -inf, -inf], [1e-30, -1e-30, 0, 3e38],
      ];
      const x = input(X, 'f32');
      const dy = input(X.map(() => [0.3, -1, 2, 0.5]), 'f32');
      for (const [name, fwd, bwd] of OPS) {
        const [jsFwd, jsBwd] = jsOf[name]!;
        expectClose(values(fwd(x)), jsFwd(asMatrix(x)), { rtol: 1e-5, atol: 1e-7, label: `${name} y` });
        expectClose(values(bwd(x, dy)), jsBwd(asMatrix(x), dy.data as Float32Array), { rtol: 1e-5, atol: 1e-7, label: `${name} dx` });
      }
    });

    it('logSumExp, temperature, per-row and shared masks, a fully masked row', () => {
      const rng = ref.mulberry32(77);
      const [rows, cols] = [4, 11];
      const x = input(ref.randomRows(rng, rows, cols, 2), 'f32');
      const dy = input(ref.randomRows(rng, rows, cols, 1), 'f32');
      const X = decoded(x);
      const DY = decoded(dy);
      const perRow = Uint8Array.from({ length: rows * cols }, (_, i) => ((i * 5) % 7 === 0 ? 0 : 1));
      perRow.fill(0, 2 * cols, 3 * cols);
      const shared = Uint8Array.from({ length: cols }, (_, j) => (j % 3 === 1 ? 0 : 1));
      for (const o of [{ temperature: 0.5 }, { temperature: 3 }, { mask: perRow }, { mask: shared, temperature: 1.7 }]) {
        const r = { temperature: o.temperature, mask: o.mask };
        expectClose(logSumExp(x, o), ref.logSumExp(X, r), { rtol: 1e-6, label: 'lse' });
        expectClose(softmax(x, o).data, ref.softmax(X, r), { rtol: 1e-6, label: 'softmax' });
        expectClose(lib.logSoftmax(x, o).data, ref.logSoftmax(X, r), { rtol: 1e-6, label: 'logSoftmax' });
        expectClose(lib.softmaxBackward(x, dy, o).data, ref.softmaxBackward(X, DY, r), { rtol: 1e-5, label: 'softmax dx' });
        expectClose(lib.logSoftmaxBackward(x, dy, o).data, ref.logSoftmaxBackward(X, DY, r), { rtol: 1e-5, label: 'logSoftmax dx' });
      }
      const masked = logSumExp(x, { mask: perRow });
      expect(masked[2]).toBe(-Infinity);
      expect(Array.from(softmax(x, { mask: perRow }).data.subarray(2 * cols, 3 * cols)).every(Number.isNaN)).toBe(true);
    });

    it('gumbelSoftmax: the same Philox noise as the JS backend for every seed; hard = the one-hot argmax; straight-through backward', () => {
      for (const [rows, cols] of [[6, 13], [2, 1100], [1, 1]] as const) {
        for (const dtype of ['f32', 'bf16'] as const) {
          const rng = ref.mulberry32(rows + cols);
          const x = input(ref.randomRows(rng, rows, cols, 1), dtype);
          const dy = input(ref.randomRows(rng, rows, cols, 1), dtype);
          for (const seed of [0, 1, 2 ** 32 + 5, 2 ** 53 - 1]) {
            for (const tau of [0.5, 1, 2]) {
              const label = `[${rows}, ${cols}] ${dtype} seed ${seed} tau ${tau}`;
              const soft = lib.gumbelSoftmax(x, { tau, seed });
              const js = jsBackend.gumbelSoftmax(asMatrix(x), tau, false, seed);
              expectClose(values(soft), js, { ...(dtype === 'f32' ? { rtol: 1e-5, atol: 1e-7 } : { rtol: 2 ** -8, atol: 1e-30 }), label });
              if (dtype === 'f32' && cols <= 13) expectClose(values(soft), ref.gumbelSoftmax(decoded(x), { tau, seed }), { rtol: 1e-5, label: `${label} vs reference` });
              expect(values(lib.gumbelSoftmax(x, { tau, seed, hard: true })), `${label} hard`).toEqual(Array.from(jsBackend.gumbelSoftmax(asMatrix(x), tau, true, seed)));
              const dx = lib.gumbelSoftmaxBackward(x, dy, { tau, seed });
              expectClose(values(dx), jsBackend.gumbelSoftmaxBackward(asMatrix(x), Float32Array.from(values(dy)), tau, seed), { ...gradTolerance(dtype), label: `${label} dx` });
            }
          }
        }
      }
    });
  });

  describe.skipIf(!existsSync(fileURLToPath(new URL('../../dist/esm/index.js', import.meta.url))))('memory (built package; npm test builds it)', () => {
    it('linearCrossEntropy N=1024, V=50000: peak growth is the workspace and the returned gradients, never the 195 MiB of logits', () => {
      const probe = fileURLToPath(new URL('../fixtures/memory-probe.ts', import.meta.url));
      const measure = (withGrad: boolean) => JSON.parse(execFileSync(process.execPath,
        ['--expose-gc', '--import', 'tsx', probe, '1024', '32', '50000', withGrad ? '1' : '0'],
        { encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: 'cpu' } })) as { growthBytes: number; returnedBytes: number; source: string };
      const MiB = 2 ** 20;
      const fwd = measure(false);
      const both = measure(true);
      expect(fwd.source).toBe('VmHWM');
      console.log(`cpu linearCrossEntropy N=1024 D=32 V=50000: peak growth forward ${(fwd.growthBytes / MiB).toFixed(1)} MiB, ` +
        `forward+backward ${(both.growthBytes / MiB).toFixed(1)} MiB with ${(both.returnedBytes / MiB).toFixed(1)} MiB returned ` +
        `(workspace ${(DEFAULT_CPU_WORKSPACE_BYTES / MiB).toFixed(0)} MiB)`);
      // the logit chunk (the workspace) plus BLAS packing buffers and per-thread partials
      expect(fwd.growthBytes).toBeLessThan(DEFAULT_CPU_WORKSPACE_BYTES + 16 * MiB);
      expect(both.growthBytes - both.returnedBytes).toBeLessThan(DEFAULT_CPU_WORKSPACE_BYTES + 16 * MiB);
    }, 60_000);

    it('a loop that never yields to the event loop stays bounded: outputs whose finalizers cannot run yet are capped', () => {
      // 96 outputs of 32 MiB (3 GiB if each took a new mapping until the loop ends)
      const probe = fileURLToPath(new URL('../fixtures/sync-loop-probe.ts', import.meta.url));
      const r = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', probe, '256', '32768', '96'],
        { encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: 'cpu' } })) as { rssGrowthBytes: number; outputBytes: number };
      const MiB = 2 ** 20;
      console.log(`cpu softmax [256, 32768] × 96 without yielding: RSS grew ${(r.rssGrowthBytes / MiB).toFixed(0)} MiB ` +
        `(${(96 * r.outputBytes / MiB).toFixed(0)} MiB of outputs made)`);
      expect(r.rssGrowthBytes).toBeLessThan(2 * 1024 * MiB);
    }, 120_000);

    it('a loop that yields between calls recycles S1-size outputs instead of taking fresh memory every few calls', () => {
      // S1's 500 MB dLogits: a call that lands in fresh memory pays ~128 000 page faults (~200 ms)
      const probe = fileURLToPath(new URL('../fixtures/yielding-loop-probe.ts', import.meta.url));
      const iterations = 30;
      const r = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', probe, '4096', '32000', String(iterations)],
        { encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: 'cpu' } })) as { faultsPerCall: number[]; outputPages: number };
      const fresh = r.faultsPerCall.filter((f) => f > r.outputPages / 2).length;
      console.log(`cpu crossEntropy [4096, 32000] × ${iterations}, yielding between calls: ${fresh} calls wrote into fresh memory ` +
        `(faults per call: ${r.faultsPerCall.join(' ')})`);
      // three to fill the circulation, rarely one or two more; a cap of two live outputs made it every third call
      expect(fresh).toBeLessThanOrEqual(7);
    }, 120_000);

    it('under an address-space cap too tight for OpenBLAS\'s work buffers, products take the portable kernel and return', async () => {
      // OpenBLAS retries a failed mapping of its work buffer forever: without the check, this hangs.
      const probe = fileURLToPath(new URL('../fixtures/address-limit-probe.ts', import.meta.url));
      const child = spawn(process.execPath, ['--import', 'tsx', probe], { env: { ...process.env, CUTLOSS_BACKEND: 'cpu' } });
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
      try {
        const first = await lines.next();
        expect(first.done, `the probe ended early: ${stderr}`).toBe(false);
        const { vmSizeBytes } = JSON.parse(first.value as string) as { vmSizeBytes: number };
        // 120 MiB to spare: less than one OpenBLAS buffer (128 MiB), room for the portable kernel and
        // for threads Node or V8 start later (8 MiB stacks; with 64 MiB one such start once failed)
        execFileSync('prlimit', [`--pid=${child.pid}`, `--as=${vmSizeBytes + 120 * 2 ** 20}`]);
        child.stdin.write('go\n');
        const second = await lines.next();
        expect(second.done, `the probe was killed or died under the cap: ${stderr}`).toBe(false);
        const got = JSON.parse(second.value as string) as { loss: number; dE: number[]; dW: number[]; kernelNote: string; error?: string; message?: string };
        if (got.error !== undefined) {
          // Node or V8 needed memory of their own under the cap (a thread, say): a typed error, not a hang
          console.log(`under the cap the call failed cleanly: ${got.message}`);
          expect(got.error).toMatch(/^E_[A-Z]+$/);
          return;
        }
        const { E, W, labels, N, D, V } = addressLimitProblem();
        const want = ref.linearCrossEntropy(ref.toF64Rows(E, N, D), ref.toF64Rows(W, V, D), labels);
        expectClose([got.loss], lossList(want.loss), { ...LOSS_TOL, label: 'loss' });
        expectClose(got.dE, want.dE, { ...PRODUCT_TOL, label: 'dE' });
        expectClose(got.dW, want.dW, { ...PRODUCT_TOL, label: 'dW' });
        if (cpuInfo.details.gemm !== undefined && String(cpuInfo.details.gemm).startsWith('OpenBLAS')) {
          expect(got.kernelNote).toMatch(/took the portable kernel: OpenBLAS's work buffers could not be mapped/);
        }
      } finally {
        clearTimeout(timer);
        child.kill();
      }
    }, 90_000);
  });

  // ---------------------------------------------------------------- threads, async

  describe('threads', () => {
    afterAll(() => lib.setThreads(cpuInfo.details.threads as number));
    it('results are the same at every thread count; setThreads is validated and shows in backends()', () => {
      const rng = ref.mulberry32(9);
      const [N, V] = [40, 3001];
      const x = input(ref.randomRows(rng, N, V, 2), 'f32');
      const labels = Int32Array.from(ref.randomLabels(rng, N, V));
      const E = input(ref.randomRows(rng, N, 24, 1), 'f32');
      const W = input(ref.randomRows(rng, V, 24, 1), 'f32');
      const runs = [1, 2, 3].map((n) => {
        lib.setThreads(n);
        expect(lib.getThreads()).toBe(n);
        expect(backends().find((b) => b.name === 'cpu')!.details.threads).toBe(n);
        return { ce: crossEntropy(x, labels), sm: softmax(x), lin: linearCrossEntropy(E, W, labels, { workspaceBytes: 7 * V * 4 }) };
      });
      for (const r of runs.slice(1)) {
        // row-wise work is split by rows: bit-identical; the BLAS may split its sums differently
        expect(r.ce.loss).toBe(runs[0]!.ce.loss);
        expect(r.ce.dLogits!.data).toEqual(runs[0]!.ce.dLogits!.data);
        expect(r.sm.data).toEqual(runs[0]!.sm.data);
        expectClose(r.lin.dClassifier!.data, runs[0]!.lin.dClassifier!.data, { rtol: 1e-6 });
      }
      for (const bad of [0, 1.5, -1, 257, NaN]) {
        expect(() => lib.setThreads(bad)).toThrow(expect.objectContaining({ code: 'E_OPTION' }) as Error);
      }
    });
  });

  describe('async twins run on the libuv pool', () => {
    it('linearCrossEntropyAsync leaves the JS thread free: a timer keeps firing during the call', async () => {
      const rng = ref.mulberry32(1);
      const [N, D, V] = [1024, 512, 32000]; // three GEMMs of 100 GFLOP: long enough on any machine
      const E = tensor(Float32Array.from({ length: N * D }, () => rng() - 0.5), [N, D]);
      const W = tensor(Float32Array.from({ length: V * D }, () => (rng() - 0.5) * 0.1), [V, D]);
      const labels = Int32Array.from(ref.randomLabels(rng, N, V));
      const start = performance.now();
      const sync = linearCrossEntropy(E, W, labels);
      const syncMs = performance.now() - start;
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      const asyncStart = performance.now();
      const result = await linearCrossEntropyAsync(E, W, labels);
      const asyncMs = performance.now() - asyncStart;
      clearInterval(timer);
      expect(result.loss).toBe(sync.loss);
      expectClose(result.dClassifier!.data, sync.dClassifier!.data, { rtol: 1e-6 });
      // long enough to matter, and the loop ran throughout (a blocked loop fires once at the end)
      expect(syncMs).toBeGreaterThan(30);
      expect(ticks).toBeGreaterThan(3);
      expect(ticks).toBeGreaterThanOrEqual(Math.floor(asyncMs / 50));
    }, 60_000);

    it('the twins equal their synchronous ops; bad input rejects with a CutlossError', async () => {
      const x = tensor(new Float32Array([1, 2, 3, -1, 0, 4]), [2, 3]);
      expect((await softmaxAsync(x)).data).toEqual(softmax(x).data);
      expect(await logSumExpAsync(x, { temperature: 0.5 })).toEqual(logSumExp(x, { temperature: 0.5 }));
      const ce = await crossEntropyAsync(x, new Int32Array([2, 0]), { returnLse: true, labelSmoothing: 0.1 });
      const ceSync = crossEntropy(x, new Int32Array([2, 0]), { returnLse: true, labelSmoothing: 0.1 });
      expect(ce.loss).toBe(ceSync.loss);
      expect(ce.dLogits!.data).toEqual(ceSync.dLogits!.data);
      const e = await crossEntropyAsync(x, new Int32Array([0, 9])).then(() => null, (err: unknown) => err);
      expect(e).toBeInstanceOf(lib.CutlossError);
      expect((e as lib.CutlossError).code).toBe('E_LABEL');
      const shared = new Float32Array(new SharedArrayBuffer(24));
      shared.set([1, 2, 3, -1, 0, 4]);
      expect((await softmaxAsync(tensor(shared, [2, 3]))).data).toEqual(softmax(x).data);
    });

    it('an input changed or detached after the async call started does not affect it', async () => {
      const data = Float32Array.from({ length: 64 * 512 }, (_, i) => Math.sin(i));
      const expected = softmax(tensor(data.slice(), [64, 512])).data;
      const pending = softmaxAsync(tensor(data, [64, 512]));
      data.fill(NaN);
      structuredClone(data.buffer, { transfer: [data.buffer] });
      expect((await pending).data).toEqual(expected);
    });
  });
});
