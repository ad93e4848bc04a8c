// Harmonic logits (linearCrossEntropy's `logits: { kind: 'harmonic', exponent }`, Baek et al.
// 2025) on every backend here, host and device tensors: loss, dEmbeddings and dClassifier
// against the float64 reference of reference64-harmonic.ts (distances from the differences,
// not the library's norm expansion), whose own gradients are checked against central finite
// differences of its loss; the √D default; a label at distance exactly 0 (loss 0, zero
// gradient, no NaN); label smoothing, class weights, ignored rows; typed option errors.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  backends, download, getBackend, linearCrossEntropy, linearCrossEntropyAsync, setBackend, tensor, upload,
  type BackendName, type DeviceTensor, type LinearCrossEntropyOptions, type Tensor,
} from '../lib/index.js';
import { codeOf, expectClose, f32Rows, flat, rowsTensor } from './helpers.js';
import { bf16ToF32, f32ToBf16, mulberry32, type CeOptions } from './reference64.js';
import { harmonicLinearCrossEntropy64 } from './reference64-harmonic.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
afterAll(() => setBackend(initial));

const values = (t: Tensor | DeviceTensor | undefined): number[] =>
  Array.from((('download' in t! ? download(t as DeviceTensor) : t) as Tensor).data as Float32Array);

// D = 9: the default exponent √D is 3. Distances are ~‖e‖, never tiny against the norms, so the
// library's fp32 r + c − 2e·w keeps ~6 digits; V spans two 64-class tiles of the kernels.
const [N, V, D] = [11, 70, 9];
const rng = mulberry32(2025);
const E0 = f32Rows(rng, N, D, 1);
const W0 = f32Rows(rng, V, D, 1);
const weights0 = Float32Array.from({ length: V }, () => Math.fround(0.3 + rng()));
const labels0 = Int32Array.from({ length: N }, (_, i) => (i * 13 + 5) % V);
const ignored = Int32Array.from(labels0, (t, i) => (i === 2 || i === 7 ? -100 : t));
// row 0 sits exactly on its label's class: halves, so ‖e‖², ‖w‖² and e·w are exact in any order
const halves = Array.from({ length: D }, (_, d) => [0.5, -1, 0, 1.5, -0.5][d % 5]!);
const E1 = E0.map((r, i) => (i === 0 ? halves.slice() : r));
const W1 = W0.map((r, j) => (j === labels0[0] ? halves.slice() : r));

type Case = { label: string; E: number[][]; W: number[][]; labels: Int32Array; exponent?: number; o: CeOptions };
const CASES: Case[] = [
  { label: 'default exponent √D', E: E0, W: W0, labels: labels0, o: {} },
  { label: 'exponent 2, sum', E: E0, W: W0, labels: labels0, exponent: 2, o: { reduction: 'sum' } },
  { label: 'smoothing, class weights, ignored rows', E: E0, W: W0, labels: ignored, exponent: 5, o: { labelSmoothing: 0.1, classWeights: weights0 } },
  { label: "softcap, temperature, zLoss, 'none'", E: E0, W: W0, labels: ignored, o: { softcap: 20, temperature: 1.5, zLoss: 1e-3, reduction: 'none' } },
  { label: 'stablemax, gradScale', E: E0, W: W0, labels: labels0, exponent: 1, o: { normalizer: 'stablemax', gradScale: 0.5 } },
  { label: 'sparsemax, exponent 8', E: E0, W: W0, labels: labels0, exponent: 8, o: { normalizer: 'sparsemax' } },
  { label: 'a label at distance 0', E: E1, W: W1, labels: labels0, o: { reduction: 'none' } },
  // n = 0.05: the floor caps the label's logit at n·43.7 ≈ 2.2, so p_label < 1 there (loss > 0)
  { label: 'distance 0 with a small exponent', E: E1, W: W1, labels: labels0, exponent: 0.05, o: { reduction: 'none' } },
];

const libOptions = (c: Case): LinearCrossEntropyOptions =>
  ({ ...c.o, logits: c.exponent === undefined ? { kind: 'harmonic' } : { kind: 'harmonic', exponent: c.exponent } }) as LinearCrossEntropyOptions;
const reference = (c: Case) => harmonicLinearCrossEntropy64(c.E, c.W, c.labels, c.exponent ?? Math.sqrt(D), c.o);

function expectLoss(got: number | Float32Array, want: number | number[], label: string): void {
  if (typeof want === 'number') expect(Math.abs((got as number) - want), label).toBeLessThan(1e-5 * Math.max(1, Math.abs(want)));
  else expectClose(got as Float32Array, want, { rtol: 1e-5, atol: 1e-6, label });
}
/** Per-element: 1e-4 relative, plus 1e-5 of the largest entry (f32 sums of terms of both signs). */
function expectGrad(got: number[], want: number[][], label: string): void {
  const w = flat(want);
  const scale = Math.max(...w.map(Math.abs));
  expectClose(got, w, { rtol: 1e-4, atol: 1e-5 * scale + 1e-7, label });
}

describe('the float64 reference', () => {
  it('its gradients equal central finite differences of its loss', () => {
    const c = CASES[2]!;
    const r = reference(c);
    const h = 1e-6;
    const lossAt = (E: number[][], W: number[][]) => harmonicLinearCrossEntropy64(E, W, c.labels, 5, c.o).loss as number;
    const bump = (m: number[][], i: number, k: number, s: number) => m.map((row, a) => row.map((v, b) => (a === i && b === k ? v + s : v)));
    for (const [i, k] of [[0, 0], [4, 8], [10, 3]] as const) {
      const fd = (lossAt(bump(E0, i, k, h), W0) - lossAt(bump(E0, i, k, -h), W0)) / (2 * h);
      expect(Math.abs(r.dE[i]![k]! - fd), `dE[${i}, ${k}]`).toBeLessThan(1e-6 * Math.max(1, Math.abs(fd)));
    }
    for (const [j, k] of [[labels0[3]!, 2], [0, 0], [69, 8]] as const) {
      const fd = (lossAt(E0, bump(W0, j, k, h)) - lossAt(E0, bump(W0, j, k, -h))) / (2 * h);
      expect(Math.abs(r.dW[j]![k]! - fd), `dW[${j}, ${k}]`).toBeLessThan(1e-6 * Math.max(1, Math.abs(fd)));
    }
  });
});

describe.each(available)('harmonic logits on %s', (name) => {
  it.each(CASES)('loss, dEmbeddings, dClassifier equal the float64 reference: $label', (c) => {
    setBackend(name);
    const got = linearCrossEntropy(rowsTensor(c.E), rowsTensor(c.W), c.labels, libOptions(c));
    const want = reference(c);
    expectLoss(got.loss, want.loss, 'loss');
    expectGrad(values(got.dEmbeddings), want.dE, 'dE');
    expectGrad(values(got.dClassifier), want.dW, 'dW');
    expect(got.dBias).toBeUndefined();
  });

  it('a label at distance 0: loss 0, a zero gradient row, nothing NaN', () => {
    setBackend(name);
    const got = linearCrossEntropy(rowsTensor(E1), rowsTensor(W1), labels0, { logits: { kind: 'harmonic' }, reduction: 'none' });
    const loss = got.loss as Float32Array;
    expect(loss[0]).toBe(0);
    for (const v of loss) expect(Number.isFinite(v)).toBe(true);
    const dE = values(got.dEmbeddings);
    for (let d = 0; d < D; d++) expect(Math.abs(dE[d]!)).toBeLessThan(1e-30);
    for (const v of [...dE, ...values(got.dClassifier)]) expect(Number.isFinite(v)).toBe(true);
    // and the small-n effect: the floor's finite logit leaves the other classes some mass
    const small = linearCrossEntropy(rowsTensor(E1), rowsTensor(W1), labels0, { logits: { kind: 'harmonic', exponent: 0.05 }, reduction: 'none' });
    expect((small.loss as Float32Array)[0]).toBeGreaterThan(0.1);
  });

  it('gradients equal central finite differences of the float64 loss', () => {
    setBackend(name);
    const c = CASES[2]!;
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), c.labels, libOptions(c));
    const h = 1e-5;
    const lossAt = (E: number[][], W: number[][]) => harmonicLinearCrossEntropy64(E, W, c.labels, 5, c.o).loss as number;
    const bump = (m: number[][], i: number, k: number, s: number) => m.map((row, a) => row.map((v, b) => (a === i && b === k ? v + s : v)));
    for (const [i, k] of [[1, 0], [6, 4], [10, 8]] as const) {
      const fd = (lossAt(bump(E0, i, k, h), W0) - lossAt(bump(E0, i, k, -h), W0)) / (2 * h);
      expect(Math.abs(got.dEmbeddings!.data[i * D + k]! - fd), `dE[${i}, ${k}]`).toBeLessThan(1e-4 * Math.max(1, Math.abs(fd)));
    }
    for (const [j, k] of [[labels0[4]!, 1], [33, 7]] as const) {
      const fd = (lossAt(E0, bump(W0, j, k, h)) - lossAt(E0, bump(W0, j, k, -h))) / (2 * h);
      expect(Math.abs(got.dClassifier!.data[j * D + k]! - fd), `dW[${j}, ${k}]`).toBeLessThan(1e-4 * Math.max(1, Math.abs(fd)));
    }
  });

  it('the async twin gives the same results', async () => {
    setBackend(name);
    const o = libOptions(CASES[2]!);
    const a = await linearCrossEntropyAsync(rowsTensor(E0), rowsTensor(W0), ignored, o);
    const s = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, o);
    expect(Math.abs((a.loss as number) - (s.loss as number))).toBeLessThan(1e-6 * Math.abs(s.loss as number));
    expectClose(values(a.dEmbeddings), values(s.dEmbeddings), { rtol: 1e-5, atol: 1e-7 });
  });

  it('caller-provided outputs (out) are written in place, stale values overwritten', () => {
    setBackend(name);
    const o = libOptions(CASES[2]!);
    const plain = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, o);
    const dEmbeddings = tensor(new Float32Array(N * D).fill(7), [N, D]);
    const dClassifier = tensor(new Float32Array(V * D).fill(-3), [V, D]);
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, { ...o, out: { dEmbeddings, dClassifier } });
    expect(got.dEmbeddings).toBe(dEmbeddings);
    expect(got.dClassifier).toBe(dClassifier);
    expectClose(values(dEmbeddings), values(plain.dEmbeddings), { rtol: 1e-6, atol: 1e-8 });
    expectClose(values(dClassifier), values(plain.dClassifier), { rtol: 1e-6, atol: 1e-8 });
  });

  it('bad options are E_OPTION', () => {
    setBackend(name);
    const [E, W] = [rowsTensor(E0), rowsTensor(W0)];
    const call = (o: unknown) => codeOf(() => linearCrossEntropy(E, W, labels0, o as LinearCrossEntropyOptions));
    for (const exponent of [0, -1, NaN, Infinity, '2']) expect(call({ logits: { kind: 'harmonic', exponent } }), String(exponent)).toBe('E_OPTION');
    expect(call({ logits: { kind: 'harmonic' }, bias: new Float32Array(V) })).toBe('E_OPTION');
    expect(call({ logits: { kind: 'harmonic', scale: 2 } })).toBe('E_OPTION');
    expect(call({ logits: { kind: 'harmonics' } })).toBe('E_OPTION');
    expect(call({ logits: 'harmonic' })).toBe('E_OPTION');
    expect(call({ logits: { kind: 'harmonic' }, normalizer: 'zscore', zscore: { a: 1, b: 2 } })).toBe('E_OPTION');
  });
});

// Bigger than one tile, slice and chunk: several 64-class tiles and 64-row tiles (kernels), several
// 512-class slices and row chunks (cpu, workspaceBytes), filterEps at its default and the
// deterministic kernels; against the js backend, itself checked against float64 above.
describe.each(available.filter((b) => b !== 'js'))('harmonic logits on %s at tile, slice and chunk boundaries', (name) => {
  const [n, d, v] = [150, 24, 1100]; // rows of 16-byte multiples: the tensor-core paths would be eligible
  const r2 = mulberry32(7);
  const [E2, W2] = [f32Rows(r2, n, d, 1), f32Rows(r2, v, d, 1)];
  const labels2 = Int32Array.from({ length: n }, (_, i) => (i % 17 === 3 ? -100 : (i * 97 + 13) % v));
  labels2[5] = labels2[6]!; // two rows share a class
  const o = { logits: { kind: 'harmonic', exponent: 6 }, labelSmoothing: 0.05, reduction: 'sum', filterEps: 0 } as const;
  setBackend('js');
  const want = linearCrossEntropy(rowsTensor(E2), rowsTensor(W2), labels2, o);
  const close = (got: ReturnType<typeof linearCrossEntropy>, rtol: number, label: string) => {
    expect(Math.abs((got.loss as number) - (want.loss as number)), label).toBeLessThan(1e-5 * Math.abs(want.loss as number));
    const [dE, dW] = [values(want.dEmbeddings), values(want.dClassifier)];
    const scale = (x: number[]) => Math.max(...x.map(Math.abs));
    expectClose(values(got.dEmbeddings), dE, { rtol, atol: rtol * 0.1 * scale(dE), label: `${label} dE` });
    expectClose(values(got.dClassifier), dW, { rtol, atol: rtol * 0.1 * scale(dW), label: `${label} dW` });
  };
  it('exact backward (filterEps 0), small workspace / deterministic', () => {
    setBackend(name);
    const chunks = name === 'cpu' ? { workspaceBytes: 16 * v * 4 } : {}; // cpu: 10 chunks of 16 rows
    close(linearCrossEntropy(rowsTensor(E2), rowsTensor(W2), labels2, { ...o, ...chunks }), 1e-4, 'chunks');
    close(linearCrossEntropy(rowsTensor(E2), rowsTensor(W2), labels2, { ...o, deterministic: true }), 1e-4, 'deterministic');
  });
  it('bf16 inputs equal the js backend on their f32 values (bf16 gradients)', () => {
    const toBf16 = (r: number[][]) => tensor(Uint16Array.from(r.flat(), f32ToBf16), [r.length, r[0]!.length], 'bf16');
    const widened = (r: number[][]) => r.map((row) => row.map((x) => bf16ToF32(f32ToBf16(x))));
    setBackend('js');
    const ref = linearCrossEntropy(rowsTensor(widened(E2)), rowsTensor(widened(W2)), labels2, o);
    setBackend(name);
    const got = linearCrossEntropy(toBf16(E2), toBf16(W2), labels2, o);
    expect(Math.abs((got.loss as number) - (ref.loss as number))).toBeLessThan(1e-4 * Math.abs(ref.loss as number));
    const wide = (t: Tensor | undefined) => Array.from(t!.data as Uint16Array, bf16ToF32);
    for (const [g, w, label] of [[got.dEmbeddings, ref.dEmbeddings, 'dE'], [got.dClassifier, ref.dClassifier, 'dW']] as const) {
      const want = values(w);
      expectClose(wide(g as Tensor), want, { rtol: 2 ** -7, atol: 1e-3 * Math.max(...want.map(Math.abs)), label });
    }
  });

  it('filterEps at its default and at 1e-6: within the filter\'s bound', () => {
    setBackend(name);
    const { filterEps: _, ...dflt } = o;
    close(linearCrossEntropy(rowsTensor(E2), rowsTensor(W2), labels2, dflt), 1e-3, 'default filterEps');
    close(linearCrossEntropy(rowsTensor(E2), rowsTensor(W2), labels2, { ...o, filterEps: 1e-6 }), 1e-3, 'filterEps 1e-6');
  });
});

describe.each(available)('harmonic logits sharded on %s', (name) => {
  it('vocabParallel (one rank) and dataParallel equal the plain call', () => {
    setBackend(name);
    const communicator = { rank: 0, size: 1, allReduce() {} };
    const o = libOptions(CASES[2]!);
    const plain = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, o);
    for (const extra of [{ vocabParallel: { communicator, vocabStart: 0, vocabSize: V } }, { dataParallel: { communicator } }]) {
      const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), ignored, { ...o, ...extra });
      const label = Object.keys(extra)[0]!;
      expect(Math.abs((got.loss as number) - (plain.loss as number)), label).toBeLessThan(1e-5 * Math.abs(plain.loss as number));
      expectClose(values(got.dEmbeddings), values(plain.dEmbeddings), { rtol: 1e-4, atol: 1e-6, label: `${label} dE` });
      expectClose(values(got.dClassifier), values(plain.dClassifier), { rtol: 1e-4, atol: 1e-6, label: `${label} dW` });
    }
  });
});

describe.each(available)('harmonic logits with classSample on %s', (name) => {
  it('fraction 1 (every class sampled) equals the plain call, dClassifier rows by sampledClasses', () => {
    setBackend(name);
    const o = libOptions(CASES[0]!);
    const plain = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, o);
    const got = linearCrossEntropy(rowsTensor(E0), rowsTensor(W0), labels0, { ...o, classSample: { fraction: 1, seed: 3 } });
    expect(Math.abs((got.loss as number) - (plain.loss as number))).toBeLessThan(1e-5 * Math.abs(plain.loss as number));
    const ids = Array.from(got.sampledClasses!);
    expect(ids.length).toBe(V);
    const want = values(plain.dClassifier);
    const rowsById = ids.flatMap((c) => want.slice(c * D, (c + 1) * D));
    expectClose(values(got.dClassifier), rowsById, { rtol: 1e-4, atol: 1e-6 });
    expectClose(values(got.dEmbeddings), values(plain.dEmbeddings), { rtol: 1e-4, atol: 1e-6 });
  });
});

describe('harmonic logits hold no N×V buffer', () => {
  const probe = fileURLToPath(new URL('./fixtures/harmonic-memory-probe.ts', import.meta.url));
  const names = available.filter((b) => b === 'js' || b === 'cpu');
  it.each(names)('%s: N = 1024, V = 50000, D = 16 grows far below the 195 MiB of N×V logits', { timeout: 300_000 }, (backend) => {
    const [n, d, v] = [1024, 16, 50000];
    const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', probe, String(n), String(d), String(v)], {
      encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: backend },
    });
    const r = JSON.parse(out) as { loss: number; growthBytes: number; source: string; returnedBytes: number };
    console.log(`harmonic ${backend}: N×V would be ${((n * v * 4) / 2 ** 20).toFixed(0)} MiB; growth ${(r.growthBytes / 2 ** 20).toFixed(1)} MiB`);
    expect(r.source).toBe('VmHWM');
    expect(Number.isFinite(r.loss)).toBe(true);
    expect(r.growthBytes - r.returnedBytes).toBeLessThan((n * v * 4) / 8);
  });
});

describe.runIf(available.includes('cuda-emu'))('harmonic logits on cuda-emu device tensors', () => {
  it.each([CASES[0]!, CASES[2]!, CASES[6]!])('on-device gradients equal the float64 reference (and async): $label', async (c) => {
    setBackend('cuda-emu');
    const Ed = upload(rowsTensor(c.E), { backend: 'cuda-emu' });
    const Wd = upload(rowsTensor(c.W), { backend: 'cuda-emu' });
    try {
      for (const deterministic of [false, true]) {
        const got = linearCrossEntropy(Ed, Wd, c.labels, { ...libOptions(c), deterministic });
        const want = reference(c);
        expectLoss(got.loss, want.loss, 'loss');
        expect(got.dEmbeddings!.backend).toBe('cuda-emu');
        expectGrad(values(got.dEmbeddings), want.dE, 'dE');
        expectGrad(values(got.dClassifier), want.dW, 'dW');
        got.dEmbeddings!.dispose();
        got.dClassifier!.dispose();
      }
      const a = await linearCrossEntropyAsync(Ed, Wd, c.labels, libOptions(c));
      expectLoss(a.loss, reference(c).loss, 'async loss');
      expectGrad(values(a.dEmbeddings), reference(c).dE, 'async dE');
      a.dEmbeddings!.dispose();
      a.dClassifier!.dispose();
    } finally {
      Ed.dispose();
      Wd.dispose();
    }
  });
});
