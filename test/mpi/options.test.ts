// The scale-out options without MPI: validation, a group of one (the sharded path with one
// rank equals the plain call), and NCCL's failure paths where libnccl is absent.
import { describe, expect, it } from 'vitest';
import {
  CutlossError, DeviceTensor, backends, crossEntropy, download, linearCrossEntropy, setBackend, tensor, upload,
  type Communicator,
} from '../../lib/index.js';
import { ncclCommunicator, ncclIdFromString, ncclIdToString, ncclStatus, ncclUniqueId } from '../../lib/nccl/index.js';
import * as ref from '../reference64.js';

const one: Communicator = { rank: 0, size: 1, allReduce() {} };
const [N, D, V] = [6, 4, 11];
const rng = ref.mulberry32(5);
const E = tensor(Float32Array.from(ref.randomRows(rng, N, D, 1).flat()), [N, D]);
const W = tensor(Float32Array.from(ref.randomRows(rng, V, D, 1).flat()), [V, D]);
const labels = Int32Array.from(ref.randomLabels(rng, N, V));

function code(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return e instanceof CutlossError ? e.code : String(e);
  }
  return 'no error';
}

describe('vocabParallel / dataParallel options', () => {
  setBackend('js');
  it('a group of one equals the plain call', () => {
    const o = { labelSmoothing: 0.1, zLoss: 1e-3, softcap: 3, squentropy: true } as const;
    const a = linearCrossEntropy(E, W, labels, o);
    const b = linearCrossEntropy(E, W, labels, { ...o, vocabParallel: { communicator: one, vocabStart: 0, vocabSize: V } });
    const c = linearCrossEntropy(E, W, labels, { ...o, dataParallel: { communicator: one } });
    for (const r of [b, c]) {
      expect(r.loss).toBeCloseTo(a.loss, 6);
      const want = a.dEmbeddings!.data;
      r.dEmbeddings!.data.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 6));
    }
  });
  it('refuses what it cannot do exactly, naming the option', () => {
    const vp = (o: object) => ({ vocabParallel: { communicator: one, vocabStart: 0, vocabSize: V, ...o } });
    expect(code(() => linearCrossEntropy(E, W, labels, { normalizer: 'sparsemax', ...vp({}) }))).toBe('E_OPTION');
    expect(code(() => linearCrossEntropy(E, W, labels, vp({ communicator: {} })))).toBe('E_OPTION');
    expect(code(() => linearCrossEntropy(E, W, labels, vp({ vocabStart: -1 })))).toBe('E_OPTION');
    expect(code(() => linearCrossEntropy(E, W, labels, vp({ vocabSize: V - 1 })))).toBe('E_SHAPE');
    expect(code(() => linearCrossEntropy(E, W, labels, { ...vp({}), dataParallel: { communicator: one } }))).toBe('E_OPTION');
    // one rank holding 5 of 11 classes: the ranks' classes do not add up to vocabSize
    const W5 = tensor((W.data as Float32Array).slice(0, 5 * D), [5, D]);
    expect(code(() => crossEntropy(tensor(new Float32Array(N * 5), [N, 5]), Int32Array.from(labels, (t) => t % 5), vp({})))).toBe('E_SHAPE');
    expect(code(() => linearCrossEntropy(E, W5, labels, vp({})))).toBe('E_SHAPE');
  });
  it('labels are global ids, checked against vocabSize', () => {
    const bad = labels.slice();
    bad[0] = V;
    expect(code(() => linearCrossEntropy(E, W, bad, { vocabParallel: { communicator: one, vocabStart: 0, vocabSize: V } }))).toBe('E_LABEL');
  });
});

describe.skipIf(!backends().find((b) => b.name === 'cuda-emu')!.available)('vocabParallel / dataParallel on DeviceTensors', () => {
  const emu = (t: typeof E) => upload(t, { backend: 'cuda-emu' });
  const vp = { vocabParallel: { communicator: one, vocabStart: 0, vocabSize: V } };
  const dp = { dataParallel: { communicator: one } };
  it('a group of one equals the plain device call; gradients stay DeviceTensors', () => {
    const bias = Float32Array.from({ length: V }, (_, j) => j / V);
    const o = { labelSmoothing: 0.1, bias, returnLse: true } as const;
    const [Ed, Wd] = [emu(E), emu(W)];
    const a = linearCrossEntropy(Ed, Wd, labels, o);
    for (const s of [vp, dp]) {
      const b = linearCrossEntropy(Ed, Wd, labels, { ...o, ...s });
      expect(b.loss).toBeCloseTo(a.loss, 6);
      expect(b.dEmbeddings).toBeInstanceOf(DeviceTensor);
      expect(b.dClassifier!.backend).toBe('cuda-emu');
      expect(b.dBias).toBeInstanceOf(Float32Array);
      expect(b.workspaceBytes).toBeGreaterThan(0);
      for (const k of ['dEmbeddings', 'dClassifier'] as const) {
        const want = download(a[k]!).data;
        download(b[k]!).data.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 6));
      }
      b.lse!.forEach((x, i) => expect(x).toBeCloseTo(a.lse![i]!, 5));
    }
    const X = emu(tensor(Float32Array.from({ length: N * V }, (_, i) => Math.sin(i)), [N, V]));
    const c = crossEntropy(X, labels);
    const d = crossEntropy(X, labels, vp);
    expect(d.loss).toBeCloseTo(c.loss, 6);
    expect(d.dLogits).toBeInstanceOf(DeviceTensor);
    const want = download(c.dLogits!).data;
    download(d.dLogits!).data.forEach((x, i) => expect(x).toBeCloseTo(want[i]!, 6));
  });
  it('host/device mixing is E_BACKEND, disposed inputs E_DISPOSED', () => {
    const [Ed, Wd] = [emu(E), emu(W)];
    expect(code(() => linearCrossEntropy(Ed, W as never, labels, vp))).toBe('E_BACKEND');
    expect(code(() => linearCrossEntropy(E, Wd as never, labels, dp))).toBe('E_BACKEND');
    Wd.dispose();
    expect(code(() => linearCrossEntropy(Ed, Wd, labels, vp))).toBe('E_DISPOSED');
    Ed.dispose();
    expect(code(() => crossEntropy(Ed, labels, dp))).toBe('E_DISPOSED');
  });
});

describe('cutloss/nccl where NCCL is absent', () => {
  const status = ncclStatus();
  it.skipIf(status.available)('every entry point says why, as E_BACKEND', () => {
    expect(status.reason).toMatch(/libnccl|CUDA|device|addon/);
    expect(code(() => ncclUniqueId())).toBe('E_BACKEND');
    expect(code(() => ncclCommunicator({ id: new Uint8Array(128), rank: 0, size: 1 }))).toBe('E_BACKEND');
    expect(backends().find((b) => b.name === 'cuda')!.details.nccl).toMatch(/^unavailable: /);
  });
  it('checks its arguments before loading anything', () => {
    expect(code(() => ncclCommunicator({ id: new Uint8Array(3), rank: 0, size: 1 }))).toBe('E_OPTION');
    expect(code(() => ncclCommunicator({ id: new Uint8Array(128), rank: 2, size: 2 }))).toBe('E_OPTION');
    const id = Uint8Array.from({ length: 128 }, (_, i) => i);
    expect(ncclIdFromString(ncclIdToString(id))).toEqual(id);
  });
});
