// cutloss public API: validates arguments, resolves options, dispatches to the selected
// backend, and returns results in the input's kind of storage: host tensors in, host tensors
// out; device tensors in, device tensors out, on the backend that holds them. Names and
// shapes follow DESIGN.md's contract; README "Semantics" gives every formula.

import {
  currentBackend, defaultDeviceBackend, deviceBackend,
  type AsyncBackendOps, type Backend, type CrossEntropyOutput, type LinearCrossEntropyOutput, type SoftmaxSettings,
} from './backend.js';
import { DeviceTensor, deviceArg, type DeviceBackendName } from './device.js';
import { CutlossError, describe } from './errors.js';
import type {
  DeviceCrossEntropyOutput, DeviceLinearCrossEntropyOutput, NativeBackend,
} from './nativeBackend.js';
import {
  asOptionsObject, checkKnownKeys, resolveLabels, resolveLossOptions, resolveTemperature,
  type CrossEntropyOptions, type LinearCrossEntropyOptions,
} from './options.js';
import { asMatrix, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';

export { CutlossError, type CutlossErrorCode } from './errors.js';
export { backends, getBackend, setBackend, type BackendInfo, type BackendName } from './backend.js';
export { getThreads, setThreads } from './cpuBackend.js';
export { tensor, bf16ToF32, f32ToBf16, type Tensor, type Dtype } from './tensor.js';
export {
  DeviceTensor, type DeviceBackendName, type DeviceOwnership, type DeviceTensorHandle, type FromPointerOptions,
} from './device.js';
export type { CrossEntropyOptions, LinearCrossEntropyOptions, Normalizer, Reduction } from './options.js';

export interface SoftmaxOptions {
  /** T > 0: the row is divided by T first (default 1). */
  temperature?: number;
  /** Uint8Array of rows·cols or cols (shared by every row); 0 = masked. */
  mask?: Uint8Array;
}

export interface GumbelSoftmaxOptions {
  /** τ > 0 (default 1). */
  tau?: number;
  /** One-hot forward with the soft gradient (straight-through). */
  hard?: boolean;
  /** Integer in [0, 2^53); the forward draws one at random when absent. */
  seed?: number;
}

export interface CrossEntropyResult {
  loss: number | Float32Array;
  dLogits?: Tensor;
  lse?: Float32Array;
}

export interface LinearCrossEntropyResult {
  loss: number | Float32Array;
  dEmbeddings?: Tensor;
  dClassifier?: Tensor;
  dBias?: Float32Array;
  lse?: Float32Array;
  /** cuda and cuda-emu: the device workspace the fused kernels used (linearCrossEntropyWorkspaceBytes). */
  workspaceBytes?: number;
}

/** A loss on device tensors: the loss and lse on the host, gradients on the device. */
export interface DeviceCrossEntropyResult {
  loss: number | Float32Array;
  dLogits?: DeviceTensor;
  lse?: Float32Array;
}

export interface DeviceLinearCrossEntropyResult {
  loss: number | Float32Array;
  dEmbeddings?: DeviceTensor;
  dClassifier?: DeviceTensor;
  dBias?: Float32Array;
  lse?: Float32Array;
  /** The device workspace the fused kernels used (linearCrossEntropyWorkspaceBytes). */
  workspaceBytes: number;
}

export interface UploadOptions {
  /** Default: the selected backend when it is cuda or cuda-emu, else cuda. */
  backend?: DeviceBackendName;
}

// ---------------------------------------------------------------- device tensors

/** Copies a host tensor to a device backend; the handle stays there until disposed. */
export function upload(t: Tensor, options?: UploadOptions): DeviceTensor {
  const m = asMatrix(t, 'upload: tensor');
  const o = asOptionsObject(options, 'upload');
  checkKnownKeys(o, ['backend'], 'upload');
  let b: NativeBackend;
  if (o.backend === undefined) b = defaultDeviceBackend();
  else if (o.backend === 'cuda' || o.backend === 'cuda-emu') b = deviceBackend(o.backend);
  else throw new CutlossError('E_BACKEND', `upload: options.backend must be 'cuda' or 'cuda-emu', got ${describe(o.backend)}`);
  return b.upload(m);
}

/** A host copy of a device tensor. */
export function download(t: DeviceTensor): Tensor {
  return deviceArg(t, 'download: tensor').download();
}

/** The backend holding x (checked live), and that every other tensor input is on it too. */
function onDevice(x: DeviceTensor, fn: string, others: [unknown, string][] = []): NativeBackend {
  deviceArg(x, `${fn}: x`);
  for (const [t, name] of others) deviceArg(t, `${fn}: ${name}`, x.backend);
  return deviceBackend(x.backend);
}

function hostOnly(values: [unknown, string][], fn: string): void {
  for (const [t, name] of values) {
    if (t instanceof DeviceTensor) {
      throw new CutlossError('E_BACKEND', `${fn}: ${name} is a DeviceTensor but the other inputs are host tensors: upload them too`);
    }
  }
}

/** The backend's async twins; a backend without them (js) runs the sync op on a later turn of the event loop. */
function asyncOps(b: Backend): AsyncBackendOps {
  if (b.async !== undefined) return b.async;
  return {
    logSumExp: (x, o) => later(() => b.logSumExp(x, o)),
    softmax: (x, o, log) => later(() => b.softmax(x, o, log)),
    softmaxBackward: (x, dy, o, log) => later(() => b.softmaxBackward(x, dy, o, log)),
    stablemax: (x, log) => later(() => b.stablemax(x, log)),
    stablemaxBackward: (x, dy, log) => later(() => b.stablemaxBackward(x, dy, log)),
    sparsemax: (x) => later(() => b.sparsemax(x)),
    sparsemaxBackward: (x, dy) => later(() => b.sparsemaxBackward(x, dy)),
    entmax15: (x) => later(() => b.entmax15(x)),
    entmax15Backward: (x, dy) => later(() => b.entmax15Backward(x, dy)),
    gumbelSoftmax: (x, tau, hard, seed) => later(() => b.gumbelSoftmax(x, tau, hard, seed)),
    gumbelSoftmaxBackward: (x, dy, tau, seed) => later(() => b.gumbelSoftmaxBackward(x, dy, tau, seed)),
    crossEntropy: (logits, labels, o) => later(() => b.crossEntropy(logits, labels, o)),
    linearCrossEntropy: (E, W, labels, o) => later(() => b.linearCrossEntropy(E, W, labels, o)),
  };
}

// ---------------------------------------------------------------- argument checks

function softmaxSettings(x: { rows: number; cols: number }, options: unknown, fn: string, allowMask = true): SoftmaxSettings {
  const o = asOptionsObject(options, fn);
  checkKnownKeys(o, allowMask ? ['temperature', 'mask'] : ['temperature'], fn);
  const invTemperature = 1 / resolveTemperature(o);
  let mask: Uint8Array | null = null;
  if (o.mask !== undefined && o.mask !== null) {
    if (!(o.mask instanceof Uint8Array)) {
      throw new CutlossError('E_DTYPE', `${fn}: options.mask must be a Uint8Array, got ${describe(o.mask)}`);
    }
    if (o.mask.length !== x.rows * x.cols && o.mask.length !== x.cols) {
      throw new CutlossError(
        'E_SHAPE',
        `${fn}: options.mask must have rows·cols = ${x.rows * x.cols} or cols = ${x.cols} elements, got ${o.mask.length}`,
      );
    }
    mask = o.mask;
  }
  return { invTemperature, mask };
}

function noOptions(options: unknown, fn: string): void {
  checkKnownKeys(asOptionsObject(options, fn), [], fn);
}

/** The upstream gradient: a tensor (or bare typed array) with x's element count. */
function upstream(x: Matrix, dy: unknown, fn: string): Float32Array {
  const t: unknown = dy instanceof Float32Array || dy instanceof Uint16Array ? { data: dy, shape: x.shape } : dy;
  const m = asMatrix(t, `${fn}: dy`);
  if (m.rows !== x.rows || m.cols !== x.cols) {
    throw new CutlossError('E_SHAPE', `${fn}: dy has shape [${m.rows}, ${m.cols}], x has [${x.rows}, ${x.cols}]`);
  }
  return toF32(m);
}

/** A device upstream gradient: x's shape, on x's backend (checked by onDevice). */
function deviceUpstream(x: DeviceTensor, dy: unknown, fn: string): DeviceTensor {
  const d = deviceArg(dy, `${fn}: dy`, x.backend);
  if (d.rows !== x.rows || d.cols !== x.cols) {
    throw new CutlossError('E_SHAPE', `${fn}: dy has shape [${d.rows}, ${d.cols}], x has [${x.rows}, ${x.cols}]`);
  }
  return d;
}

interface GumbelSettings {
  tau: number;
  hard: boolean;
  seed: number;
}

function gumbelSettings(options: unknown, fn: string, needSeed: boolean): GumbelSettings {
  const o = asOptionsObject(options, fn);
  checkKnownKeys(o, ['tau', 'hard', 'seed'], fn);
  const tau = resolveTemperature(o, 'tau');
  if (o.hard !== undefined && typeof o.hard !== 'boolean') {
    throw new CutlossError('E_OPTION', `${fn}: options.hard must be a boolean, got ${describe(o.hard)}`);
  }
  let seed = o.seed;
  if (seed === undefined) {
    if (needSeed) {
      throw new CutlossError('E_OPTION', `${fn}: options.seed is required: pass the seed the forward used`);
    }
    seed = Math.floor(Math.random() * 2 ** 53);
  }
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed >= 2 ** 53) {
    throw new CutlossError('E_OPTION', `${fn}: options.seed must be an integer in [0, 2^53), got ${describe(seed)}`);
  }
  return { tau, hard: o.hard === true, seed: seed as number };
}

// ---------------------------------------------------------------- row-wise ops

/** log Σ_j exp(x_j / T) per row, over unmasked entries (−inf for a fully masked row). */
export function logSumExp(x: Tensor, options?: SoftmaxOptions): Float32Array;
export function logSumExp(x: DeviceTensor, options?: SoftmaxOptions): DeviceTensor;
export function logSumExp(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Float32Array | DeviceTensor {
  if (x instanceof DeviceTensor) {
    return onDevice(x, 'logSumExp').device.logSumExp(x, softmaxSettings(x, options, 'logSumExp'));
  }
  const m = asMatrix(x, 'logSumExp: x');
  return currentBackend().logSumExp(m, softmaxSettings(m, options, 'logSumExp'));
}

export function softmax(x: Tensor, options?: SoftmaxOptions): Tensor;
export function softmax(x: DeviceTensor, options?: SoftmaxOptions): DeviceTensor;
export function softmax(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Tensor | DeviceTensor {
  return softmaxOf(x, options, false, 'softmax');
}

export function logSoftmax(x: Tensor, options?: SoftmaxOptions): Tensor;
export function logSoftmax(x: DeviceTensor, options?: SoftmaxOptions): DeviceTensor;
export function logSoftmax(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Tensor | DeviceTensor {
  return softmaxOf(x, options, true, 'logSoftmax');
}

function softmaxOf(x: Tensor | DeviceTensor, options: unknown, log: boolean, fn: string): Tensor | DeviceTensor {
  if (x instanceof DeviceTensor) return onDevice(x, fn).device.softmax(x, softmaxSettings(x, options, fn), log);
  const m = asMatrix(x, `${fn}: x`);
  return resultLike(m, currentBackend().softmax(m, softmaxSettings(m, options, fn), log));
}

export function softmaxBackward(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Tensor;
export function softmaxBackward(x: DeviceTensor, dy: DeviceTensor, options?: SoftmaxOptions): DeviceTensor;
export function softmaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: SoftmaxOptions): Tensor | DeviceTensor {
  return now(softmaxBackwardOf(x, dy, options, false, 'softmaxBackward', 'sync'));
}

export function logSoftmaxBackward(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Tensor;
export function logSoftmaxBackward(x: DeviceTensor, dy: DeviceTensor, options?: SoftmaxOptions): DeviceTensor;
export function logSoftmaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: SoftmaxOptions): Tensor | DeviceTensor {
  return now(softmaxBackwardOf(x, dy, options, true, 'logSoftmaxBackward', 'sync'));
}

function softmaxBackwardOf(x: Tensor | DeviceTensor, dy: unknown, options: unknown, log: boolean, fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode).softmaxBackward(x, deviceUpstream(x, dy, fn), softmaxSettings(x, options, fn), log);
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  const g = upstream(m, dy, fn);
  return then(hostOps(mode).softmaxBackward(m, g, softmaxSettings(m, options, fn), log), (r) => resultLike(m, r));
}

/** StableMax: s(x_j) / Σ s(x_k), s(x) = x + 1 (x ≥ 0), 1 / (1 − x) (x < 0). */
export function stablemax(x: Tensor): Tensor;
export function stablemax(x: DeviceTensor): DeviceTensor;
export function stablemax(x: Tensor | DeviceTensor): Tensor | DeviceTensor {
  return now(stablemaxOf(x, false, 'stablemax', 'sync'));
}

export function logStablemax(x: Tensor): Tensor;
export function logStablemax(x: DeviceTensor): DeviceTensor;
export function logStablemax(x: Tensor | DeviceTensor): Tensor | DeviceTensor {
  return now(stablemaxOf(x, true, 'logStablemax', 'sync'));
}

function stablemaxOf(x: Tensor | DeviceTensor, log: boolean, fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) return deviceOps(onDevice(x, fn), mode).stablemax(x, log);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode).stablemax(m, log), (r) => resultLike(m, r));
}

export function stablemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor;
export function stablemaxBackward(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): DeviceTensor;
export function stablemaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Tensor | DeviceTensor {
  return now(stablemaxBackwardOf(x, dy, options, false, 'stablemaxBackward', 'sync'));
}

export function logStablemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor;
export function logStablemaxBackward(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): DeviceTensor;
export function logStablemaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Tensor | DeviceTensor {
  return now(stablemaxBackwardOf(x, dy, options, true, 'logStablemaxBackward', 'sync'));
}

function stablemaxBackwardOf(x: Tensor | DeviceTensor, dy: unknown, options: unknown, log: boolean, fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode).stablemaxBackward(x, deviceUpstream(x, dy, fn), log);
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode).stablemaxBackward(m, upstream(m, dy, fn), log), (r) => resultLike(m, r));
}

/** Euclidean projection onto the simplex: max(x_j − τ, 0) with an exact τ. */
export function sparsemax(x: Tensor): Tensor;
export function sparsemax(x: DeviceTensor): DeviceTensor;
export function sparsemax(x: Tensor | DeviceTensor): Tensor | DeviceTensor {
  return now(projectionOf(x, 'sparsemax', 'sparsemax', 'sync'));
}

export function sparsemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor;
export function sparsemaxBackward(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): DeviceTensor;
export function sparsemaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Tensor | DeviceTensor {
  return now(projectionBackwardOf(x, dy, options, 'sparsemaxBackward', 'sparsemaxBackward', 'sync'));
}

/** 1.5-entmax: max(x_j / 2 − τ, 0)² with an exact τ. */
export function entmax15(x: Tensor): Tensor;
export function entmax15(x: DeviceTensor): DeviceTensor;
export function entmax15(x: Tensor | DeviceTensor): Tensor | DeviceTensor {
  return now(projectionOf(x, 'entmax15', 'entmax15', 'sync'));
}

export function entmax15Backward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor;
export function entmax15Backward(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): DeviceTensor;
export function entmax15Backward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Tensor | DeviceTensor {
  return now(projectionBackwardOf(x, dy, options, 'entmax15Backward', 'entmax15Backward', 'sync'));
}

/** sparsemax and entmax15: the op without options. */
function projectionOf(x: Tensor | DeviceTensor, op: 'sparsemax' | 'entmax15', fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) return deviceOps(onDevice(x, fn), mode)[op](x);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode)[op](m), (r) => resultLike(m, r));
}

function projectionBackwardOf(
  x: Tensor | DeviceTensor, dy: unknown, options: unknown, op: 'sparsemaxBackward' | 'entmax15Backward', fn: string, mode: Mode,
): Result<Tensor | DeviceTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode)[op](x, deviceUpstream(x, dy, fn));
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode)[op](m, upstream(m, dy, fn)), (r) => resultLike(m, r));
}

/** softmax((x + g) / τ) with Philox Gumbel noise g; `hard` gives the straight-through one-hot. */
export function gumbelSoftmax(x: Tensor, options?: GumbelSoftmaxOptions): Tensor;
export function gumbelSoftmax(x: DeviceTensor, options?: GumbelSoftmaxOptions): DeviceTensor;
export function gumbelSoftmax(x: Tensor | DeviceTensor, options?: GumbelSoftmaxOptions): Tensor | DeviceTensor {
  return now(gumbelSoftmaxOf(x, options, 'gumbelSoftmax', 'sync'));
}

function gumbelSoftmaxOf(x: Tensor | DeviceTensor, options: unknown, fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn);
    const g = gumbelSettings(options, fn, false);
    return deviceOps(b, mode).gumbelSoftmax(x, g.tau, g.hard, g.seed);
  }
  const m = asMatrix(x, `${fn}: x`);
  const g = gumbelSettings(options, fn, false);
  return then(hostOps(mode).gumbelSoftmax(m, g.tau, g.hard, g.seed), (r) => resultLike(m, r));
}

/** The soft sample's VJP (also for hard samples); needs the forward's seed and tau. */
export function gumbelSoftmaxBackward(x: Tensor, dy: Tensor, options: GumbelSoftmaxOptions): Tensor;
export function gumbelSoftmaxBackward(x: DeviceTensor, dy: DeviceTensor, options: GumbelSoftmaxOptions): DeviceTensor;
export function gumbelSoftmaxBackward(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options: GumbelSoftmaxOptions): Tensor | DeviceTensor {
  return now(gumbelSoftmaxBackwardOf(x, dy, options, 'gumbelSoftmaxBackward', 'sync'));
}

function gumbelSoftmaxBackwardOf(x: Tensor | DeviceTensor, dy: unknown, options: unknown, fn: string, mode: Mode): Result<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    const d = deviceUpstream(x, dy, fn);
    const g = gumbelSettings(options, fn, true);
    return deviceOps(b, mode).gumbelSoftmaxBackward(x, d, g.tau, g.seed);
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  const g = gumbelSettings(options, fn, true);
  return then(hostOps(mode).gumbelSoftmaxBackward(m, upstream(m, dy, fn), g.tau, g.seed), (r) => resultLike(m, r));
}

// The row-wise ops above serve their async twins too (mode 'async'): the host path calls the
// backend's twin (the libuv pool on native backends), the device path the device twin.

type Mode = 'sync' | 'async';
type Result<T> = T | Promise<T>;

function hostOps(mode: Mode): Backend | AsyncBackendOps {
  return mode === 'sync' ? currentBackend() : asyncOps(currentBackend());
}

function deviceOps(b: NativeBackend, mode: Mode): NativeBackend['device'] | NativeBackend['deviceAsync'] {
  return mode === 'sync' ? b.device : b.deviceAsync;
}

function then<T, U>(v: Result<T>, f: (t: T) => U): Result<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** A sync mode's result. */
function now<T>(v: Result<T>): T {
  if (v instanceof Promise) throw new Error('internal: a sync op returned a Promise');
  return v;
}

// ---------------------------------------------------------------- losses

/** Cross-entropy from logits [N, V] with every option of README "Losses". */
export function crossEntropy(logits: Tensor, labels: Int32Array, options?: CrossEntropyOptions): CrossEntropyResult;
export function crossEntropy(logits: DeviceTensor, labels: Int32Array, options?: CrossEntropyOptions): DeviceCrossEntropyResult;
export function crossEntropy(
  logits: Tensor | DeviceTensor, labels: Int32Array, options?: CrossEntropyOptions,
): CrossEntropyResult | DeviceCrossEntropyResult {
  if (logits instanceof DeviceTensor) {
    const b = onDevice(logits, 'crossEntropy');
    const { o, t } = lossArgs(logits, labels, options);
    return deviceLossResult(b.device.crossEntropy(logits, t, o), o.returnLse);
  }
  const m = asMatrix(logits, 'crossEntropy: logits');
  const { o, t } = lossArgs(m, labels, options);
  return crossEntropyResult(m, currentBackend().crossEntropy(m, t, o), o.returnLse);
}

function lossArgs(logits: { rows: number; cols: number; dtype: Matrix['dtype'] }, labels: unknown, options: unknown) {
  const o = resolveLossOptions(options, logits.rows, logits.cols, logits.dtype, false);
  const t = resolveLabels(labels, logits.rows, logits.cols, o.ignoreIndex);
  return { o, t };
}

function crossEntropyResult(m: Matrix, out: CrossEntropyOutput, returnLse: boolean): CrossEntropyResult {
  const result: CrossEntropyResult = { loss: out.loss };
  if (out.dLogits !== null) result.dLogits = resultLike(m, out.dLogits);
  if (returnLse) result.lse = out.lse;
  return result;
}

function deviceLossResult(out: DeviceCrossEntropyOutput, returnLse: boolean): DeviceCrossEntropyResult {
  const result: DeviceCrossEntropyResult = { loss: out.loss };
  if (out.dLogits !== null) result.dLogits = out.dLogits;
  if (returnLse) result.lse = out.lse;
  return result;
}

/**
 * Cross-entropy of E·Wᵀ + b without forming the N×V logits: embeddings E [N, D],
 * classifier W [V, D]; gradients for E, W and the bias.
 */
export function linearCrossEntropy(
  embeddings: Tensor, classifier: Tensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): LinearCrossEntropyResult;
export function linearCrossEntropy(
  embeddings: DeviceTensor, classifier: DeviceTensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): DeviceLinearCrossEntropyResult;
export function linearCrossEntropy(
  embeddings: Tensor | DeviceTensor, classifier: Tensor | DeviceTensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): LinearCrossEntropyResult | DeviceLinearCrossEntropyResult {
  if (embeddings instanceof DeviceTensor) {
    const b = onDevice(embeddings, 'linearCrossEntropy', [[classifier, 'classifier']]);
    const W = classifier as DeviceTensor;
    const { o, t } = linearArgs(embeddings, W, labels, options);
    return deviceLinearResult(b.device.linearCrossEntropy(embeddings, W, t, o), o.returnLse);
  }
  hostOnly([[classifier, 'classifier']], 'linearCrossEntropy');
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const { o, t } = linearArgs(E, W, labels, options);
  return linearResult(E, W, currentBackend().linearCrossEntropy(E, W, t, o), o.returnLse);
}

type Shaped = { rows: number; cols: number; dtype: Matrix['dtype'] };

function linearArgs(E: Shaped, W: Shaped, labels: unknown, options: unknown) {
  if (E.cols !== W.cols) {
    throw new CutlossError(
      'E_SHAPE',
      `linearCrossEntropy: embeddings [N, D] and classifier [V, D] must share D; got D = ${E.cols} and ${W.cols}`,
    );
  }
  const dtype = E.dtype === 'bf16' || W.dtype === 'bf16' ? 'bf16' : 'f32';
  const o = resolveLossOptions(options, E.rows, W.rows, dtype, true);
  const t = resolveLabels(labels, E.rows, W.rows, o.ignoreIndex);
  return { o, t };
}

function linearResult(E: Matrix, W: Matrix, out: LinearCrossEntropyOutput, returnLse: boolean): LinearCrossEntropyResult {
  const result: LinearCrossEntropyResult = { loss: out.loss };
  if (out.dEmbeddings !== null) result.dEmbeddings = resultLike(E, out.dEmbeddings);
  if (out.dClassifier !== null) result.dClassifier = resultLike(W, out.dClassifier);
  if (out.dBias !== null) result.dBias = out.dBias;
  if (returnLse) result.lse = out.lse;
  if (out.workspaceBytes !== undefined) result.workspaceBytes = out.workspaceBytes;
  return result;
}

function deviceLinearResult(out: DeviceLinearCrossEntropyOutput, returnLse: boolean): DeviceLinearCrossEntropyResult {
  const result: DeviceLinearCrossEntropyResult = { loss: out.loss, workspaceBytes: out.workspaceBytes };
  if (out.dEmbeddings !== null) result.dEmbeddings = out.dEmbeddings;
  if (out.dClassifier !== null) result.dClassifier = out.dClassifier;
  if (out.dBias !== null) result.dBias = out.dBias;
  if (returnLse) result.lse = out.lse;
  return result;
}

export interface LinearCrossEntropyWorkspaceOptions extends LinearCrossEntropyOptions {
  /** dtype of the embeddings and the classifier (bf16 gradients need fp32 accumulators). Default 'f32'. */
  dtype?: 'f32' | 'bf16';
  /** Which native backend's kernels: default the selected backend when native, else cuda, else cuda-emu. */
  backend?: DeviceBackendName;
}

/**
 * Bytes of device workspace linearCrossEntropy's fused kernels (cuda, cuda-emu) allocate for
 * E [N, D], W [V, D] with these options, beyond the inputs and the returned results: O(N + V)
 * (per-row statistics and partials, sparsemax candidates), plus fp32 accumulators for bf16
 * gradients, never N×V. The same figure comes back as `workspaceBytes` of each result.
 */
export function linearCrossEntropyWorkspaceBytes(
  N: number, D: number, V: number, options?: LinearCrossEntropyWorkspaceOptions,
): number {
  const fn = 'linearCrossEntropyWorkspaceBytes';
  for (const [name, v] of [['N', N], ['D', D], ['V', V]] as const) {
    if (!Number.isSafeInteger(v) || v < (name === 'N' ? 0 : 1)) {
      throw new CutlossError('E_SHAPE', `${fn}: ${name} must be an integer >= ${name === 'N' ? 0 : 1}, got ${describe(v)}`);
    }
  }
  const { dtype = 'f32', backend, ...rest } = asOptionsObject(options, fn) as LinearCrossEntropyWorkspaceOptions;
  if (dtype !== 'f32' && dtype !== 'bf16') {
    throw new CutlossError('E_OPTION', `${fn}: options.dtype must be 'f32' or 'bf16', got ${describe(dtype)}`);
  }
  const o = resolveLossOptions(rest, N, V, dtype, true);
  let b: NativeBackend;
  if (backend === undefined) {
    const current = currentBackend();
    b = current.name === 'cuda' || current.name === 'cuda-emu' ? (current as NativeBackend) : nativeForPlanning();
  } else if (backend === 'cuda' || backend === 'cuda-emu') {
    b = deviceBackend(backend);
  } else {
    throw new CutlossError('E_BACKEND', `${fn}: options.backend must be 'cuda' or 'cuda-emu', got ${describe(backend)}`);
  }
  return b.linearWorkspaceBytes(N, D, V, o, dtype);
}

/** cuda when available, else cuda-emu: both run the same kernels with the same plan. */
function nativeForPlanning(): NativeBackend {
  try {
    return deviceBackend('cuda');
  } catch {
    return deviceBackend('cuda-emu');
  }
}

// ---------------------------------------------------------------- async twins
// They settle asynchronously and reject (never throw) on bad input. Native backends run the
// work on the libuv pool; the reference backend runs it on the JS thread after the current tick.

function later<T>(fn: () => T): Promise<T> {
  return new Promise((resolve, reject) => {
    setImmediate(() => {
      try {
        resolve(fn());
      } catch (e) {
        reject(e);
      }
    });
  });
}

export function logSumExpAsync(x: Tensor, options?: SoftmaxOptions): Promise<Float32Array>;
export function logSumExpAsync(x: DeviceTensor, options?: SoftmaxOptions): Promise<DeviceTensor>;
export async function logSumExpAsync(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Promise<Float32Array | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    return onDevice(x, 'logSumExpAsync').deviceAsync.logSumExp(x, softmaxSettings(x, options, 'logSumExpAsync'));
  }
  const m = asMatrix(x, 'logSumExpAsync: x');
  return asyncOps(currentBackend()).logSumExp(m, softmaxSettings(m, options, 'logSumExpAsync'));
}

export function softmaxAsync(x: Tensor, options?: SoftmaxOptions): Promise<Tensor>;
export function softmaxAsync(x: DeviceTensor, options?: SoftmaxOptions): Promise<DeviceTensor>;
export function softmaxAsync(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return softmaxOfAsync(x, options, false, 'softmaxAsync');
}

export function logSoftmaxAsync(x: Tensor, options?: SoftmaxOptions): Promise<Tensor>;
export function logSoftmaxAsync(x: DeviceTensor, options?: SoftmaxOptions): Promise<DeviceTensor>;
export function logSoftmaxAsync(x: Tensor | DeviceTensor, options?: SoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return softmaxOfAsync(x, options, true, 'logSoftmaxAsync');
}

async function softmaxOfAsync(x: Tensor | DeviceTensor, options: unknown, log: boolean, fn: string): Promise<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) return onDevice(x, fn).deviceAsync.softmax(x, softmaxSettings(x, options, fn), log);
  const m = asMatrix(x, `${fn}: x`);
  return resultLike(m, await asyncOps(currentBackend()).softmax(m, softmaxSettings(m, options, fn), log));
}

export function softmaxBackwardAsync(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Promise<Tensor>;
export function softmaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: SoftmaxOptions): Promise<DeviceTensor>;
export async function softmaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: SoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return softmaxBackwardOf(x, dy, options, false, 'softmaxBackwardAsync', 'async');
}

export function logSoftmaxBackwardAsync(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Promise<Tensor>;
export function logSoftmaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: SoftmaxOptions): Promise<DeviceTensor>;
export async function logSoftmaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: SoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return softmaxBackwardOf(x, dy, options, true, 'logSoftmaxBackwardAsync', 'async');
}

export function stablemaxAsync(x: Tensor): Promise<Tensor>;
export function stablemaxAsync(x: DeviceTensor): Promise<DeviceTensor>;
export async function stablemaxAsync(x: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
  return stablemaxOf(x, false, 'stablemaxAsync', 'async');
}

export function logStablemaxAsync(x: Tensor): Promise<Tensor>;
export function logStablemaxAsync(x: DeviceTensor): Promise<DeviceTensor>;
export async function logStablemaxAsync(x: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
  return stablemaxOf(x, true, 'logStablemaxAsync', 'async');
}

export function stablemaxBackwardAsync(x: Tensor, dy: Tensor, options?: Record<string, never>): Promise<Tensor>;
export function stablemaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): Promise<DeviceTensor>;
export async function stablemaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Promise<Tensor | DeviceTensor> {
  return stablemaxBackwardOf(x, dy, options, false, 'stablemaxBackwardAsync', 'async');
}

export function logStablemaxBackwardAsync(x: Tensor, dy: Tensor, options?: Record<string, never>): Promise<Tensor>;
export function logStablemaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): Promise<DeviceTensor>;
export async function logStablemaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Promise<Tensor | DeviceTensor> {
  return stablemaxBackwardOf(x, dy, options, true, 'logStablemaxBackwardAsync', 'async');
}

export function sparsemaxAsync(x: Tensor): Promise<Tensor>;
export function sparsemaxAsync(x: DeviceTensor): Promise<DeviceTensor>;
export async function sparsemaxAsync(x: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
  return projectionOf(x, 'sparsemax', 'sparsemaxAsync', 'async');
}

export function sparsemaxBackwardAsync(x: Tensor, dy: Tensor, options?: Record<string, never>): Promise<Tensor>;
export function sparsemaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): Promise<DeviceTensor>;
export async function sparsemaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Promise<Tensor | DeviceTensor> {
  return projectionBackwardOf(x, dy, options, 'sparsemaxBackward', 'sparsemaxBackwardAsync', 'async');
}

export function entmax15Async(x: Tensor): Promise<Tensor>;
export function entmax15Async(x: DeviceTensor): Promise<DeviceTensor>;
export async function entmax15Async(x: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
  return projectionOf(x, 'entmax15', 'entmax15Async', 'async');
}

export function entmax15BackwardAsync(x: Tensor, dy: Tensor, options?: Record<string, never>): Promise<Tensor>;
export function entmax15BackwardAsync(x: DeviceTensor, dy: DeviceTensor, options?: Record<string, never>): Promise<DeviceTensor>;
export async function entmax15BackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options?: Record<string, never>): Promise<Tensor | DeviceTensor> {
  return projectionBackwardOf(x, dy, options, 'entmax15Backward', 'entmax15BackwardAsync', 'async');
}

export function gumbelSoftmaxAsync(x: Tensor, options?: GumbelSoftmaxOptions): Promise<Tensor>;
export function gumbelSoftmaxAsync(x: DeviceTensor, options?: GumbelSoftmaxOptions): Promise<DeviceTensor>;
export async function gumbelSoftmaxAsync(x: Tensor | DeviceTensor, options?: GumbelSoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return gumbelSoftmaxOf(x, options, 'gumbelSoftmaxAsync', 'async');
}

export function gumbelSoftmaxBackwardAsync(x: Tensor, dy: Tensor, options: GumbelSoftmaxOptions): Promise<Tensor>;
export function gumbelSoftmaxBackwardAsync(x: DeviceTensor, dy: DeviceTensor, options: GumbelSoftmaxOptions): Promise<DeviceTensor>;
export async function gumbelSoftmaxBackwardAsync(x: Tensor | DeviceTensor, dy: Tensor | DeviceTensor, options: GumbelSoftmaxOptions): Promise<Tensor | DeviceTensor> {
  return gumbelSoftmaxBackwardOf(x, dy, options, 'gumbelSoftmaxBackwardAsync', 'async');
}

export function crossEntropyAsync(logits: Tensor, labels: Int32Array, options?: CrossEntropyOptions): Promise<CrossEntropyResult>;
export function crossEntropyAsync(
  logits: DeviceTensor, labels: Int32Array, options?: CrossEntropyOptions,
): Promise<DeviceCrossEntropyResult>;
export async function crossEntropyAsync(
  logits: Tensor | DeviceTensor, labels: Int32Array, options?: CrossEntropyOptions,
): Promise<CrossEntropyResult | DeviceCrossEntropyResult> {
  if (logits instanceof DeviceTensor) {
    const b = onDevice(logits, 'crossEntropyAsync');
    const { o, t } = lossArgs(logits, labels, options);
    return deviceLossResult(await b.deviceAsync.crossEntropy(logits, t, o), o.returnLse);
  }
  const m = asMatrix(logits, 'crossEntropy: logits');
  const { o, t } = lossArgs(m, labels, options);
  return crossEntropyResult(m, await asyncOps(currentBackend()).crossEntropy(m, t, o), o.returnLse);
}

export function linearCrossEntropyAsync(
  embeddings: Tensor, classifier: Tensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): Promise<LinearCrossEntropyResult>;
export function linearCrossEntropyAsync(
  embeddings: DeviceTensor, classifier: DeviceTensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): Promise<DeviceLinearCrossEntropyResult>;
export async function linearCrossEntropyAsync(
  embeddings: Tensor | DeviceTensor, classifier: Tensor | DeviceTensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): Promise<LinearCrossEntropyResult | DeviceLinearCrossEntropyResult> {
  if (embeddings instanceof DeviceTensor) {
    const b = onDevice(embeddings, 'linearCrossEntropyAsync', [[classifier, 'classifier']]);
    const W = classifier as DeviceTensor;
    const { o, t } = linearArgs(embeddings, W, labels, options);
    return deviceLinearResult(await b.deviceAsync.linearCrossEntropy(embeddings, W, t, o), o.returnLse);
  }
  hostOnly([[classifier, 'classifier']], 'linearCrossEntropyAsync');
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const { o, t } = linearArgs(E, W, labels, options);
  return linearResult(E, W, await asyncOps(currentBackend()).linearCrossEntropy(E, W, t, o), o.returnLse);
}
