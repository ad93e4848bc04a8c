// One behaviour for one mistake, on every backend (js, cpu, cuda-emu, cuda where present) and
// for host and device tensors: an unknown option is E_OPTION naming the key on every op and
// async twin; labels are exactly an Int32Array, anything else is E_DTYPE saying how to convert;
// an allocation that fails is E_OOM with the bytes asked for.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { CutlossError, DeviceTensor, type AnyTensor, type DeviceBackendName } from '../lib/index.js';

const [N, V, D] = [3, 5, 4];
const LABELS = new Int32Array([4, 0, -100]);
const host = (rows: number, cols: number, seed: number) =>
  lib.tensor(Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(seed + i)), [rows, cols]);

type Call = (x: AnyTensor, dy: AnyTensor, W: AnyTensor, options: unknown) => unknown;
type Op = (...args: unknown[]) => unknown;
/** How each op takes its arguments: (x, options), (x, dy, options), or a loss's. */
type Shape = 'x' | 'x, dy' | 'logits' | 'linear';
const gumbel = { tau: 0.7, seed: 5 };
const SYNC_OPS: [name: string, shape: Shape, needed?: Record<string, unknown>][] = [
  ['logSumExp', 'x'], ['softmax', 'x'], ['logSoftmax', 'x'],
  ['softmaxBackward', 'x, dy'], ['logSoftmaxBackward', 'x, dy'],
  ['stablemax', 'x'], ['logStablemax', 'x'], ['stablemaxBackward', 'x, dy'], ['logStablemaxBackward', 'x, dy'],
  ['sparsemax', 'x'], ['sparsemaxBackward', 'x, dy'], ['entmax15', 'x'], ['entmax15Backward', 'x, dy'],
  ['gumbelSoftmax', 'x'], ['gumbelSoftmaxBackward', 'x, dy', gumbel],
  ['crossEntropy', 'logits'], ['linearCrossEntropy', 'linear'],
];

function caller(op: Op, shape: Shape): Call {
  switch (shape) {
    case 'x': return (x, _dy, _W, o) => op(x, o);
    case 'x, dy': return (x, dy, _W, o) => op(x, dy, o);
    case 'logits': return (x, _dy, _W, o) => op(x, LABELS, o);
    case 'linear': return (x, _dy, W, o) => op(x, W, LABELS, o);
  }
}

// every op and its async twin, which takes the same arguments
const ops = lib as unknown as Record<string, Op>;
const OPS: [name: string, call: Call, needed?: Record<string, unknown>][] = SYNC_OPS.flatMap(([name, shape, needed]) =>
  [name, `${name}Async`].map((n): [string, Call, Record<string, unknown> | undefined] => [n, caller(ops[n]!, shape), needed]));

/** What a call gives: 'ok', or the CutlossError's code and message (sync throw or async rejection alike). */
async function outcome(run: () => unknown): Promise<{ code: string; message: string }> {
  try {
    const r = run();
    if (r instanceof Promise) await r;
    return { code: 'ok', message: '' };
  } catch (e) {
    if (!(e instanceof CutlossError)) return { code: `not a CutlossError: ${String(e)}`, message: String(e) };
    return { code: e.code, message: e.message };
  }
}

const available = lib.backends().filter((b) => b.available).map((b) => b.name);
const deviceBackends = available.filter((b): b is DeviceBackendName => b === 'cuda' || b === 'cuda-emu');
// each case: how to set up, and the inputs of that kind
const CASES: { label: string; backend: lib.BackendName; device?: DeviceBackendName }[] = [
  ...available.map((backend) => ({ label: `${backend}, host tensors`, backend })),
  ...deviceBackends.map((backend) => ({ label: `${backend}, device tensors`, backend, device: backend })),
];

afterAll(() => lib.setBackend('auto'));

describe.each(CASES)('$label', ({ backend, device }) => {
  const inputs = () => {
    lib.setBackend(backend);
    const hostInputs = { x: host(N, V, 1), dy: host(N, V, 2), E: host(N, D, 3), W: host(V, D, 4) };
    if (device === undefined) return { x: hostInputs.x, dy: hostInputs.dy, E: hostInputs.E, W: hostInputs.W, free: () => {} };
    const up = (t: lib.Tensor) => lib.upload(t, { backend: device });
    const d = { x: up(hostInputs.x), dy: up(hostInputs.dy), E: up(hostInputs.E), W: up(hostInputs.W) };
    return { ...d, free: () => Object.values(d).forEach((t: DeviceTensor) => t.dispose()) };
  };
  const args = (name: string, t: ReturnType<typeof inputs>): [AnyTensor, AnyTensor, AnyTensor] =>
    name.startsWith('linear') ? [t.E, t.dy, t.W] : [t.x, t.dy, t.W];

  it('every op and async twin rejects an unknown option with E_OPTION naming it, and accepts {} and no options', async () => {
    const t = inputs();
    try {
      for (const [name, call, needed] of OPS) {
        const [a, b, c] = args(name, t);
        const bad = await outcome(() => call(a, b, c, { ...needed, notAnOption: 1 }));
        expect(bad.code, name).toBe('E_OPTION');
        expect(bad.message, name).toMatch(new RegExp(`${name.replace(/Async$/, '')}(Async)?: unknown option 'notAnOption'`));
        expect((await outcome(() => call(a, b, c, { ...needed }))).code, `${name} with {}`).toBe('ok');
        if (needed === undefined) expect((await outcome(() => call(a, b, c, undefined))).code, `${name} without options`).toBe('ok');
      }
    } finally {
      t.free();
    }
  });

  it('labels are exactly an Int32Array: any other array is E_DTYPE saying how to convert', async () => {
    const t = inputs();
    const wrong: [string, unknown][] = [
      ['number[]', [4, 0, -100]], ['Uint8Array', new Uint8Array([4, 0, 1])], ['Uint32Array', new Uint32Array([4, 0, 1])],
      ['Int16Array', new Int16Array([4, 0, -100])], ['Float32Array', new Float32Array([4, 0, 1])],
      ['Float64Array', new Float64Array([4, 0, 1])], ['BigInt64Array', new BigInt64Array(3)], ['null', null],
    ];
    /* eslint-disable @typescript-eslint/no-explicit-any -- the wrong label types are the point */
    const losses: [string, (labels: unknown) => unknown][] = [
      ['crossEntropy', (l) => lib.crossEntropy(t.x, l as any)],
      ['crossEntropyAsync', (l) => lib.crossEntropyAsync(t.x, l as any)],
      ['linearCrossEntropy', (l) => lib.linearCrossEntropy(t.E, t.W as any, l as any)],
      ['linearCrossEntropyAsync', (l) => lib.linearCrossEntropyAsync(t.E, t.W as any, l as any)],
    ];
    /* eslint-enable @typescript-eslint/no-explicit-any */
    try {
      for (const [op, run] of losses) {
        for (const [kind, labels] of wrong) {
          const r = await outcome(() => run(labels));
          expect(r.code, `${op} with ${kind}`).toBe('E_DTYPE');
          expect(r.message, `${op} with ${kind}`).toMatch(/labels must be an Int32Array of length N = 3, got .*; convert with Int32Array\.from\(labels\)/);
        }
        expect((await outcome(() => run(Int32Array.from([4, 0, -100])))).code, `${op} with an Int32Array`).toBe('ok');
      }
    } finally {
      t.free();
    }
  });
});

// ---------------------------------------------------------------- out of memory
// A child process caps its own address space (prlimit) a little above what it uses, then asks
// for outputs of 128 MiB: the allocation fails for real, and must come back as E_OOM naming
// 134217728 bytes, never a bare RangeError or a crash.

const probe = fileURLToPath(new URL('./fixtures/oom-probe.ts', import.meta.url));
const hasPrlimit = (() => {
  try {
    execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
// the GPU's memory cannot be capped this way: cuda is left out
const oomCases = [
  ...available.filter((b) => b !== 'cuda').map((backend) => ({ backend, kind: 'host' })),
  ...(available.includes('cuda-emu') ? [{ backend: 'cuda-emu', kind: 'device' }] : []),
];

describe.skipIf(!hasPrlimit).each(oomCases)('out of memory on $backend, $kind tensors', ({ backend, kind }) => {
  it('is E_OOM with the bytes asked for, from sync ops and async twins alike', () => {
    const out = execFileSync(process.execPath, ['--import', 'tsx', probe, backend, kind], { encoding: 'utf8', timeout: 60_000 });
    const results = JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, { code: string; message: string }>;
    const ops = ['softmax', 'softmaxAsync', ...(kind === 'host' ? ['crossEntropy', 'crossEntropyAsync'] : ['upload'])];
    expect(Object.keys(results)).toEqual([...ops, 'afterwards']);
    for (const op of ops) {
      expect(results[op], op).toMatchObject({ code: 'E_OOM' });
      expect(results[op]!.message, op).toMatch(/cannot allocate 134217728 bytes/);
    }
    // a small call still works under the cap: the failure left nothing broken behind
    expect(results.afterwards).toEqual({ code: 'ok', message: '' });
  }, 90_000);
});
