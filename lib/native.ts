// The native addon as TypeScript sees it (src/addon.cc, src/ops.cc): loaded once on first
// use, its load error kept for backends(), and its coded errors turned into CutlossErrors.
// Device memory is named by numeric ids; the addon checks every argument it is given.

import { CutlossError, type CutlossErrorCode } from './errors.js';
import { loadAddon } from './native-loader.cjs';
import type { LabelMargin } from './js/math.js';
import { harmonicExponent, labelMarginOf, LOGITS_HARMONIC, type ResolvedLossOptions } from './options.js';

/** Entry points change together with this number (src/addon.cc kInterfaceVersion). */
export const NATIVE_INTERFACE_VERSION = 2;

/** 0: the SIMT emulator (cuda-emu); 1: a real GPU (cuda). */
export type NativeBackendCode = 0 | 1;

/** dtype 0 = f32, 1 = bf16; the buffer `id` holds at least rows·cols elements. */
export interface NativeMatrix {
  id: number;
  dtype: 0 | 1;
  rows: number;
  cols: number;
}

/** Resolved loss options as the kernels take them (cuda/kernels.h LossParams). */
export interface NativeLossParams {
  normalizer: number;
  smoothing: number;
  focalGamma: number;
  polyEpsilon: number;
  zLoss: number;
  squentropy: number;
  /** Absent = 0 (off). */
  generalizedCE?: number;
  softcap: number;
  invTemperature: number;
  ignoreIndex: number;
  /** Margin softmax's label map (cuda/math/margin.cuh); absent = off. */
  labelMargin?: LabelMargin;
  /** Harmonic logits' exponent n (cuda/math/harmonic.cuh); absent = dot logits. */
  harmonicExponent?: number;
}

/** Per-row outputs of the loss forward, and the opaque state its backward needs. */
export interface NativeCrossEntropyForward {
  lse: number;
  weighted: number;
  unweighted: number;
  state: number;
}

/** cuda/kernels.h LinearCeConfig: gemm 0 = auto, 1 = FMA tile, 2 = wmma tile. */
export interface NativeLinearConfig {
  filterEps: number;
  deterministic: boolean;
  tf32: boolean;
  gemm: 0 | 1 | 2;
  /** Blocks that share a row tile's vocabulary; absent = chosen from the shape. */
  vocabSplits?: number;
}

/** Ids of the fused linear + cross-entropy outputs; the gradients when scales were given. */
export interface NativeLinearCrossEntropy {
  lse: number;
  weighted: number;
  unweighted: number;
  dEmbeddings?: number;
  dClassifier?: number;
  dBias?: number;
}

export interface CudaStatus {
  built: boolean;
  /** cudaGetDeviceCount's cudaError_t (0 = success; -1 when built without CUDA). */
  code: number;
  name: string;
  message: string;
  devices: number;
  runtimeVersion: number;
  driverVersion: number;
  deviceName?: string;
  computeCapability?: string;
  totalMemory?: number;
  /** A sticky CUDA error that broke the context after the probe: the backend is unusable from then on. */
  fault?: { code: number; name: string; message: string };
}

/** The caching device allocator of one backend (src/block_cache.h), and exported memory kept for importers. */
export interface DeviceCacheStats {
  cachedBytes: number;
  cachedBlocks: number;
  hits: number;
  misses: number;
  /** Blocks obtained from the system (cudaMalloc, or mmap on cuda-emu) and given back. */
  allocations: number;
  frees: number;
  oomRetries: number;
  /** Exported memory its owner freed while another process still has it open. */
  parkedBytes: number;
  parkedBlocks: number;
}

export interface NativeBuildInfo {
  tool: string;
  cuda: boolean;
  cudaVersion?: string;
  cudaArchitectures?: string;
  withoutCudaReason?: string;
}

/** Kernel entry points; each returns the id of a new buffer (or ids, for the loss forward). */
export interface NativeOps {
  logSumExp(x: NativeMatrix, invTemperature: number, mask: Uint8Array | null): number;
  softmax(x: NativeMatrix, invTemperature: number, mask: Uint8Array | null, log: boolean): number;
  softmaxBackward(x: NativeMatrix, dy: NativeMatrix, invTemperature: number, mask: Uint8Array | null, log: boolean): number;
  stablemax(x: NativeMatrix, log: boolean): number;
  stablemaxBackward(x: NativeMatrix, dy: NativeMatrix, log: boolean): number;
  sparsemax(x: NativeMatrix): number;
  sparsemaxBackward(x: NativeMatrix, dy: NativeMatrix): number;
  entmax15(x: NativeMatrix): number;
  entmax15Backward(x: NativeMatrix, dy: NativeMatrix): number;
  gumbelSoftmax(x: NativeMatrix, tau: number, hard: boolean, seed: number): number;
  gumbelSoftmaxBackward(x: NativeMatrix, dy: NativeMatrix, tau: number, seed: number): number;
  crossEntropyForward(
    logits: NativeMatrix, labels: Int32Array, params: NativeLossParams, classWeights: Float32Array | null,
  ): NativeCrossEntropyForward;
  /** A buffer id; undefined when written into `dLogitsOut` (which may be the forward's logits: in place). */
  crossEntropyBackward(
    state: number, scaleWeighted: Float32Array, scaleUnweighted: Float32Array, dLogitsOut?: NativeMatrix | null,
  ): number | undefined;
  linearCrossEntropy(
    E: NativeMatrix, W: NativeMatrix, labels: Int32Array, params: NativeLossParams, classWeights: Float32Array | null,
    bias: Float32Array | null, config: NativeLinearConfig, scaleWeighted: Float32Array | null,
    scaleUnweighted: Float32Array | null, dEOut?: NativeMatrix | null, dWOut?: NativeMatrix | null,
  ): NativeLinearCrossEntropy;
}

export type NativeOpName = keyof NativeOps;

/** `<op>Async`: the same call run on the libuv pool, settling with the same result. */
export type NativeAsyncOps = {
  [K in NativeOpName as `${K}Async`]: (...args: Parameters<NativeOps[K]>) => Promise<ReturnType<NativeOps[K]>>;
};

export interface NativeAddon extends NativeOps, NativeAsyncOps {
  interfaceVersion: number;
  build: NativeBuildInfo;
  /** Zero-filled device memory. */
  alloc(backend: NativeBackendCode, byteLength: number): number;
  /** A device copy of a typed array. */
  upload(backend: NativeBackendCode, data: ArrayBufferView): number;
  /** Copies the whole buffer into `out`, whose byte length must match. */
  download(id: number, out: ArrayBufferView): void;
  /** Overwrites the whole buffer with `data`, whose byte length must match. */
  write(id: number, data: ArrayBufferView): void;
  /** The buffer's IPC handle (cuda) or shared memory name (cuda-emu), and the exporting process's tag. */
  exportBuffer(id: number): { handle: Uint8Array; process: string };
  /** A buffer over exported memory: a view in the exporting process, a mapping in another. */
  importBuffer(backend: NativeBackendCode, handle: Uint8Array, process: string, byteOffset: number, byteLength: number): number;
  /** A buffer over memory the caller owns; freeing it frees nothing. */
  wrapPointer(backend: NativeBackendCode, address: bigint, byteLength: number, dtype: 0 | 1): number;
  /** Where the buffer's memory starts (0n when empty). */
  address(id: number): bigint;
  /** Forgets an id; the memory goes once no running call uses it. False when unknown. */
  free(id: number): boolean;
  byteLength(id: number): number;
  /** Buffers alive (held by ids or running calls), their bytes, and ids held. */
  stats(): { buffers: number; bytes: number; handles: number };
  cudaStatus(): CudaStatus;
  deviceCacheStats(backend: NativeBackendCode): DeviceCacheStats;
  /** Frees the backend's cached blocks; returns their bytes. */
  trimDeviceCache(backend: NativeBackendCode): number;
  /** Whether a cudaError_t code leaves the CUDA context unusable (src/cuda_host.cc). */
  isStickyCudaError(code: number): boolean;
  /** Test hook: records a CUDA error as if a call had returned it (sticky ones disable cuda for the process). */
  noteCudaError(code: number, name: string, message: string): void;
  /** Bytes of device workspace linearCrossEntropy allocates for these shapes (cuda/kernels.h linearCrossEntropyPlan). */
  linearCrossEntropyWorkspaceBytes(
    N: number, D: number, V: number, normalizer: number, config: NativeLinearConfig, withGrad: boolean, eDtype: 0 | 1,
    wDtype: 0 | 1,
  ): number;
  setEmulatorOrder(order: number, seed: number): void;
  emulatorOrder(): { order: number; seed: number };
}

export interface NativeLoad {
  addon: NativeAddon | null;
  /** Where it was loaded from, relative to the package root. */
  file: string | null;
  /** Why the addon is not usable. */
  error: string | null;
}

let loaded: NativeLoad | null = null;

/** The addon, loaded on first call. */
export function native(): NativeLoad {
  if (loaded === null) {
    const r = loadAddon();
    const addon = r.addon as NativeAddon | null;
    if (addon === null) {
      loaded = { addon: null, file: null, error: r.error ?? 'the addon did not load' };
    } else if (addon.interfaceVersion !== NATIVE_INTERFACE_VERSION) {
      loaded = {
        addon: null,
        file: r.file,
        error: `the addon in ${r.root} has interface ${String(addon.interfaceVersion)}, this JavaScript needs ` +
          `${NATIVE_INTERFACE_VERSION}: rebuild it (npm run build:native)`,
      };
    } else {
      applyOrderFromEnvironment(addon); // a bad value throws here, and again on the next call
      loaded = { addon, file: r.file, error: null };
    }
  }
  return loaded;
}

const CODES: ReadonlySet<string> = new Set<CutlossErrorCode>([
  'E_SHAPE', 'E_DTYPE', 'E_LABEL', 'E_OPTION', 'E_DISPOSED', 'E_BACKEND', 'E_OOM', 'E_INTERNAL',
]);

/** The addon throws Errors with a `code`; callers get CutlossErrors with the same code. */
export function fromNativeError(e: unknown): unknown {
  if (e instanceof Error && !(e instanceof CutlossError)) {
    const code = (e as Error & { code?: unknown }).code;
    if (typeof code === 'string' && CODES.has(code)) return new CutlossError(code as CutlossErrorCode, e.message);
  }
  return e;
}

// ---------------------------------------------------------------- emulator fiber order

export type FiberOrder = 'forward' | 'reverse' | 'shuffled';
const ORDERS: FiberOrder[] = ['forward', 'reverse', 'shuffled'];

/**
 * Test hook: the order in which the emulator resumes a block's threads in later cuda-emu
 * calls (process-wide). Kernels must give the same answer in every order; a race shows up
 * as a difference. Also settable as CUTLOSS_EMU_ORDER=forward|reverse|shuffled[:seed].
 */
export function setEmulatorOrder(order: FiberOrder, seed = 0): void {
  const { addon, error } = native();
  if (addon === null) throw new CutlossError('E_BACKEND', `cuda-emu is unavailable: ${error}`);
  const index = ORDERS.indexOf(order);
  if (index < 0) throw new CutlossError('E_OPTION', `setEmulatorOrder: order must be one of ${ORDERS.join(', ')}`);
  try {
    addon.setEmulatorOrder(index, seed);
  } catch (e) {
    throw fromNativeError(e);
  }
}

export function emulatorOrder(): { order: FiberOrder; seed: number } {
  const { addon, error } = native();
  if (addon === null) throw new CutlossError('E_BACKEND', `cuda-emu is unavailable: ${error}`);
  const o = addon.emulatorOrder();
  return { order: ORDERS[o.order]!, seed: o.seed };
}

function applyOrderFromEnvironment(addon: NativeAddon): void {
  const spec = typeof process !== 'undefined' ? process.env.CUTLOSS_EMU_ORDER : undefined;
  if (spec === undefined || spec === '') return;
  const [name, seedText] = spec.split(':');
  const index = ORDERS.indexOf(name as FiberOrder);
  const seed = seedText === undefined ? 0 : Number(seedText);
  if (index < 0 || !Number.isSafeInteger(seed) || seed < 0) {
    throw new CutlossError('E_OPTION', `CUTLOSS_EMU_ORDER must be forward, reverse or shuffled[:seed], got '${spec}'`);
  }
  addon.setEmulatorOrder(index, seed);
}

// ---------------------------------------------------------------- arguments both native backends pass

/**
 * The addon refuses views of a SharedArrayBuffer (another thread could write them while it
 * reads); the public API accepts them, so they go across as a snapshot.
 */
export function unshared<T extends Float32Array | Uint16Array | Uint8Array | Int32Array>(a: T): T;
export function unshared<T extends Float32Array | Uint16Array | Uint8Array | Int32Array>(a: T | null): T | null;
export function unshared<T extends Float32Array | Uint16Array | Uint8Array | Int32Array>(a: T | null): T | null {
  return a !== null && a.buffer instanceof SharedArrayBuffer ? (a.slice() as T) : a;
}

/** The loss options as the addon's loss entry points read them; `embeddingDim`: D of the linear loss (harmonic's default exponent √D). */
export function nativeLossParams(o: ResolvedLossOptions, embeddingDim = 0): NativeLossParams {
  return {
    normalizer: o.normalizer, smoothing: o.smoothing, focalGamma: o.focalGamma, polyEpsilon: o.polyEpsilon,
    zLoss: o.zLoss, squentropy: o.squentropy, generalizedCE: o.generalizedCE, softcap: o.softcap,
    invTemperature: o.invTemperature, ignoreIndex: o.ignoreIndex,
    ...(labelMarginOf(o.logits) !== null ? { labelMargin: labelMarginOf(o.logits)! } : {}),
    ...(o.logits?.kind === LOGITS_HARMONIC ? { harmonicExponent: harmonicExponent(o.logits, embeddingDim) } : {}),
  };
}
