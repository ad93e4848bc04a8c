// normalizer 'gumbel' (the Gumbel optimized loss, Alexandridis et al. 2022) on every backend here:
// crossEntropy and linearCrossEntropy against the float64 reference of reference64-gumbel.ts
// over the supported options, that reference against its own finite differences and the naive
// formula, extreme logits, Partial FC, the tfjs adapter, and E_OPTION for the combinations that
// presuppose a normalized p_t.
import '@tensorflow/tfjs-backend-cpu';
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  backends, crossEntropy, crossEntropyAsync, getBackend, linearCrossEntropy, linearCrossEntropyAsync, setBackend, tensor,
  type BackendName, type CrossEntropyOptions, type Tensor,
} from '../lib/index.js';
import { gumbelPsi as gumbelPsiJs, gumbelPsiSlope as gumbelPsiSlopeJs } from '../lib/js/math.js';
import * as tfc from '../lib/tfjs/index.js';
import { codeOf, expectClose, f32Rows, flat, rowsTensor } from './helpers.js';
import { bf16ToF32, finiteDiff, mulberry32, rowsToBf16 } from './reference64.js';
import {
  dpsi64, gumbelCrossEntropy64, gumbelLinearCrossEntropy64, psi64, type GumbelRefOptions,
} from './reference64-gumbel.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
afterAll(() => setBackend(initial));

const values = (t: Tensor | undefined): number[] => Array.from(t!.data as Float32Array);

// V = 150 spans several class tiles of every engine; logits from −6 to 6 cover both branches of ψ
const [N, V, D] = [9, 150, 7];
const rng = mulberry32(2022);
const X0 = f32Rows(rng, N, V, 6);
const E0 = f32Rows(rng, N, D, 1.2);
const W0 = f32Rows(rng, V, D, 1.2);
const bias0 = Float32Array.from({ length: V }, () => Math.fround(rng() - 0.5));
const weights0 = Float32Array.from({ length: V }, () => Math.fround(0.3 + rng()));
const labels0 = Int32Array.from({ length: N }, (_, i) => (i * 37 + 5) % V);
const ignored = Int32Array.from(labels0, (t, i) => (i === 2 || i === 6 ? -100 : t));

type Case = { label: string; labels: Int32Array; o: CrossEntropyOptions };
const G = { normalizer: 'gumbel' } as const;
const CASES: Case[] = [
  { label: 'mean', labels: labels0, o: { ...G } },
  { label: 'class weights, ignored rows', labels: ignored, o: { ...G, classWeights: weights0 } },
  { label: "softcap, temperature, 'sum', gradScale", labels: ignored, o: { ...G, softcap: 4, temperature: 1.7, reduction: 'sum', gradScale: 0.5 } },
  {
    label: "'none', per-row gradScale, class weights", labels: ignored,
    o: { ...G, classWeights: weights0, reduction: 'none', gradScale: Float32Array.from({ length: N }, (_, i) => 1 - i / 4) },
  },
  { label: 'zLoss, squentropy, ignoreIndex 3', labels: Int32Array.from(labels0, (t, i) => (i === 4 ? 3 : t)), o: { ...G, zLoss: 0.01, squentropy: true, ignoreIndex: 3 } },
];

const ref = (o: CrossEntropyOptions): GumbelRefOptions => o as GumbelRefOptions;

function expectLoss(got: number | Float32Array, want: number | number[], label: string): void {
  if (typeof want === 'number') expect(Math.abs((got as number) - want), label).toBeLessThan(1e-5 * Math.max(1, Math.abs(want)));
  else expectClose(got as Float32Array, want, { rtol: 1e-5, atol: 1e-6, label });
}

describe('the float64 reference', () => {
  it('ψ equals the naive formula where that does not cancel, and its slope equals finite differences', () => {
    for (let z = -3; z <= 3; z += 0.25) {
      expect(Math.abs(psi64(z) - -Math.log(1 - Math.exp(-Math.exp(-z))))).toBeLessThan(1e-12 * Math.max(1, psi64(z)));
      const fd = (psi64(z + 1e-6) - psi64(z - 1e-6)) / 2e-6;
      expect(Math.abs(dpsi64(z) - fd), `z ${z}`).toBeLessThan(1e-7);
    }
    // the limits: ψ ≈ z + e^{−z}/2 for large z, ψ ≈ e^{−e^{−z}} for very negative z
    expect(psi64(1e4)).toBe(1e4);
    expect(psi64(50)).toBeCloseTo(50, 12);
    expect(psi64(-3) / Math.exp(-Math.exp(3))).toBeCloseTo(1, 6);
    expect(psi64(-50)).toBe(0);
    expect(dpsi64(1e4)).toBe(1);
    expect(dpsi64(-1e4)).toBe(0);
  });

  it('gradients equal central finite differences of its own loss', () => {
    for (const { labels, o } of CASES) {
      if (o.reduction === 'none') continue;
      const X = X0.slice(0, 3).map((r) => r.slice(0, 12));
      const t = Int32Array.from(labels.slice(0, 3), (l) => (l === -100 || l === 3 ? l : l % 12));
      const r = ref({ ...o, classWeights: o.classWeights?.subarray(0, 12) });
      const want = gumbelCrossEntropy64(X, t, r).dLogits;
      const g = typeof r.gradScale === 'number' ? r.gradScale : 1;
      const fd = finiteDiff((x) => g * (gumbelCrossEntropy64([...Array(3)].map((_, i) => Array.from(x.subarray(i * 12, i * 12 + 12))), t, r).loss as number), Float64Array.from(X.flat()), 1e-5);
      expectClose(flat(want), fd, { rtol: 1e-6, atol: 1e-8 });
    }
  });

  it('the library\'s ψ and ψ\' (lib/js/math.ts) equal the reference', () => {
    for (const z of [-1e4, -800, -50, -5, -0.4, -0.3665, 0, 0.3, 6.9, 7, 20, 50, 103, 1e4]) {
      expect(Math.abs(gumbelPsiJs(z) - psi64(z)), `ψ(${z})`).toBeLessThanOrEqual(1e-15 * Math.max(1, Math.abs(psi64(z))) + 1e-300);
      expect(Math.abs(gumbelPsiSlopeJs(z) - dpsi64(z)), `ψ'(${z})`).toBeLessThanOrEqual(1e-15);
    }
  });
});

describe.each(available)("normalizer 'gumbel' on %s", (name) => {
  it.each(CASES)('crossEntropy equals the float64 reference: $label', ({ labels, o }) => {
    setBackend(name);
    const got = crossEntropy(rowsTensor(X0), labels, { ...o, returnLse: true });
    const want = gumbelCrossEntropy64(X0, labels, ref(o));
    expectLoss(got.loss, want.loss, 'loss');
    expectClose(got.lse!, want.lse, { rtol: 1e-6, atol: 1e-6, label: 'lse' });
    expectClose(values(got.dLogits), flat(want.dLogits), { rtol: 1e-5, atol: 1e-7, label: 'dLogits' });
  });

  it.each(CASES)('linearCrossEntropy equals the float64 reference: $label', ({ labels, o }) => {
    setBackend(name);
    const withBias = { ...o, bias: bias0, filterEps: 0 };
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels, { ...withBias, returnLse: true });
    const want = gumbelLinearCrossEntropy64(E0, W0, labels, ref(withBias));
    expectLoss(got.loss, want.loss, 'loss');
    expectClose(got.lse!, want.lse, { rtol: 1e-5, atol: 1e-5, label: 'lse' });
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-5, atol: 2e-6, label: 'dE' });
    expectClose(values(got.dClassifier), flat(want.dW), { rtol: 1e-5, atol: 2e-6, label: 'dW' });
    expectClose(got.dBias!, want.dBias, { rtol: 1e-5, atol: 2e-6, label: 'dBias' });
  });

  it('linearCrossEntropy with the default filterEps keeps the reference within float32 rounding', () => {
    setBackend(name);
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, { ...G });
    const want = gumbelLinearCrossEntropy64(E0, W0, labels0, {});
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-5, atol: 2e-6, label: 'dE' });
    expectClose(values(got.dClassifier), flat(want.dW), { rtol: 1e-5, atol: 2e-6, label: 'dW' });
  });

  it('gradients equal central finite differences of the float64 loss', () => {
    setBackend(name);
    const o = { ...G, reduction: 'sum', classWeights: weights0, softcap: 5 } as const;
    const r = crossEntropy(rowsTensor(X0), labels0, o);
    const h = 1e-4;
    const at = (i: number, j: number, s: number) =>
      gumbelCrossEntropy64(X0.map((row, a) => row.map((v, c) => (a === i && c === j ? v + s : v))), labels0, ref(o)).loss as number;
    for (const [i, j] of [[0, labels0[0]!], [1, labels0[1]!], [3, 5], [8, labels0[8]!], [8, 0]] as const) {
      const fd = (at(i, j, h) - at(i, j, -h)) / (2 * h);
      expect(Math.abs(r.dLogits!.data[i * V + j]! - fd), `[${i}, ${j}]`).toBeLessThan(1e-5 * Math.max(1, Math.abs(fd)));
    }
  });

  it('extreme logits (±50, ±1e4) give the float64 answer, never NaN', () => {
    setBackend(name);
    const M = 6;
    const X = f32Rows(mulberry32(7), M, 40, 3);
    const labels = Int32Array.from([1, 2, 3, 4, 5, 6]);
    X[0]![1] = 50; // label far positive: u_t ≈ 0
    X[1]![2] = -50; // label far negative: u_t = 5e21
    X[2]![3] = 1e4; // label at 1e4
    X[3]![9] = 1e4; // other at 1e4: ψ = 1e4
    X[3]![10] = -1e4; // other at −1e4: ψ = 0
    X[4]![0] = 50;
    X[4]![1] = -50;
    X[5]![7] = -1e4;
    X[5]![8] = 1e4;
    // (a label below about −88·T has u_t = e^{−z_t} past float32's range: the float64 loss is then not a float32)
    for (const o of [{ ...G, reduction: 'none' }, { ...G, reduction: 'none', softcap: 30 }, { ...G, reduction: 'sum', temperature: 1.5 }] as const) {
      const got = crossEntropy(rowsTensor(X), labels, o);
      const want = gumbelCrossEntropy64(X, labels, o);
      expectLoss(got.loss, want.loss, `loss ${JSON.stringify(o)}`);
      const d = values(got.dLogits);
      expect(d.every(Number.isFinite), 'finite dLogits').toBe(true);
      expectClose(d, flat(want.dLogits), { rtol: 1e-5, atol: 1e-7, label: `dLogits ${JSON.stringify(o)}` });
    }
  });

  it('Partial FC (classSample) is the loss over the sampled classes', () => {
    setBackend(name);
    const o = { ...G, bias: bias0, classWeights: weights0, classSample: { fraction: 0.3, seed: 11 }, filterEps: 0 } as const;
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, o);
    const ids = Array.from(got.sampledClasses!);
    const index = new Map(ids.map((c, k) => [c, k]));
    const want = gumbelLinearCrossEntropy64(E0, ids.map((c) => W0[c]!), Int32Array.from(labels0, (t) => index.get(t)!), {
      bias: ids.map((c) => bias0[c]!), classWeights: ids.map((c) => weights0[c]!),
    });
    expectLoss(got.loss, want.loss, 'loss');
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-5, atol: 2e-6, label: 'dE' });
    expectClose(values(got.dClassifier), flat(want.dW), { rtol: 1e-5, atol: 2e-6, label: 'dW' });
  });

  it('bf16 inputs: the loss of the rounded logits, dLogits rounded to bf16', () => {
    setBackend(name);
    const bits = rowsToBf16(X0);
    const X = X0.map((row, i) => row.map((_, j) => bf16ToF32(bits[i * V + j]!)));
    const o = { ...G, classWeights: weights0, softcap: 8 };
    const got = crossEntropy(tensor(bits, [N, V], 'bf16'), labels0, o);
    const want = gumbelCrossEntropy64(X, labels0, ref(o));
    expectLoss(got.loss, want.loss, 'loss');
    const d = Array.from(got.dLogits!.data as Uint16Array, bf16ToF32);
    expectClose(d, flat(want.dLogits), { rtol: 2 ** -8, atol: 1e-9, label: 'dLogits' });
  });

  it('async twins give the same results', async () => {
    setBackend(name);
    const o = { ...G, classWeights: weights0 };
    const a = await crossEntropyAsync(rowsTensor(X0), labels0, o);
    const s = crossEntropy(rowsTensor(X0), labels0, o);
    expect(a.loss).toBe(s.loss);
    expect(values(a.dLogits)).toEqual(values(s.dLogits));
    const la = await linearCrossEntropyAsync(rowsTensor(E0), rowsTensor(W0), labels0, o);
    const ls = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, o);
    expect(Math.abs((la.loss as number) - (ls.loss as number))).toBeLessThan(1e-6 * Math.abs(ls.loss as number));
  });

  it('dataParallel (a group of one) equals the plain call', () => {
    setBackend(name);
    const one = { rank: 0, size: 1, allReduce() {} };
    const o = { ...G, classWeights: weights0 };
    const plain = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, o);
    const dp = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, { ...o, dataParallel: { communicator: one } });
    expectLoss(dp.loss, plain.loss as number, 'loss');
    expectClose(values(dp.dEmbeddings), values(plain.dEmbeddings), { rtol: 1e-5, atol: 1e-7, label: 'dE' });
  });

  it('options that presuppose a normalized p_t, and vocabParallel, are E_OPTION naming the clash', () => {
    setBackend(name);
    const [X, E, W] = [rowsTensor(X0), rowsTensor(E0), rowsTensor(W0)];
    for (const extra of [{ labelSmoothing: 0.1 }, { focalGamma: 2 }, { polyEpsilon: 0.5 }, { generalizedCE: 0.5 }] as const) {
      const key = Object.keys(extra)[0]!;
      for (const call of [() => crossEntropy(X, labels0, { ...G, ...extra }), () => linearCrossEntropy(E, W, labels0, { ...G, ...extra })]) {
        let message = '';
        try {
          call();
        } catch (e) {
          message = (e as Error).message;
        }
        expect(codeOf(call), key).toBe('E_OPTION');
        expect(message, key).toContain(key);
        expect(message, key).toContain('gumbel');
      }
    }
    const vocabParallel = { communicator: { rank: 0, size: 1, allReduce() {} }, vocabStart: 0, vocabSize: V };
    expect(codeOf(() => crossEntropy(X, labels0, { ...G, vocabParallel }))).toBe('E_OPTION');
    expect(codeOf(() => linearCrossEntropy(E, W, labels0, { ...G, vocabParallel }))).toBe('E_OPTION');
    expect(codeOf(() => crossEntropy(X, labels0, { normalizer: 'gumble' as never }))).toBe('E_OPTION');
  });
});

describe('the tfjs adapter', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
    await tf.ready();
  });
  it("passes normalizer 'gumbel' through, loss and gradient", () => {
    setBackend('js');
    const o = { ...G, classWeights: weights0 };
    const x = tf.tensor2d(Float32Array.from(X0.flat()), [N, V]);
    const y = tf.tensor1d(labels0, 'int32');
    const { value, grad } = tf.valueAndGrad((a: tf.Tensor) => tfc.crossEntropy(a, y, o) as tf.Scalar)(x);
    const want = gumbelCrossEntropy64(X0, labels0, ref(o));
    expectLoss(value.dataSync()[0]!, want.loss, 'loss');
    expectClose(grad.dataSync() as Float32Array, flat(want.dLogits), { rtol: 1e-5, atol: 1e-7, label: 'dLogits' });
    tf.dispose([x, y, value, grad]);
  });
});
