// Load and concurrency: 1,000 async calls of mixed ops in flight at once give the bytes the same
// calls give one by one, on every available backend; worker threads use the addon at once (and
// one ended mid-call harms no one); DeviceTensors shared with workers and used around dispose()
// behave as documented; and 10,000 calls of each op leave RSS, `external` memory and the
// addon's buffer count where they were (measured in a child process run with --expose-gc).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { native } from '../lib/native.js';
import { codeOf } from './helpers.js';
import { KINDS, mixedCall, resultBytes, type MixedCall } from './load-calls.js';

afterEach(() => lib.setBackend('auto'));

const available = lib.backends().filter((b) => b.available).map((b) => b.name);
const native_ = available.filter((b) => b !== 'js');
const emu = available.includes('cuda-emu');
const libUrl = new URL('../lib/index.ts', import.meta.url).href;
const callsUrl = new URL('./load-calls.ts', import.meta.url).href;

/** The fused linear kernel takes ~30 ms a call in the emulator: there one linear call in 10. */
const linearEvery = (b: string) => (b === 'cuda-emu' ? 10 : 1);

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Indices of calls whose bytes differ. */
function mismatches(got: Uint8Array[], want: Uint8Array[]): number[] {
  return want.flatMap((w, i) => (got[i] !== undefined && same(got[i]!, w) ? [] : [i]));
}

const CONCURRENT = 1000;

describe(`${CONCURRENT} concurrent async calls of mixed ops`, () => {
  for (const backend of available) {
    // Every backend here is bit-reproducible: cpu and js always, the emulator by its fixed schedule.
    it(`on ${backend}: Promise.all of the async twins gives the bytes of the same calls made one by one`, async () => {
      lib.setBackend(backend);
      const calls: MixedCall[] = [];
      for (let i = 0; i < CONCURRENT; i++) {
        // on device backends every third call takes DeviceTensor inputs
        const device = (backend === 'cuda-emu' || backend === 'cuda') && i % 3 === 0 ? backend : undefined;
        calls.push(mixedCall(lib, i, { device, linearEvery: linearEvery(backend) }));
      }
      const want = calls.map((c) => resultBytes(lib, c.sync()));
      const got = (await Promise.all(calls.map((c) => c.async()))).map((r) => resultBytes(lib, r));
      for (const c of calls) for (const d of c.inputs) d.dispose();
      const bad = mismatches(got, want);
      expect(bad.map((i) => `${i} ${calls[i]!.name}`), 'calls whose async result differs').toEqual([]);
      expect(new Set(calls.map((c) => c.name))).toEqual(new Set(KINDS)); // every kind ran
    }, 120_000);
  }
});

/** Starts a worker that registers tsx and runs `body` (an async function body; `m` is the library, `c` load-calls). */
function tsWorker(body: string, workerData: unknown): Worker {
  return new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    (async () => {
      const { register } = await import('tsx/esm/api');
      register();
      const m = await import(${JSON.stringify(libUrl)});
      const c = await import(${JSON.stringify(callsUrl)});
      ${body}
    })().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));`, { eval: true, workerData });
}

function reply<T>(w: Worker): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    w.once('message', (msg: T & { error?: string }) => (msg.error !== undefined ? reject(new Error(msg.error)) : resolve(msg)));
    w.once('error', reject);
  });
}

const WORKERS = 4;

describe.skipIf(native_.length === 0)('worker threads', () => {
  it(`${WORKERS} workers call the addon at once (sync and async, every native backend) and get what this thread gets`, async () => {
    const perWorker = 60;
    const workers = Array.from({ length: WORKERS }, (_, w) => tsWorker(`
      const out = {};
      for (const b of workerData.backends) {
        m.setBackend(b);
        const calls = Array.from({ length: workerData.perWorker }, (_, k) =>
          c.mixedCall(m, workerData.first + k, { linearEvery: workerData.linearEvery[b] }));
        // half the calls sync while the other half is in flight
        const pending = calls.map((call, k) => (k % 2 === 0 ? call.async() : null));
        const sync = calls.map((call, k) => (k % 2 === 1 ? call.sync() : null));
        const done = await Promise.all(pending);
        out[b] = calls.map((_, k) => c.resultBytes(m, k % 2 === 0 ? done[k] : sync[k]));
      }
      parentPort.postMessage(out);`, { backends: native_, perWorker, first: 10_000 * (w + 1), linearEvery: Object.fromEntries(native_.map((b) => [b, linearEvery(b)])) }));
    const results = await Promise.all(workers.map((w) => reply<Record<string, Uint8Array[]>>(w)));
    await Promise.all(workers.map((w) => w.terminate()));
    for (const b of native_) {
      lib.setBackend(b);
      results.forEach((r, w) => {
        const want = Array.from({ length: perWorker }, (_, k) => resultBytes(lib, mixedCall(lib, 10_000 * (w + 1) + k, { linearEvery: linearEvery(b) }).sync()));
        expect(mismatches(r[b]!, want), `${b}, worker ${w}: calls that differ`).toEqual([]);
      });
    }
  }, 120_000);

  it('a worker terminated while its async calls are in flight leaves the process and later calls sound', async () => {
    const backend = native_.includes('cuda-emu') ? 'cuda-emu' : native_[0]!;
    const w = tsWorker(`
      m.setBackend(workerData.backend);
      const inFlight = Array.from({ length: 40 }, (_, k) => c.mixedCall(m, k, { linearEvery: 10 }).async());
      parentPort.postMessage({ queued: inFlight.length });
      await Promise.all(inFlight);`, { backend });
    expect(await reply<{ queued: number }>(w)).toEqual({ queued: 40 });
    await w.terminate();
    lib.setBackend(backend);
    const call = mixedCall(lib, 7);
    expect(same(resultBytes(lib, await call.async()), resultBytes(lib, call.sync()))).toBe(true);
  }, 60_000);

  it.skipIf(!emu)('a worker that ends frees the DeviceTensors it held and the results of its calls still in flight', async () => {
    const stats = () => native().addon!.stats();
    const before = stats();
    const w = tsWorker(`
      m.setBackend('cuda-emu');
      const x = m.upload(m.tensor(Float32Array.from({ length: 64 * 300 }, (_, i) => Math.sin(i)), [64, 300]), { backend: 'cuda-emu' });
      globalThis.kept = [x, m.softmax(x), m.logSoftmax(x)]; // never disposed
      const inFlight = Array.from({ length: 30 }, () => m.softmaxAsync(x));
      parentPort.postMessage({ queued: inFlight.length });
      await Promise.all(inFlight);`, {});
    expect(await reply<{ queued: number }>(w)).toEqual({ queued: 30 });
    expect(stats().handles).toBeGreaterThan(before.handles);
    await w.terminate();
    // calls still on the pool settle after the worker's end: wait for the count to come back
    for (let t = 0; t < 100 && stats().handles !== before.handles; t++) await new Promise((r) => setTimeout(r, 50));
    expect(stats()).toEqual(before);
  }, 60_000);
});

describe.skipIf(!emu)('DeviceTensors across workers and around dispose() (cuda-emu)', () => {
  const data = Float32Array.from({ length: 6 * 40 }, (_, i) => Math.sin(i * 0.37) * 3);
  const x = () => lib.tensor(data, [6, 40]);

  it('workers import one exported tensor at once and compute on it; a disposed import is E_DISPOSED there; a disposed export cannot be imported', async () => {
    lib.setBackend('cuda-emu');
    const t = lib.upload(x(), { backend: 'cuda-emu' });
    const handle = t.exportHandle();
    const want = resultBytes(lib, lib.softmax(x()));
    const workers = Array.from({ length: WORKERS }, () => tsWorker(`
      m.setBackend('cuda-emu');
      const t = m.DeviceTensor.fromHandle(workerData);
      const results = await Promise.all(Array.from({ length: 20 }, (_, k) => (k % 2 ? m.softmaxAsync(t) : Promise.resolve(m.softmax(t)))));
      const bytes = results.map((r) => c.resultBytes(m, r));
      t.dispose();
      let after;
      try { m.softmax(t); after = 'none'; } catch (e) { after = e.code; }
      const rejected = await m.softmaxAsync(t).then(() => 'none', (e) => e.code);
      parentPort.postMessage({ bytes, after, rejected });`, handle));
    const results = await Promise.all(workers.map((w) => reply<{ bytes: Uint8Array[]; after: string; rejected: string }>(w)));
    await Promise.all(workers.map((w) => w.terminate()));
    for (const r of results) {
      expect(mismatches(r.bytes, r.bytes.map(() => want))).toEqual([]);
      expect([r.after, r.rejected]).toEqual(['E_DISPOSED', 'E_DISPOSED']);
    }
    expect(resultBytes(lib, lib.softmax(t))).toEqual(want); // the workers' imports freed nothing here
    t.dispose();
    const late = tsWorker(`
      let code = 'none';
      try { m.DeviceTensor.fromHandle(workerData); } catch (e) { code = e.code; }
      parentPort.postMessage({ code });`, handle);
    expect(await reply<{ code: string }>(late)).toEqual({ code: 'E_DISPOSED' });
    await late.terminate();
  }, 60_000);

  it('after dispose(), sync ops throw E_DISPOSED and async twins reject with it; calls already in flight finish on the memory they were given', async () => {
    lib.setBackend('cuda-emu');
    const want = resultBytes(lib, lib.softmax(x()));
    const before = native().addon!.stats();
    const d = lib.upload(x(), { backend: 'cuda-emu' });
    const inFlight = Array.from({ length: 100 }, () => lib.softmaxAsync(d));
    d.dispose();
    expect(codeOf(() => lib.softmax(d))).toBe('E_DISPOSED');
    const late = lib.softmaxAsync(d); // a Promise, rejected: the twin does not throw
    await expect(late).rejects.toMatchObject({ code: 'E_DISPOSED' });
    await expect(lib.crossEntropyAsync(d, new Int32Array(6))).rejects.toMatchObject({ code: 'E_DISPOSED' });
    const got = (await Promise.all(inFlight)).map((r) => resultBytes(lib, r));
    expect(mismatches(got, got.map(() => want))).toEqual([]);
    // the jobs held the input until they finished; now everything is back
    expect(native().addon!.stats()).toMatchObject({ buffers: before.buffers, bytes: before.bytes });
  }, 60_000);
});

// ---------------------------------------------------------------- leaks

/**
 * Growth allowed over the measured loops, after a warm-up round. The child runs with a 1 MiB
 * semi-space: V8's young generation otherwise swings RSS by up to 16 MiB between samples
 * (measured 8–16 MiB with no leak). Measured with it: RSS −0.7 to +2 MiB over 210,000 cpu calls,
 * `external` +0.03 MiB.
 */
const LEAK_BOUND_MIB = { rss: 8, external: 2 };

interface LeakReport {
  backend: string;
  calls: Record<string, number>;
  rssGrowth: number;
  externalGrowth: number;
  heapGrowth: number;
  heapTotalGrowth: number;
  buffers: [number, number];
  bytes: [number, number];
  ms: number;
}

/**
 * The child: per backend, every op `count` times after a warm-up round, RSS, `external` and the
 * addon's live buffers sampled after gc before and after. The RSS bound catches a leak of ~40
 * bytes a call across the 210,000 cpu calls (~800 in one op), the external bound ~10; the
 * buffer count any device buffer left behind.
 */
const leakChild = `
  const m = await import(${JSON.stringify(libUrl)});
  const { counts, warmUp } = JSON.parse(process.env.CUTLOSS_LEAK_COUNTS);
  const N = 4, V = 48, D = 8;
  const vals = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.61 + s) * 3);
  const x = m.tensor(vals(N * V, 1), [N, V]), dy = m.tensor(vals(N * V, 2), [N, V]);
  const E = m.tensor(vals(N * D, 3), [N, D]), W = m.tensor(vals(V * D, 4), [V, D]);
  const labels = new Int32Array([0, 5, 17, 47]);
  const g = { tau: 0.8, seed: 9 };
  const ops = {
    logSumExp: () => m.logSumExp(x), softmax: () => m.softmax(x), logSoftmax: () => m.logSoftmax(x),
    softmaxBackward: () => m.softmaxBackward(x, dy), logSoftmaxBackward: () => m.logSoftmaxBackward(x, dy),
    stablemax: () => m.stablemax(x), logStablemax: () => m.logStablemax(x),
    stablemaxBackward: () => m.stablemaxBackward(x, dy), logStablemaxBackward: () => m.logStablemaxBackward(x, dy),
    sparsemax: () => m.sparsemax(x), sparsemaxBackward: () => m.sparsemaxBackward(x, dy),
    entmax15: () => m.entmax15(x), entmax15Backward: () => m.entmax15Backward(x, dy),
    gumbelSoftmax: () => m.gumbelSoftmax(x, g), gumbelSoftmaxBackward: () => m.gumbelSoftmaxBackward(x, dy, g),
    crossEntropy: () => m.crossEntropy(x, labels, { labelSmoothing: 0.1 }),
    linearCrossEntropy: () => m.linearCrossEntropy(E, W, labels),
    crossEntropyAsync: () => m.crossEntropyAsync(x, labels), linearCrossEntropyAsync: () => m.linearCrossEntropyAsync(E, W, labels),
    softmaxAsync: () => m.softmaxAsync(x), sparsemaxBackwardAsync: () => m.sparsemaxBackwardAsync(x, dy),
    deviceRoundTrip: () => { const d = m.upload(x, { backend: 'cuda-emu' }); const y = m.softmax(d); y.download(); y.dispose(); d.dispose(); },
  };
  const addon = (await import(${JSON.stringify(new URL('../lib/native.ts', import.meta.url).href)})).native().addon;
  async function run(name, n) {
    const f = ops[name];
    for (let i = 0; i < n; i += 100) {
      const batch = [];
      for (let k = i; k < Math.min(n, i + 100); k++) batch.push(f());
      if (batch[0] instanceof Promise) await Promise.all(batch);
    }
  }
  async function settle() {
    for (let i = 0; i < 3; i++) { globalThis.gc(); await new Promise((r) => setImmediate(r)); }
    const u = process.memoryUsage();
    return { rss: u.rss, external: u.external, heap: u.heapUsed, heapTotal: u.heapTotal, ...addon.stats() };
  }
  const reports = [];
  for (const [backend, calls] of Object.entries(counts)) {
    m.setBackend(backend);
    // a warm-up round: caches and malloc's arenas reach their working size, code is compiled
    for (const name of Object.keys(calls)) await run(name, warmUp[backend]);
    const a = await settle();
    const t0 = performance.now();
    for (const [name, n] of Object.entries(calls)) await run(name, n);
    const ms = performance.now() - t0;
    const b = await settle();
    reports.push({ backend, calls, rssGrowth: b.rss - a.rss, externalGrowth: b.external - a.external, heapGrowth: b.heap - a.heap, heapTotalGrowth: b.heapTotal - a.heapTotal,
      buffers: [a.buffers, b.buffers], bytes: [a.bytes, b.bytes], ms });
  }
  console.log(JSON.stringify(reports));`;

/** 10,000 calls of each op on cpu; the emulator's kernels take ~0.5–30 ms a call, so fewer there. */
function leakCounts(): Record<string, Record<string, number>> {
  const all = ['logSumExp', 'softmax', 'logSoftmax', 'softmaxBackward', 'logSoftmaxBackward', 'stablemax', 'logStablemax',
    'stablemaxBackward', 'logStablemaxBackward', 'sparsemax', 'sparsemaxBackward', 'entmax15', 'entmax15Backward',
    'gumbelSoftmax', 'gumbelSoftmaxBackward', 'crossEntropy', 'linearCrossEntropy',
    'crossEntropyAsync', 'linearCrossEntropyAsync', 'softmaxAsync', 'sparsemaxBackwardAsync'];
  const counts: Record<string, Record<string, number>> = {};
  if (available.includes('cpu')) counts.cpu = Object.fromEntries(all.map((op) => [op, 10_000]));
  if (emu) {
    counts['cuda-emu'] = {
      ...Object.fromEntries(all.map((op) => [op, op.startsWith('linear') ? 5 : 50])),
      softmax: 1_000, crossEntropyAsync: 300, deviceRoundTrip: 1_000,
    };
  }
  return counts;
}

describe.skipIf(native_.filter((b) => b !== 'cuda').length === 0)('memory stays flat', () => {
  it(`10,000 calls of each op on cpu (fewer on cuda-emu) grow RSS by less than ${LEAK_BOUND_MIB.rss} MiB and external memory by less than ${LEAK_BOUND_MIB.external} MiB, and free every native buffer`, () => {
    const out = execFileSync(process.execPath, ['--expose-gc', '--max-semi-space-size=1', '--import', 'tsx', '--input-type=module', '-e', leakChild], {
      cwd: fileURLToPath(new URL('..', import.meta.url)), encoding: 'utf8', timeout: 110_000,
      env: { ...process.env, CUTLOSS_LEAK_COUNTS: JSON.stringify({ counts: leakCounts(), warmUp: { cpu: 10_000, 'cuda-emu': 100 } }) },
    });
    const reports = JSON.parse(out.trim().split('\n').pop()!) as LeakReport[];
    for (const r of reports) {
      const calls = Object.values(r.calls).reduce((a, b) => a + b, 0);
      console.log(`${r.backend}: ${calls} calls in ${(r.ms / 1000).toFixed(1)} s; RSS ${(r.rssGrowth / 2 ** 20).toFixed(2)} MiB, ` +
        `external ${(r.externalGrowth / 2 ** 20).toFixed(2)} MiB, JS heap ${(r.heapGrowth / 2 ** 20).toFixed(2)} MiB (reserved ${(r.heapTotalGrowth / 2 ** 20).toFixed(2)} MiB), native buffers ${r.buffers.join(' → ')}`);
      expect(r.rssGrowth, `${r.backend}: RSS growth`).toBeLessThan(LEAK_BOUND_MIB.rss * 2 ** 20);
      expect(r.externalGrowth, `${r.backend}: external growth`).toBeLessThan(LEAK_BOUND_MIB.external * 2 ** 20);
      expect(r.buffers[1], `${r.backend}: native buffers alive`).toBe(r.buffers[0]);
      expect(r.bytes[1], `${r.backend}: native bytes alive`).toBe(r.bytes[0]);
    }
    expect(reports.map((r) => r.backend)).toEqual(Object.keys(leakCounts()));
  }, 120_000);
});
