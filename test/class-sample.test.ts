// Partial FC (`classSample`): the sample keeps every label's class and ⌈fraction·V⌉ classes in
// all, reproducibly from the seed; the loss and gradients equal a float64 re-computation of
// cross-entropy over the sampled classes only (W's sampled rows, labels renumbered), on every
// backend, for host and device tensors, sync and async.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { sampleClasses } from '../lib/classSample.js';
import { codeOf, expectLinearCeClose } from './helpers.js';
import * as ref from './reference64.js';

const BACKENDS = lib.backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name as lib.BackendName);
const initial = lib.getBackend();
afterAll(() => lib.setBackend(initial));

function problem(seed: number, N: number, D: number, V: number) {
  const rng = ref.mulberry32(seed);
  const E = Array.from({ length: N }, () => Array.from({ length: D }, () => ref.randn(rng)));
  const W = Array.from({ length: V }, () => Array.from({ length: D }, () => ref.randn(rng) * 0.5));
  const labels = Int32Array.from({ length: N }, (_, n) => (n % 7 === 3 ? -100 : Math.floor(rng() * V)));
  const bias = Float32Array.from({ length: V }, () => ref.randn(rng));
  return { E, W, labels, bias, N, D, V };
}

const f32 = (rows: number[][]) => Float32Array.from(rows.flat());

describe('the class sample', () => {
  it('holds every label class, ⌈fraction·V⌉ classes in all, ascending, the same for the same seed', () => {
    const labels = Int32Array.of(5, 5, 17, -100, 99, 0);
    const a = sampleClasses(100, labels, -100, 0, { fraction: 0.1, seed: 7 });
    expect(a.length).toBe(10);
    for (const c of [0, 5, 17, 99]) expect(a).toContain(c);
    expect(Array.from(a)).toEqual(Array.from(a).sort((x, y) => x - y));
    expect(new Set(a).size).toBe(a.length);
    expect(Array.from(sampleClasses(100, labels, -100, 0, { fraction: 0.1, seed: 7 }))).toEqual(Array.from(a));
    const other = sampleClasses(100, labels, -100, 0, { fraction: 0.1, seed: 8 });
    expect(Array.from(other)).not.toEqual(Array.from(a));
  });

  it('keeps all the labels when they outnumber the fraction, and every class at fraction 1', () => {
    const labels = Int32Array.from({ length: 40 }, (_, n) => n);
    expect(sampleClasses(100, labels, -100, 0, { fraction: 0.05, seed: 1 }).length).toBe(40);
    expect(Array.from(sampleClasses(50, labels, -100, 0, { fraction: 1, seed: 1 }))).toEqual([...Array(50).keys()]);
  });

  it('draws the other classes uniformly', () => {
    const counts = new Float64Array(20);
    const runs = 4000;
    for (let s = 0; s < runs; s++) for (const c of sampleClasses(20, Int32Array.of(0), -100, 0, { fraction: 0.25, seed: s })) counts[c]++;
    expect(counts[0]).toBe(runs); // the label's class
    // 4 of the 19 others per draw: each expected runs·4/19 ≈ 842 times, binomial sd ≈ 26
    for (let c = 1; c < 20; c++) expect(Math.abs(counts[c]! - (runs * 4) / 19)).toBeLessThan(130);
  });
});

describe.each(BACKENDS)('linearCrossEntropy with classSample on %s', (backend) => {
  const { E, W, labels, bias, N, D, V } = problem(11, 9, 6, 40);
  const sample = { fraction: 0.3, seed: 12345 };
  const ids = sampleClasses(V, labels, -100, 0, sample);
  const position = new Map(Array.from(ids, (c, k) => [c, k]));
  const sampledLabels = Array.from(labels, (t) => (t === -100 ? t : position.get(t)!));
  const Ws = Array.from(ids, (c) => W[c]!);
  const bs = Array.from(ids, (c) => bias[c]!);

  const cases: [string, lib.LinearCrossEntropyOptions, ref.LinearCeOptions][] = [
    ['mean', {}, {}],
    ['bias, label smoothing, sum', { bias, labelSmoothing: 0.1, reduction: 'sum' }, { bias: bs, labelSmoothing: 0.1, reduction: 'sum' }],
    ['none, z-loss', { reduction: 'none', zLoss: 1e-3 }, { reduction: 'none', zLoss: 1e-3 }],
  ];
  for (const [name, options, refOptions] of cases) {
    it(`${name}: equals float64 cross-entropy over the sampled classes`, () => {
      lib.setBackend(backend);
      const got = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels,
        { ...options, classSample: sample, returnLse: true, filterEps: 0 });
      expect(Array.from(got.sampledClasses!)).toEqual(Array.from(ids));
      expect(got.dClassifier!.shape).toEqual([ids.length, D]);
      const want = ref.linearCrossEntropy(E, Ws, sampledLabels, refOptions);
      expectLinearCeClose(got, want, options.bias !== undefined, `${backend} ${name}`);
    });
  }

  it('async twin and device tensors give the same', async () => {
    lib.setBackend(backend);
    const options = { bias, classSample: sample, filterEps: 0 } as const;
    const sync = lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, options);
    const later = await lib.linearCrossEntropyAsync(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, options);
    expect(later.loss).toBe(sync.loss);
    expect(Array.from(later.sampledClasses!)).toEqual(Array.from(sync.sampledClasses!));
    if (backend === 'cuda-emu') {
      const [Ed, Wd] = [lib.upload(lib.tensor(f32(E), [N, D]), { backend }), lib.upload(lib.tensor(f32(W), [V, D]), { backend })];
      const dev = lib.linearCrossEntropy(Ed, Wd, labels, options);
      expect(dev.loss).toBeCloseTo(sync.loss as number, 6);
      expect(dev.dClassifier!.shape).toEqual([ids.length, D]);
      const dW = dev.dClassifier!.download().data as Float32Array;
      const want = sync.dClassifier!.data as Float32Array;
      for (let i = 0; i < want.length; i++) expect(Math.abs(dW[i]! - want[i]!)).toBeLessThan(1e-5 * (1 + Math.abs(want[i]!)));
      for (const t of [Ed, Wd, dev.dEmbeddings!, dev.dClassifier!]) t.dispose();
    }
  });
});

describe('classSample: bad input', () => {
  const { E, W, labels, N, D, V } = problem(3, 4, 3, 10);
  const call = (o: object) => () => lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), labels, o as never);
  it.each([
    ['fraction 0', { classSample: { fraction: 0, seed: 1 } }],
    ['fraction > 1', { classSample: { fraction: 1.5, seed: 1 } }],
    ['no seed', { classSample: { fraction: 0.5 } }],
    ['a negative seed', { classSample: { fraction: 0.5, seed: -1 } }],
    ['an unknown key', { classSample: { fraction: 0.5, seed: 1, rate: 2 } }],
    ['with out', { classSample: { fraction: 0.5, seed: 1 }, out: {} }],
  ])('%s is E_OPTION', (_, o) => expect(codeOf(call(o))).toBe('E_OPTION'));
  it('a label out of range is E_LABEL', () => {
    const bad = Int32Array.from(labels);
    bad[0] = V;
    expect(codeOf(() => lib.linearCrossEntropy(lib.tensor(f32(E), [N, D]), lib.tensor(f32(W), [V, D]), bad, { classSample: { fraction: 0.5, seed: 1 } }))).toBe('E_LABEL');
  });
});
