// One contestant on one case, in a process of its own so that its peak memory is its own:
//   node --expose-gc lib/bench/worker.js '<WorkerSpec json>'      (tsx for the .ts source)
// 1. build the inputs (the first `rows` rows: slow contestants run fewer and are scaled up,
//    which the result says); 2. warm up on a tiny problem; 3. the first full-size call, with
//    its peak memory (host: VmHWM reset just before; device: cutloss's allocator high-water
//    mark and cudaMemGetInfo); 4. `runs` more calls, timed, forward alone and forward +
//    backward; 5. on a device, an energy window: fwd+bwd repeated for `energyWindowMs` between
//    two readings of nvidia-smi's energy counter (the parent samples nvidia-smi meanwhile).
// Prints `@@RESULT {json}`; contestants 'paired-*' time cutloss cpu and a limit in turns
// instead (`@@PAIRED {json}`).

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import * as lib from '../index.js';
import { native } from '../native.js';
import { cpuAddon, cpuLastGradientWork } from '../cpuBackend.js';
import { caseInputs, returnedBytes, type BenchCase } from './cases.js';
import { measurePeak, measurePeakAsync, median, settle, type PeakGrowth } from './measure.js';
import { benchProbe, stats, type PairedResult, type WindowReport, type WorkerResult, type WorkerSpec } from './protocol.js';
import { readEnergyMilliJoules, runSmi, smiNumber, visibleGpuIndex } from './smi.js';

const requireFromCwd = createRequire(`${process.cwd()}/`);

// ---------------------------------------------------------------- host contestants

interface Prepared {
  label: string;
  note: string;
  returnedBytes: number;
  /** One call: its loss where there is one; a Promise for peers whose calls settle asynchronously. */
  run: (mode: 'fwd' | 'fwdbwd') => number | null | Promise<unknown>;
  warm: () => unknown;
  /** Whether forward alone is a call of its own (else only fwd+bwd is timed). */
  forward: boolean;
}

async function cutlossHost(spec: WorkerSpec, backend: 'cpu' | 'js'): Promise<Prepared> {
  lib.setBackend(backend);
  if (backend === 'cpu') lib.setThreads(spec.threads);
  const make = (c: BenchCase, rows: number) => {
    const inp = caseInputs(c, rows);
    const dtype = c.dtype;
    if (c.kind !== 'linear') {
      const x = lib.tensor(inp.logits!, [rows, c.V], dtype);
      if (c.kind === 'softmax') return () => (lib.softmax(x), null);
      return (mode: 'fwd' | 'fwdbwd') => lib.crossEntropy(x, inp.labels, { computeGrad: mode === 'fwdbwd' }).loss as number;
    }
    const E = lib.tensor(inp.E!, [rows, c.D], dtype);
    const W = lib.tensor(inp.W!, [c.V, c.D], dtype);
    const o = spec.workspaceBytes !== undefined ? { workspaceBytes: spec.workspaceBytes } : {};
    return (mode: 'fwd' | 'fwdbwd') => lib.linearCrossEntropy(E, W, inp.labels, { ...o, computeGrad: mode === 'fwdbwd' }).loss as number;
  };
  // Warm up on a small problem of another shape: a full-size result would go to the output
  // pool and hide the first measured call's own allocations.
  const tiny = make({ ...spec.case, N: 4, V: 600, D: Math.min(spec.case.D, 64) }, 4);
  const info = lib.backends().find((b) => b.name === backend)!;
  const ws = spec.workspaceBytes !== undefined ? `, workspace ${spec.workspaceBytes / 2 ** 20} MiB` : '';
  return {
    label: `cutloss ${backend}${ws}`,
    // read after the timed calls: the cpu's share of gradient work that filterEps spared
    get note() {
      const work = backend === 'cpu' && spec.case.kind === 'linear' ? cpuLastGradientWork() : null;
      return (backend === 'cpu' ? `${String(info.details.threads)} threads, ${String(info.details.simd)}, ${String(info.details.gemm)} ${String(info.details.gemmKernel)}` : 'float64 inside, 1 thread') +
        (work === null ? '' : `; gradient work skipped by filterEps: ${(100 * work.skippedFraction).toFixed(2)}% (${work.sparseSlices} of ${work.slices} slices as per-entry products, ${work.deferredEntries} of their entries deferred to the end of the call, ${work.skippedSlices} skipped)`);
    },
    returnedBytes: returnedBytes(spec.case, spec.rows),
    run: make(spec.case, spec.rows),
    warm: () => tiny('fwdbwd'),
    forward: spec.case.kind !== 'softmax',
  };
}

function asF32(x: Float32Array | Uint16Array): Float32Array {
  if (x instanceof Float32Array) return x;
  // a loop, not Float32Array.from: that goes through an iterator, too slow (and too big) at V·D
  const out = new Float32Array(x.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < x.length; i++) bits[i] = x[i]! << 16;
  return out;
}

function cpuGemms() {
  const { addon, error } = native();
  const a = addon === null ? null : cpuAddon(addon);
  if (a === null) throw new Error(`the addon has no CPU backend: ${error ?? 'built without it'}`);
  lib.setThreads(lib.getThreads());
  return a;
}

/** The cpu contestants' shared start: threads set, the addon's GEMMs, a linear case's inputs in f32. */
function cpuLinearProblem(spec: WorkerSpec) {
  lib.setThreads(spec.threads);
  const inp = caseInputs(spec.case, spec.rows);
  return { a: cpuGemms(), inp, E: asF32(inp.E!), W: asF32(inp.W!), N: spec.rows, D: spec.case.D, V: spec.case.V };
}

/** E·Wᵀ, G·W and Gᵀ·E at full size with the BLAS cutloss links; G = the logits. f32 (bf16 inputs widened first). */
async function gemmLimit(spec: WorkerSpec): Promise<Prepared> {
  const { a, E, W, N, D, V } = cpuLinearProblem(spec);
  const info = a.cpuInfo();
  return {
    label: 'GEMM limit (E·Wᵀ, G·W, Gᵀ·E)',
    note: `${info.gemm.library} ${info.gemm.kernel}, ${info.threads} threads, f32, outputs allocated per call`,
    returnedBytes: (N * V + (N + V) * D) * 4,
    run: () => {
      const L = a.cpuSgemm(false, true, N, V, D, E, W);
      a.cpuSgemm(false, false, N, D, V, L, W);
      a.cpuSgemm(true, false, V, D, N, L, E);
      return null;
    },
    warm: () => { // a small problem: full-size results would go to the output pool
      const [n, v] = [Math.min(N, 4), Math.min(V, 600)];
      const L = a.cpuSgemm(false, true, n, v, D, E.subarray(0, n * D), W.subarray(0, v * D));
      a.cpuSgemm(true, false, v, D, n, L, E.subarray(0, n * D));
    },
    forward: false,
  };
}

/** The materialized head on the cpu backend: logits by GEMM, crossEntropy, then dE and dW by GEMM. */
async function materializedCpu(spec: WorkerSpec): Promise<Prepared> {
  lib.setBackend('cpu');
  const { a, inp, E, W, N, D, V } = cpuLinearProblem(spec);
  const make = (n: number, e: Float32Array, w: Float32Array, v: number, labels: Int32Array) => (mode: 'fwd' | 'fwdbwd') => {
    const L = a.cpuSgemm(false, true, n, v, D, e, w);
    const r = lib.crossEntropy(lib.tensor(L, [n, v]), labels, { computeGrad: mode === 'fwdbwd' });
    if (mode === 'fwdbwd') {
      const G = r.dLogits!.data as Float32Array;
      a.cpuSgemm(false, false, n, D, v, G, w);
      a.cpuSgemm(true, false, v, D, n, G, e);
    }
    return r.loss as number;
  };
  const [n, v] = [Math.min(N, 4), Math.min(V, 600)];
  const tiny = make(n, E.subarray(0, n * D), W.subarray(0, v * D), v, new Int32Array(n));
  return {
    label: 'materialized (cutloss cpu crossEntropy on E·Wᵀ)',
    note: `logits [${N}, ${V}] f32 written, crossEntropy on the cpu backend, dE and dW by GEMM${spec.case.dtype === 'bf16' ? '; bf16 inputs widened to f32' : ''}`,
    returnedBytes: (N + V) * D * 4,
    run: make(N, E, W, V, inp.labels),
    warm: () => tiny('fwdbwd'),
    forward: true,
  };
}

async function tfjs(spec: WorkerSpec, backend: 'cpu' | 'wasm'): Promise<Prepared> {
  const tf = await importOptional<typeof import('@tensorflow/tfjs')>('@tensorflow/tfjs');
  if (backend === 'wasm') await importOptional('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend(backend);
  await tf.ready();
  const c = spec.case;
  type T = import('@tensorflow/tfjs').Tensor;
  type S = import('@tensorflow/tfjs').Scalar;
  const make = (rows: number) => {
    const inp = caseInputs(c, rows);
    const onehot = tf.oneHot(tf.tensor1d(inp.labels, 'int32'), c.V);
    if (c.kind !== 'linear') {
      const x = tf.tensor2d(asF32(inp.logits!), [rows, c.V]);
      if (c.kind === 'softmax') {
        return () => {
          const y = tf.softmax(x);
          y.dataSync();
          y.dispose();
          return null;
        };
      }
      const vg = tf.valueAndGrad((l: T) => tf.losses.softmaxCrossEntropy(onehot, l) as S);
      return () => {
        const { value, grad } = tf.tidy(() => vg(x));
        const loss = value.dataSync()[0]!;
        grad.dataSync();
        value.dispose();
        grad.dispose();
        return loss;
      };
    }
    const e = tf.tensor2d(asF32(inp.E!), [rows, c.D]);
    const w = tf.tensor2d(asF32(inp.W!), [c.V, c.D]);
    const vg = tf.valueAndGrads((a: T, b: T) => tf.losses.softmaxCrossEntropy(onehot, tf.matMul(a, b, false, true)) as S);
    return () => {
      const { value, grads } = tf.tidy(() => vg([e, w]));
      const loss = value.dataSync()[0]!;
      for (const g of grads) g.dataSync();
      value.dispose();
      grads.forEach((g) => g.dispose());
      return loss;
    };
  };
  const tiny = make(Math.min(4, spec.rows));
  return {
    label: `TensorFlow.js ${backend}`,
    note: `@tensorflow/tfjs ${tf.version.tfjs}, one-hot labels, gradients by autodiff${backend === 'wasm' ? ' (wasm: one thread in Node)' : ''}`,
    returnedBytes: returnedBytes(c, spec.rows),
    run: make(spec.rows),
    warm: () => tiny(),
    forward: false,
  };
}

/** A peer that may not be installed: imported by a name resolved from the working directory. */
async function importOptional<T = unknown>(name: string): Promise<T> {
  let target = name;
  try {
    target = requireFromCwd.resolve(name);
  } catch {
    // fall back to Node's own resolution from this file
  }
  return (await import(target.startsWith('/') ? `file://${target}` : target)) as T;
}

/** The part of onnxruntime-node's API used here. */
interface Ort {
  Tensor: new (type: 'float32', data: Float32Array, dims: number[]) => object;
  InferenceSession: {
    create(model: Uint8Array, options: { intraOpNumThreads: number; interOpNumThreads: number }): Promise<{
      run(feeds: Record<string, object>): Promise<unknown>;
    }>;
  };
}

/** onnxruntime-node runs inference graphs: softmax (S3), and only the logits GEMM of a linear case. */
async function onnx(spec: WorkerSpec): Promise<Prepared> {
  const ort = await importOptional<Ort>('onnxruntime-node');
  const { softmaxModel, logitsModel } = await import('./onnx.js');
  const c = spec.case;
  const session = await ort.InferenceSession.create(c.kind === 'softmax' ? softmaxModel() : logitsModel(), {
    intraOpNumThreads: spec.threads, interOpNumThreads: 1,
  });
  const inp = caseInputs(c, spec.rows);
  const feeds: Record<string, object> = c.kind === 'softmax'
    ? { X: new ort.Tensor('float32', asF32(inp.logits!), [spec.rows, c.V]) }
    : { E: new ort.Tensor('float32', asF32(inp.E!), [spec.rows, c.D]), W: new ort.Tensor('float32', asF32(inp.W!), [c.V, c.D]) };
  const version = (requireFromCwd('onnxruntime-node/package.json') as { version: string }).version;
  return {
    label: c.kind === 'softmax' ? 'onnxruntime-node' : 'onnxruntime-node, logits GEMM only',
    note: `onnxruntime-node ${version}, ${spec.threads} intra-op threads, inference only` + (c.kind === 'softmax' ? '' : ': E·Wᵀ alone, no loss or gradient'),
    returnedBytes: c.kind === 'softmax' ? returnedBytes(c, spec.rows) : spec.rows * c.V * 4,
    run: () => session.run(feeds),
    warm: async () => {
      await session.run(feeds); // the session's first runs plan and allocate
      await session.run(feeds);
    },
    forward: false,
  };
}

async function prepare(spec: WorkerSpec): Promise<Prepared> {
  switch (spec.contestant) {
    case 'cutloss': return cutlossHost(spec, spec.backend === 'js' ? 'js' : 'cpu');
    case 'cutloss-js': return cutlossHost(spec, 'js');
    case 'materialized': return materializedCpu(spec);
    case 'gemm-limit': return gemmLimit(spec);
    case 'tfjs-cpu': return tfjs(spec, 'cpu');
    case 'tfjs-wasm': return tfjs(spec, 'wasm');
    case 'onnxruntime': return onnx(spec);
    default: throw new Error(`${spec.contestant} is not a host contestant`);
  }
}

async function timeHost(p: Prepared, mode: 'fwd' | 'fwdbwd', runs: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    await settle();
    const t0 = performance.now();
    await p.run(mode);
    times.push(performance.now() - t0);
  }
  return times;
}

async function hostRun(spec: WorkerSpec): Promise<WorkerResult> {
  const p = await prepare(spec);
  await p.warm();
  await settle();
  const first = spec.contestant === 'onnxruntime'
    ? await measurePeakAsync(async () => (await p.run('fwdbwd'), null))
    : await measurePeak(() => p.run('fwdbwd') as number | null);
  const scale = spec.case.N / spec.rows;
  const fwdBwd = await timeHost(p, 'fwdbwd', spec.runs);
  const fwd = p.forward ? await timeHost(p, 'fwd', spec.runs) : [];
  const peak: PeakGrowth = first.peak;
  const growth = peak.source === 'VmHWM' ? peak.growthBytes : null;
  return {
    case: spec.case.name,
    contestant: spec.contestant,
    label: p.label,
    note: p.note + (scale !== 1 ? `; ran ${spec.rows} of ${spec.case.N} rows, times scaled by ${+scale.toFixed(2)}` : ''),
    scale,
    clock: 'host',
    firstMs: peak.ms * scale,
    fwd: fwd.length > 0 ? stats(fwd, scale) : null,
    fwdBwd: stats(fwdBwd.length > 0 ? fwdBwd : [peak.ms], scale),
    host: scale === 1 && growth !== null ? { growthBytes: growth, returnedBytes: p.returnedBytes, extraBytes: growth - p.returnedBytes } : null,
    device: null,
    window: null,
    loss: typeof first.value === 'number' ? first.value : null,
  };
}

// ---------------------------------------------------------------- device contestants (cuda, cuda-emu)

/** Free device results: gradients and outputs of one call. */
function disposeAll(r: unknown): void {
  if (r instanceof lib.DeviceTensor) return r.dispose();
  if (r !== null && typeof r === 'object') {
    for (const v of Object.values(r)) if (v instanceof lib.DeviceTensor) v.dispose();
  }
}

async function smiMemoryUsed(gpu: number): Promise<number | null> {
  const r = await runSmi(['-i', String(gpu), '--query-gpu=memory.used', '--format=csv,noheader,nounits']);
  return r.ok ? smiNumber(r.stdout.split('\n')[0]) : null;
}

async function deviceRun(spec: WorkerSpec): Promise<WorkerResult> {
  const backend = spec.backend as 'cuda' | 'cuda-emu';
  const code = backend === 'cuda' ? 1 : 0;
  const probe = benchProbe();
  lib.setBackend(backend);
  const c = spec.case;
  const gpu = visibleGpuIndex();
  const memoryBeforeMiB = spec.smi ? await smiMemoryUsed(gpu) : null;
  const materialized = spec.contestant === 'materialized';

  // Inputs on the device; the host copies go before anything is measured.
  let call: (mode: 'fwd' | 'fwdbwd') => { loss: number | null; out: unknown };
  let note: string;
  const held: lib.DeviceTensor[] = [];
  const up = (data: Float32Array | Uint16Array, shape: [number, number], dtype: 'f32' | 'bf16') => {
    const t = lib.upload(lib.tensor(data, shape, dtype), { backend });
    held.push(t);
    return t;
  };
  const build = (k: BenchCase, rows: number) => {
    const inp = caseInputs(k, rows);
    if (k.kind === 'linear' && !materialized) {
      const E = up(inp.E!, [rows, k.D], k.dtype);
      const W = up(inp.W!, [k.V, k.D], k.dtype);
      return (mode: 'fwd' | 'fwdbwd') => {
        const r = lib.linearCrossEntropy(E, W, inp.labels, { computeGrad: mode === 'fwdbwd' });
        return { loss: r.loss as number, out: r };
      };
    }
    // crossEntropy and softmax cases; and the materialized baseline: logits of E·Wᵀ's spread
    // (√D·std of W, E's entries having std 1) written to the device, then crossEntropy.
    const logits = k.kind === 'linear'
      ? caseInputs({ ...k, kind: 'crossEntropy', std: Math.sqrt(k.D) * k.std }, rows).logits!
      : inp.logits!;
    const x = up(logits, [rows, k.V], k.dtype);
    if (k.kind === 'softmax') return () => ({ loss: null, out: lib.softmax(x) });
    return (mode: 'fwd' | 'fwdbwd') => {
      const r = lib.crossEntropy(x, inp.labels, { computeGrad: mode === 'fwdbwd' });
      return { loss: r.loss as number, out: r };
    };
  };
  // Warm-up first, on another shape, and its inputs freed: the measured call starts clean.
  const warm = build({ ...c, N: Math.min(c.N, 16), V: Math.min(c.V, 256), D: Math.min(c.D, 32) }, Math.min(c.N, 16));
  disposeAll(warm('fwdbwd').out);
  held.splice(0).forEach((t) => t.dispose());
  const liveBefore = probe.deviceMemory(code).liveBytes;
  call = build(c, spec.rows);
  const inputBytes = probe.deviceMemory(code).liveBytes - liveBefore;
  note = materialized
    ? `logits [${spec.rows}, ${c.V}] ${c.dtype} on the device, then crossEntropy (dLogits [${spec.rows}, ${c.V}]); the GEMMs E·Wᵀ, G·W, Gᵀ·E are not run (no device GEMM entry point): a lower bound on time`
    : c.kind === 'linear' ? 'fused kernels: forward and backward in one call; backward = (fwd+bwd) − fwd' : '';
  if (c.kind === 'crossEntropy' || materialized) note = note || 'crossEntropy: forward, then backward, as two kernels';

  await settle();
  const before = probe.deviceMemory(code);
  probe.resetDeviceMemoryPeak(code);
  const first = probe.timeOnDevice(code, () => call('fwdbwd'));
  const after = probe.deviceMemory(code);
  const peakBytes = after.peakBytes - before.liveBytes;
  const loss = first.value.loss;
  disposeAll(first.value.out);

  const timeOnce = (mode: 'fwd' | 'fwdbwd'): number => {
    const t = probe.timeOnDevice(code, () => call(mode));
    disposeAll(t.value.out);
    return t.ms;
  };
  const fwdBwd: number[] = [];
  const fwd: number[] = [];
  const withForward = c.kind !== 'softmax';
  for (let i = 0; i < spec.runs; i++) {
    fwdBwd.push(timeOnce('fwdbwd'));
    if (withForward) fwd.push(timeOnce('fwd'));
    await new Promise((r) => setImmediate(r)); // let finalizers and the event loop run
  }

  let window: WindowReport | null = null;
  if (spec.energyWindowMs > 0) {
    const counterBefore = spec.smi ? await readEnergyMilliJoules(gpu) : { mJ: null, reason: 'nvidia-smi not sampled' };
    const startMs = Date.now();
    const t0 = performance.now();
    let calls = 0;
    do {
      timeOnce('fwdbwd');
      calls++;
    } while (performance.now() - t0 < spec.energyWindowMs);
    const windowMs = performance.now() - t0;
    const counterAfter = spec.smi ? await readEnergyMilliJoules(gpu) : { mJ: null, reason: 'nvidia-smi not sampled' };
    window = {
      startMs, windowMs, tokens: calls * spec.rows,
      counterBeforeMJ: counterBefore.mJ, counterAfterMJ: counterAfter.mJ, memoryBeforeMiB,
      counterNote: counterBefore.reason ?? counterAfter.reason,
    };
  }
  held.forEach((t) => t.dispose());
  const scale = c.N / spec.rows;
  return {
    case: c.name,
    contestant: spec.contestant,
    label: materialized ? `materialized (cutloss ${backend} crossEntropy on logits)` : `cutloss ${backend}`,
    note: note + (scale !== 1 ? `; ran ${spec.rows} of ${c.N} rows, times scaled by ${+scale.toFixed(2)}` : ''),
    scale,
    clock: first.clock,
    firstMs: first.ms * scale,
    fwd: fwd.length > 0 ? stats(fwd, scale) : null,
    fwdBwd: stats(fwdBwd.length > 0 ? fwdBwd : [first.ms], scale),
    host: null,
    device: {
      peakBytes, peakSource: 'cutloss allocator high-water mark', inputBytes,
      before: { freeBytes: before.freeBytes, totalBytes: before.totalBytes },
      after: { freeBytes: after.freeBytes, totalBytes: after.totalBytes },
      infoSource: after.source,
    },
    window,
    loss,
  };
}

// ---------------------------------------------------------------- in turns

/**
 * cutloss cpu and a limit timed in turns (A B, B A, A B, …) in one process: the ratio of each
 * pair is taken over the same second or so, so a machine whose speed or memory bandwidth
 * drifts between two separate processes (a shared host) does not move it. The limit is the
 * GEMM limit, or a pass of stream.cc kept running beside this process with its memory set up
 * once (a process allocating and freeing a gigabyte between our calls slows them).
 */
async function paired(spec: WorkerSpec): Promise<PairedResult> {
  const a = await prepare({ ...spec, contestant: 'cutloss', backend: 'cpu' });
  await a.warm();
  await a.run('fwdbwd'); // the first full-size call: outputs enter the pool
  let limitLabel: string;
  let timeLimit: () => Promise<number>;
  let stopStream = () => {};
  if (spec.contestant === 'paired-gemm-limit') {
    const b = await prepare({ ...spec, contestant: 'gemm-limit' });
    await b.warm();
    await b.run('fwdbwd');
    limitLabel = b.label;
    timeLimit = async () => (await timeHost(b, 'fwdbwd', 1))[0]!;
  } else {
    limitLabel = 'bandwidth limit';
    const stream = spawn(spec.streamExe!, [String(spec.case.N), String(spec.case.V), 'serve'], {
      stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, OMP_NUM_THREADS: String(spec.threads) },
    });
    stopStream = () => stream.stdin.end();
    const lines = createInterface({ input: stream.stdout })[Symbol.asyncIterator]();
    const nextLine = async () => {
      const l = await lines.next();
      if (l.done === true) throw new Error('the stream limit exited early');
      return l.value as string;
    };
    if ((await nextLine()) !== 'ready') throw new Error('the stream limit did not start');
    timeLimit = async () => {
      await settle();
      stream.stdin.write('\n');
      return Number(await nextLine());
    };
  }
  const timeCutloss = async () => (await timeHost(a, 'fwdbwd', 1))[0]!;
  await timeLimit(); // one pair untimed: the limit's own set-up has just disturbed memory
  await timeCutloss();
  const times: [number[], number[]] = [[], []];
  const ratios: number[] = [];
  for (let i = 0; i < spec.runs; i++) {
    const t: [number, number] = [0, 0];
    for (const k of i % 2 === 0 ? [0, 1] : [1, 0]) {
      t[k] = k === 0 ? await timeCutloss() : await timeLimit();
      times[k]!.push(t[k]);
    }
    ratios.push(t[0] / t[1]);
  }
  stopStream();
  return { case: spec.case.name, labels: [a.label, limitLabel], mediansMs: [median(times[0]), median(times[1])], ratio: median(ratios), pairs: spec.runs };
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as WorkerSpec;
  if (spec.contestant === 'paired-gemm-limit' || spec.contestant === 'paired-stream-limit') {
    process.stdout.write(`@@PAIRED ${JSON.stringify(await paired(spec))}\n`);
    return;
  }
  const device = (spec.backend === 'cuda' || spec.backend === 'cuda-emu') && (spec.contestant === 'cutloss' || spec.contestant === 'materialized');
  const result = device ? await deviceRun(spec) : await hostRun(spec);
  process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`worker failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
