// Device tensors on cuda-emu: upload and download, ops that keep results on the device,
// disposal (explicit, Symbol.dispose, and the FinalizationRegistry backstop), and the errors
// for disposed handles and inputs on different backends.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import {
  DeviceTensor, backends, crossEntropy, download, entmax15, entmax15Backward, gumbelSoftmax,
  gumbelSoftmaxBackward, linearCrossEntropy, logSoftmax, logSoftmaxBackward, logStablemax, logStablemaxBackward,
  logSumExp, setBackend, softmax, softmaxBackward, sparsemax, sparsemaxBackward, stablemax, stablemaxBackward, tensor,
  upload, type Tensor,
} from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { codeOf } from '../helpers.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

afterEach(() => setBackend('auto'));

function liveBuffers(): number {
  return native().addon!.stats().buffers;
}

const x23 = () => tensor(new Float32Array([1, 2, 3, 4, 5, 7]), [2, 3]);
const emu = (t: Tensor) => upload(t, { backend: 'cuda-emu' });

describe('upload and download', () => {
  it('round-trips f32, bf16 bits and 1-D tensors, and says where the memory is', () => {
    const f = emu(x23());
    expect(f).toBeInstanceOf(DeviceTensor);
    expect([f.shape, f.dtype, f.device, f.backend]).toEqual([[2, 3], 'f32', 'emu', 'cuda-emu']);
    expect(download(f)).toEqual({ data: new Float32Array([1, 2, 3, 4, 5, 7]), shape: [2, 3], dtype: 'f32' });
    const bits = new Uint16Array([0x3f80, 0xc000, 0x7fc0]);
    const b = emu(tensor(bits, [3], 'bf16'));
    expect([b.shape, b.dtype]).toEqual([[3], 'bf16']);
    expect(b.download().data).toEqual(bits);
    expect(emu(tensor(new Float32Array(0), [0, 4])).download().data.length).toBe(0);
    for (const t of [f, b]) t.dispose();
  });

  it('copies: later writes to the host array do not reach the device', () => {
    const host = new Float32Array([1, 2]);
    const d = emu(tensor(host, [2]));
    host[0] = 99;
    expect(d.download().data[0]).toBe(1);
    d.dispose();
  });

  it('accepts host data on a SharedArrayBuffer, as the js backend does (the addon gets a snapshot)', () => {
    const data = new Float32Array(new SharedArrayBuffer(24));
    data.set([1, 2, 3, 4, 5, 7]);
    const d = emu(tensor(data, [2, 3]));
    expect(d.download().data).toEqual(new Float32Array([1, 2, 3, 4, 5, 7]));
    d.dispose();
    setBackend('cuda-emu');
    const mask = new Uint8Array(new SharedArrayBuffer(3));
    mask.set([1, 0, 1]);
    expect(softmax(tensor(data, [2, 3]), { mask }).data[1]).toBe(0);
    const labels = new Int32Array(new SharedArrayBuffer(8));
    labels.set([2, 0]);
    expect(crossEntropy(tensor(data, [2, 3]), labels).loss).toBeCloseTo(crossEntropy(x23(), new Int32Array([2, 0])).loss as number, 6);
  });

  it('defaults to the selected device backend, or needs one named when js is selected', () => {
    setBackend('js');
    const cuda = backends().find((b) => b.name === 'cuda')!;
    if (!cuda.available) {
      expect(codeOf(() => upload(x23()))).toBe('E_BACKEND');
      expect(() => upload(x23())).toThrow(/cuda-emu/);
    }
    setBackend('cuda-emu');
    const d = upload(x23());
    expect(d.backend).toBe('cuda-emu');
    d.dispose();
  });

  it('validates its arguments', () => {
    expect(codeOf(() => upload({ data: new Float32Array(5), shape: [2, 3] }, { backend: 'cuda-emu' }))).toBe('E_SHAPE');
    expect(codeOf(() => upload(x23(), { backend: 'js' as never }))).toBe('E_BACKEND');
    expect(codeOf(() => upload(x23(), { device: 'emu' } as never))).toBe('E_OPTION');
    expect(codeOf(() => download(x23() as never))).toBe('E_BACKEND');
    expect(codeOf(() => new DeviceTensor(Symbol('forged'), 'cuda-emu', 1, [1], 'f32'))).toBe('E_OPTION');
  });
});

describe('disposal', () => {
  it('dispose() frees the memory, is idempotent, and later use is E_DISPOSED', () => {
    const before = liveBuffers();
    const d = emu(x23());
    expect(liveBuffers()).toBe(before + 1);
    d.dispose();
    d.dispose();
    expect(liveBuffers()).toBe(before);
    expect(d.disposed).toBe(true);
    expect(String(d)).toBe('DeviceTensor(emu, [2, 3], f32, disposed)');
    expect(codeOf(() => d.download())).toBe('E_DISPOSED');
    expect(codeOf(() => softmax(d))).toBe('E_DISPOSED');
    expect(() => softmax(d)).toThrow(/softmax: x was disposed/);
    const live = emu(x23());
    expect(codeOf(() => softmaxBackward(live, d))).toBe('E_DISPOSED');
    expect(codeOf(() => crossEntropy(d, new Int32Array([0, 1])))).toBe('E_DISPOSED');
    live.dispose();
  });

  it('Symbol.dispose exists and disposes, so `using` frees at the end of a block', () => {
    expect(typeof Symbol.dispose).toBe('symbol');
    const before = liveBuffers();
    {
      using d = emu(x23());
      expect(d.disposed).toBe(false);
      expect(liveBuffers()).toBe(before + 1);
    }
    expect(liveBuffers()).toBe(before);
  });

  it('a handle that is never disposed is freed once it is garbage (FinalizationRegistry)', () => {
    const program = `
      import * as m from './dist/esm/index.js';
      import { native } from './dist/esm/native.js';
      const stats = () => native().addon.stats().buffers;
      const base = stats();
      (() => { for (let i = 0; i < 200; i++) m.upload(m.tensor(new Float32Array(1024), [1024]), { backend: 'cuda-emu' }); })();
      const made = stats() - base;
      for (let i = 0; i < 50 && stats() > base; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 10)); }
      console.log(JSON.stringify({ made, left: stats() - base }));`;
    const out = execFileSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', program], { cwd: root, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({ made: 200, left: 0 });
  });
});

describe('ops on device tensors', () => {
  it('every row-wise op returns a DeviceTensor equal to the same op on host tensors', () => {
    setBackend('cuda-emu'); // host calls on the same kernels: the device path must match exactly
    const xh = tensor(new Float32Array([0.5, -1, 2, 3, -4, 0.25, 1, 1, -2]), [3, 3]);
    const dyh = tensor(new Float32Array([1, -2, 0.5, 0.25, 1, -1, 2, 0, 1]), [3, 3]);
    const x = emu(xh);
    const dy = emu(dyh);
    const g = { tau: 0.7, seed: 1234 };
    const cases: [string, DeviceTensor, Tensor][] = [
      ['softmax', softmax(x, { temperature: 2 }), softmax(xh, { temperature: 2 })],
      ['logSoftmax', logSoftmax(x), logSoftmax(xh)],
      ['softmaxBackward', softmaxBackward(x, dy), softmaxBackward(xh, dyh)],
      ['logSoftmaxBackward', logSoftmaxBackward(x, dy, { mask: new Uint8Array([1, 0, 1]) }),
        logSoftmaxBackward(xh, dyh, { mask: new Uint8Array([1, 0, 1]) })],
      ['stablemax', stablemax(x), stablemax(xh)],
      ['logStablemax', logStablemax(x), logStablemax(xh)],
      ['stablemaxBackward', stablemaxBackward(x, dy), stablemaxBackward(xh, dyh)],
      ['logStablemaxBackward', logStablemaxBackward(x, dy), logStablemaxBackward(xh, dyh)],
      ['sparsemax', sparsemax(x), sparsemax(xh)],
      ['sparsemaxBackward', sparsemaxBackward(x, dy), sparsemaxBackward(xh, dyh)],
      ['entmax15', entmax15(x), entmax15(xh)],
      ['entmax15Backward', entmax15Backward(x, dy), entmax15Backward(xh, dyh)],
      ['gumbelSoftmax', gumbelSoftmax(x, { ...g, hard: true }), gumbelSoftmax(xh, { ...g, hard: true })],
      ['gumbelSoftmaxBackward', gumbelSoftmaxBackward(x, dy, g), gumbelSoftmaxBackward(xh, dyh, g)],
    ];
    for (const [name, d, h] of cases) {
      expect(d, name).toBeInstanceOf(DeviceTensor);
      expect([d.backend, d.shape, d.dtype], name).toEqual(['cuda-emu', [3, 3], 'f32']);
      expect(d.download().data, name).toEqual(h.data);
      d.dispose();
    }
    const lse = logSumExp(x);
    expect([lse.shape, lse.dtype]).toEqual([[3], 'f32']);
    expect(lse.download().data).toEqual(logSumExp(xh));
    for (const t of [lse, x, dy]) t.dispose();
  });

  it('keeps bf16 in bf16', () => {
    const x = emu(tensor(new Uint16Array([0x3f80, 0x4000, 0x4040]), [1, 3], 'bf16'));
    const y = softmax(x);
    expect(y.dtype).toBe('bf16');
    expect(y.download().data).toBeInstanceOf(Uint16Array);
    for (const t of [x, y]) t.dispose();
  });

  it('refuses inputs that are not all on the device, or of the wrong shape', () => {
    const x = emu(x23());
    const dyHost = x23();
    expect(codeOf(() => softmaxBackward(x, dyHost as never))).toBe('E_BACKEND');
    expect(codeOf(() => softmaxBackward(x23(), x as never))).toBe('E_BACKEND');
    const small = emu(tensor(new Float32Array(3), [3]));
    expect(codeOf(() => softmaxBackward(x, small))).toBe('E_SHAPE');
    expect(codeOf(() => linearCrossEntropy(x, x23() as never, new Int32Array([0, 1])))).toBe('E_BACKEND');
    expect(codeOf(() => softmax(x, { temperature: 0 }))).toBe('E_OPTION');
    expect(codeOf(() => softmax(x, { mask: new Uint8Array(4) }))).toBe('E_SHAPE');
    for (const t of [x, small]) t.dispose();
  });

  it('crossEntropy: the loss and lse on the host, dLogits on the device, as on host tensors', () => {
    setBackend('cuda-emu');
    const logitsHost = tensor(new Float32Array([1, 2, 3, 4, 5, 7, -1, 0, 1]), [3, 3]);
    const labels = new Int32Array([2, -100, 0]);
    const logits = emu(logitsHost);
    for (const reduction of ['mean', 'sum', 'none'] as const) {
      const o = { reduction, labelSmoothing: 0.1, zLoss: 1e-3, returnLse: true };
      const d = crossEntropy(logits, labels, o);
      const h = crossEntropy(logitsHost, labels, o);
      expect(d.loss).toEqual(h.loss);
      expect(d.lse).toEqual(h.lse);
      expect(d.dLogits).toBeInstanceOf(DeviceTensor);
      expect(d.dLogits!.download().data).toEqual(h.dLogits!.data);
      d.dLogits!.dispose();
    }
    expect(crossEntropy(logits, labels, { computeGrad: false }).dLogits).toBeUndefined();
    const none = crossEntropy(logits, new Int32Array([-100, -100, -100]));
    expect(none.loss).toBeNaN();
    expect(none.dLogits!.download().data).toEqual(new Float32Array(9));
    none.dLogits!.dispose();
    logits.dispose();
  });

  it('linearCrossEntropy runs its fused kernels on device tensors and returns device gradients', () => {
    const Eh = tensor(new Float32Array([0.1, -0.2, 0.3, 0.4, 0.5, -0.6]), [2, 3]);
    const Wh = tensor(new Float32Array([1, 0, -1, 0.5, 0.5, 0.5, -1, 2, 0, 0.3, 0.1, 0.2]), [4, 3]);
    const labels = new Int32Array([3, 1]);
    const o = { bias: new Float32Array([0, 0.1, -0.1, 0.2]) };
    const E = emu(Eh);
    const W = emu(Wh);
    const d = linearCrossEntropy(E, W, labels, o);
    setBackend('js');
    const h = linearCrossEntropy(Eh, Wh, labels, o);
    // fp32 kernels against the float64 reference backend: DESIGN.md's 1e-5
    expect(d.loss as number).toBeCloseTo(h.loss as number, 6);
    expect(d.dEmbeddings!.backend).toBe('cuda-emu');
    const close = (a: ArrayLike<number>, b: ArrayLike<number>) =>
      Array.from(a).forEach((v, i) => expect(Math.abs(v - b[i]!)).toBeLessThan(1e-6));
    close(d.dEmbeddings!.download().data, h.dEmbeddings!.data);
    close(d.dClassifier!.download().data, h.dClassifier!.data);
    close(d.dBias!, h.dBias!);
    expect(d.workspaceBytes).toBeGreaterThan(0);
    for (const t of [E, W, d.dEmbeddings!, d.dClassifier!]) t.dispose();
  });

  it('frees every temporary: only the results it returns stay alive', () => {
    setBackend('cuda-emu');
    const before = liveBuffers();
    const logits = emu(tensor(new Float32Array(12).map((_, i) => i / 3), [3, 4]));
    const r = crossEntropy(logits, new Int32Array([0, 1, 3]));
    softmax(x23());
    crossEntropy(x23(), new Int32Array([0, 2]));
    expect(liveBuffers()).toBe(before + 2);
    for (const t of [logits, r.dLogits!]) t.dispose();
    expect(liveBuffers()).toBe(before);
  });
});
