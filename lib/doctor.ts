// `cutloss doctor`: what this machine can run, and whether it computes correctly. It lists
// the backends with the reason each is or is not available, the GPU as nvidia-smi sees it,
// then runs every kernel on a native backend against the js reference (the executable
// specification) on random shapes: odd and large ones on a real device, small ones under the
// emulator, which is thousands of times slower. Each check reports its largest error.

import { execFileSync } from 'node:child_process';
import * as api from './index.js';
import { mulberry32 } from './random.js';
import { packageInfo } from './native-loader.cjs';

export type CheckedBackend = Exclude<api.BackendName, 'js'>;

export interface DoctorOptions {
  /** The backend to check; default cuda when it is available, else cuda-emu. */
  backend?: CheckedBackend;
  /** Fewer and smaller shapes. */
  quick?: boolean;
  /** Seeds the random shapes and values; default random (the report says which). */
  seed?: number;
  /** Called once the machine is probed, before the first check (the report has no checks yet). */
  onStart?: (report: DoctorReport) => void;
  /** Called after each check, for progress output. */
  onCheck?: (check: CheckResult) => void;
}

export interface GpuInfo {
  /** Whether nvidia-smi ran. */
  found: boolean;
  gpus: { index: string; name: string; driverVersion: string; memory: string; computeCapability: string }[];
  /** What nvidia-smi said, or why it could not be asked. */
  message: string;
}

export interface CheckResult {
  /** The API function, e.g. 'softmaxBackward'. */
  op: string;
  /** Its options in words. */
  variant: string;
  shape: number[];
  dtype: api.Dtype;
  passed: boolean;
  maxAbsError: number;
  /**
   * Largest |got − want| / (s + atol/rtol), s the largest finite |want| of that output: the
   * error relative to the output's size, so the check passes when it is at most rtol.
   */
  maxRelError: number;
  rtol: number;
  atol: number;
  /** Milliseconds the checked backend took (uploads and downloads included). */
  ms: number;
  /** What it threw, when it threw. */
  error?: string;
}

export interface DoctorReport {
  version: string;
  node: string;
  platform: string;
  backends: api.BackendInfo[];
  gpu: GpuInfo;
  target: { backend: CheckedBackend; available: boolean; reason: string; emulated: boolean; note: string };
  seed: number;
  quick: boolean;
  checks: CheckResult[];
  /** Checks not run, and why. */
  skipped: string[];
  failed: number;
  passed: boolean;
}

// ---------------------------------------------------------------- the GPU

const SMI_FIELDS = ['index', 'name', 'driver_version', 'memory.total', 'compute_cap'];

/** The GPUs as `nvidia-smi --query-gpu` lists them; says so when it is absent or fails. */
export function queryGpus(): GpuInfo {
  const ask = (fields: string[]) => execFileSync('nvidia-smi', [`--query-gpu=${fields.join(',')}`, '--format=csv,noheader'], {
    encoding: 'utf8', timeout: 20_000, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out: string;
  try {
    out = ask(SMI_FIELDS);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (err.code === 'ENOENT') return { found: false, gpus: [], message: 'nvidia-smi not found' };
    try {
      out = ask(SMI_FIELDS.slice(0, -1)); // drivers before 510 have no compute_cap field
    } catch {
      const said = `${err.stdout ?? ''}${err.stderr ?? ''}`.trim().split('\n')[0] || err.message;
      return { found: true, gpus: [], message: `nvidia-smi failed: ${said}` };
    }
  }
  const gpus = out.trim().split('\n').filter((l) => l.trim() !== '').map((line) => {
    const [index = '', name = '', driverVersion = '', memory = '', computeCapability = 'unknown'] = line.split(',').map((s) => s.trim());
    return { index, name, driverVersion, memory, computeCapability };
  });
  return { found: true, gpus, message: gpus.length === 0 ? 'nvidia-smi lists no GPU' : `${gpus.length} GPU(s)` };
}

// ---------------------------------------------------------------- comparing

export interface Comparison {
  passed: boolean;
  maxAbsError: number;
  maxRelError: number;
}

/**
 * |got − want| ≤ atol + rtol·s element-wise, s the largest finite |want| (an output is judged
 * against its own size, as gradients must be); NaN and ±inf must sit where they are in want.
 */
export function compare(got: ArrayLike<number>, want: ArrayLike<number>, rtol: number, atol: number): Comparison {
  if (got.length !== want.length) return { passed: false, maxAbsError: Infinity, maxRelError: Infinity };
  let scale = 0;
  for (let i = 0; i < want.length; i++) if (Number.isFinite(want[i]!)) scale = Math.max(scale, Math.abs(want[i]!));
  let passed = true;
  let maxAbsError = 0;
  let maxRelError = 0;
  for (let i = 0; i < want.length; i++) {
    const [g, w] = [got[i]!, want[i]!];
    if (!Number.isFinite(w)) {
      if (!Object.is(g, w) && !(Number.isNaN(g) && Number.isNaN(w))) {
        passed = false;
        maxAbsError = maxRelError = Infinity;
      }
      continue;
    }
    const diff = Math.abs(g - w);
    if (!(diff <= atol + rtol * scale)) passed = false;
    maxAbsError = Math.max(maxAbsError, Number.isNaN(diff) ? Infinity : diff);
    const rel = diff === 0 ? 0 : diff / (scale + atol / rtol);
    maxRelError = Math.max(maxRelError, Number.isNaN(rel) ? Infinity : rel);
  }
  return { passed, maxAbsError, maxRelError };
}

// ---------------------------------------------------------------- inputs


function randomTensor(next: () => number, rows: number, cols: number, range: number, dtype: api.Dtype): api.Tensor {
  const values = Float32Array.from({ length: rows * cols }, () => (next() * 2 - 1) * range);
  const data = dtype === 'f32' ? values : Uint16Array.from(values, (v) => api.f32ToBf16(v));
  return api.tensor(data, [rows, cols], dtype);
}

function valuesOf(out: api.Tensor | Float32Array | number): ArrayLike<number> {
  if (typeof out === 'number') return [out];
  if (out instanceof Float32Array) return out;
  return out.dtype === 'bf16' ? Array.from(out.data as Uint16Array, api.bf16ToF32) : out.data;
}

type Shape = [number, number];

interface Plan {
  rowShapes: Shape[];
  lossShapes: Shape[];
  /** [N, D, V] */
  linearShapes: [number, number, number][];
}

/** Odd sizes (not multiples of any block or tile), V = 1, rows longer than a block, and random ones. */
function plan(emulated: boolean, quick: boolean, next: () => number): Plan {
  const draw = (maxRows: number, maxCols: number): Shape => [1 + Math.floor(next() * maxRows), 1 + Math.floor(next() * maxCols)];
  if (emulated) {
    return quick
      ? { rowShapes: [[1, 1], [5, 37], [2, 1100], draw(4, 700)], lossShapes: [[9, 37], [3, 1100]], linearShapes: [[9, 17, 37]] }
      : {
        rowShapes: [[1, 1], [3, 2], [7, 37], [2, 1100], [5, 4099], draw(16, 3000), draw(4, 9000)],
        lossShapes: [[5, 1], [9, 37], [3, 1100], [17, 4099], draw(32, 3000)],
        linearShapes: [[9, 17, 37], [5, 33, 600], [33, 65, 1000]],
      };
  }
  return quick
    ? { rowShapes: [[1, 1], [7, 37], [64, 32003], [2, 262147]], lossShapes: [[9, 37], [64, 32003]], linearShapes: [[64, 128, 5003]] }
    : {
      rowShapes: [[1, 1], [7, 37], [33, 1100], [256, 32000], [3, 262147], draw(300, 70000), draw(64, 200000)],
      lossShapes: [[5, 1], [9, 37], [256, 32003], [16, 131072], draw(128, 100000)],
      linearShapes: [[9, 17, 37], [256, 512, 32003], [1000, 257, 50257]],
    };
}

// ---------------------------------------------------------------- the checks

interface Tolerance {
  rtol: number;
  atol: number;
}

// DESIGN.md "Numerics": f32 ~1e-5 relative, bf16 ~1e-2; a little room for long GPU reductions.
const F32: Tolerance = { rtol: 2e-5, atol: 1e-7 };
const F32_LOG: Tolerance = { rtol: 2e-5, atol: 1e-5 }; // log-space values of one-column rows: 0 up to the rounding of lse
const BF16_FORWARD: Tolerance = { rtol: 2 ** -7, atol: 1e-5 }; // one bf16 step
const BF16_BACKWARD: Tolerance = { rtol: 1e-2, atol: 1e-6 };
const F32_LINEAR: Tolerance = { rtol: 5e-5, atol: 1e-7 }; // tile GEMMs sum D products in f32

const CE_OPTIONS: [string, (V: number, N: number) => api.CrossEntropyOptions][] = [
  ['mean', () => ({})],
  ['sum, labelSmoothing 0.1, zLoss 1e-3', () => ({ reduction: 'sum', labelSmoothing: 0.1, zLoss: 1e-3 })],
  ['classWeights', (V) => ({ classWeights: Float32Array.from({ length: V }, (_, j) => 0.25 + ((j * 7) % 11) / 8) })],
  ['softcap 5, temperature 0.7', () => ({ softcap: 5, temperature: 0.7 })],
  ['focalGamma 2, polyEpsilon 0.5', () => ({ focalGamma: 2, polyEpsilon: 0.5 })],
  ['squentropy', () => ({ squentropy: true })],
  ['stablemax, labelSmoothing 0.05', () => ({ normalizer: 'stablemax', labelSmoothing: 0.05 })],
  ['sparsemax', () => ({ normalizer: 'sparsemax' })],
  ['gumbel, zLoss 1e-3', () => ({ normalizer: 'gumbel', zLoss: 1e-3 })],
  ['generalizedCE 0.5, classWeights', (V) => ({
    generalizedCE: 0.5, classWeights: Float32Array.from({ length: V }, (_, j) => 0.5 + (j % 5) / 4),
  })],
  ['none, per-row gradScale', (_, N) => ({ reduction: 'none', gradScale: Float32Array.from({ length: N }, (_, i) => (i % 3) - 0.5) })],
];

/** [variant, dtype, options, whether the tiles round operands (bf16, tf32) so gradients get the bf16 tolerance] */
const LINEAR_OPTIONS: [string, api.Dtype, (V: number) => api.LinearCrossEntropyOptions, boolean][] = [
  ['mean', 'f32', () => ({}), false],
  ['bias, labelSmoothing 0.1, zLoss 1e-4, softcap 20', 'f32', (V) => ({
    bias: Float32Array.from({ length: V }, (_, j) => Math.sin(j) / 4), labelSmoothing: 0.1, zLoss: 1e-4, softcap: 20,
  }), false],
  ['deterministic, sum', 'f32', () => ({ deterministic: true, reduction: 'sum' }), false],
  ['tf32', 'f32', () => ({ tf32: true }), true],
  ['filterEps 0', 'bf16', () => ({ filterEps: 0 }), true],
  ['generalizedCE 0.7, stablemax', 'f32', () => ({ generalizedCE: 0.7, normalizer: 'stablemax' }), false],
  ['classSample 0.5 (Partial FC)', 'f32', () => ({ classSample: { fraction: 0.5, seed: 7 } }), false],
  ['cosine s 16, margin 0.1, angularMargin 0.3', 'f32', () => ({ logits: { kind: 'cosine', scale: 16, margin: 0.1, angularMargin: 0.3 } }), false],
  ['harmonic exponent 3', 'f32', () => ({ logits: { kind: 'harmonic', exponent: 3 } }), false],
  ['gumbel', 'bf16', () => ({ normalizer: 'gumbel' }), true],
  // the spherical Z-loss computes no log-sum-exp: no returnLse (see below)
  ['zscore a 1, b 2', 'f32', () => ({ normalizer: 'zscore', zscore: { a: 1, b: 2 } }) as unknown as api.LinearCrossEntropyOptions, false],
];

/** Whether the backend runs `op` itself: not when its details list the op as a fallback or omit it from its native ops. */
function isNative(info: api.BackendInfo | undefined, op: string): boolean {
  const listed = (key: string) => (info?.details[key] === undefined ? null : String(info.details[key]).split(', ').includes(op));
  return listed('fallbackOps') !== true && listed('nativeOps') !== false;
}

/** Runs the checks and returns the report; reports, never throws, when a check fails or throws. */
export function runDoctor(options: DoctorOptions = {}): DoctorReport {
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const quick = options.quick === true;
  const infos = api.backends();
  const cuda = infos.find((b) => b.name === 'cuda');
  let name = options.backend;
  let note: string;
  if (name === undefined) {
    name = cuda?.available === true ? 'cuda' : 'cuda-emu';
    note = name === 'cuda'
      ? 'on the GPU, on odd and large shapes'
      : `no usable GPU (cuda: ${cuda?.reason ?? 'unknown'}): the same checks run under cuda-emu, on small shapes`;
  } else {
    note = name === 'cuda-emu' ? 'under the SIMT emulator, on small shapes' : 'on odd and large shapes';
  }
  const info = infos.find((b) => b.name === name);
  const emulated = name === 'cuda-emu';
  const report: DoctorReport = {
    version: packageInfo().version,
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    backends: infos,
    gpu: queryGpus(),
    target: { backend: name, available: info?.available === true, reason: info?.reason ?? 'unknown backend', emulated, note },
    seed,
    quick,
    checks: [],
    skipped: [],
    failed: 0,
    passed: false,
  };
  options.onStart?.(report);
  if (!report.target.available) return report;

  let previous: api.BackendName | 'auto' = 'auto';
  try {
    previous = api.getBackend();
  } catch {
    // CUTLOSS_BACKEND names an unavailable backend: the checks name theirs; restore 'auto'
  }
  const target = name;
  const next = mulberry32(seed);
  const shapes = plan(emulated, quick, next);
  const add = (c: CheckResult) => {
    report.checks.push(c);
    if (!c.passed) report.failed++;
    options.onCheck?.(c);
  };
  /** Runs `run` on the checked backend and on js; compares every output. */
  const check = (op: string, variant: string, shape: number[], dtype: api.Dtype, tol: Tolerance | Tolerance[],
    run: () => (api.Tensor | Float32Array | number)[]) => {
    const base = { op, variant, shape, dtype, rtol: 0, atol: 0, ms: 0 };
    let got: (api.Tensor | Float32Array | number)[];
    let want: (api.Tensor | Float32Array | number)[];
    try {
      api.setBackend(target);
      const t0 = performance.now();
      got = run();
      base.ms = performance.now() - t0;
      api.setBackend('js');
      want = run();
    } catch (e) {
      add({ ...base, passed: false, maxAbsError: NaN, maxRelError: NaN, error: e instanceof Error ? e.message : String(e) });
      return;
    }
    const tols = Array.isArray(tol) ? tol : got.map(() => tol);
    let passed = true;
    let maxAbsError = 0;
    let maxRelError = 0;
    got.forEach((g, k) => {
      const c = compare(valuesOf(g), valuesOf(want[k]!), tols[k]!.rtol, tols[k]!.atol);
      passed &&= c.passed;
      maxAbsError = Math.max(maxAbsError, c.maxAbsError);
      maxRelError = Math.max(maxRelError, c.maxRelError);
    });
    const rtol = Math.max(...tols.map((t) => t.rtol));
    const atol = Math.max(...tols.map((t) => t.atol));
    add({ ...base, rtol, atol, passed, maxAbsError, maxRelError });
  };

  try {
    for (const [rows, cols] of shapes.rowShapes) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const x = randomTensor(next, rows, cols, 3, dtype);
        const dy = randomTensor(next, rows, cols, 1, dtype);
        const mask = Uint8Array.from({ length: rows * cols }, () => (next() < 0.2 ? 0 : 1));
        const seedG = Math.floor(next() * 2 ** 53);
        const fwd = dtype === 'f32' ? F32 : BF16_FORWARD;
        const log = dtype === 'f32' ? F32_LOG : BF16_FORWARD;
        const bwd = dtype === 'f32' ? F32 : BF16_BACKWARD;
        const s = [rows, cols];
        const c = (op: string, variant: string, tol: Tolerance, run: () => api.Tensor | Float32Array) =>
          check(op, variant, s, dtype, tol, () => [run()]);
        c('logSumExp', 'temperature 0.7, mask', F32, () => api.logSumExp(x, { temperature: 0.7, mask }));
        c('softmax', 'temperature 1.3', fwd, () => api.softmax(x, { temperature: 1.3 }));
        c('softmax', 'mask', fwd, () => api.softmax(x, { mask }));
        c('logSoftmax', 'temperature 0.8', log, () => api.logSoftmax(x, { temperature: 0.8 }));
        c('softmaxBackward', 'temperature 1.3, mask', bwd, () => api.softmaxBackward(x, dy, { temperature: 1.3, mask }));
        c('logSoftmaxBackward', 'plain', bwd, () => api.logSoftmaxBackward(x, dy));
        c('stablemax', 'plain', fwd, () => api.stablemax(x));
        c('logStablemax', 'plain', log, () => api.logStablemax(x));
        c('stablemaxBackward', 'plain', bwd, () => api.stablemaxBackward(x, dy));
        c('logStablemaxBackward', 'plain', bwd, () => api.logStablemaxBackward(x, dy));
        c('sparsemax', 'plain', fwd, () => api.sparsemax(x));
        c('sparsemaxBackward', 'plain', bwd, () => api.sparsemaxBackward(x, dy));
        c('entmax15', 'plain', fwd, () => api.entmax15(x));
        c('entmax15Backward', 'plain', bwd, () => api.entmax15Backward(x, dy));
        c('gumbelSoftmax', 'tau 0.7', fwd, () => api.gumbelSoftmax(x, { tau: 0.7, seed: seedG }));
        c('gumbelSoftmax', 'tau 0.7, hard', fwd, () => api.gumbelSoftmax(x, { tau: 0.7, seed: seedG, hard: true }));
        c('gumbelSoftmaxBackward', 'tau 0.7', bwd, () => api.gumbelSoftmaxBackward(x, dy, { tau: 0.7, seed: seedG }));
      }
    }

    for (const [N, V] of shapes.lossShapes) {
      for (const dtype of ['f32', 'bf16'] as const) {
        const logits = randomTensor(next, N, V, 4, dtype);
        const labels = Int32Array.from({ length: N }, () => Math.floor(next() * V));
        if (N > 1) labels[1] = -100;
        const grad = dtype === 'f32' ? F32 : BF16_BACKWARD;
        for (const [variant, options] of CE_OPTIONS) {
          const o = { ...options(V, N), returnLse: true };
          // loss and lse are f32 whatever the input dtype; dLogits has the input's
          check('crossEntropy', variant, [N, V], dtype, [F32, F32, grad], () => {
            const r = api.crossEntropy(logits, labels, o);
            return [r.loss, r.lse!, r.dLogits!];
          });
        }
      }
    }

    if (isNative(info, 'linearCrossEntropy')) {
      for (const [N, D, V] of shapes.linearShapes) {
        for (const [variant, dtype, options, rounded] of LINEAR_OPTIONS) {
          const E = randomTensor(next, N, D, 1, dtype);
          const W = randomTensor(next, V, D, 2 / Math.sqrt(D), dtype);
          const labels = Int32Array.from({ length: N }, () => Math.floor(next() * V));
          if (N > 1) labels[1] = -100;
          const base = options(V);
          const withLse = (base.normalizer as string | undefined) !== 'zscore';
          const o = { ...base, ...(withLse ? { returnLse: true } : {}) };
          const [loss, grad] = rounded ? [dtype === 'f32' ? BF16_BACKWARD : F32_LINEAR, BF16_BACKWARD] : [F32_LINEAR, F32_LINEAR];
          const withBias = o.bias !== undefined;
          const tols = [loss, ...(withLse ? [loss] : []), grad, grad, ...(withBias ? [grad] : [])];
          check('linearCrossEntropy', variant, [N, D, V], dtype, tols, () => {
            const r = api.linearCrossEntropy(E, W, labels, o);
            return [r.loss, ...(withLse ? [r.lse!] : []), r.dEmbeddings!, r.dClassifier!, ...(withBias ? [r.dBias!] : [])];
          });
        }
      }
      for (const [N, D] of shapes.linearShapes) {
        // SigLIP: N×N pairs of two [N, D] batches
        const x = randomTensor(next, N, D, 1 / Math.sqrt(D), 'f32');
        const y = randomTensor(next, N, D, 1 / Math.sqrt(D), 'f32');
        check('sigmoidPairLoss', 'temperature 10, bias −10', [N, D], 'f32', F32_LINEAR, () => {
          const r = api.sigmoidPairLoss(x, y, { temperature: 10, bias: -10 });
          return [r.loss, r.dX!, r.dY!, r.dTemperature!, r.dBias!];
        });
      }
    } else {
      report.skipped.push(`linearCrossEntropy: no native kernel on ${target} in this build (it runs on the next backend)`);
    }
  } finally {
    api.setBackend(previous);
  }
  report.passed = report.failed === 0 && report.checks.length > 0;
  return report;
}
