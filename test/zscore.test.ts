// linearCrossEntropy with normalizer 'zscore' (the spherical Z-loss) on every backend here:
// loss and gradients of E, W and the bias against the float64 reference of
// test/reference64-extra.ts (which forms every logit and differentiates the paper's formula by
// forward-mode AD), central finite differences of the backend's own loss, the closed-form
// invariances of z-normalization, the σ = 0 convention, and typed errors for options without
// a meaning here.
import { afterAll, describe, expect, it } from 'vitest';
import {
  backends, getBackend, linearCrossEntropy, setBackend, tensor, type BackendName, type Tensor,
  type ZscoreLinearCrossEntropyOptions,
} from '../lib/index.js';
import { codeOf, expectClose, flat } from './helpers.js';
import { mulberry32 } from './reference64.js';
import { zscoreLoss64, type Zscore64Options } from './reference64-extra.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
afterAll(() => setBackend(initial));

const [N, D, V] = [9, 6, 23];
function rows(rng: () => number, n: number, d: number, scale: number): number[][] {
  return Array.from({ length: n }, () => Array.from({ length: d }, () => Math.fround((rng() * 2 - 1) * scale)));
}
const asTensor = (r: number[][]): Tensor => tensor(Float32Array.from(r.flat()), [r.length, r[0]!.length]);
const values = (t: Tensor | undefined): number[] => Array.from(t!.data as Float32Array);

const rng0 = mulberry32(17);
const E0 = rows(rng0, N, D, 1);
const W0 = rows(rng0, V, D, 0.5);
const bias0 = Float32Array.from({ length: V }, () => Math.fround(rng0() - 0.5));
const weights0 = Float32Array.from({ length: V }, () => Math.fround(0.2 + rng0()));
const labels0 = Int32Array.from({ length: N }, (_, i) => (i * 7 + 3) % V);
const ignored = Int32Array.from(labels0, (t, i) => (i === 2 || i === 5 ? -100 : t));

type Case = { label: string; labels: Int32Array; o: Omit<ZscoreLinearCrossEntropyOptions, 'normalizer' | 'zscore'>; zscore: { a: number; b: number } };
const CASES: Case[] = [
  { label: 'a 1, b 2', labels: labels0, o: {}, zscore: { a: 1, b: 2 } },
  { label: 'with bias', labels: labels0, o: { bias: bias0 }, zscore: { a: 0.5, b: 3 } },
  { label: 'class weights, ignored rows', labels: ignored, o: { classWeights: weights0, bias: bias0 }, zscore: { a: 2, b: 1 } },
  { label: "reduction 'sum', gradScale 0.5", labels: ignored, o: { reduction: 'sum', gradScale: 0.5 }, zscore: { a: 1, b: 4 } },
  {
    label: "reduction 'none', per-row gradScale", labels: labels0, zscore: { a: 1.5, b: 2 },
    o: { reduction: 'none', gradScale: Float32Array.from({ length: N }, (_, i) => 1 + i / 4), classWeights: weights0 },
  },
];

describe.each(available)("linearCrossEntropy normalizer 'zscore' on %s", (name) => {
  it.each(CASES)('equals the float64 reference: $label', ({ labels, o, zscore }) => {
    setBackend(name);
    const got = linearCrossEntropy(asTensor(E0), asTensor(W0), labels, { ...o, normalizer: 'zscore', zscore });
    const ref: Zscore64Options = {
      ...zscore, reduction: o.reduction ?? 'mean', ...(o.bias ? { bias: o.bias } : {}), ...(o.classWeights ? { classWeights: o.classWeights } : {}),
    };
    const want = zscoreLoss64(E0, W0, labels, ref, (o.gradScale as number | Float32Array | undefined) ?? 1);
    if (typeof want.loss === 'number') expect(Math.abs((got.loss as number) - want.loss)).toBeLessThan(1e-5 * Math.max(1, Math.abs(want.loss)));
    else expectClose(got.loss as Float32Array, want.loss, { rtol: 1e-5, atol: 1e-6, label: 'loss' });
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-4, atol: 1e-6, label: 'dE' });
    expectClose(values(got.dClassifier), flat(want.dW), { rtol: 1e-4, atol: 1e-6, label: 'dW' });
    if (want.dBias !== null) expectClose(got.dBias!, want.dBias, { rtol: 1e-4, atol: 1e-6, label: 'dBias' });
    else expect(got.dBias).toBeUndefined();
  });

  it('gradients equal central finite differences of its own loss', () => {
    setBackend(name);
    const zscore = { a: 1, b: 2 };
    const bias = Float32Array.from(bias0);
    const at = (E: number[][], W: number[][], b: Float32Array) =>
      linearCrossEntropy(asTensor(E), asTensor(W), labels0, { normalizer: 'zscore', zscore, bias: b, computeGrad: false, reduction: 'sum' }).loss as number;
    const r = linearCrossEntropy(asTensor(E0), asTensor(W0), labels0, { normalizer: 'zscore', zscore, bias, reduction: 'sum' });
    const h = 1e-2;
    const bump = (m: number[][], i: number, k: number, s: number) => m.map((row, a) => row.map((v, c) => (a === i && c === k ? v + s : v)));
    for (const [i, k] of [[0, 0], [4, 3], [8, 5]] as const) {
      const ge = (at(bump(E0, i, k, h), W0, bias) - at(bump(E0, i, k, -h), W0, bias)) / (2 * h);
      expect(Math.abs(r.dEmbeddings!.data[i * D + k]! - ge)).toBeLessThan(3e-3 * Math.max(1, Math.abs(ge)));
    }
    // a label row of W, a row no label uses (only the moment terms), and the bias
    for (const [j, k] of [[labels0[1]!, 2], [1, 4]] as const) {
      const gw = (at(E0, bump(W0, j, k, h), bias) - at(E0, bump(W0, j, k, -h), bias)) / (2 * h);
      expect(Math.abs(r.dClassifier!.data[j * D + k]! - gw)).toBeLessThan(3e-3 * Math.max(1, Math.abs(gw)));
      const bp = Float32Array.from(bias);
      const bm = Float32Array.from(bias);
      bp[j]! += h;
      bm[j]! -= h;
      const gb = (at(E0, W0, bp) - at(E0, W0, bm)) / (2 * h);
      expect(Math.abs(r.dBias![j]! - gb)).toBeLessThan(3e-3 * Math.max(1, Math.abs(gb)));
    }
  });

  it('z-normalization is invariant to scaling W and shifting every logit by the same amount', () => {
    setBackend(name);
    const o = { normalizer: 'zscore', zscore: { a: 1, b: 2 }, reduction: 'none' } as const;
    const base = linearCrossEntropy(asTensor(E0), asTensor(W0), labels0, { ...o, bias: bias0 }).loss as Float32Array;
    const W3 = W0.map((r) => r.map((v) => 4 * v)); // exact in f32
    const scaled = linearCrossEntropy(asTensor(E0), asTensor(W3), labels0, { ...o, bias: bias0.map((b) => 4 * b + 2) }).loss as Float32Array;
    expectClose(scaled, base, { rtol: 1e-5, atol: 1e-6 });
  });

  it('σ = 0 (all logits of a row equal): z̃ = 0, loss (1/a)·softplus(a·b), no gradient from that row', () => {
    setBackend(name);
    const E = E0.map((r, i) => (i === 3 ? r.map(() => 0) : r));
    const zscore = { a: 2, b: 1.5 };
    const r = linearCrossEntropy(asTensor(E), asTensor(W0), labels0, { normalizer: 'zscore', zscore, reduction: 'none' });
    expect((r.loss as Float32Array)[3]).toBeCloseTo(Math.log1p(Math.exp(2 * 1.5)) / 2, 6);
    expect(values(r.dEmbeddings).slice(3 * D, 4 * D)).toEqual(new Array(D).fill(0));
    const want = zscoreLoss64(E, W0, labels0, { ...zscore, reduction: 'none' });
    expectClose(values(r.dClassifier), flat(want.dW), { rtol: 1e-4, atol: 1e-6, label: 'dW' });
  });

  it('bf16 inputs: gradients in bf16 within bf16 rounding', () => {
    setBackend(name);
    const bits = (m: number[][]) => {
      const f = Float32Array.from(m.flat());
      const u = new Uint16Array(f.length);
      const w = new Uint32Array(f.buffer);
      for (let k = 0; k < f.length; k++) u[k] = w[k]! >>> 16; // truncation: the values below are the bf16 ones
      return u;
    };
    const back = (u: Uint16Array) => Array.from(new Float32Array(new Uint32Array(Array.from(u, (b) => b << 16)).buffer));
    const Eb = bits(E0);
    const Wb = bits(W0);
    const E = Array.from({ length: N }, (_, i) => back(Eb).slice(i * D, (i + 1) * D));
    const W = Array.from({ length: V }, (_, j) => back(Wb).slice(j * D, (j + 1) * D));
    const r = linearCrossEntropy(tensor(Eb, [N, D], 'bf16'), tensor(Wb, [V, D], 'bf16'), labels0, { normalizer: 'zscore', zscore: { a: 1, b: 2 } });
    const want = zscoreLoss64(E, W, labels0, { a: 1, b: 2 });
    expect(r.dEmbeddings!.dtype).toBe('bf16');
    expect(Math.abs((r.loss as number) - (want.loss as number))).toBeLessThan(1e-5);
    expectClose(back(r.dClassifier!.data as Uint16Array), flat(want.dW), { rtol: 1e-2, atol: 1e-4 });
  });

  it('options without a meaning for the Z-loss are E_OPTION', () => {
    setBackend(name);
    const [E, W] = [asTensor(E0), asTensor(W0)];
    const z = { normalizer: 'zscore', zscore: { a: 1, b: 2 } } as const;
    for (const extra of [{ labelSmoothing: 0.1 }, { zLoss: 1e-4 }, { softcap: 30 }, { temperature: 2 }, { focalGamma: 2 }, { polyEpsilon: 1 }, { squentropy: true }, { returnLse: true }]) {
      expect(codeOf(() => linearCrossEntropy(E, W, labels0, { ...z, ...extra } as never)), JSON.stringify(extra)).toBe('E_OPTION');
    }
    expect(codeOf(() => linearCrossEntropy(E, W, labels0, { normalizer: 'zscore' } as never))).toBe('E_OPTION');
    expect(codeOf(() => linearCrossEntropy(E, W, labels0, { normalizer: 'zscore', zscore: { a: 0, b: 1 } }))).toBe('E_OPTION');
    expect(codeOf(() => linearCrossEntropy(E, W, labels0, { normalizer: 'zscore', zscore: { a: 1, b: NaN } }))).toBe('E_OPTION');
    expect(codeOf(() => linearCrossEntropy(E, W, Int32Array.from(labels0, () => V), z))).toBe('E_LABEL');
    expect(codeOf(() => linearCrossEntropy(E, asTensor(W0.map((r) => r.slice(1))), labels0, z))).toBe('E_SHAPE');
  });
});
