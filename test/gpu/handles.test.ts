// Shared device memory on a real GPU: CUDA IPC export to another process (which reads,
// computes on and writes the memory), a worker thread's import in this process, and device
// pointers wrapped without being owned. test/native/sharing.test.ts covers the same API on
// cuda-emu. Skipped, saying why, without a GPU.
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { distEntry, inPackageChild } from '../helpers.js';
import { onGpu } from './device.js';

const runs = onGpu('test/gpu/handles.test.ts');

const gpu = (t: lib.Tensor) => lib.upload(t, { backend: 'cuda' });
const values = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));

describe.skipIf(!runs)('CUDA IPC and wrapped device pointers', () => {
  afterAll(() => lib.setBackend('auto'));

  it('another process opens the handle, reads, computes on and writes the memory; the exporter sees the writes', () => {
    const x = values(4096, (i) => Math.sin(i));
    const t = gpu(lib.tensor(x, [4, 1024]));
    const before = t.address;
    const h = t.exportHandle();
    expect(t.address).toBe(before);
    expect(Buffer.from(h.handle, 'base64').length).toBe(64); // cudaIpcMemHandle_t
    const r = inPackageChild(`
      const t = m.DeviceTensor.fromHandle(handle);
      const seen = Array.from(t.download().data.subarray(0, 8));
      const lse = Array.from(m.logSumExp(t).download().data);
      t.write(new Float32Array(4096).fill(0.5));
      t.dispose();
      console.log(JSON.stringify({ seen, lse, ownership: t.ownership }));`, h);
    expect(r.seen).toEqual(Array.from(x.subarray(0, 8)));
    lib.setBackend('cuda');
    expect(r.lse).toEqual(Array.from(lib.logSumExp(lib.tensor(x, [4, 1024]))));
    expect(t.download().data).toEqual(new Float32Array(4096).fill(0.5));
    t.dispose();
  });

  it('a byteOffset view, and a disposed export refused', () => {
    const t = gpu(lib.tensor(values(16, (i) => i), [16]));
    const h = t.exportHandle();
    expect(inPackageChild(`console.log(JSON.stringify({ v: Array.from(m.DeviceTensor.fromHandle(handle).download().data) }))`,
      { ...h, shape: [4], byteOffset: 32 })).toEqual({ v: [8, 9, 10, 11] });
    t.dispose();
    const r = inPackageChild(`console.log(JSON.stringify({ code: code(() => m.DeviceTensor.fromHandle(handle)) }))`, h);
    expect(['E_BACKEND', 'E_DISPOSED']).toContain(r.code);
    expect(() => lib.DeviceTensor.fromHandle(h)).toThrow(/E_DISPOSED/); // in this process the export is known to be gone
  });

  it('a worker thread imports the handle (in this process: a view of the same allocation)', async () => {
    const t = gpu(lib.tensor(values(100, (i) => i / 10), [10, 10]));
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(distEntry)}).then((m) => {
        const t = m.DeviceTensor.fromHandle(workerData);
        const address = t.address;
        const sum = Array.from(t.download().data).reduce((a, b) => a + b, 0);
        t.write(new Float32Array(100).fill(2));
        t.dispose();
        parentPort.postMessage({ sum, address });
      });`, { eval: true, workerData: t.exportHandle() });
    const r = await new Promise<{ sum: number; address: bigint }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(r.sum).toBeCloseTo(495, 3);
    expect(r.address).toBe(t.address);
    expect(t.download().data).toEqual(new Float32Array(100).fill(2));
    t.dispose();
  });

  it('fromPointer wraps device memory another owner holds; a host pointer is refused', () => {
    const owner = gpu(lib.tensor(values(12, (i) => i - 6), [3, 4]));
    const w = lib.DeviceTensor.fromPointer(owner.address + 16n, [2, 4], 'f32', { backend: 'cuda' });
    expect(w.download().data).toEqual(values(8, (i) => i - 2));
    lib.setBackend('cuda');
    expect(lib.softmax(w).download().data).toEqual(lib.softmax(lib.tensor(values(8, (i) => i - 2), [2, 4])).data);
    w.write(new Float32Array(8).fill(1));
    w.dispose();
    expect(owner.download().data).toEqual(Float32Array.from([-6, -5, -4, -3, 1, 1, 1, 1, 1, 1, 1, 1]));
    owner.dispose();
    const host = lib.upload(lib.tensor(values(4, (i) => i), [4]), { backend: 'cuda-emu' }); // host memory
    expect(() => lib.DeviceTensor.fromPointer(host.address, [4], 'f32', { backend: 'cuda' })).toThrow(/E_OPTION.*not point to CUDA device memory/);
    host.dispose();
  });
});
