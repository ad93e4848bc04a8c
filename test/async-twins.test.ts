// Every op has a Promise-returning twin (`<op>Async`) that gives exactly the sync op's result,
// on every available backend and for device tensors, and rejects (never throws) on bad input.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { DeviceTensor, type Tensor } from '../lib/index.js';
import * as ref from './reference64.js';

type AnyTensor = Tensor | DeviceTensor;
type Op = [name: string, sync: (x: AnyTensor, dy: AnyTensor) => unknown, twin: (x: AnyTensor, dy: AnyTensor) => Promise<unknown>];

const gumbel = { tau: 0.7, seed: 11 };
/* eslint-disable @typescript-eslint/no-explicit-any -- one table for the overloaded ops */
const call = (f: (...a: any[]) => any) => f;
const OPS: Op[] = [
  ['logSumExp', (x) => lib.logSumExp(x as any, { temperature: 0.8 }), (x) => lib.logSumExpAsync(x as any, { temperature: 0.8 })],
  ['softmax', (x) => lib.softmax(x as any), (x) => lib.softmaxAsync(x as any)],
  ['logSoftmax', (x) => lib.logSoftmax(x as any), (x) => lib.logSoftmaxAsync(x as any)],
  ['softmaxBackward', (x, dy) => lib.softmaxBackward(x as any, dy as any, { temperature: 1.3 }), (x, dy) => lib.softmaxBackwardAsync(x as any, dy as any, { temperature: 1.3 })],
  ['logSoftmaxBackward', (x, dy) => lib.logSoftmaxBackward(x as any, dy as any), (x, dy) => lib.logSoftmaxBackwardAsync(x as any, dy as any)],
  ['stablemax', (x) => lib.stablemax(x as any), (x) => lib.stablemaxAsync(x as any)],
  ['logStablemax', (x) => lib.logStablemax(x as any), (x) => lib.logStablemaxAsync(x as any)],
  ['stablemaxBackward', (x, dy) => lib.stablemaxBackward(x as any, dy as any), (x, dy) => lib.stablemaxBackwardAsync(x as any, dy as any)],
  ['logStablemaxBackward', (x, dy) => lib.logStablemaxBackward(x as any, dy as any), (x, dy) => lib.logStablemaxBackwardAsync(x as any, dy as any)],
  ['sparsemax', (x) => lib.sparsemax(x as any), (x) => lib.sparsemaxAsync(x as any)],
  ['sparsemaxBackward', (x, dy) => lib.sparsemaxBackward(x as any, dy as any), (x, dy) => lib.sparsemaxBackwardAsync(x as any, dy as any)],
  ['entmax15', (x) => lib.entmax15(x as any), (x) => lib.entmax15Async(x as any)],
  ['entmax15Backward', (x, dy) => lib.entmax15Backward(x as any, dy as any), (x, dy) => lib.entmax15BackwardAsync(x as any, dy as any)],
  ['gumbelSoftmax', (x) => lib.gumbelSoftmax(x as any, { ...gumbel, hard: true }), (x) => lib.gumbelSoftmaxAsync(x as any, { ...gumbel, hard: true })],
  ['gumbelSoftmaxBackward', (x, dy) => lib.gumbelSoftmaxBackward(x as any, dy as any, gumbel), (x, dy) => lib.gumbelSoftmaxBackwardAsync(x as any, dy as any, gumbel)],
  ['crossEntropy', call((x) => lib.crossEntropy(x, LABELS, { returnLse: true, zLoss: 1e-3 })),
    call((x) => lib.crossEntropyAsync(x, LABELS, { returnLse: true, zLoss: 1e-3 }))],
];
/* eslint-enable @typescript-eslint/no-explicit-any */

const [N, V] = [5, 33];
const LABELS = Int32Array.from([3, 0, 32, -100, 7]);
const rng = ref.mulberry32(4);
const X = lib.tensor(Float32Array.from({ length: N * V }, () => (rng() - 0.5) * 6), [N, V]);
const DY = lib.tensor(Float32Array.from({ length: N * V }, () => rng() - 0.5), [N, V]);

/** A result as plain numbers: tensors downloaded, objects flattened in key order. */
function plain(r: unknown): unknown {
  if (r instanceof DeviceTensor) return Array.from(r.download().data);
  if (r instanceof Float32Array || r instanceof Uint16Array) return Array.from(r);
  if (typeof r === 'number') return r;
  if (r !== null && typeof r === 'object') {
    if ('data' in r && 'shape' in r) return Array.from((r as Tensor).data);
    return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, plain(v)]));
  }
  return r;
}

const hostBackends = lib.backends().filter((b) => b.available && (b.name === 'js' || b.name === 'cpu')).map((b) => b.name);
const emu = lib.backends().find((b) => b.name === 'cuda-emu')?.available === true;

afterAll(() => lib.setBackend('auto'));

describe.each(hostBackends)('async twins on %s', (backend) => {
  it('every op has a twin, bit-identical to the sync op', async () => {
    lib.setBackend(backend);
    for (const [name, sync, twin] of OPS) {
      const want = plain(sync(X, DY));
      const pending = twin(X, DY);
      expect(pending, name).toBeInstanceOf(Promise);
      expect(plain(await pending), name).toEqual(want);
    }
    const linear = { E: lib.tensor(X.data.subarray(0, N * 11), [N, 11]), W: lib.tensor(Float32Array.from({ length: V * 11 }, (_, i) => Math.cos(i) * 0.3), [V, 11]) };
    expect(plain(await lib.linearCrossEntropyAsync(linear.E, linear.W, LABELS))).toEqual(plain(lib.linearCrossEntropy(linear.E, linear.W, LABELS)));
  });

  it('bad input rejects with a CutlossError instead of throwing', async () => {
    lib.setBackend(backend);
    const wrongShape = lib.tensor(new Float32Array(N * (V - 1)), [N, V - 1]);
    for (const [name, , twin] of OPS) {
      let pending: Promise<unknown> | undefined;
      expect(() => { pending = twin(X, wrongShape); }, name).not.toThrow();
      const e = await pending!.then(() => null, (err: unknown) => err);
      // ops without dy take X alone: those get a broken X instead
      if (e === null) {
        const e2 = await twin({ data: new Float32Array(3), shape: [2, 2] } as Tensor, DY).then(() => null, (err: unknown) => err);
        expect(e2, name).toBeInstanceOf(lib.CutlossError);
      } else {
        expect(e, name).toBeInstanceOf(lib.CutlossError);
      }
    }
  });
});

describe.skipIf(!emu)('async twins of device tensors (cuda-emu)', () => {
  it('every op has a twin on device tensors, bit-identical to the sync op', async () => {
    const x = lib.upload(X, { backend: 'cuda-emu' });
    const dy = lib.upload(DY, { backend: 'cuda-emu' });
    try {
      for (const [name, sync, twin] of OPS) {
        const s = sync(x, dy);
        const a = await twin(x, dy);
        expect(plain(a), name).toEqual(plain(s));
        for (const r of [s, a]) {
          if (r instanceof DeviceTensor) r.dispose();
          else if (r !== null && typeof r === 'object' && 'dLogits' in r && r.dLogits instanceof DeviceTensor) r.dLogits.dispose();
        }
      }
    } finally {
      x.dispose();
      dy.dispose();
    }
  }, 120_000);
});
