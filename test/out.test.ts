// Caller-provided outputs (options.out) and in-place dLogits: on every available backend, and
// for device tensors, the results written into the caller's tensors equal those of a call
// without them, come back as the very same objects, leave every input unchanged, and every
// misuse is a CutlossError with its code.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { DeviceTensor, type CrossEntropyOptions, type LinearCrossEntropyOptions, type Tensor } from '../lib/index.js';
import { codeOf, expectClose } from './helpers.js';
import * as ref from './reference64.js';

const available = lib.backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name);
const emu = available.includes('cuda-emu');

afterAll(() => lib.setBackend('auto'));

const [N, V] = [6, 37];
const LABELS = Int32Array.from([3, -100, 36, 0, 17, -100]);
const rng = ref.mulberry32(21);
const values = (n: number, scale: number) => Float32Array.from({ length: n }, () => (rng() - 0.5) * scale);

function input(dtype: 'f32' | 'bf16', data: Float32Array, shape: Tensor['shape']): Tensor {
  return dtype === 'f32' ? lib.tensor(data.slice(), shape) : lib.tensor(Uint16Array.from(data, lib.f32ToBf16), shape, 'bf16');
}

/** A copy of a tensor; `fill` replaces its contents (stale values the op must overwrite). */
function like(t: Tensor, fill?: number): Tensor {
  const data = t.data.slice();
  if (fill !== undefined) data.fill(t.data instanceof Float32Array ? fill : lib.f32ToBf16(fill));
  return { data, shape: [...t.shape] as Tensor['shape'], dtype: t.dtype ?? 'f32' };
}

/** Exactly equal element by element (NaN to NaN): the same kernels ran, only the memory differs. */
function expectSame(got: Tensor | Float32Array | undefined, want: Tensor | Float32Array | undefined, label: string): void {
  expect(got, label).toBeDefined();
  const g = got instanceof Float32Array ? got : got!.data;
  const w = want instanceof Float32Array ? want : want!.data;
  expectClose(Array.from(g), Array.from(w), { rtol: 0, atol: 0, label });
}

const X = values(N * V, 8);
const CE_OPTIONS: CrossEntropyOptions[] = [
  {},
  { labelSmoothing: 0.1, zLoss: 1e-3, softcap: 20, temperature: 0.8, classWeights: values(V, 1).map((w) => 1 + w) },
  { normalizer: 'sparsemax', reduction: 'none', gradScale: values(N, 2), returnLse: true },
];

const [LN, D, LV] = [5, 8, 29];
const E = values(LN * D, 2);
const W = values(LV * D, 2);
const BIAS = values(LV, 1);
const LIN_LABELS = Int32Array.from([0, 28, -100, 5, 11]);
const LIN_OPTIONS: LinearCrossEntropyOptions[] = [
  { bias: BIAS },
  { zLoss: 1e-3, labelSmoothing: 0.2, reduction: 'sum' },
];

describe.each(available)('options.out and inPlace on %s', (backend) => {
  for (const dtype of ['f32', 'bf16'] as const) {
    it(`crossEntropy (${dtype}): out and in place equal the plain call, return the caller's tensor, change no input`, async () => {
      lib.setBackend(backend);
      for (const [k, options] of CE_OPTIONS.entries()) {
        const x = input(dtype, X, [N, V]);
        const xBefore = like(x);
        const labels = LABELS.slice();
        const weights = options.classWeights?.slice();
        const plain = lib.crossEntropy(x, labels, options);

        const out = like(x, 7.5); // stale values, ignored rows included, must all be overwritten
        const r = lib.crossEntropy(x, labels, { ...options, out: { dLogits: out } });
        expect(r.dLogits, `${k}: the caller's tensor`).toBe(out);
        expectSame(r.dLogits, plain.dLogits, `${k}: dLogits into out`);
        expect(r.loss).toEqual(plain.loss);
        expectSame(x, xBefore, `${k}: logits unchanged`);
        expect(labels).toEqual(LABELS);
        if (weights !== undefined) expect(options.classWeights).toEqual(weights);

        const again = lib.crossEntropy(x, labels, { ...options, out: { dLogits: out } }); // reused: no new memory
        expect(again.dLogits).toBe(out);
        expectSame(out, plain.dLogits, `${k}: reused out`);

        const y = like(x);
        const inPlace = lib.crossEntropy(y, labels, { ...options, inPlace: true });
        expect(inPlace.dLogits, `${k}: in place returns the logits`).toBe(y);
        expectSame(y, plain.dLogits, `${k}: in place`);
        expect(inPlace.loss).toEqual(plain.loss);
        const z = like(x);
        expect(lib.crossEntropy(z, labels, { ...options, out: { dLogits: z } }).dLogits).toBe(z);
        expectSame(z, plain.dLogits, `${k}: out.dLogits = logits`);

        const outAsync = like(x, -3);
        const ra = await lib.crossEntropyAsync(x, labels, { ...options, out: { dLogits: outAsync } });
        expect(ra.dLogits).toBe(outAsync);
        expectSame(outAsync, plain.dLogits, `${k}: async out`);
        const w = like(x);
        const rw = await lib.crossEntropyAsync(w, labels, { ...options, inPlace: true });
        expect(rw.dLogits).toBe(w);
        expectSame(w, plain.dLogits, `${k}: async in place`);
        expectSame(x, xBefore, `${k}: logits unchanged by the async calls`);
      }
    });
  }

  it('crossEntropy with every row ignored writes zeros into out and in place', () => {
    lib.setBackend(backend);
    const x = input('f32', X, [N, V]);
    const labels = new Int32Array(N).fill(-100);
    const out = like(x, 5);
    lib.crossEntropy(x, labels, { out: { dLogits: out } });
    expect(Array.from(out.data).every((v) => v === 0)).toBe(true);
    lib.crossEntropy(x, labels, { inPlace: true });
    expect(Array.from(x.data).every((v) => v === 0)).toBe(true);
  });

  for (const dtype of ['f32', 'bf16'] as const) {
    it(`linearCrossEntropy (${dtype}): outputs equal the plain call, are the caller's, inputs unchanged`, async () => {
      lib.setBackend(backend);
      for (const [k, options] of LIN_OPTIONS.entries()) {
        const e = input(dtype, E, [LN, D]);
        const w = input(dtype, W, [LV, D]);
        const [eBefore, wBefore] = [like(e), like(w)];
        const plain = lib.linearCrossEntropy(e, w, LIN_LABELS, options);
        const out = { dEmbeddings: like(e, 9), dClassifier: like(w, -9), ...(options.bias ? { dBias: new Float32Array(LV).fill(4) } : {}) };
        const r = lib.linearCrossEntropy(e, w, LIN_LABELS, { ...options, out });
        expect(r.dEmbeddings).toBe(out.dEmbeddings);
        expect(r.dClassifier).toBe(out.dClassifier);
        expectSame(r.dEmbeddings, plain.dEmbeddings, `${k}: dEmbeddings`);
        expectSame(r.dClassifier, plain.dClassifier, `${k}: dClassifier`);
        if (options.bias) {
          expect(r.dBias).toBe(out.dBias);
          expectSame(r.dBias, plain.dBias, `${k}: dBias`);
        }
        expect(r.loss).toEqual(plain.loss);
        expectSame(e, eBefore, `${k}: E unchanged`);
        expectSame(w, wBefore, `${k}: W unchanged`);
        if (options.bias) expect(options.bias).toEqual(BIAS);

        // only some outputs given: the others are new
        const onlyW = like(w, 1);
        const partial = lib.linearCrossEntropy(e, w, LIN_LABELS, { ...options, out: { dClassifier: onlyW } });
        expect(partial.dClassifier).toBe(onlyW);
        expectSame(partial.dEmbeddings, plain.dEmbeddings, `${k}: dEmbeddings without out`);
        expectSame(onlyW, plain.dClassifier, `${k}: dClassifier alone`);

        const outAsync = { dEmbeddings: like(e, 2), dClassifier: like(w, 2) };
        const ra = await lib.linearCrossEntropyAsync(e, w, LIN_LABELS, { ...options, out: outAsync });
        expect(ra.dEmbeddings).toBe(outAsync.dEmbeddings);
        expectSame(outAsync.dClassifier, plain.dClassifier, `${k}: async dClassifier`);
        expectSame(outAsync.dEmbeddings, plain.dEmbeddings, `${k}: async dEmbeddings`);
      }
    });
  }

  it('every misuse of out and inPlace is a CutlossError with its code', () => {
    lib.setBackend(backend);
    const x = input('f32', X, [N, V]);
    const ce = (o: unknown) => () => lib.crossEntropy(x, LABELS, o as CrossEntropyOptions);
    expect(codeOf(ce({ out: { dLogits: lib.tensor(new Float32Array(N * (V - 1)), [N, V - 1]) } }))).toBe('E_SHAPE');
    expect(codeOf(ce({ out: { dLogits: lib.tensor(new Uint16Array(N * V), [N, V], 'bf16') } }))).toBe('E_DTYPE');
    expect(codeOf(ce({ out: { dLogits: { data: new Float32Array(3), shape: [N, V] } } }))).toBe('E_SHAPE');
    expect(codeOf(ce({ out: { dLogits: lib.tensor(new Float32Array(N * V), [N, V]) }, computeGrad: false }))).toBe('E_OPTION');
    expect(codeOf(ce({ inPlace: true, computeGrad: false }))).toBe('E_OPTION');
    expect(codeOf(ce({ inPlace: 1 }))).toBe('E_OPTION');
    expect(codeOf(ce({ out: 5 }))).toBe('E_OPTION');
    expect(codeOf(ce({ out: { dlogits: like(x) } }))).toBe('E_OPTION');
    expect(codeOf(ce({ out: { dEmbeddings: like(x) } }))).toBe('E_OPTION');
    expect(codeOf(ce({ out: { dLogits: like(x) }, inPlace: true }))).toBe('E_OPTION');
    // sharing memory with an input: a view of the logits' buffer, the labels' buffer
    const big = new Float32Array(N * V + 8);
    const shared = lib.tensor(big.subarray(0, N * V), [N, V]);
    const shifted = lib.tensor(big.subarray(8), [N, V]);
    expect(codeOf(() => lib.crossEntropy(shared, LABELS, { out: { dLogits: shifted } }))).toBe('E_OPTION');
    expect(codeOf(() => lib.crossEntropy(lib.tensor(big.subarray(0, N * V), [N, V]), LABELS, { out: { dLogits: shared } }))).toBe('E_OPTION');
    const withLabels = new ArrayBuffer(4 * (N * V + N));
    const labelsIn = new Int32Array(withLabels, 4 * N * V, N);
    labelsIn.set(LABELS);
    const logitsIn = lib.tensor(new Float32Array(withLabels, 0, N * V), [N, V]);
    expect(codeOf(() => lib.crossEntropy(logitsIn, labelsIn, { out: { dLogits: lib.tensor(new Float32Array(withLabels, 4, N * V), [N, V]) } })))
      .toBe('E_OPTION');
    expect(codeOf(() => lib.crossEntropy(x, LABELS, { out: { dLogits: lib.tensor(new Float32Array(new SharedArrayBuffer(4 * N * V)), [N, V]) } })))
      .toBe('E_OPTION');

    const e = input('f32', E, [LN, D]);
    const w = input('f32', W, [LV, D]);
    const lin = (o: unknown) => () => lib.linearCrossEntropy(e, w, LIN_LABELS, o as LinearCrossEntropyOptions);
    expect(codeOf(lin({ out: { dEmbeddings: like(w) } }))).toBe('E_SHAPE');
    expect(codeOf(lin({ out: { dClassifier: lib.tensor(new Uint16Array(LV * D), [LV, D], 'bf16') } }))).toBe('E_DTYPE');
    expect(codeOf(lin({ bias: BIAS, out: { dBias: new Float32Array(LV + 1) } }))).toBe('E_SHAPE');
    expect(codeOf(lin({ bias: BIAS, out: { dBias: [1, 2] } }))).toBe('E_OPTION');
    expect(codeOf(lin({ bias: BIAS, out: { dBias: BIAS } }))).toBe('E_OPTION');
    expect(codeOf(lin({ out: { dLogits: like(e) } }))).toBe('E_OPTION');
    expect(codeOf(lin({ inPlace: true }))).toBe('E_OPTION');
    expect(codeOf(lin({ out: { dEmbeddings: e } }))).toBe('E_OPTION');
    const one = new Float32Array(LN * D + LV * D);
    const overlapping = { dEmbeddings: lib.tensor(one.subarray(0, LN * D), [LN, D]), dClassifier: lib.tensor(one.subarray(LN * D - 1, LN * D - 1 + LV * D), [LV, D]) };
    expect(codeOf(lin({ out: overlapping }))).toBe('E_OPTION');
    const apart = { dEmbeddings: lib.tensor(one.subarray(0, LN * D), [LN, D]), dClassifier: lib.tensor(one.subarray(LN * D), [LV, D]) };
    expect(lib.linearCrossEntropy(e, w, LIN_LABELS, { out: apart }).dClassifier).toBe(apart.dClassifier); // one buffer, disjoint: fine
    if (emu) {
      using d = lib.upload(like(x), { backend: 'cuda-emu' });
      expect(codeOf(ce({ out: { dLogits: d } }))).toBe('E_BACKEND');
    }
  });

  it.runIf(backend === 'cpu' || backend === 'cuda-emu')('an async call whose output is detached meanwhile rejects and corrupts nothing', async () => {
    lib.setBackend(backend);
    const x = input('f32', X, [N, V]);
    const out = like(x, 1);
    const pending = lib.crossEntropyAsync(x, LABELS, { out: { dLogits: out } });
    const moved = new Float32Array(structuredClone(out.data.buffer, { transfer: [out.data.buffer as ArrayBuffer] }));
    await expect(pending).rejects.toMatchObject({ code: 'E_DISPOSED' });
    expect(Array.from(moved).every((v) => v === 1)).toBe(true);

    // in place: the logits were copied when the call began; their moved memory is left as it was
    const y = like(x);
    const inPlace = lib.crossEntropyAsync(y, LABELS, { inPlace: true });
    const movedLogits = new Float32Array(structuredClone(y.data.buffer, { transfer: [y.data.buffer as ArrayBuffer] }));
    await expect(inPlace).rejects.toMatchObject({ code: 'E_DISPOSED' });
    expectSame(movedLogits, x.data as Float32Array, 'the moved logits');
  });
});

describe.runIf(emu)('options.out and inPlace with device tensors (cuda-emu)', () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    it(`crossEntropy (${dtype}): DeviceTensor outputs and in place stay on the device, equal the plain call`, async () => {
      const host = input(dtype, X, [N, V]);
      using x = lib.upload(host, { backend: 'cuda-emu' });
      const plain = lib.crossEntropy(x, LABELS, CE_OPTIONS[1]);
      const want = plain.dLogits!.download();
      plain.dLogits!.dispose();
      using out = lib.upload(like(host, 3), { backend: 'cuda-emu' });
      const r = lib.crossEntropy(x, LABELS, { ...CE_OPTIONS[1], out: { dLogits: out } });
      expect(r.dLogits).toBe(out);
      expect(r.dLogits).toBeInstanceOf(DeviceTensor);
      expectSame(out.download(), want, 'device out');
      expectSame(x.download(), host, 'logits unchanged');
      const ra = await lib.crossEntropyAsync(x, LABELS, { ...CE_OPTIONS[1], out: { dLogits: out } });
      expect(ra.dLogits).toBe(out);
      expectSame(out.download(), want, 'device out, async');

      using y = lib.upload(host, { backend: 'cuda-emu' });
      expect(lib.crossEntropy(y, LABELS, { ...CE_OPTIONS[1], inPlace: true }).dLogits).toBe(y);
      expectSame(y.download(), want, 'device in place');
      using z = lib.upload(host, { backend: 'cuda-emu' });
      expect((await lib.crossEntropyAsync(z, LABELS, { ...CE_OPTIONS[1], out: { dLogits: z } })).dLogits).toBe(z);
      expectSame(z.download(), want, 'device in place, async');
    });
  }

  it('linearCrossEntropy: DeviceTensor dEmbeddings, dClassifier and a host dBias', async () => {
    const e = lib.tensor(E.slice(), [LN, D]);
    const w = lib.tensor(W.slice(), [LV, D]);
    using de = lib.upload(e, { backend: 'cuda-emu' });
    using dw = lib.upload(w, { backend: 'cuda-emu' });
    const plain = lib.linearCrossEntropy(de, dw, LIN_LABELS, { bias: BIAS });
    const [wantE, wantW] = [plain.dEmbeddings!.download(), plain.dClassifier!.download()];
    plain.dEmbeddings!.dispose();
    plain.dClassifier!.dispose();
    using outE = lib.upload(like(e, 4), { backend: 'cuda-emu' });
    using outW = lib.upload(like(w, 4), { backend: 'cuda-emu' });
    const dBias = new Float32Array(LV).fill(4);
    for (const run of [() => lib.linearCrossEntropy(de, dw, LIN_LABELS, { bias: BIAS, out: { dEmbeddings: outE, dClassifier: outW, dBias } }),
      () => lib.linearCrossEntropyAsync(de, dw, LIN_LABELS, { bias: BIAS, out: { dEmbeddings: outE, dClassifier: outW, dBias } })]) {
      const r = await run();
      expect(r.dEmbeddings).toBe(outE);
      expect(r.dClassifier).toBe(outW);
      expect(r.dBias).toBe(dBias);
      expectSame(outE.download(), wantE, 'dEmbeddings');
      expectSame(outW.download(), wantW, 'dClassifier');
      expectSame(dBias, plain.dBias, 'dBias');
    }
    expectSame(de.download(), e, 'E unchanged');
    expectSame(dw.download(), w, 'W unchanged');
  });

  it('device misuse: wrong shape, dtype, kind, disposed, shared memory', () => {
    const host = input('f32', X, [N, V]);
    using x = lib.upload(host, { backend: 'cuda-emu' });
    const ce = (o: unknown) => () => lib.crossEntropy(x, LABELS, o as CrossEntropyOptions);
    using small = lib.upload(lib.tensor(new Float32Array(N * (V - 1)), [N, V - 1]), { backend: 'cuda-emu' });
    expect(codeOf(ce({ out: { dLogits: small } }))).toBe('E_SHAPE');
    using half = lib.upload(lib.tensor(new Uint16Array(N * V), [N, V], 'bf16'), { backend: 'cuda-emu' });
    expect(codeOf(ce({ out: { dLogits: half } }))).toBe('E_DTYPE');
    expect(codeOf(ce({ out: { dLogits: like(host) } }))).toBe('E_BACKEND');
    const gone = lib.upload(host, { backend: 'cuda-emu' });
    gone.dispose();
    expect(codeOf(ce({ out: { dLogits: gone } }))).toBe('E_DISPOSED');
    // a second handle on the logits' memory is not the logits tensor: not in place, shared memory
    const alias = DeviceTensor.fromPointer(x.address, [N, V], 'f32', { backend: 'cuda-emu' });
    expect(codeOf(ce({ out: { dLogits: alias } }))).toBe('E_OPTION');
    alias.dispose();
    using de = lib.upload(lib.tensor(E.slice(), [LN, D]), { backend: 'cuda-emu' });
    using dw = lib.upload(lib.tensor(W.slice(), [LV, D]), { backend: 'cuda-emu' });
    const lin = (o: unknown) => () => lib.linearCrossEntropy(de, dw, LIN_LABELS, o as LinearCrossEntropyOptions);
    expect(codeOf(lin({ out: { dClassifier: dw } }))).toBe('E_OPTION');
    using both = lib.upload(lib.tensor(new Float32Array(LV * D), [LV, D]), { backend: 'cuda-emu' });
    const view = DeviceTensor.fromPointer(both.address, [LN, D], 'f32', { backend: 'cuda-emu' });
    expect(codeOf(lin({ out: { dEmbeddings: view, dClassifier: both } }))).toBe('E_OPTION');
    view.dispose();
  });
});

// Types: out and inPlace type-check; misspellings do not (this function only has to compile).
export function typeChecks(x: Tensor, d: DeviceTensor): void {
  lib.crossEntropy(x, LABELS, { out: { dLogits: x }, inPlace: false });
  lib.crossEntropy(d, LABELS, { out: { dLogits: d } });
  lib.linearCrossEntropy(x, x, LABELS, { out: { dEmbeddings: x, dClassifier: x, dBias: new Float32Array(1) } });
  // @ts-expect-error: a misspelled output
  lib.crossEntropy(x, LABELS, { out: { dlogits: x } });
  // @ts-expect-error: a misspelled option
  lib.crossEntropy(x, LABELS, { inplace: true });
  // @ts-expect-error: linearCrossEntropy has no in-place mode
  lib.linearCrossEntropy(x, x, LABELS, { inPlace: true });
}
