// One contestant on one scenario, in a process of its own:
//   node --expose-gc --import tsx bench/cpu/worker.ts '<spec json>'
// 1. build the inputs (the first `rows` rows of the scenario: slow contestants run fewer and
//    are scaled up, which the result says); 2. warm up on a tiny problem; 3. the first
//    full-size call, with its peak memory growth (bench/measure.ts: VmHWM reset just before);
//    4. `runs` more calls, timed, with a GC between them. Prints `@@RESULT {json}`.
// Contestants 'paired-gemm-limit' and 'paired-stream-limit' time cutloss cpu and a limit in
// turns instead (`@@PAIRED {json}`).

import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { SCENARIOS, scenarioInputs, type ScenarioName } from './data.js';
import { measurePeak, measurePeakAsync, median, settle, timeRuns, type PeakGrowth } from '../measure.js';

export type Contestant = 'cutloss-cpu' | 'cutloss-js' | 'gemm-limit' | 'tfjs-cpu' | 'tfjs-wasm' | 'onnxruntime' | 'paired-gemm-limit' | 'paired-stream-limit';

export interface CpuWorkerSpec {
  scenario: ScenarioName;
  contestant: Contestant;
  /** Rows of the scenario actually run (fewer than N: times are scaled by N / rows). */
  rows: number;
  runs: number;
  threads: number;
  /** cutloss-cpu, S2: linearCrossEntropy's workspaceBytes. */
  workspaceBytes?: number;
  /** paired-stream-limit: the built bench/cpu/stream.cc. */
  streamExe?: string;
}

export interface CpuWorkerResult {
  spec: CpuWorkerSpec;
  label: string;
  /** N / rows: the factor applied to every time below. */
  scale: number;
  firstMs: number;
  timesMs: number[];
  medianMs: number;
  memory: PeakGrowth;
  /** Bytes of the results the call hands back (gradients, outputs). */
  returnedBytes: number;
  loss: number | null;
  note: string;
}

interface Prepared {
  label: string;
  note: string;
  returnedBytes: number;
  /** One call: its loss where there is one; a Promise for peers whose calls settle asynchronously. */
  run: () => number | null | Promise<unknown>;
  warm: () => unknown;
}

const require = createRequire(import.meta.url);

async function cutloss(spec: CpuWorkerSpec, backend: 'cpu' | 'js'): Promise<Prepared> {
  const lib = await import('../../lib/index.js');
  lib.setBackend(backend);
  if (backend === 'cpu') lib.setThreads(spec.threads);
  const s = SCENARIOS[spec.scenario];
  const makeOf = (sc: typeof s, rows: number) => {
    const inp = scenarioInputs(sc, rows);
    if (sc.D === 0) {
      const x = lib.tensor(inp.logits!, [rows, sc.V]);
      if (sc.name === 'S3') return () => (lib.softmax(x), null);
      return () => lib.crossEntropy(x, inp.labels).loss as number;
    }
    const E = lib.tensor(inp.E!, [rows, sc.D]);
    const W = lib.tensor(inp.W!, [sc.V, sc.D]);
    const o = spec.workspaceBytes !== undefined ? { workspaceBytes: spec.workspaceBytes } : {};
    return () => lib.linearCrossEntropy(E, W, inp.labels, o).loss as number;
  };
  const make = (rows: number) => makeOf(s, rows);
  // warm up on a small problem of another shape: a full-size result would go to the output
  // pool and hide the first measured call's own allocations
  const tiny = makeOf({ ...s, N: 4, V: 600 }, 4);
  const info = lib.backends().find((b) => b.name === backend)!;
  const ws = spec.workspaceBytes !== undefined ? `, workspace ${spec.workspaceBytes / 2 ** 20} MiB` : '';
  return {
    label: `cutloss ${backend}${ws}`,
    note: backend === 'cpu' ? `${info.details.threads} threads, ${info.details.simd}, ${info.details.gemm} ${info.details.gemmKernel}` : 'float64 inside, 1 thread',
    returnedBytes: returned(spec),
    run: make(spec.rows),
    warm: () => tiny(),
  };
}

/** The results each contestant hands back: the gradients (S1, S2) or the probabilities (S3). */
function returned(spec: CpuWorkerSpec): number {
  const s = SCENARIOS[spec.scenario];
  return (s.D === 0 ? spec.rows * s.V : (spec.rows + s.V) * s.D) * 4;
}

/** E·Wᵀ, G·W and Gᵀ·E at full size with the BLAS cutloss links (OpenBLAS's own threading); G = the logits. */
async function gemmLimit(spec: CpuWorkerSpec): Promise<Prepared> {
  const { native } = await import('../../lib/native.js');
  const { cpuAddon } = await import('../../lib/cpuBackend.js');
  const lib = await import('../../lib/index.js');
  lib.setThreads(spec.threads);
  const a = cpuAddon(native().addon);
  if (a === null) throw new Error('the addon has no CPU backend');
  const s = SCENARIOS[spec.scenario];
  const inp = scenarioInputs(s, spec.rows);
  const [N, D, V] = [spec.rows, s.D, s.V];
  const three = (E: Float32Array, W: Float32Array, n: number) => {
    const L = a.cpuSgemm(false, true, n, V, D, E, W);
    a.cpuSgemm(false, false, n, D, V, L, W);
    a.cpuSgemm(true, false, V, D, n, L, E);
    return null;
  };
  const info = a.cpuInfo();
  return {
    label: 'GEMM limit (E·Wᵀ, G·W, Gᵀ·E)',
    note: `${info.gemm.library} ${info.gemm.kernel}, ${info.threads} threads, full size, outputs allocated per call`,
    returnedBytes: (N * V + (N + V) * D) * 4,
    run: () => three(inp.E!, inp.W!, N),
    warm: () => {  // a small problem: full-size results would go to the output pool
      const L = a.cpuSgemm(false, true, 4, 600, D, inp.E!.subarray(0, 4 * D), inp.W!.subarray(0, 600 * D));
      a.cpuSgemm(true, false, 600, D, 4, L, inp.E!.subarray(0, 4 * D));
    },
  };
}

async function tfjs(spec: CpuWorkerSpec, backend: 'cpu' | 'wasm'): Promise<Prepared> {
  const tf = await import('@tensorflow/tfjs');
  if (backend === 'wasm') await importOptional('@tensorflow/tfjs-backend-wasm');
  await tf.setBackend(backend);
  await tf.ready();
  const s = SCENARIOS[spec.scenario];
  type T = import('@tensorflow/tfjs').Tensor;
  const make = (rows: number) => {
    const inp = scenarioInputs(s, rows);
    const onehot = tf.oneHot(tf.tensor1d(inp.labels, 'int32'), s.V);
    if (s.D === 0) {
      const x = tf.tensor2d(inp.logits!, [rows, s.V]);
      if (s.name === 'S3') {
        return () => {
          const y = tf.softmax(x);
          y.dataSync();
          y.dispose();
          return null;
        };
      }
      const vg = tf.valueAndGrad((l: T) => tf.losses.softmaxCrossEntropy(onehot, l) as import('@tensorflow/tfjs').Scalar);
      return () => {
        const { value, grad } = tf.tidy(() => vg(x));
        const loss = value.dataSync()[0]!;
        grad.dataSync();
        value.dispose();
        grad.dispose();
        return loss;
      };
    }
    const e = tf.tensor2d(inp.E!, [rows, s.D]);
    const w = tf.tensor2d(inp.W!, [s.V, s.D]);
    const vg = tf.valueAndGrads((a: T, b: T) =>
      tf.losses.softmaxCrossEntropy(onehot, tf.matMul(a, b, false, true)) as import('@tensorflow/tfjs').Scalar);
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
    note: `@tensorflow/tfjs ${tf.version.tfjs}${backend === 'wasm' ? ' (wasm: one thread in Node)' : ''}`,
    returnedBytes: returned(spec),
    run: make(spec.rows),
    warm: () => tiny(),
  };
}

/** A peer that may not be installed: imported by a name the type checker does not resolve. */
async function importOptional<T = unknown>(name: string): Promise<T> {
  return (await import(name)) as T;
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

/** onnxruntime-node runs inference graphs: softmax (S3), and only the logits GEMM of S2. */
async function onnx(spec: CpuWorkerSpec): Promise<Prepared> {
  const ort = await importOptional<Ort>('onnxruntime-node');
  const { softmaxModel, logitsModel } = await import('./onnx.js');
  const s = SCENARIOS[spec.scenario];
  const session = await ort.InferenceSession.create(s.name === 'S3' ? softmaxModel() : logitsModel(), {
    intraOpNumThreads: spec.threads, interOpNumThreads: 1,
  });
  const inp = scenarioInputs(s, spec.rows);
  const feeds: Record<string, object> = s.name === 'S3'
    ? { X: new ort.Tensor('float32', inp.logits!, [spec.rows, s.V]) }
    : { E: new ort.Tensor('float32', inp.E!, [spec.rows, s.D]), W: new ort.Tensor('float32', inp.W!, [s.V, s.D]) };
  const version = (require('onnxruntime-node/package.json') as { version: string }).version;
  return {
    label: s.name === 'S3' ? 'onnxruntime-node' : 'onnxruntime-node, logits GEMM only',
    note: `onnxruntime-node ${version}, ${spec.threads} intra-op threads, inference only` +
      (s.name === 'S3' ? '' : ': E·Wᵀ alone, no loss or gradient'),
    returnedBytes: s.name === 'S3' ? returned(spec) : spec.rows * s.V * 4,
    run: () => session.run(feeds),
    // the session's first runs plan and allocate
    warm: async () => {
      await session.run(feeds);
      await session.run(feeds);
    },
  };
}

async function prepare(spec: CpuWorkerSpec): Promise<Prepared> {
  switch (spec.contestant) {
    case 'cutloss-cpu': return cutloss(spec, 'cpu');
    case 'cutloss-js': return cutloss(spec, 'js');
    case 'gemm-limit': return gemmLimit(spec);
    case 'tfjs-cpu': return tfjs(spec, 'cpu');
    case 'tfjs-wasm': return tfjs(spec, 'wasm');
    case 'onnxruntime': return onnx(spec);
    case 'paired-gemm-limit':
    case 'paired-stream-limit':
      throw new Error('a paired run prepares its two contestants itself');
  }
}

/** The result of a paired run: two contestants timed alternately in one process. */
export interface PairedResult {
  labels: [string, string];
  mediansMs: [number, number];
  /** The median over the pairs of time(first) ÷ time(second). */
  ratio: number;
  pairs: number;
}

/**
 * cutloss cpu and a limit timed in turns (A B, B A, A B, …) in one process: the ratio of each
 * pair is taken over the same second or so, so a machine whose speed or memory bandwidth
 * drifts between two separate processes (a shared host) does not move it. The limit is the
 * GEMM limit ('paired-gemm-limit'), or a pass of bench/cpu/stream.cc ('paired-stream-limit'),
 * kept running beside this process with its memory set up once (a process allocating and
 * freeing a gigabyte between our calls slows them: the kernel reclaims and compacts).
 */
async function paired(spec: CpuWorkerSpec): Promise<void> {
  const a = await prepare({ ...spec, contestant: 'cutloss-cpu' });
  await a.warm();
  await a.run();  // the first full-size call: outputs enter the pool
  let limitLabel: string;
  let timeLimit: () => Promise<number>;
  let stopStream = () => {};
  if (spec.contestant === 'paired-gemm-limit') {
    const b = await prepare({ ...spec, contestant: 'gemm-limit' });
    await b.warm();
    await b.run();
    limitLabel = b.label;
    timeLimit = async () => {
      await settle();
      const t0 = performance.now();
      await b.run();
      return performance.now() - t0;
    };
  } else {
    const s = SCENARIOS[spec.scenario];
    limitLabel = 'bandwidth limit';
    const stream = spawn(spec.streamExe!, [String(s.N), String(s.V), 'serve'], {
      stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, OMP_NUM_THREADS: String(spec.threads) },
    });
    stopStream = () => stream.stdin.end();
    const lines = createInterface({ input: stream.stdout })[Symbol.asyncIterator]();
    const nextLine = async () => {
      const l = await lines.next();
      if (l.done === true) throw new Error('the stream limit exited early');
      return l.value;
    };
    if ((await nextLine()) !== 'ready') throw new Error('the stream limit did not start');
    timeLimit = async () => {
      await settle();
      stream.stdin.write('\n');
      return Number(await nextLine());
    };
  }
  const timeCutloss = async () => {
    await settle();
    const t0 = performance.now();
    await a.run();
    return performance.now() - t0;
  };
  await timeLimit();  // one pair untimed: the limit's own set-up has just disturbed memory
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
    if (process.env.CUTLOSS_BENCH_DEBUG) process.stderr.write(`pair ${i}: ${t[0].toFixed(1)} ${t[1].toFixed(1)}\n`);
  }
  const result: PairedResult = {
    labels: [a.label, limitLabel], mediansMs: [median(times[0]), median(times[1])], ratio: median(ratios), pairs: spec.runs,
  };
  stopStream();
  process.stdout.write(`@@PAIRED ${JSON.stringify(result)}\n`);
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as CpuWorkerSpec;
  if (spec.contestant === 'paired-gemm-limit' || spec.contestant === 'paired-stream-limit') return paired(spec);
  const s = SCENARIOS[spec.scenario];
  const p = await prepare(spec);
  await p.warm();
  await settle();
  const asyncPeer = spec.contestant === 'onnxruntime';
  const first = asyncPeer ? await measurePeakAsync(async () => (await p.run(), null)) : await measurePeak(() => p.run() as number | null);
  let times: number[];
  if (asyncPeer) {
    times = [];
    for (let i = 0; i < spec.runs; i++) {
      await settle();
      const t0 = performance.now();
      await p.run();
      times.push(performance.now() - t0);
    }
  } else {
    times = await timeRuns(spec.runs, () => p.run());
  }
  const scale = s.N / spec.rows;
  const result: CpuWorkerResult = {
    spec,
    label: p.label,
    scale,
    firstMs: first.peak.ms * scale,
    timesMs: times.map((t) => t * scale),
    medianMs: (times.length > 0 ? median(times) : first.peak.ms) * scale,
    memory: first.peak,
    returnedBytes: p.returnedBytes,
    loss: typeof first.value === 'number' ? first.value : null,
    note: p.note + (scale !== 1 ? `; ran ${spec.rows} of ${s.N} rows, times scaled by ${scale}` : ''),
  };
  process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`worker failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
