// Generalized cross-entropy (options.generalizedCE = q; Zhang & Sabuncu 2018) on every backend
// here: crossEntropy and linearCrossEntropy against the float64 reference of reference64.ts,
// which forms w_t·(1 − p_t^q)/q from its definition and differentiates it by forward-mode AD;
// central finite differences of each backend's own loss; the q → 0 limit (plain CE); and
// typed errors for q outside (0, 1] and the combinations without a clean definition.
import { afterAll, describe, expect, it } from 'vitest';
import {
  backends, crossEntropy, crossEntropyAsync, getBackend, linearCrossEntropy, linearCrossEntropyAsync, setBackend, tensor,
  type BackendName, type CrossEntropyOptions, type Tensor,
} from '../lib/index.js';
import { codeOf, expectClose, f32Rows, flat, rowsTensor } from './helpers.js';
import {
  crossEntropy as crossEntropy64, linearCrossEntropy as linearCrossEntropy64, mulberry32, type CeOptions,
} from './reference64.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
afterAll(() => setBackend(initial));

const values = (t: Tensor | undefined): number[] => Array.from(t!.data as Float32Array);

// logits spread enough that p_t ranges from near 0 to near 1 across rows
const [N, V, D] = [8, 29, 6];
const rng = mulberry32(1606);
const X0 = f32Rows(rng, N, V, 4);
const E0 = f32Rows(rng, N, D, 1.5);
const W0 = f32Rows(rng, V, D, 1.5);
const bias0 = Float32Array.from({ length: V }, () => Math.fround(rng() - 0.5));
const weights0 = Float32Array.from({ length: V }, () => Math.fround(0.3 + rng()));
const labels0 = Int32Array.from({ length: N }, (_, i) => (i * 11 + 4) % V);
labels0[1] = X0[1]!.indexOf(Math.max(...X0[1]!)); // a row whose label is its argmax (p_t large)
const ignored = Int32Array.from(labels0, (t, i) => (i === 2 || i === 6 ? -100 : t));

type Case = { label: string; labels: Int32Array; o: CrossEntropyOptions };
const CASES: Case[] = [
  { label: 'q 0.7', labels: labels0, o: { generalizedCE: 0.7 } },
  { label: 'q 1 (MAE on p)', labels: labels0, o: { generalizedCE: 1 } },
  { label: 'q 0.3, class weights, ignored rows', labels: ignored, o: { generalizedCE: 0.3, classWeights: weights0 } },
  { label: 'q 0.5 + zLoss + Poly-1 + squentropy', labels: labels0, o: { generalizedCE: 0.5, zLoss: 0.01, polyEpsilon: 0.4, squentropy: true } },
  { label: 'q 0.6, stablemax', labels: labels0, o: { generalizedCE: 0.6, normalizer: 'stablemax' } },
  { label: "q 0.4, softcap, temperature, 'sum', gradScale", labels: ignored, o: { generalizedCE: 0.4, softcap: 5, temperature: 1.3, reduction: 'sum', gradScale: 0.5 } },
  {
    label: "q 0.8, 'none', per-row gradScale, stablemax + weights", labels: ignored,
    o: { generalizedCE: 0.8, normalizer: 'stablemax', classWeights: weights0, reduction: 'none', gradScale: Float32Array.from({ length: N }, (_, i) => 1 + i / 3) },
  },
];

/** The library's options as the float64 reference takes them. */
const ref = (o: CrossEntropyOptions): CeOptions => o as CeOptions;

function expectLoss(got: number | Float32Array, want: number | number[], label: string): void {
  if (typeof want === 'number') expect(Math.abs((got as number) - want), label).toBeLessThan(2e-5 * Math.max(1, Math.abs(want)));
  else expectClose(got as Float32Array, want, { rtol: 2e-5, atol: 1e-6, label });
}

describe.each(available)('generalizedCE on %s', (name) => {
  it.each(CASES)('crossEntropy equals the float64 reference: $label', ({ labels, o }) => {
    setBackend(name);
    const got = crossEntropy(rowsTensor(X0), labels, o);
    const want = crossEntropy64(X0, labels, ref(o));
    expectLoss(got.loss, want.loss, 'loss');
    expectClose(values(got.dLogits), flat(want.dLogits), { rtol: 1e-4, atol: 1e-6, label: 'dLogits' });
  });

  it.each(CASES)('linearCrossEntropy equals the float64 reference: $label', ({ labels, o }) => {
    setBackend(name);
    const withBias = { ...o, bias: bias0 };
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels, withBias);
    const want = linearCrossEntropy64(E0, W0, labels, ref(withBias));
    expectLoss(got.loss, want.loss, 'loss');
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-4, atol: 1e-6, label: 'dE' });
    expectClose(values(got.dClassifier), flat(want.dW), { rtol: 1e-4, atol: 1e-6, label: 'dW' });
    expectClose(got.dBias!, want.dBias!, { rtol: 1e-4, atol: 1e-6, label: 'dBias' });
  });

  it('gradients equal central finite differences of its own loss', () => {
    setBackend(name);
    const o = { generalizedCE: 0.5, reduction: 'sum', zLoss: 0.01, classWeights: weights0 } as const;
    const r = crossEntropy(rowsTensor(X0), labels0, o);
    const h = 1e-2;
    const at = (i: number, j: number, s: number) =>
      crossEntropy(rowsTensor(X0.map((row, a) => row.map((v, c) => (a === i && c === j ? v + s : v)))), labels0, { ...o, computeGrad: false }).loss as number;
    for (const [i, j] of [[0, labels0[0]!], [1, labels0[1]!], [3, 5], [7, labels0[7]!], [7, 0]] as const) {
      const fd = (at(i, j, h) - at(i, j, -h)) / (2 * h);
      expect(Math.abs(r.dLogits!.data[i * V + j]! - fd), `[${i}, ${j}]`).toBeLessThan(3e-3 * Math.max(1, Math.abs(fd)));
    }
    const lo = { generalizedCE: 0.7, reduction: 'sum', bias: bias0 } as const;
    const lr = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, lo);
    const bump = (m: number[][], i: number, k: number, s: number) => m.map((row, a) => row.map((v, c) => (a === i && c === k ? v + s : v)));
    const lat = (E: number[][], W: number[][]) => linearCrossEntropy(rowsTensor(E), rowsTensor(W), labels0, { ...lo, computeGrad: false }).loss as number;
    for (const [i, k] of [[0, 0], [5, 3]] as const) {
      const fd = (lat(bump(E0, i, k, h), W0) - lat(bump(E0, i, k, -h), W0)) / (2 * h);
      expect(Math.abs(lr.dEmbeddings!.data[i * D + k]! - fd)).toBeLessThan(3e-3 * Math.max(1, Math.abs(fd)));
    }
    for (const [j, k] of [[labels0[2]!, 1], [0, 4]] as const) {
      const fd = (lat(E0, bump(W0, j, k, h)) - lat(E0, bump(W0, j, k, -h))) / (2 * h);
      expect(Math.abs(lr.dClassifier!.data[j * D + k]! - fd)).toBeLessThan(3e-3 * Math.max(1, Math.abs(fd)));
    }
  });

  it('q → 0 is cross-entropy; q = 1 is 1 − p_t', () => {
    setBackend(name);
    const ce = crossEntropy(rowsTensor(X0), labels0, { reduction: 'none' });
    for (const q of [1e-3, 1e-6]) {
      const g = crossEntropy(rowsTensor(X0), labels0, { reduction: 'none', generalizedCE: q });
      // (1 − p^q)/q = ℓ − qℓ²/2 + …: relative gap ≈ qℓ/2 (and 1e-6 tests the accurate form, which a
      // literal fp32 (1 − p^q)/q fails by orders of magnitude)
      expectClose(g.loss as Float32Array, ce.loss as Float32Array, { rtol: q * 10 + 2e-6, atol: 0, label: `loss q ${q}` });
      expectClose(values(g.dLogits), values(ce.dLogits), { rtol: q * 20 + 1e-5, atol: 1e-7, label: `dLogits q ${q}` });
    }
    const mae = crossEntropy(rowsTensor(X0), labels0, { reduction: 'none', generalizedCE: 1, computeGrad: false }).loss as Float32Array;
    const want = X0.map((row, i) => {
      const m = Math.max(...row);
      const s = row.reduce((acc, v) => acc + Math.exp(v - m), 0);
      return 1 - Math.exp(row[labels0[i]!]! - m) / s;
    });
    expectClose(mae, want, { rtol: 1e-5, atol: 1e-6 });
  });

  it('async twins give the same results', async () => {
    setBackend(name);
    const o = { generalizedCE: 0.6, classWeights: weights0 };
    const a = await crossEntropyAsync(rowsTensor(X0), labels0, o);
    const s = crossEntropy(rowsTensor(X0), labels0, o);
    expect(a.loss).toBe(s.loss);
    expect(values(a.dLogits)).toEqual(values(s.dLogits));
    const la = await linearCrossEntropyAsync(rowsTensor(E0), rowsTensor(W0), labels0, o);
    const ls = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, o);
    expect(Math.abs((la.loss as number) - (ls.loss as number))).toBeLessThan(1e-6 * Math.abs(ls.loss as number));
  });

  it('q outside (0, 1] and combinations without a definition are E_OPTION', () => {
    setBackend(name);
    const [X, E, W] = [rowsTensor(X0), rowsTensor(E0), rowsTensor(W0)];
    for (const q of [0, -0.5, 1.5, NaN, Infinity, '0.5']) {
      expect(codeOf(() => crossEntropy(X, labels0, { generalizedCE: q as number })), String(q)).toBe('E_OPTION');
      expect(codeOf(() => linearCrossEntropy(E, W, labels0, { generalizedCE: q as number })), String(q)).toBe('E_OPTION');
    }
    for (const extra of [{ labelSmoothing: 0.1 }, { normalizer: 'sparsemax' }, { focalGamma: 2 }] as const) {
      expect(codeOf(() => crossEntropy(X, labels0, { generalizedCE: 0.5, ...extra })), JSON.stringify(extra)).toBe('E_OPTION');
      expect(codeOf(() => linearCrossEntropy(E, W, labels0, { generalizedCE: 0.5, ...extra })), JSON.stringify(extra)).toBe('E_OPTION');
    }
    expect(codeOf(() => linearCrossEntropy(E, W, labels0, { normalizer: 'zscore', zscore: { a: 1, b: 2 }, generalizedCE: 0.5 } as never))).toBe('E_OPTION');
    expect(codeOf(() => crossEntropy(X, labels0, { generalizedCE: 0.5, vocabParallel: {} as never }))).toBe('E_OPTION');
  });
});
