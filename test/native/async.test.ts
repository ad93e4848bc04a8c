// Async twins on a native backend run the kernels on the libuv pool: the JS thread stays free
// (timers keep firing during a long emulated call), results equal the synchronous ones, and
// bad input rejects instead of throwing.
import { afterEach, describe, expect, it } from 'vitest';
import {
  CutlossError, DeviceTensor, crossEntropy, crossEntropyAsync, linearCrossEntropyAsync, logSoftmaxAsync,
  logSumExp, logSumExpAsync, setBackend, softmax, softmaxAsync, tensor, upload,
} from '../../lib/index.js';

afterEach(() => setBackend('auto'));

/** Deterministic logits and labels for a call that takes the emulator a while. */
function problem(N: number, V: number) {
  const data = new Float32Array(N * V);
  let s = 12345;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    data[i] = (s / 2 ** 32) * 8 - 4;
  }
  const labels = new Int32Array(N).map((_, i) => (i * 7919) % V);
  return { logits: tensor(data, [N, V]), labels };
}

describe('async twins on cuda-emu', () => {
  it('crossEntropyAsync leaves the JS thread free: a timer keeps firing during the call', async () => {
    setBackend('cuda-emu');
    const { logits, labels } = problem(128, 4096);
    const start = performance.now();
    const sync = crossEntropy(logits, labels);
    const syncMs = performance.now() - start;

    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const asyncStart = performance.now();
    const result = await crossEntropyAsync(logits, labels);
    const asyncMs = performance.now() - asyncStart;
    clearInterval(timer);

    expect(result.loss).toBe(sync.loss);
    expect(result.dLogits!.data).toEqual(sync.dLogits!.data);
    // The call is long enough to matter, and the event loop ran throughout it (a blocked
    // loop would fire the timer once at the end; the margin is for busy machines).
    expect(syncMs).toBeGreaterThan(50);
    expect(ticks).toBeGreaterThan(5);
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(asyncMs / 50));
  }, 60_000);

  it('the row-wise twins match their synchronous ops, for host and device tensors', async () => {
    setBackend('cuda-emu');
    const x = tensor(new Float32Array([1, 2, 3, -1, 0, 4]), [2, 3]);
    expect((await softmaxAsync(x)).data).toEqual(softmax(x).data);
    expect((await logSumExpAsync(x, { temperature: 0.5 }))).toEqual(logSumExp(x, { temperature: 0.5 }));
    const d = upload(x);
    const y = await logSoftmaxAsync(d);
    expect(y).toBeInstanceOf(DeviceTensor);
    const lse = await logSumExpAsync(d);
    expect(lse.download().data).toEqual(logSumExp(x));
    const ce = await crossEntropyAsync(d, new Int32Array([2, 0]), { returnLse: true });
    expect(ce.dLogits).toBeInstanceOf(DeviceTensor);
    expect(ce.loss).toBe(crossEntropy(x, new Int32Array([2, 0])).loss);
    for (const t of [d, y, lse, ce.dLogits!]) t.dispose();
  });

  it('an input disposed while its call runs stays alive until the call is done', async () => {
    const x = upload(problem(64, 512).logits, { backend: 'cuda-emu' });
    const expected = softmax(x).download().data;
    const pending = softmaxAsync(x);
    x.dispose();
    const y = await pending;
    expect(y.download().data).toEqual(expected);
    y.dispose();
  });

  it('bad input rejects with a CutlossError, never throws', async () => {
    setBackend('cuda-emu');
    const x = tensor(new Float32Array(6), [2, 3]);
    const rejected = async (p: () => Promise<unknown>) => {
      let promise: Promise<unknown> | undefined;
      expect(() => {
        promise = p();
      }).not.toThrow();
      const e = await promise!.then(() => null, (err: unknown) => err);
      expect(e).toBeInstanceOf(CutlossError);
      return (e as CutlossError).code;
    };
    expect(await rejected(() => crossEntropyAsync(x, new Int32Array([0, 9])))).toBe('E_LABEL');
    expect(await rejected(() => softmaxAsync(x, { temperature: -1 }))).toBe('E_OPTION');
    const d = upload(x);
    d.dispose();
    expect(await rejected(() => softmaxAsync(d))).toBe('E_DISPOSED');
    expect(await rejected(() => crossEntropyAsync(d, new Int32Array([0, 1])))).toBe('E_DISPOSED');
    expect(await rejected(() => linearCrossEntropyAsync(x, x, new Int32Array([0, 1, 2])))).toBe('E_SHAPE');
  });
});
