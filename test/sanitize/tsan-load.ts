// The ThreadSanitizer workload (test/sanitize/run.sh tsan): the cpu thread pool and the async
// job path under concurrent use. Async calls of mixed ops in flight together, the pool resized
// while they run, worker threads calling the addon beside this thread, and cuda-emu jobs whose
// DeviceTensor inputs are disposed while they run. Every result must equal the same call made
// synchronously; exits non-zero otherwise (ThreadSanitizer exits non-zero on a report).
//   node --import tsx test/sanitize/tsan-load.ts
import { Worker } from 'node:worker_threads';
import * as lib from '../../lib/index.js';
import { mixedCall, resultBytes } from '../load-calls.js';

const equal = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
let failures = 0;

async function concurrent(label: string, first: number, count: number, during?: () => void, options = {}): Promise<void> {
  const calls = Array.from({ length: count }, (_, k) => mixedCall(lib, first + k, options));
  const want = calls.map((c) => resultBytes(lib, c.sync()));
  const pending = calls.map((c) => c.async());
  during?.();
  const got = (await Promise.all(pending)).map((r) => resultBytes(lib, r));
  for (const c of calls) for (const d of c.inputs) d.dispose();
  const bad = got.flatMap((g, k) => (equal(g, want[k]!) ? [] : [k]));
  if (bad.length > 0) failures++;
  console.log(`${label}: ${count} calls in flight together, ${bad.length === 0 ? 'all equal to the sync calls' : `${bad.length} differ: ${bad.slice(0, 5).join(' ')}`}`);
}

lib.setBackend('cpu');
const threads = lib.getThreads();
await concurrent('cpu', 0, 400);
await concurrent('cpu, pool resized meanwhile', 1000, 200, () => {
  for (const n of [1, 3, 2, threads]) lib.setThreads(n);
});

const libUrl = new URL('../../lib/index.ts', import.meta.url).href;
const callsUrl = new URL('../load-calls.ts', import.meta.url).href;
const workers = [1, 2, 3].map((w) => new Worker(`
  const { parentPort } = require('node:worker_threads');
  (async () => {
    const { register } = await import('tsx/esm/api');
    register();
    const m = await import(${JSON.stringify(libUrl)});
    const c = await import(${JSON.stringify(callsUrl)});
    m.setBackend('cpu');
    const calls = Array.from({ length: 100 }, (_, k) => c.mixedCall(m, ${w * 10_000} + k));
    const got = await Promise.all(calls.map((call, k) => (k % 2 ? call.async() : Promise.resolve(call.sync()))));
    parentPort.postMessage(got.map((r) => c.resultBytes(m, r)));
  })().catch((e) => parentPort.postMessage(String(e && e.stack || e)));`, { eval: true }));
const here = concurrent('cpu, beside 3 worker threads', 5000, 200);
const fromWorkers = await Promise.all(workers.map((w) => new Promise<unknown>((resolve, reject) => {
  w.once('message', resolve);
  w.once('error', reject);
})));
await here;
await Promise.all(workers.map((w) => w.terminate()));
fromWorkers.forEach((r, i) => {
  const w = i + 1;
  const ok = Array.isArray(r) && r.every((bytes, k) => equal(bytes as Uint8Array, resultBytes(lib, mixedCall(lib, w * 10_000 + k).sync())));
  if (!ok) failures++;
  console.log(`worker ${w}: ${ok ? '100 calls equal to this thread\'s' : `wrong: ${String(r).slice(0, 300)}`}`);
});

if (lib.backends().some((b) => b.name === 'cuda-emu' && b.available)) {
  lib.setBackend('cuda-emu');
  // inputs on the device, disposed by the loop as soon as both forms were queued
  const calls = Array.from({ length: 60 }, (_, k) => mixedCall(lib, 20_000 + k, { device: 'cuda-emu', linearEvery: 10 }));
  const want = calls.map((c) => resultBytes(lib, c.sync()));
  const pending = calls.map((c) => c.async());
  for (const c of calls) for (const d of c.inputs) d.dispose();
  const got = (await Promise.all(pending)).map((r) => resultBytes(lib, r));
  const bad = got.filter((g, k) => !equal(g, want[k]!)).length;
  if (bad > 0) failures++;
  console.log(`cuda-emu: 60 calls in flight, inputs disposed meanwhile: ${bad === 0 ? 'all equal to the sync calls' : `${bad} differ`}`);
}

console.log(failures === 0 ? 'tsan workload: done' : `tsan workload: ${failures} checks failed`);
process.exitCode = failures === 0 ? 0 : 1;
