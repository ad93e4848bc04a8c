// Backend selection: cuda ▸ cpu ▸ js, overridable with setBackend() or CUTLOSS_BACKEND.
// Every candidate is probed once and its failure reason kept, so backends() can tell the
// user exactly why a faster path is not in use.

import { CutlossError } from './errors.js';
import type { ResolvedLossOptions } from './options.js';
import { jsBackend } from './js/index.js';
import type { Matrix } from './tensor.js';

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
}

export interface BackendInfo {
  name: BackendName;
  available: boolean;
  /** Why it is unavailable, or what it runs on. */
  reason: string;
  details: Record<string, string | number | boolean>;
}

const NOT_BUILT = 'not built: this version of cutloss ships only the TypeScript reference backend';

function probe(name: BackendName): { backend: Backend | null; info: BackendInfo } {
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
  return { backend: null, info: { name, available: false, reason: NOT_BUILT, details: {} } };
}

const ORDER: BackendName[] = ['cuda', 'cpu', 'js']; // automatic choice, fastest first
const ALL: BackendName[] = ['cuda', 'cuda-emu', 'cpu', 'js'];

let probed: Map<BackendName, ReturnType<typeof probe>> | null = null;
let selected: Backend | null = null;

function probeAll(): Map<BackendName, ReturnType<typeof probe>> {
  if (probed === null) probed = new Map(ALL.map((n) => [n, probe(n)]));
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

/** Every backend, whether it can run here, and why not. */
export function backends(): BackendInfo[] {
  return ALL.map((n) => ({ ...probeAll().get(n)!.info }));
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

export function getBackend(): BackendName {
  return currentBackend().name;
}

/** Choose a backend by name, or 'auto' for the fastest available. */
export function setBackend(name: BackendName | 'auto'): void {
  if (name !== 'auto' && !isBackendName(name)) {
    throw new CutlossError('E_BACKEND', `setBackend: expected one of ${ALL.join(', ')} or 'auto', got ${JSON.stringify(name)}`);
  }
  selected = pick(name);
}
