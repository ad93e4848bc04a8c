// Shared device memory on cuda-emu, where exports are POSIX shared memory: a handle opened in
// another process and in a worker thread (read, computed on, written, and the exporter sees
// the writes), the exporter owning the memory (imports free nothing; a disposed export cannot
// be opened), pointers wrapped without being owned, and every argument checked at the boundary.
import { readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { DeviceTensor, backends, setBackend, softmax, tensor, upload, type DeviceTensorHandle, type Tensor } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { codeOf, distEntry, inPackageChild } from '../helpers.js';

afterEach(() => setBackend('auto'));

const stats = () => native().addon!.stats();
const emu = (t: Tensor) => upload(t, { backend: 'cuda-emu' });
const values = (n: number, f: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => f(i));
const ownShm = (h: DeviceTensorHandle) => Buffer.from(h.handle, 'base64').toString().slice(1);

describe('exportHandle and DeviceTensor.fromHandle on cuda-emu (POSIX shared memory)', () => {
  it('the handle is plain data: it survives JSON and structuredClone and says what it holds', () => {
    const t = emu(tensor(values(6, (i) => i), [2, 3]));
    const h = t.exportHandle();
    expect(h).toMatchObject({ type: 'cutloss.DeviceTensor', version: 1, backend: 'cuda-emu', device: 'emu', shape: [2, 3], dtype: 'f32', byteOffset: 0 });
    expect(typeof h.handle).toBe('string');
    expect(h.process).toMatch(/^[0-9a-f]+-[0-9a-f]{16}$/);
    expect(t.exportHandle()).toEqual(h); // exported once, the same handle after
    for (const copy of [JSON.parse(JSON.stringify(h)) as DeviceTensorHandle, structuredClone(h)]) {
      const i = DeviceTensor.fromHandle(copy);
      expect([i.ownership, i.backend, i.shape, String(i)]).toEqual(['imported', 'cuda-emu', [2, 3], 'DeviceTensor(emu, [2, 3], f32, imported)']);
      expect(i.download().data).toEqual(values(6, (k) => k));
      i.dispose();
    }
    t.dispose();
  });

  it('exporting keeps the tensor where it was: same address, same contents, ops still run on it', () => {
    const x = values(1000, (i) => Math.sin(i));
    const t = emu(tensor(x, [10, 100]));
    const before = t.address;
    setBackend('cuda-emu');
    const want = softmax(t).download().data;
    t.exportHandle();
    expect(t.address).toBe(before);
    expect(t.download().data).toEqual(x);
    expect(softmax(t).download().data).toEqual(want);
    t.dispose();
  });

  it('another process imports it, reads it, computes on it and writes to it; the exporter sees the writes', () => {
    const x = values(12, (i) => i - 5.5);
    const t = emu(tensor(x, [3, 4]));
    const r = inPackageChild(`
      const t = m.DeviceTensor.fromHandle(handle);
      const seen = Array.from(t.download().data);
      const sm = Array.from(m.softmax(t).download().data);
      t.write(new Float32Array(12).map((_, i) => 100 + i));
      t.dispose();
      console.log(JSON.stringify({ seen, sm, ownership: t.ownership }));`, t.exportHandle());
    expect(r.seen).toEqual(Array.from(x));
    setBackend('cuda-emu');
    expect(r.sm).toEqual(Array.from(softmax(tensor(x, [3, 4])).data)); // the same kernels on the same data
    expect(r.ownership).toBe('imported');
    expect(t.download().data).toEqual(values(12, (i) => 100 + i)); // the child's import freed nothing
    t.dispose();
  });

  it('bf16 tensors and a byteOffset view go across too', () => {
    const bits = Uint16Array.from({ length: 8 }, (_, i) => 0x3f80 + i);
    const t = emu(tensor(bits, [2, 4], 'bf16'));
    const h = { ...t.exportHandle(), shape: [2] as [number], byteOffset: 4 };
    const r = inPackageChild(`
      const t = m.DeviceTensor.fromHandle(handle);
      const seen = Array.from(t.download().data);
      t.write(new Uint16Array([7, 9]));
      console.log(JSON.stringify({ seen, dtype: t.dtype }));`, h);
    expect(r).toEqual({ seen: [0x3f82, 0x3f83], dtype: 'bf16' });
    expect(Array.from(t.download().data as Uint16Array)).toEqual([0x3f80, 0x3f81, 7, 9, 0x3f84, 0x3f85, 0x3f86, 0x3f87]);
    const view = DeviceTensor.fromHandle(h); // the same view in this process
    expect(Array.from(view.download().data)).toEqual([7, 9]);
    view.dispose();
    t.dispose();
  });

  it('a disposed export cannot be opened (E_DISPOSED), here or in another process, and its shared memory is gone', () => {
    const t = emu(tensor(values(4, (i) => i), [4]));
    const h = t.exportHandle();
    const name = ownShm(h);
    expect(readdirSync('/dev/shm')).toContain(name);
    t.dispose();
    expect(readdirSync('/dev/shm')).not.toContain(name);
    expect(codeOf(() => DeviceTensor.fromHandle(h))).toBe('E_DISPOSED');
    expect(() => DeviceTensor.fromHandle(h)).toThrow(/disposed/);
    expect(inPackageChild(`console.log(JSON.stringify({ code: code(() => m.DeviceTensor.fromHandle(handle)) }))`, h)).toEqual({ code: 'E_DISPOSED' });
  });

  it('the exporter owns the memory: disposing an import frees nothing; an import in this process keeps it mapped until disposed', () => {
    const base = stats();
    const t = emu(tensor(values(256, (i) => i), [256]));
    const i = DeviceTensor.fromHandle(t.exportHandle());
    expect(stats()).toMatchObject({ buffers: base.buffers + 2, bytes: base.bytes + 1024 }); // the import owns no bytes
    i.dispose();
    expect(t.download().data[255]).toBe(255);
    const j = DeviceTensor.fromHandle(t.exportHandle());
    t.dispose(); // the exporter goes first: this process's import still reads valid memory
    expect(j.download().data[255]).toBe(255);
    expect(stats().bytes).toBe(base.bytes + 1024);
    j.dispose();
    expect(stats()).toMatchObject({ buffers: base.buffers, bytes: base.bytes });
  });

  it('refuses malformed handles with the code of what is wrong', () => {
    const t = emu(tensor(values(6, (i) => i), [2, 3]));
    const h = t.exportHandle();
    const bad = (patch: Record<string, unknown>) => codeOf(() => DeviceTensor.fromHandle({ ...h, ...patch } as DeviceTensorHandle));
    expect(codeOf(() => DeviceTensor.fromHandle(null as never))).toBe('E_OPTION');
    expect(codeOf(() => DeviceTensor.fromHandle('handle' as never))).toBe('E_OPTION');
    expect(bad({ type: 'other' })).toBe('E_OPTION');
    expect(bad({ version: 2 })).toBe('E_OPTION');
    expect(bad({ backend: 'js' })).toBe('E_BACKEND');
    expect(bad({ device: 'cuda:1' })).toBe('E_BACKEND');
    expect(bad({ dtype: 'f16' })).toBe('E_DTYPE');
    expect(bad({ shape: [2, -3] })).toBe('E_SHAPE');
    expect(bad({ shape: [2, 0] })).toBe('E_SHAPE');
    expect(bad({ shape: [2 ** 52, 4] })).toBe('E_SHAPE');
    expect(bad({ shape: [3, 3] })).toBe('E_SHAPE'); // more than was exported
    expect(bad({ byteOffset: 2 })).toBe('E_OPTION'); // not f32-aligned
    expect(bad({ byteOffset: -4 })).toBe('E_OPTION');
    expect(bad({ byteOffset: 8, shape: [5] })).toBe('E_SHAPE'); // runs past the end
    expect(bad({ handle: '' })).toBe('E_OPTION');
    expect(bad({ handle: 'not base64!' })).toBe('E_OPTION');
    expect(bad({ handle: Buffer.from('/etc/passwd').toString('base64'), process: 'elsewhere' })).toBe('E_OPTION');
    expect(bad({ handle: Buffer.from('/cutloss-0-0-0').toString('base64'), process: 'elsewhere' })).toBe('E_DISPOSED');
    expect(bad({ process: 42 })).toBe('E_OPTION');
    // A handle this process never exported: nothing to open.
    expect(bad({ handle: Buffer.from(`/cutloss-${h.process}-999999`).toString('base64') })).toBe('E_DISPOSED');
    // Too large for what the other process's shared memory holds (whole pages: 4096 bytes at least).
    expect(inPackageChild(`console.log(JSON.stringify({ code: code(() => m.DeviceTensor.fromHandle(handle)) }))`, { ...h, shape: [4096, 4096] }))
      .toEqual({ code: 'E_SHAPE' });
    t.dispose();
  });

  it('a cuda handle needs a working cuda backend: here it says why there is none (E_BACKEND)', (ctx) => {
    const cuda = backends().find((b) => b.name === 'cuda')!;
    ctx.skip(cuda.available, 'cuda is available here');
    const h: DeviceTensorHandle = {
      type: 'cutloss.DeviceTensor', version: 1, backend: 'cuda', device: 'cuda:0', shape: [4], dtype: 'f32', byteOffset: 0,
      handle: Buffer.alloc(64, 1).toString('base64'), process: 'another-process',
    };
    expect(codeOf(() => DeviceTensor.fromHandle(h))).toBe('E_BACKEND');
    expect(() => DeviceTensor.fromHandle(h)).toThrow(/cuda is unavailable/);
  });

  it('only memory cutloss allocated is exported: not imports, wrapped pointers, empty or disposed tensors', () => {
    const t = emu(tensor(values(4, (i) => i), [4]));
    const i = DeviceTensor.fromHandle(t.exportHandle());
    expect(codeOf(() => i.exportHandle())).toBe('E_OPTION');
    const w = DeviceTensor.fromPointer(t.address, [4], 'f32', { backend: 'cuda-emu' });
    expect(codeOf(() => w.exportHandle())).toBe('E_OPTION');
    const empty = emu(tensor(new Float32Array(0), [0, 4]));
    expect(codeOf(() => empty.exportHandle())).toBe('E_SHAPE');
    for (const d of [i, w, empty, t]) d.dispose();
    expect(codeOf(() => t.exportHandle())).toBe('E_DISPOSED');
  });

  it('a worker thread imports a handle posted to it, computes on it, and writes to it', async () => {
    const x = values(20, (i) => Math.cos(i));
    const t = emu(tensor(x, [4, 5]));
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(distEntry)}).then((m) => {
        const t = m.DeviceTensor.fromHandle(workerData);
        const seen = Array.from(t.download().data);
        const sm = Array.from(m.softmax(t).download().data);
        t.write(new Float32Array(20).fill(-1));
        t.dispose();
        parentPort.postMessage({ seen, sm });
      });`, { eval: true, workerData: t.exportHandle() });
    const r = await new Promise<{ seen: number[]; sm: number[] }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(r.seen).toEqual(Array.from(x));
    setBackend('cuda-emu');
    expect(r.sm).toEqual(Array.from(softmax(tensor(x, [4, 5])).data));
    expect(t.download().data).toEqual(new Float32Array(20).fill(-1));
    t.dispose();
  });

  it('a worker that ends without disposing its imports releases them (they would pin the memory of the exporter)', async () => {
    const t = emu(tensor(values(8, (i) => i), [8]));
    const h = t.exportHandle();
    const worker = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(distEntry)}).then((m) => {
        globalThis.kept = [m.DeviceTensor.fromHandle(workerData), m.DeviceTensor.fromHandle(workerData)];
        setInterval(() => {}, 1000); // alive until terminated
        parentPort.postMessage('imported');
      });`, { eval: true, workerData: h });
    await new Promise((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    t.dispose(); // the worker's imports keep the memory mapped, so the export still opens
    const again = DeviceTensor.fromHandle(h);
    expect(again.download().data).toEqual(values(8, (i) => i));
    again.dispose();
    expect(readdirSync('/dev/shm')).toContain(ownShm(h));
    await worker.terminate();
    expect(codeOf(() => DeviceTensor.fromHandle(h))).toBe('E_DISPOSED');
    expect(readdirSync('/dev/shm')).not.toContain(ownShm(h));
  });
});

describe('DeviceTensor.fromPointer', () => {
  it('wraps memory another owner holds: ops read it, writes go through, and disposing it frees nothing', () => {
    const x = values(12, (i) => i / 7);
    const owner = emu(tensor(x, [3, 4]));
    const base = stats();
    const w = DeviceTensor.fromPointer(owner.address, [3, 4], 'f32', { backend: 'cuda-emu' });
    expect([w.ownership, w.backend, w.address, String(w)]).toEqual(['wrapped', 'cuda-emu', owner.address, 'DeviceTensor(emu, [3, 4], f32, wrapped)']);
    expect(stats().bytes).toBe(base.bytes); // wrapped memory is not cutloss's
    expect(w.download().data).toEqual(x);
    setBackend('cuda-emu');
    expect(softmax(w).download().data).toEqual(softmax(owner).download().data);
    w.write(values(12, (i) => -i));
    expect(owner.download().data).toEqual(values(12, (i) => -i));
    w.dispose();
    expect(owner.download().data[11]).toBe(-11);
    owner.dispose();
  });

  it('an offset into the memory is a view of part of it (bf16 too)', () => {
    const bits = Uint16Array.from({ length: 6 }, (_, i) => 0x4000 + i);
    const owner = emu(tensor(bits, [6], 'bf16'));
    const w = DeviceTensor.fromPointer(owner.address + 4n, [2, 2], 'bf16', { backend: 'cuda-emu' });
    expect(Array.from(w.download().data)).toEqual([0x4002, 0x4003, 0x4004, 0x4005]);
    w.write(new Uint16Array([1, 2, 3, 4]));
    expect(Array.from(owner.download().data)).toEqual([0x4000, 0x4001, 1, 2, 3, 4]);
    w.dispose();
    owner.dispose();
  });

  it('validates the address, shape, dtype and options before anything touches memory', () => {
    const fp = (address: unknown, shape: unknown = [4], dtype: unknown = 'f32', options: unknown = { backend: 'cuda-emu' }) =>
      codeOf(() => DeviceTensor.fromPointer(address as bigint, shape as [number], dtype as 'f32', options as never));
    expect(fp(0n)).toBe('E_OPTION'); // null
    expect(fp(4096)).toBe('E_OPTION'); // a number, not a bigint
    expect(fp(-4096n)).toBe('E_OPTION');
    expect(fp(2n ** 64n)).toBe('E_OPTION');
    expect(fp(4098n)).toBe('E_OPTION'); // misaligned for f32
    expect(fp(4097n, [4], 'bf16')).toBe('E_OPTION'); // misaligned for bf16
    expect(fp(2n ** 64n - 8n, [4])).toBe('E_SHAPE'); // runs past the end of the address space
    expect(fp(4096n, [2 ** 52, 4])).toBe('E_SHAPE'); // byte size overflows
    expect(fp(4096n, [4, 0])).toBe('E_SHAPE');
    expect(fp(4096n, [1.5])).toBe('E_SHAPE');
    expect(fp(4096n, [4], 'f64')).toBe('E_DTYPE');
    expect(fp(4096n, [4], 'f32', { backend: 'js' })).toBe('E_BACKEND');
    expect(fp(4096n, [4], 'f32', { device: 0 })).toBe('E_OPTION');
    const cuda = backends().find((b) => b.name === 'cuda')!;
    if (!cuda.available) {
      expect(fp(4096n, [4], 'f32', {})).toBe('E_BACKEND'); // the default backend is cuda
      expect(() => DeviceTensor.fromPointer(4096n, [4])).toThrow(/cuda is unavailable/);
    }
    // An empty wrap touches no memory.
    const empty = DeviceTensor.fromPointer(4096n, [0, 3], 'f32', { backend: 'cuda-emu' });
    expect(empty.download().data.length).toBe(0);
    empty.dispose();
  });

  it('write() checks its data and the handle', () => {
    const t = emu(tensor(values(4, (i) => i), [2, 2]));
    expect(codeOf(() => t.write(new Float32Array(3)))).toBe('E_SHAPE');
    expect(codeOf(() => t.write(tensor(new Float32Array(4), [4])))).toBe('E_SHAPE');
    expect(codeOf(() => t.write(new Uint16Array(4)))).toBe('E_DTYPE');
    expect(codeOf(() => t.write([1, 2, 3, 4] as never))).toBe('E_DTYPE');
    const shared = new Float32Array(new SharedArrayBuffer(16));
    shared.set([4, 3, 2, 1]);
    t.write(shared);
    expect(t.download().data).toEqual(new Float32Array([4, 3, 2, 1]));
    t.dispose();
    expect(codeOf(() => t.write(new Float32Array(4)))).toBe('E_DISPOSED');
    expect(codeOf(() => t.address)).toBe('E_DISPOSED');
  });
});
