// The spherical Z-loss's CUDA kernels (cuda/zscore.cu) on cuda-emu beyond test/zscore.test.ts's
// float64 checks (which run them too): DeviceTensor inputs whose gradients stay on the device,
// a shape with several Gram tiles (D + 1 > 32) and row chunks (V > 512, N > 512), bf16
// classifiers (the f32 accumulator), and the async twins on every backend. The
// larger shapes are checked against the js backend (itself checked against float64 there);
// the small one against the float64 reference.
import { afterAll, describe, expect, it } from 'vitest';
import {
  backends, download, getBackend, linearCrossEntropy, linearCrossEntropyAsync, setBackend, tensor, upload, type BackendName,
  type DeviceTensor, type Tensor,
} from '../lib/index.js';
import { expectClose, flat } from './helpers.js';
import { mulberry32 } from './reference64.js';
import { zscoreLoss64 } from './reference64-extra.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const emu = available.includes('cuda-emu');
const initial = getBackend();
afterAll(() => setBackend(initial));

function matrix(seed: number, rows: number, cols: number, scale: number): Float32Array {
  const rng = mulberry32(seed);
  return Float32Array.from({ length: rows * cols }, () => Math.fround((rng() * 2 - 1) * scale));
}
const values = (t: Tensor | DeviceTensor | undefined): number[] =>
  Array.from((('download' in t! ? download(t as DeviceTensor) : t) as Tensor).data as Float32Array);
const bf16 = (f: Float32Array): Uint16Array => Uint16Array.from(new Uint32Array(f.buffer), (w) => w >>> 16);
const fromBf16 = (u: Uint16Array): Float32Array => new Float32Array(Uint32Array.from(u, (b) => b << 16).buffer);

// several Gram tiles (D + 1 = 41 > 32), row chunks of W (V = 1100 > 512) and of E (N = 600 > 512)
const [N, D, V] = [600, 40, 1100];
const E = matrix(1, N, D, 1);
const W = matrix(2, V, D, 0.5);
const bias = matrix(3, 1, V, 0.5);
const weights = Float32Array.from(matrix(4, 1, V, 0.4), (w) => w + 0.7);
const labels = Int32Array.from({ length: N }, (_, i) => (i % 13 === 5 ? -100 : (i * 37 + 11) % V));
const zscore = { a: 1.5, b: 2 };

function onJs(o: object) {
  setBackend('js');
  return linearCrossEntropy(tensor(E, [N, D]), tensor(W, [V, D]), labels, { normalizer: 'zscore', zscore, ...o });
}

describe.runIf(emu)('zscore kernels on cuda-emu', () => {
  it('device inputs: loss and on-device gradients equal the js backend (tiles and chunks)', () => {
    const o = { bias, classWeights: weights, reduction: 'sum' } as const;
    const want = onJs(o);
    const Ed = upload(tensor(E, [N, D]), { backend: 'cuda-emu' });
    const Wd = upload(tensor(W, [V, D]), { backend: 'cuda-emu' });
    try {
      setBackend('cuda-emu');
      const got = linearCrossEntropy(Ed, Wd, labels, { normalizer: 'zscore', zscore, ...o });
      expect(Math.abs((got.loss as number) - (want.loss as number))).toBeLessThan(1e-4 * Math.abs(want.loss as number));
      expect(got.dEmbeddings!.backend).toBe('cuda-emu');
      expectClose(values(got.dEmbeddings), values(want.dEmbeddings), { rtol: 1e-3, atol: 1e-6, label: 'dE' });
      expectClose(values(got.dClassifier), values(want.dClassifier), { rtol: 1e-3, atol: 1e-6, label: 'dW' });
      expectClose(got.dBias!, want.dBias!, { rtol: 1e-3, atol: 1e-6, label: 'dBias' });
      got.dEmbeddings!.dispose();
      got.dClassifier!.dispose();
    } finally {
      Ed.dispose();
      Wd.dispose();
    }
  });

  it("reduction 'none' without a bias, forward only", () => {
    const want = onJs({ reduction: 'none', computeGrad: false }).loss as unknown as Float32Array;
    setBackend('cuda-emu');
    const got = linearCrossEntropy(tensor(E, [N, D]), tensor(W, [V, D]), labels, { normalizer: 'zscore', zscore, reduction: 'none', computeGrad: false });
    expectClose(got.loss as Float32Array, want, { rtol: 1e-4, atol: 1e-6 });
    expect(got.dEmbeddings).toBeUndefined();
  });

  it('bf16 classifier: dW in bf16 from the f32 accumulator, as the float64 reference of the rounded inputs', () => {
    const [n, d, v] = [7, 5, 19];
    const e = matrix(5, n, d, 1);
    const w16 = bf16(matrix(6, v, d, 0.5));
    const lab = Int32Array.from({ length: n }, (_, i) => (i * 5 + 2) % v);
    setBackend('cuda-emu');
    const got = linearCrossEntropy(tensor(e, [n, d]), tensor(w16, [v, d], 'bf16'), lab, { normalizer: 'zscore', zscore });
    const rows = (f: Float32Array, c: number) => Array.from({ length: f.length / c }, (_, i) => Array.from(f.slice(i * c, (i + 1) * c)));
    const want = zscoreLoss64(rows(e, d), rows(fromBf16(w16), d), lab, zscore);
    expect(got.dClassifier!.dtype).toBe('bf16');
    expect(Math.abs((got.loss as number) - (want.loss as number))).toBeLessThan(1e-5);
    expectClose(values(got.dEmbeddings), flat(want.dE), { rtol: 1e-4, atol: 1e-6, label: 'dE' });
    expectClose(Array.from(fromBf16(got.dClassifier!.data as Uint16Array)), flat(want.dW), { rtol: 1e-2, atol: 1e-4, label: 'dW' });
  });
});

describe.each(available)('zscore async twin on %s', (name) => {
  it('linearCrossEntropyAsync gives the synchronous result', async () => {
    const [n, v] = [64, 300];
    const e = tensor(E.slice(0, n * D), [n, D]);
    const w = tensor(W.slice(0, v * D), [v, D]);
    const lab = Int32Array.from({ length: n }, (_, i) => (i * 7) % v);
    setBackend(name);
    const o = { normalizer: 'zscore', zscore, bias: bias.slice(0, v) } as const;
    const s = linearCrossEntropy(e, w, lab, o);
    const a = await linearCrossEntropyAsync(e, w, lab, o);
    expect(a.loss).toBe(s.loss);
    expect(values(a.dEmbeddings)).toEqual(values(s.dEmbeddings));
    expect(values(a.dClassifier)).toEqual(values(s.dClassifier));
    expect(Array.from(a.dBias!)).toEqual(Array.from(s.dBias!));
  });
});
