// Margin softmax (logits kind 'cosine': CosFace's additive margin, ArcFace's angular margin):
// the float64 re-computation of test/reference64-margin.ts is checked against finite
// differences of its own loss (through the norms and the margin), then every available backend
// (js, cpu, cuda-emu; host tensors, device tensors, the async twin) against it, with label
// smoothing and class weights, classSample, rows past θ + m2 = π, zero-norm rows, |cos| = 1,
// bad options, and no N×V buffer.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { sampleClasses } from '../lib/classSample.js';
import { labelMargin, marginLabelLogit, marginLabelSlope, marginPhi, marginPhiSlope } from '../lib/js/math.js';
import { codeOf, expectClose, gridRows, lossList } from './helpers.js';
import * as ref from './reference64.js';
import * as margin from './reference64-margin.js';

const BACKENDS = lib.backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name as lib.BackendName);
const DEVICE_BACKENDS = BACKENDS.filter((b) => b === 'cuda-emu');
const initial = lib.getBackend();
afterAll(() => lib.setBackend(initial));

const f32 = (rows: number[][]) => Float32Array.from(rows.flat());

function problem(seed: number, N: number, D: number, V: number) {
  const rng = ref.mulberry32(seed);
  const E = gridRows(rng, N, D, 2);
  const W = gridRows(rng, V, D, 1);
  const labels = Int32Array.from({ length: N }, (_, n) => (n % 5 === 4 ? -100 : Math.floor(rng() * V)));
  return { E, W, labels, N, D, V };
}

type Case = [name: string, cosine: margin.CosineOptions, ce: lib.LinearCrossEntropyOptions];
const CASES: Case[] = [
  ['CosFace (margin 0.35)', { scale: 16, margin: 0.35 }, {}],
  ['ArcFace (angularMargin 0.5)', { scale: 16, angularMargin: 0.5 }, {}],
  ['both margins, sum', { scale: 8, margin: 0.2, angularMargin: 0.3 }, { reduction: 'sum' }],
  ['no margin, none', { scale: 10 }, { reduction: 'none' }],
  ['ArcFace with the default filterEps', { scale: 30, angularMargin: 0.5 }, { filterEps: undefined }],
];

const V_SMALL = 13;
const weights = Float32Array.from({ length: V_SMALL }, (_, j) => 0.5 + (j % 4) * 0.25);
const SMOOTH_CASE: Case = ['ArcFace + CosFace with label smoothing and class weights', { scale: 12, margin: 0.1, angularMargin: 0.4 },
  { labelSmoothing: 0.1, classWeights: weights }];

/** The library's options for a case. */
const libOptions = (c: margin.CosineOptions, ce: lib.LinearCrossEntropyOptions): lib.LinearCrossEntropyOptions =>
  ({ filterEps: 0, ...ce, logits: { kind: 'cosine', ...c } });

/** The reference's CE options (class weights as plain numbers). */
const refCe = (ce: lib.LinearCrossEntropyOptions): ref.CeOptions => ({
  reduction: ce.reduction, labelSmoothing: ce.labelSmoothing,
  classWeights: ce.classWeights === undefined ? undefined : Array.from(ce.classWeights),
});

// cosines are formed in f32 from unit rows: each logit is off by ~s·2^-24·√D; gradients by that relative to their row
const LOSS = { rtol: 2e-5, atol: 1e-6 };
const GRAD = { rtol: 2e-5, rowTol: 2e-5, atol: 1e-7 };

function expectMatches(got: lib.LinearCrossEntropyResult, want: ReturnType<typeof margin.cosineLinearCrossEntropy>, D: number, label: string) {
  expectClose(lossList(got.loss), lossList(want.loss), { ...LOSS, label: `${label} loss` });
  expectClose(got.dEmbeddings!.data, want.dE, { ...GRAD, cols: D, label: `${label} dE` });
  expectClose(got.dClassifier!.data, want.dW, { ...GRAD, cols: D, label: `${label} dW` });
}

// bf16: the unit rows are bf16 copies (each cosine off by ~2^-9, times s in the logit), and the gradients are rounded twice
const BF16 = { rtol: 3e-2, rowTol: 3e-2, atol: 1e-6 };
function expectBf16Close(loss: number | Float32Array, dE: number[], dW: number[], want: ReturnType<typeof margin.cosineLinearCrossEntropy>, D: number, label: string) {
  expectClose(lossList(loss), lossList(want.loss), { rtol: 2e-2, label: `${label} loss` });
  expectClose(dE, want.dE, { ...BF16, cols: D, label: `${label} dE` });
  expectClose(dW, want.dW, { ...BF16, cols: D, label: `${label} dW` });
}

describe('one definition: cuda/math/margin.cuh equals lib/js/math.ts', () => {
  it('the label logit and its slope on a grid of cosines (±1, past θ + m2 = π, just above 1), within fp32 rounding', () => {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const exe = path.join(mkdtempSync(path.join(tmpdir(), 'cutloss-margin-')), 'margin_probe');
    execFileSync('g++', ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', '-I', 'cuda', 'test/fixtures/margin_probe.cc', '-o', exe], { cwd: root });
    const lines = execFileSync(exe, { encoding: 'utf8' }).trim().split('\n').map((l) => JSON.parse(l) as { s: number[]; x: number; z: number; d: number });
    expect(lines.length).toBeGreaterThan(40);
    for (const line of lines) {
      // the printed values are the fp32 inputs; JSON gives the nearest doubles, fround the floats themselves
      const [s, x, z, d] = [line.s.map(Math.fround), Math.fround(line.x), line.z, line.d];
      const lm = { scale: s[0]!, margin: s[1]!, cosAngular: s[2]!, sinAngular: s[3]!, continuation: s[4]! };
      const label = `${JSON.stringify(s)} x ${x}`;
      // fp32: x/s and the products round at 2^-24 of the scale; the slope near |c| = 1 divides by sin θ ≥ 3.45e-4
      expect(Math.abs(z - marginLabelLogit(lm, x)), label).toBeLessThanOrEqual(8 * 2 ** -24 * s[0]! * 4);
      expect(Math.abs(d - marginLabelSlope(lm, x)), label).toBeLessThanOrEqual(1e-5 * Math.abs(marginLabelSlope(lm, x)) + 1e-6);
    }
  });
});

describe('the float64 reference', () => {
  it('φ and φ′ of lib/js/math.ts agree with cos(θ + m2) − m and its derivative', () => {
    const lm = labelMargin(1, 0.2, 0.5);
    for (const c of [-0.8, -0.3, 0, 0.4, 0.9, 0.999]) {
      expect(marginPhi(lm, c)).toBeCloseTo(margin.phi(c, 0.2, 0.5), 6);
      expect(marginPhiSlope(lm, c)).toBeCloseTo(margin.phiSlope(c, 0.5), 4);
    }
    // past θ + m2 = π: insightface's continuation, slope 1
    expect(marginPhi(lm, -0.95)).toBeCloseTo(-0.95 - 0.5 * Math.sin(0.5) - 0.2, 6);
    expect(marginPhiSlope(lm, -0.95)).toBe(1);
    // |c| = 1: finite slope, from sin θ floored at its float32 value just below 1
    expect(Number.isFinite(marginPhiSlope(lm, 1))).toBe(true);
    expect(marginPhiSlope(lm, 1)).toBeGreaterThan(1000);
  });

  for (const [name, cosine, ce] of [...CASES, SMOOTH_CASE]) {
    it(`${name}: its gradients equal finite differences of its loss, through the norms and the margin`, () => {
      const { E, W, labels, D } = problem(3, 5, 4, V_SMALL);
      const o = refCe(ce);
      const want = margin.cosineLinearCrossEntropy(E, W, labels, cosine, o);
      const total = (l: number | number[]) => (typeof l === 'number' ? l : l.reduce((a, v) => a + v, 0));
      const flatE = Float64Array.from(E.flat());
      const fdE = ref.finiteDiff((x) => total(margin.lossOnly(ref.toF64Rows(x, E.length, D), W, labels, cosine, o)), flatE);
      expectClose(fdE, want.dE, { rtol: 1e-5, rowTol: 1e-6, atol: 1e-7, cols: D, label: 'dE' });
      const flatW = Float64Array.from(W.flat());
      const fdW = ref.finiteDiff((x) => total(margin.lossOnly(E, ref.toF64Rows(x, W.length, D), labels, cosine, o)), flatW);
      expectClose(fdW, want.dW, { rtol: 1e-5, rowTol: 1e-6, atol: 1e-7, cols: D, label: 'dW' });
    });
  }
});

describe.each(BACKENDS)('linearCrossEntropy with logits kind cosine on %s', (backend) => {
  const { E, W, labels, N, D, V } = problem(7, 11, 8, V_SMALL);
  for (const [name, cosine, ce] of [...CASES, SMOOTH_CASE]) {
    it(`${name}: loss and gradients equal the float64 re-computation`, () => {
      lib.setBackend(backend);
      const got = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, libOptions(cosine, ce));
      expectMatches(got, margin.cosineLinearCrossEntropy(E, W, labels, cosine, refCe(ce)), D, `${backend} ${name}`);
    });
  }

  it('rows past θ + m2 = π take the continuation, and a zero row of E and of W the eps branch', () => {
    lib.setBackend(backend);
    const E2 = E.map((r) => [...r]);
    const W2 = W.map((r) => [...r]);
    // row 0's label class points away from it: cos ≈ −0.99 < −cos 0.5
    W2[labels[0]!] = E2[0]!.map((v, d) => -v + (d === 0 ? 0.05 : 0));
    E2[1] = E2[1]!.map(() => 0);
    E2[2] = E2[2]!.map((v) => v * 1e19); // squares past f32's range: the norm must not overflow
    const unused = (labels[2]! + 1) % V; // a zero class that is not row 2's label... its cosines are all 0
    W2[unused] = W2[unused]!.map(() => 0);
    const cosine = { scale: 16, margin: 0.1, angularMargin: 0.5 };
    const want = margin.cosineLinearCrossEntropy(E2, W2, labels, cosine, {});
    expect(want.cos[0]![labels[0]!]!).toBeLessThan(-Math.cos(0.5));
    const got = lib.linearCrossEntropy(lib.tensor(f32(E2), [N, D]), lib.tensor(f32(W2), [V, D]), labels, libOptions(cosine, {}));
    expectMatches(got, want, D, `${backend} edges`);
    // the zero row's gradient is F.normalize's dy/1e-12: huge, finite
    expect(Math.abs(got.dEmbeddings!.data[D]!)).toBeGreaterThan(1e9);
  });

  it('|cos| = 1 at the label gives finite gradients, the same as the js backend', () => {
    lib.setBackend(backend);
    const W2 = W.map((r) => [...r]);
    W2[labels[0]!] = [...E[0]!]; // cos = 1 up to rounding
    const opts = libOptions({ scale: 16, angularMargin: 0.5 }, {});
    const got = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W2), [V, D]), labels, opts);
    for (const v of [...got.dEmbeddings!.data, ...got.dClassifier!.data]) expect(Number.isFinite(v)).toBe(true);
    lib.setBackend('js');
    const js = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W2), [V, D]), labels, opts);
    // the slope there is ~1.4e3 and the cosine is rounded differently per backend: loose, but it catches NaN or a missed map
    expectClose(lossList(got.loss), lossList(js.loss), { rtol: 1e-4, label: 'loss' });
  });

  it('scale-out on one rank (test/mpi/worker.ts runs 2-4 ranks): vocabParallel and dataParallel with margins', () => {
    lib.setBackend(backend);
    const communicator = { rank: 0, size: 1, allReduce() {} };
    const runs: [margin.CosineOptions, lib.LinearCrossEntropyOptions][] = [
      [{ scale: 10 }, { vocabParallel: { communicator, vocabStart: 0, vocabSize: V } }],
      [{ scale: 10, margin: 0.2, angularMargin: 0.3 }, { vocabParallel: { communicator, vocabStart: 0, vocabSize: V } }],
      [{ scale: 10, margin: 0.2, angularMargin: 0.3 }, { dataParallel: { communicator } }],
    ];
    for (const [cosine, extra] of runs) {
      const got = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, { ...libOptions(cosine, {}), ...extra });
      expectMatches(got, margin.cosineLinearCrossEntropy(E, W, labels, cosine, {}), D, `${backend} ${Object.keys(extra)[0]}`);
    }
  });

  it('with classSample: the margin softmax over the sampled classes', () => {
    lib.setBackend(backend);
    const big = problem(9, 10, 8, 60);
    const sample = { fraction: 0.3, seed: 99 };
    const ids = sampleClasses(big.V, big.labels, -100, 0, sample);
    const position = new Map(Array.from(ids, (c, k) => [c, k]));
    const sampledLabels = Array.from(big.labels, (t) => (t === -100 ? t : position.get(t)!));
    const cosine = { scale: 16, margin: 0.1, angularMargin: 0.3 };
    const got = lib.linearCrossEntropy(lib.tensor(f32(big.E), [big.N, big.D]), lib.tensor(f32(big.W), [big.V, big.D]), big.labels,
      { ...libOptions(cosine, {}), classSample: sample });
    expect(Array.from(got.sampledClasses!)).toEqual(Array.from(ids));
    const want = margin.cosineLinearCrossEntropy(big.E, Array.from(ids, (c) => big.W[c]!), sampledLabels, cosine, {});
    expectMatches(got, want, big.D, `${backend} classSample`);
  });

  it('the async twin and caller-provided outputs give the same results', async () => {
    lib.setBackend(backend);
    const cosine = { scale: 16, margin: 0.2, angularMargin: 0.3 };
    const want = margin.cosineLinearCrossEntropy(E, W, labels, cosine, {});
    const got = await lib.linearCrossEntropyAsync(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, libOptions(cosine, {}));
    expectMatches(got, want, D, `${backend} async`);
    const dEmbeddings = lib.tensor(new Float32Array(N * D), [N, D]);
    const dClassifier = lib.tensor(new Float32Array(V * D), [V, D]);
    const r = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels,
      { ...libOptions(cosine, {}), out: { dEmbeddings, dClassifier } });
    expect(r.dEmbeddings).toBe(dEmbeddings);
    expect(r.dClassifier).toBe(dClassifier);
    expectMatches(r, want, D, `${backend} out`);
  });

  it('bf16 inputs agree with the float64 re-computation of their values to bf16 accuracy', () => {
    lib.setBackend(backend);
    const cosine = { scale: 8, margin: 0.1, angularMargin: 0.4 };
    const Eb = ref.rowsToBf16(E);
    const Wb = ref.rowsToBf16(W);
    const want = margin.cosineLinearCrossEntropy(ref.toF64Rows(Eb, N, D), ref.toF64Rows(Wb, V, D), labels, cosine, {});
    const got = lib.linearCrossEntropy(lib.tensor(Eb, [N, D], 'bf16'), lib.tensor(Wb, [V, D], 'bf16'), labels, libOptions(cosine, {}));
    expect(got.dEmbeddings!.dtype).toBe('bf16');
    const widen = (t: lib.Tensor) => Array.from(t.data as Uint16Array, ref.bf16ToF32);
    expectBf16Close(got.loss, widen(got.dEmbeddings!), widen(got.dClassifier!), want, D, `${backend} bf16`);
  });
});

describe.each(DEVICE_BACKENDS)('linearCrossEntropy with logits kind cosine on %s device tensors', (backend) => {
  const { E, W, labels, N, D, V } = problem(13, 9, 8, V_SMALL);
  for (const [name, cosine, ce] of [CASES[1]!, SMOOTH_CASE]) {
    it(`${name}: device results equal the float64 re-computation, sync and async`, async () => {
      const want = margin.cosineLinearCrossEntropy(E, W, labels, cosine, refCe(ce));
      for (const mode of ['sync', 'async'] as const) {
        const Ed = lib.upload(lib.tensor(f32(E), [N, D]), { backend });
        const Wd = lib.upload(lib.tensor(f32(W), [V, D]), { backend });
        try {
          const r = mode === 'sync'
            ? lib.linearCrossEntropy(Ed, Wd, labels, libOptions(cosine, ce))
            : await lib.linearCrossEntropyAsync(Ed, Wd, labels, libOptions(cosine, ce));
          expect(r.dEmbeddings).toBeInstanceOf(lib.DeviceTensor);
          const got = { loss: r.loss, dEmbeddings: r.dEmbeddings!.download(), dClassifier: r.dClassifier!.download() };
          r.dEmbeddings!.dispose();
          r.dClassifier!.dispose();
          expectMatches(got, want, D, `${backend} device ${mode}`);
        } finally {
          Ed.dispose();
          Wd.dispose();
        }
      }
    });
  }

  it('cuda/normalize.cu on the device: rows of 1e19 (squares past f32), of 1e-30 and 0 (the eps branch of F.normalize), θ + m2 > π', () => {
    const E2 = E.map((r) => [...r]);
    const W2 = W.map((r) => [...r]);
    E2[0] = E2[0]!.map((v) => v * 1e19);
    E2[1] = E2[1]!.map(() => 0);
    E2[2] = E2[2]!.map((v) => v * 1e-30);
    W2[labels[3]!] = E2[3]!.map((v, d) => -v + (d === 0 ? 0.05 : 0));
    const cosine = { scale: 16, margin: 0.1, angularMargin: 0.5 };
    const want = margin.cosineLinearCrossEntropy(E2, W2, labels, cosine, {});
    expect(want.cos[3]![labels[3]!]!).toBeLessThan(-Math.cos(0.5));
    const Ed = lib.upload(lib.tensor(f32(E2), [N, D]), { backend });
    const Wd = lib.upload(lib.tensor(f32(W2), [V, D]), { backend });
    try {
      const r = lib.linearCrossEntropy(Ed, Wd, labels, libOptions(cosine, {}));
      const got = { loss: r.loss, dEmbeddings: r.dEmbeddings!.download(), dClassifier: r.dClassifier!.download() };
      r.dEmbeddings!.dispose();
      r.dClassifier!.dispose();
      expectMatches(got, want, D, `${backend} device edges`);
    } finally {
      Ed.dispose();
      Wd.dispose();
    }
  });

  it('bf16 device tensors: the bf16 tensor-core forward and backward (D a multiple of 8), and the deterministic backward', () => {
    const cosine = { scale: 8, margin: 0.1, angularMargin: 0.5 };
    const Eb = ref.rowsToBf16(E);
    const Wb = ref.rowsToBf16(W);
    const want = margin.cosineLinearCrossEntropy(ref.toF64Rows(Eb, N, D), ref.toF64Rows(Wb, V, D), labels, cosine, {});
    for (const extra of [{}, { deterministic: true }] as lib.LinearCrossEntropyOptions[]) {
      const Ed = lib.upload(lib.tensor(Eb, [N, D], 'bf16'), { backend });
      const Wd = lib.upload(lib.tensor(Wb, [V, D], 'bf16'), { backend });
      try {
        const r = lib.linearCrossEntropy(Ed, Wd, labels, { ...libOptions(cosine, {}), ...extra });
        const widen = (t: lib.DeviceTensor) => Array.from(t.download().data as Uint16Array, ref.bf16ToF32);
        expectBf16Close(r.loss, widen(r.dEmbeddings!), widen(r.dClassifier!), want, D, `device bf16 ${JSON.stringify(extra)}`);
        r.dEmbeddings!.dispose();
        r.dClassifier!.dispose();
      } finally {
        Ed.dispose();
        Wd.dispose();
      }
    }
  });

  it('runs the margin on the tensor-core (tf32) and deterministic kernels too', () => {
    const cosine = { scale: 16, margin: 0.1, angularMargin: 0.5 };
    const want = margin.cosineLinearCrossEntropy(E, W, labels, cosine, {});
    for (const extra of [{ deterministic: true }, { tf32: true }] as lib.LinearCrossEntropyOptions[]) {
      const Ed = lib.upload(lib.tensor(f32(E), [N, D]), { backend });
      const Wd = lib.upload(lib.tensor(f32(W), [V, D]), { backend });
      try {
        const r = lib.linearCrossEntropy(Ed, Wd, labels, { ...libOptions(cosine, {}), ...extra });
        const got = { loss: r.loss, dEmbeddings: r.dEmbeddings!.download(), dClassifier: r.dClassifier!.download() };
        // tf32 rounds the unit rows to 10 mantissa bits
        const tol = extra.tf32 ? { rtol: 3e-3, rowTol: 3e-3, atol: 1e-5 } : GRAD;
        expectClose(lossList(got.loss), lossList(want.loss), { ...(extra.tf32 ? tol : LOSS), label: 'loss' });
        expectClose(got.dEmbeddings.data, want.dE, { ...tol, cols: D, label: `dE ${JSON.stringify(extra)}` });
        expectClose(got.dClassifier.data, want.dW, { ...tol, cols: D, label: `dW ${JSON.stringify(extra)}` });
      } finally {
        Ed.dispose();
        Wd.dispose();
      }
    }
  });
});

describe('bad options are E_OPTION', () => {
  const { E, W, labels, N, D, V } = problem(5, 4, 4, 6);
  const call = (options: Record<string, unknown>) => () =>
    lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, options as lib.LinearCrossEntropyOptions);
  it.each([
    ['angularMargin π', { logits: { kind: 'cosine', angularMargin: Math.PI } }],
    ['angularMargin < 0', { logits: { kind: 'cosine', angularMargin: -0.1 } }],
    ['scale 0', { logits: { kind: 'cosine', scale: 0 } }],
    ['margin NaN', { logits: { kind: 'cosine', margin: NaN } }],
    ['an exponent', { logits: { kind: 'cosine', exponent: 2 } }],
    ['a bias', { logits: { kind: 'cosine' }, bias: new Float32Array(V) }],
  ])('%s', (_, options) => {
    for (const backend of BACKENDS) {
      lib.setBackend(backend);
      expect(codeOf(call(options))).toBe('E_OPTION');
    }
  });
});

describe('no N×V buffer', () => {
  const probe = fileURLToPath(new URL('./fixtures/cosine-memory-probe.ts', import.meta.url));
  const names = BACKENDS.filter((b) => b === 'js' || b === 'cpu');
  it.each(names)('%s: N = 2048, V = 50000, D = 16 grows far below the 391 MiB of N×V logits', { timeout: 300_000 }, (backend) => {
    const [N, D, V] = [2048, 16, 50000];
    const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', probe, String(N), String(D), String(V)], {
      encoding: 'utf8', env: { ...process.env, CUTLOSS_BACKEND: backend },
    });
    const r = JSON.parse(out) as { loss: number; growthBytes: number; source: string; returnedBytes: number };
    console.log(`cosine ${backend}: N×V would be ${((N * V * 4) / 2 ** 20).toFixed(0)} MiB; growth ${(r.growthBytes / 2 ** 20).toFixed(1)} MiB`);
    expect(r.source).toBe('VmHWM');
    expect(Number.isFinite(r.loss)).toBe(true);
    expect(r.growthBytes - r.returnedBytes).toBeLessThan((N * V * 4) / 8);
  });
});
