// The caching device allocator (src/block_cache.h) on cuda-emu, where device memory is mmap'd
// pages cached like the GPU's cudaMalloc blocks: blocks come back to the next call of the same
// size class, a training loop allocates nothing from the system after its first step, stale or
// poisoned blocks (uninitialized memory is 0xFF under the emulator) change no result, and the
// workspace figure stays the plan's, not the cache's rounding. Exported memory disposed of
// while another process holds it stays allocated until that process closes it. The sticky
// CUDA error table, and what one does to the cuda backend, run in a process of their own.
import { execFileSync, spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { codeOf, distEntry, repoRoot } from '../helpers.js';
import * as ref from '../reference64.js';

const addon = () => native().addon!;
const EMU = 0 as const;
const cache = () => addon().deviceCacheStats(EMU);
const emu = (t: lib.Tensor) => lib.upload(t, { backend: 'cuda-emu' });

afterEach(() => lib.setBackend('auto'));

/** Deterministic values in [-scale, scale). */
function values(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 2 * scale;
  });
}

describe('the caching allocator on cuda-emu', () => {
  it('a freed block serves the next request of its size class (same address); another class gets a new block', () => {
    addon().trimDeviceCache(EMU);
    const a = emu(lib.tensor(values(1250, 1), [1250])); // 5000 bytes: the 8 KiB class
    const where = a.address;
    a.dispose();
    const before = cache();
    expect(before.cachedBlocks).toBeGreaterThanOrEqual(1);
    const b = emu(lib.tensor(values(1500, 2), [1500])); // 6000 bytes: the same class
    expect(b.address).toBe(where);
    expect(b.download().data).toEqual(values(1500, 2));
    const after = cache();
    expect(after.hits).toBe(before.hits + 1);
    expect(after.allocations).toBe(before.allocations);
    const c = emu(lib.tensor(values(3000, 3), [3000])); // 12000 bytes: the 16 KiB class, none cached
    expect(cache().allocations).toBe(after.allocations + 1);
    expect(c.address).not.toBe(where);
    b.dispose();
    c.dispose();
    expect(addon().trimDeviceCache(EMU)).toBeGreaterThanOrEqual(8192 + 16384);
    expect(cache()).toMatchObject({ cachedBytes: 0, cachedBlocks: 0 });
  });

  it('memory that must be zero is zero even from a reused block (an op output over a stale block)', () => {
    const dirty = emu(lib.tensor(new Float32Array(2048).fill(7), [2048]));
    dirty.dispose(); // cached, full of 7s
    lib.setBackend('cuda-emu');
    const x = emu(lib.tensor(values(2048, 4), [2, 1024]));
    const y = lib.softmax(x); // an output of the same class: zero-filled before the kernel runs
    const want = lib.softmax(lib.tensor(values(2048, 4), [2, 1024]));
    expect(y.download().data).toEqual(want.data);
    x.dispose();
    y.dispose();
  });

  for (const [dtype, normalizer] of [['f32', 'softmax'], ['bf16', 'softmax'], ['f32', 'sparsemax']] as const) {
    it(`linearCrossEntropy in a loop (${dtype}, ${normalizer}): no new block after the first step, the very same results`, () => {
      const [N, D, V] = [24, 16, 150];
      const data = (x: Float32Array) => (dtype === 'bf16' ? Uint16Array.from(x, ref.f32ToBf16) : x);
      // sparsemax: logits close together, so rows overflow their candidates and take the Michelot passes
      const eData = data(values(N * D, 5, normalizer === 'sparsemax' ? 0.05 : 1));
      const wData = data(values(V * D, 6));
      const E = emu({ data: eData, shape: [N, D], dtype });
      const W = emu({ data: wData, shape: [V, D], dtype });
      const labels = Int32Array.from({ length: N }, (_, i) => (i * 37) % V);
      const options = { normalizer, reduction: 'sum' } as const;
      lib.setBackend('cuda-emu');
      const step = () => {
        const r = lib.linearCrossEntropy(E, W, labels, options);
        const out = { loss: r.loss as number, dE: r.dEmbeddings!.download().data, dW: r.dClassifier!.download().data, ws: r.workspaceBytes };
        r.dEmbeddings!.dispose();
        r.dClassifier!.dispose();
        return out;
      };
      const first = step();
      const warm = cache();
      for (let i = 0; i < 3; i++) {
        const again = step();
        expect(again.loss).toBe(first.loss);
        expect(again.dE).toEqual(first.dE);
        expect(again.dW).toEqual(first.dW);
        expect(again.ws).toBe(first.ws);
      }
      const after = cache();
      expect(after.allocations).toBe(warm.allocations); // every block came from the cache
      expect(after.hits).toBeGreaterThanOrEqual(warm.hits + 3 * 6); // labels, scales, 3 row outputs, dE, dW, workspace
      // and the results are right, not merely repeatable: the float64 reference, per element
      const want = ref.linearCrossEntropy(ref.toF64Rows(eData, N, D), ref.toF64Rows(wData, V, D), labels, options);
      const tol = dtype === 'bf16' ? 2e-2 : 1e-4;
      expect(Math.abs(first.loss - (want.loss as number))).toBeLessThanOrEqual(tol * (1 + Math.abs(want.loss as number)));
      // per element: relative to the sum of the magnitudes of its terms, Σ_v |dX_iv·W_vd| (cancellation)
      const dE = ref.toF64Rows(first.dE, N, D);
      const Wr = ref.toF64Rows(wData, V, D);
      for (let i = 0; i < N; i++) {
        for (let d = 0; d < D; d++) {
          const terms = want.dLogits[i]!.reduce((acc, g, v) => acc + Math.abs(g * Wr[v]![d]!), 0);
          expect(Math.abs(dE[i]![d]! - want.dE[i]![d]!)).toBeLessThanOrEqual(tol * terms + 1e-12);
        }
      }
      E.dispose();
      W.dispose();
    }, 120_000);
  }

  it("workspaceBytes is the plan's figure, and the allocator is asked for exactly that (its rounding is not reported)", () => {
    const [N, D, V] = [40, 24, 300];
    for (const dtype of ['f32', 'bf16'] as const) {
      const data = (x: Float32Array) => (dtype === 'bf16' ? Uint16Array.from(x, ref.f32ToBf16) : x);
      const E = emu({ data: data(values(N * D, 7)), shape: [N, D], dtype });
      const W = emu({ data: data(values(V * D, 8)), shape: [V, D], dtype });
      const labels = Int32Array.from({ length: N }, (_, i) => (i * 11) % V);
      lib.setBackend('cuda-emu');
      const plan = lib.linearCrossEntropyWorkspaceBytes(N, D, V, { dtype, backend: 'cuda-emu' });
      const probe = addon() as unknown as {
        deviceMemory(b: 0): { liveBytes: number; peakBytes: number }; resetDeviceMemoryPeak(b: 0): void;
      };
      const live = probe.deviceMemory(EMU).liveBytes;
      probe.resetDeviceMemoryPeak(EMU);
      const r = lib.linearCrossEntropy(E, W, labels, { reduction: 'sum' });
      expect(r.workspaceBytes).toBe(plan);
      expect(plan % 4096).not.toBe(0); // else the equality below could not tell a page-rounded figure
      // every buffer of the call at once: labels, 2 gradient scales and 3 row outputs (N floats
      // each), dE, dW, and the workspace, at their requested sizes
      const eBytes = N * D * (dtype === 'bf16' ? 2 : 4);
      const wBytes = V * D * (dtype === 'bf16' ? 2 : 4);
      expect(probe.deviceMemory(EMU).peakBytes - live).toBe(6 * N * 4 + eBytes + wBytes + plan);
      r.dEmbeddings!.dispose();
      r.dClassifier!.dispose();
      E.dispose();
      W.dispose();
    }
  }, 60_000);

  it('backends() shows the cache of cuda-emu in its details', () => {
    const details = lib.backends().find((b) => b.name === 'cuda-emu')!.details;
    expect(details).toMatchObject({ cachedBytes: cache().cachedBytes, cacheHits: cache().hits });
  });
});

describe('exported memory disposed of while another process holds it', () => {
  it('stays allocated (parked, never reused) until the importer closes it; new imports are refused', async () => {
    addon().trimDeviceCache(EMU);
    const x = values(4096, 9);
    const t = emu(lib.tensor(x, [4096]));
    const where = t.address;
    const h = t.exportHandle();
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import * as m from ${JSON.stringify(distEntry)};
      import { createInterface } from 'node:readline';
      const t = m.DeviceTensor.fromHandle(JSON.parse(process.env.CUTLOSS_TEST_HANDLE));
      console.log('open');
      const lines = createInterface({ input: process.stdin });
      for await (const line of lines) {
        const d = t.download().data;
        console.log(JSON.stringify({ first: d[0], last: d[4095] }));
        t.dispose();
        break;
      }
      process.exit(0);`], { cwd: repoRoot, env: { ...process.env, CUTLOSS_TEST_HANDLE: JSON.stringify(h) }, stdio: ['pipe', 'pipe', 'inherit'] });
    const lines: string[] = [];
    const nextLine = () => new Promise<string>((resolve, reject) => {
      const ready = () => {
        const i = buffered.indexOf('\n');
        if (i < 0) return false;
        const line = buffered.slice(0, i);
        buffered = buffered.slice(i + 1);
        resolve(line);
        return true;
      };
      if (ready()) return;
      const onData = () => { if (ready()) child.stdout!.off('data', onData); };
      child.stdout!.on('data', onData);
      child.once('exit', (code) => reject(new Error(`child exited (${code}) before answering`)));
    });
    let buffered = '';
    child.stdout!.on('data', (chunk: Buffer) => { buffered += chunk.toString(); });
    lines.push(await nextLine());
    expect(lines[0]).toBe('open');

    const before = cache();
    t.dispose(); // the child still has it open
    const parked = cache();
    expect(parked.parkedBlocks).toBe(before.parkedBlocks + 1);
    expect(parked.parkedBytes).toBeGreaterThanOrEqual(4096 * 4);
    expect(codeOf(() => lib.DeviceTensor.fromHandle(h))).toBe('E_DISPOSED');
    const other = emu(lib.tensor(values(4096, 10), [4096])); // its class is not served by the parked block
    expect(other.address).not.toBe(where);
    other.dispose();

    child.stdin!.write('read\n');
    const seen = JSON.parse(await nextLine()) as { first: number; last: number };
    expect([seen.first, seen.last]).toEqual([x[0], x[4095]]); // the memory was still there
    await new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
    const reaped = cache(); // the import closed: the next look frees it (never into the cache)
    expect(reaped.parkedBlocks).toBe(before.parkedBlocks);
    expect(reaped.frees).toBeGreaterThan(parked.frees);
  }, 60_000);

  it('is freed at once when no other process has it open', () => {
    const t = emu(lib.tensor(values(1024, 11), [1024]));
    const h = t.exportHandle();
    const r = execFileSync(process.execPath, ['--input-type=module', '-e', `
      import * as m from ${JSON.stringify(distEntry)};
      const t = m.DeviceTensor.fromHandle(JSON.parse(process.env.CUTLOSS_TEST_HANDLE));
      const v = t.download().data[3];
      t.dispose();
      console.log(JSON.stringify({ v }));`], { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, CUTLOSS_TEST_HANDLE: JSON.stringify(h) } });
    expect(JSON.parse(r.trim())).toEqual({ v: values(1024, 11)[3] });
    const before = cache();
    t.dispose();
    expect(cache().parkedBlocks).toBe(before.parkedBlocks);
    expect(cache().frees).toBe(before.frees + 1);
  });
});

describe('sticky CUDA errors', () => {
  it('the table: context-breaking codes are sticky, recoverable ones are not', () => {
    const sticky = [214, 220, 226, 700, 702, 710, 714, 715, 716, 717, 718, 719, 721, 810, 911];
    const recoverable = [0, 1, 2, 35, 98, 100, 200, 209, 400, 401, 701, 709, 720, 999];
    for (const code of sticky) expect([code, addon().isStickyCudaError(code)]).toEqual([code, true]);
    for (const code of recoverable) expect([code, addon().isStickyCudaError(code)]).toEqual([code, false]);
  });

  it('after one, cuda reports it and refuses every call (E_BACKEND) before touching the context; a recoverable one changes nothing', () => {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
      import * as m from ${JSON.stringify(distEntry)};
      const { native } = await import(${JSON.stringify(distEntry.replace(/index\.js$/, 'native.js'))});
      const a = native().addon;
      const code = (fn) => { try { fn(); return 'none'; } catch (e) { return [e.code, e.message]; } };
      a.noteCudaError(2, 'cudaErrorMemoryAllocation', 'out of memory');
      const afterRecoverable = a.cudaStatus().fault ?? null;
      a.noteCudaError(700, 'cudaErrorIllegalAddress', 'an illegal memory access was encountered');
      a.noteCudaError(719, 'cudaErrorLaunchFailure', 'unspecified launch failure'); // the first one wins
      const fault = a.cudaStatus().fault;
      // the addon itself (the JS layer refuses cuda here anyway: this machine has no driver)
      const upload = code(() => a.upload(1, new Float32Array(4)));
      const emu = m.upload(m.tensor(new Float32Array([1, 2]), [2]), { backend: 'cuda-emu' }).download().data[1];
      console.log(JSON.stringify({ afterRecoverable, fault, upload, emu }));`], { cwd: repoRoot, encoding: 'utf8' });
    const r = JSON.parse(out.trim()) as { afterRecoverable: unknown; fault: unknown; upload: [string, string]; emu: number };
    expect(r.afterRecoverable).toBeNull();
    expect(r.fault).toEqual({ code: 700, name: 'cudaErrorIllegalAddress', message: 'an illegal memory access was encountered' });
    expect(r.upload[0]).toBe('E_BACKEND');
    expect(r.upload[1]).toMatch(/cudaErrorIllegalAddress \(700\).*restart the process/);
    expect(r.emu).toBe(2); // the emulator has no CUDA context to lose
  });
});
