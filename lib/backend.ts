// Backend selection: cuda ▸ cpu ▸ js, overridable with setBackend() or CUTLOSS_BACKEND.
// Every candidate is probed once and its failure reason kept, so backends() can tell the
// user exactly why a faster path is not in use.

import type { DeviceBackendName } from './device.js';
import { CutlossError } from './errors.js';
import { probeCpu } from './cpuBackend.js';
import type { ResolvedLossOptions } from './options.js';
import { jsBackend } from './js/index.js';
import { native } from './native.js';
import { FALLBACK_OPS, NATIVE_OPS, NativeBackend } from './nativeBackend.js';
import { scaleOutDetails } from './scaleOutNative.js';
import type { Matrix } from './tensor.js';

/**
 * The backends: 'cuda' (a GPU), 'cuda-emu' (the CUDA kernels on the CPU under the SIMT
 * emulator, chosen only by name), 'cpu' (native, multithreaded), 'js' (pure TypeScript reference).
 *
 * @example
 * const name: BackendName = getBackend();
 */
export type BackendName = 'cuda' | 'cuda-emu' | 'cpu' | 'js';

export interface SoftmaxSettings {
  invTemperature: number;
  mask: Uint8Array | null;
}

export interface CrossEntropyOutput {
  loss: number | Float32Array;
  lse: Float32Array;
  dLogits: Float32Array | null;
}

export interface LinearCrossEntropyOutput {
  loss: number | Float32Array;
  lse: Float32Array;
  dEmbeddings: Float32Array | null;
  dClassifier: Float32Array | null;
  dBias: Float32Array | null;
  /** Native backends: device workspace of the fused kernels, in bytes. */
  workspaceBytes?: number;
}

/** What a backend implements. Inputs are validated; outputs are f32 in row-major order. */
export interface Backend {
  readonly name: BackendName;
  logSumExp(x: Matrix, o: SoftmaxSettings): Float32Array;
  softmax(x: Matrix, o: SoftmaxSettings, log: boolean): Float32Array;
  softmaxBackward(x: Matrix, dy: Float32Array, o: SoftmaxSettings, log: boolean): Float32Array;
  stablemax(x: Matrix, log: boolean): Float32Array;
  stablemaxBackward(x: Matrix, dy: Float32Array, log: boolean): Float32Array;
  sparsemax(x: Matrix): Float32Array;
  sparsemaxBackward(x: Matrix, dy: Float32Array): Float32Array;
  entmax15(x: Matrix): Float32Array;
  entmax15Backward(x: Matrix, dy: Float32Array): Float32Array;
  gumbelSoftmax(x: Matrix, tau: number, hard: boolean, seed: number): Float32Array;
  gumbelSoftmaxBackward(x: Matrix, dy: Float32Array, tau: number, seed: number): Float32Array;
  crossEntropy(logits: Matrix, labels: Int32Array, o: ResolvedLossOptions): CrossEntropyOutput;
  linearCrossEntropy(E: Matrix, W: Matrix, labels: Int32Array, o: ResolvedLossOptions): LinearCrossEntropyOutput;
  /** Twins of every op that run off the JS thread; without them, the facade defers the sync op. */
  readonly async?: AsyncBackendOps;
}

export type BackendOpName = Exclude<keyof Backend, 'name' | 'async'>;

export type AsyncBackendOps = {
  [K in BackendOpName]: (...args: Parameters<Backend[K]>) => Promise<ReturnType<Backend[K]>>;
};

/**
 * One entry of backends(): whether the backend can run here and, when not, exactly why.
 *
 * @example
 * for (const b of backends()) console.log(b.name, b.available, b.reason);
 */
export interface BackendInfo {
  name: BackendName;
  available: boolean;
  /** Why it is unavailable, or what it runs on. */
  reason: string;
  /** Build and runtime facts (threads, BLAS, CUDA versions, device, …). */
  details: Record<string, string | number | boolean>;
}

type Probe = { backend: Backend | null; info: BackendInfo };

/** The first available backend after the native ones, for ops they have no kernel for. */
function nextAfterNative(): Backend {
  for (const n of ['cpu', 'js'] as const) {
    const b = probeAll().get(n)!.backend;
    if (b !== null) return b;
  }
  return jsBackend;
}

function probeNative(name: DeviceBackendName): Probe {
  const { addon, error } = native();
  if (addon === null) {
    return { backend: null, info: { name, available: false, reason: `the native addon did not load: ${error}`, details: {} } };
  }
  const build = addon.build;
  const details: BackendInfo['details'] = {
    build: build.tool,
    nativeOps: NATIVE_OPS.join(', '),
    fallbackOps: FALLBACK_OPS.join(', '),
  };
  const backend = new NativeBackend(name, addon, nextAfterNative);
  if (name === 'cuda-emu') {
    return {
      backend,
      info: {
        name, available: true, details,
        reason: 'the CUDA kernels run on the CPU under the SIMT emulator: slow, for developing and testing kernels; ' +
          'chosen only by name',
      },
    };
  }
  if (!build.cuda) {
    return { backend: null, info: { name, available: false, reason: `built without CUDA: ${build.withoutCudaReason}`, details } };
  }
  details.cudaVersion = build.cudaVersion ?? '';
  details.architectures = build.cudaArchitectures ?? '';
  const s = addon.cudaStatus();
  details.runtimeVersion = s.runtimeVersion;
  details.driverVersion = s.driverVersion;
  if (s.code !== 0) {
    return { backend: null, info: { name, available: false, reason: `${s.name} (${s.code}): ${s.message}`, details } };
  }
  if (s.devices === 0) return { backend: null, info: { name, available: false, reason: 'no CUDA device', details } };
  details.devices = s.devices;
  details.device = s.deviceName ?? '';
  details.computeCapability = s.computeCapability ?? '';
  details.totalMemory = s.totalMemory ?? 0;
  return {
    backend,
    info: { name, available: true, details, reason: `${s.deviceName} (compute capability ${s.computeCapability})` },
  };
}

function probe(name: BackendName): Probe {
  if (name === 'cuda' || name === 'cuda-emu') return probeNative(name);
  if (name === 'js') {
    return {
      backend: jsBackend,
      info: {
        name,
        available: true,
        reason: 'pure TypeScript reference backend, runs anywhere',
        details: { threads: 1, accumulation: 'float64' },
      },
    };
  }
  const { addon, file, error } = native();
  return probeCpu(addon, error, file);
}

// Automatic choice, fastest first. cuda-emu is never chosen automatically: it is slow.
const ORDER: BackendName[] = ['cuda', 'cpu', 'js'];
const ALL: BackendName[] = ['cuda', 'cuda-emu', 'cpu', 'js'];

let probed: Map<BackendName, Probe> | null = null;
let selected: Backend | null = null;

function probeAll(): Map<BackendName, Probe> {
  if (probed === null) {
    probed = new Map();
    for (const n of ALL) probed.set(n, probe(n)); // in order: the native ones fall back to cpu, js
  }
  return probed;
}

function isBackendName(v: unknown): v is BackendName {
  return typeof v === 'string' && (ALL as string[]).includes(v);
}

function pick(name: BackendName | 'auto'): Backend {
  const all = probeAll();
  if (name === 'auto') {
    for (const n of ORDER) {
      const p = all.get(n)!;
      if (p.backend !== null) return p.backend;
    }
    throw new CutlossError('E_BACKEND', 'no backend is available'); // js always is
  }
  const p = all.get(name)!;
  if (p.backend === null) throw new CutlossError('E_BACKEND', `backend '${name}' is unavailable: ${p.info.reason}`);
  return p.backend;
}

/**
 * Every backend, whether it can run here, and why not (each probed once).
 *
 * @returns one {@link BackendInfo} per backend: cuda, cuda-emu, cpu, js.
 * @example
 * const usable = backends().filter((b) => b.available).map((b) => b.name);
 */
export function backends(): BackendInfo[] {
  const scaleOut = scaleOutDetails(); // MPI for the CPU processes, NCCL for the GPUs
  return ALL.map((n) => {
    const info = probeAll().get(n)!.info;
    const extra: BackendInfo['details'] = n === 'cpu' ? { mpi: scaleOut.mpi } : n === 'cuda' ? { nccl: scaleOut.nccl } : {};
    if (info.available && (n === 'cuda' || n === 'cuda-emu')) {
      const addon = native().addon!;
      const fault = n === 'cuda' ? addon.cudaStatus().fault : undefined;
      if (fault !== undefined) { // a sticky error after the probe: every later call is refused (E_BACKEND)
        const reason = `${fault.name} (${fault.code}): ${fault.message}; the CUDA context is broken until the process restarts`;
        return { ...info, available: false, reason, details: { ...info.details, ...extra } };
      }
      const c = addon.deviceCacheStats(n === 'cuda' ? 1 : 0); // the caching allocator
      Object.assign(extra, { cachedBytes: c.cachedBytes, cacheHits: c.hits, cacheMisses: c.misses, parkedExportBytes: c.parkedBytes });
    }
    return { ...info, details: { ...info.details, ...extra } };
  });
}

/** The native backend that owns device tensors of this name; E_BACKEND with the reason when absent. */
export function deviceBackend(name: DeviceBackendName): NativeBackend {
  const p = probeAll().get(name)!;
  if (p.backend === null) throw new CutlossError('E_BACKEND', `backend '${name}' is unavailable: ${p.info.reason}`);
  return p.backend as NativeBackend;
}

/** Where upload() puts tensors by default: the selected backend when it is a device, else cuda. */
export function defaultDeviceBackend(): NativeBackend {
  const current = currentBackend();
  if (current instanceof NativeBackend) return current;
  const cuda = probeAll().get('cuda')!;
  if (cuda.backend !== null) return cuda.backend as NativeBackend;
  throw new CutlossError(
    'E_BACKEND',
    `upload: no device backend: cuda is unavailable (${cuda.info.reason}); pass { backend: 'cuda-emu' } or ` +
      `setBackend('cuda-emu') to use the emulator`,
  );
}

/** The backend the next call uses (CUTLOSS_BACKEND is read on first use). */
export function currentBackend(): Backend {
  if (selected === null) {
    const env = typeof process !== 'undefined' ? process.env.CUTLOSS_BACKEND : undefined;
    if (env !== undefined && env !== '' && env !== 'auto') {
      if (!isBackendName(env)) {
        throw new CutlossError('E_BACKEND', `CUTLOSS_BACKEND must be one of ${ALL.join(', ')} or auto, got '${env}'`);
      }
      selected = pick(env);
    } else {
      selected = pick('auto');
    }
  }
  return selected;
}

/**
 * The backend host-tensor ops run on now: the fastest available (cuda ▸ cpu ▸ js), or what
 * setBackend or CUTLOSS_BACKEND chose.
 *
 * @example
 * if (getBackend() === 'js') console.warn('the native addon is not in use');
 */
export function getBackend(): BackendName {
  return currentBackend().name;
}

/**
 * Chooses the backend for later host-tensor calls by name, or 'auto' for the fastest
 * available; E_BACKEND (with the reason) when it cannot run here.
 *
 * @example
 * setBackend('cuda-emu'); // run the CUDA kernels under the emulator
 */
export function setBackend(name: BackendName | 'auto'): void {
  if (name !== 'auto' && !isBackendName(name)) {
    throw new CutlossError('E_BACKEND', `setBackend: expected one of ${ALL.join(', ')} or 'auto', got ${JSON.stringify(name)}`);
  }
  selected = pick(name);
}
