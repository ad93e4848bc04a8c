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
  asOptionsObject, checkKnownKeys, rejectShardedGeneralizedCE, resolveLabels, resolveLossOptions, resolveTemperature,
  type CrossEntropyOptions, type HostOutput, type HostOutputs, type LinearCrossEntropyOptions, type LossValue,
  type OutputInputs, type Reduction,
} from './options.js';
import { writeGradient } from './alloc.js';
import { asMatrix, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';
import { isScaleOut, scaleOutCrossEntropy, scaleOutLinearCrossEntropy } from './scaleOut.js';
import { gatherRows, readClassSample, sampleProblem, type ClassSampleOptions } from './classSample.js';
import { cosineLinearCrossEntropy, wantsCosine } from './cosine.js';
import {
  isZscore, zscoreLinearCrossEntropy, zscoreLinearCrossEntropyAsync, zscoreLinearCrossEntropyOnDevice,
  zscoreLinearCrossEntropyOnDeviceAsync, type ZscoreLinearCrossEntropyOptions,
} from './zscore.js';

export { CutlossError, type CutlossErrorCode } from './errors.js';
export type { AsyncCommunicator, Communicator, DataParallelOptions, VocabParallelOptions } from './communicator.js';
export { backends, getBackend, setBackend, type BackendInfo, type BackendName } from './backend.js';
export { getThreads, setThreads } from './cpuBackend.js';
export { tensor, bf16ToF32, f32ToBf16, type Tensor, type Dtype } from './tensor.js';
export {
  sigmoidPairLoss, sigmoidPairLossAsync, type DeviceSigmoidPairLossResult, type PairParallelOptions,
  type SigmoidPairLossOptions, type SigmoidPairLossResult, type SigmoidPairLossResultFor,
} from './sigmoidPair.js';
export type { ZscoreLinearCrossEntropyOptions, ZscoreOptions } from './zscore.js';
export type { ClassSampleOptions } from './classSample.js';
export {
  DeviceTensor, type DeviceBackendName, type DeviceOwnership, type DeviceTensorHandle, type FromPointerOptions,
} from './device.js';
export type {
  CrossEntropyOptions, LinearCrossEntropyOptions, LossOutputs, LossValue, Normalizer, Reduction,
} from './options.js';

// ---------------------------------------------------------------- public types
// Each op has one generic signature rather than a Tensor overload and a DeviceTensor overload:
// with overloads, any mistake (an unknown option, a plain array as labels) was reported as
// "No overload matches this call" against the last overload, which names neither. The result
// kind follows the input kind through the conditional types below.

/** What every op takes as its input: host data (a {@link Tensor}) or a {@link DeviceTensor}. */
export type AnyTensor = Tensor | DeviceTensor;

/**
 * `Host` for a Tensor input, `Device` for a DeviceTensor input (both when X is the union):
 * results come back in the input's kind of storage.
 *
 * @example
 * type Lse = ByKind<DeviceTensor, Float32Array, DeviceTensor>; // DeviceTensor
 */
export type ByKind<X extends AnyTensor, Host, Device> = X extends DeviceTensor ? Device : Host;

/**
 * A Tensor for a Tensor input, a DeviceTensor for a DeviceTensor input.
 *
 * @example
 * const y: SameKind<typeof x> = softmax(x);
 */
export type SameKind<X extends AnyTensor> = ByKind<X, Tensor, DeviceTensor>;

declare const noOptionsKey: unique symbol;

/**
 * The options of ops that have none yet (stablemax, sparsemax, entmax15 and their backward
 * ops): `{}` or nothing. Any key is a compile error naming it, and E_OPTION at run time.
 *
 * @example
 * sparsemax(x, {}); // fine; sparsemax(x, { temperature: 2 }) does not compile
 */
export interface NoOptions {
  // Only a key nobody can write: an interface whose every property is optional gets the
  // excess-property check (an empty `{}` type would accept any object).
  readonly [noOptionsKey]?: never;
}

/**
 * Options of the softmax family (logSumExp, softmax, logSoftmax and their backward ops).
 *
 * @example
 * softmax(x, { temperature: 0.7, mask: new Uint8Array([1, 1, 0]) });
 */
export interface SoftmaxOptions {
  /** T > 0: the row is divided by T first (default 1). */
  temperature?: number;
  /** Uint8Array of rows·cols or cols (shared by every row); 0 = masked. */
  mask?: Uint8Array;
}

/**
 * Options of gumbelSoftmax: the temperature τ, hard (straight-through) samples, the noise seed.
 *
 * @example
 * const y = gumbelSoftmax(x, { tau: 0.5, hard: true, seed: 42 });
 */
export interface GumbelSoftmaxOptions {
  /** τ > 0 (default 1). */
  tau?: number;
  /** One-hot forward with the soft gradient (straight-through). */
  hard?: boolean;
  /** Integer in [0, 2^53); the forward draws one at random when absent. */
  seed?: number;
}

/**
 * Options of gumbelSoftmaxBackward: the forward's, with its `seed` required (the backward
 * redraws the same noise).
 *
 * @example
 * const dx = gumbelSoftmaxBackward(x, dy, { tau: 0.5, seed: 42 });
 */
export interface GumbelSoftmaxBackwardOptions extends GumbelSoftmaxOptions {
  /** The seed the forward used. */
  seed: number;
}

/**
 * crossEntropy's result on host tensors. `loss` is a number for reduction 'mean' (the
 * default) and 'sum', a Float32Array [N] for 'none'.
 *
 * @example
 * const { loss, dLogits } = crossEntropy(tensor(logits, [N, V]), labels); // loss: number
 */
export interface CrossEntropyResult<R extends Reduction = Reduction> {
  loss: LossValue<R>;
  /** dLoss/dlogits [N, V], in the logits' dtype (absent with computeGrad: false). */
  dLogits?: Tensor;
  /** Per-row log-sum-exp of the effective logits [N] (with returnLse). */
  lse?: Float32Array;
}

/**
 * linearCrossEntropy's result on host tensors. `loss` is a number for reduction 'mean' (the
 * default) and 'sum', a Float32Array [N] for 'none'.
 *
 * @example
 * const { loss, dEmbeddings, dClassifier } = linearCrossEntropy(E, W, labels);
 */
export interface LinearCrossEntropyResult<R extends Reduction = Reduction> {
  loss: LossValue<R>;
  /** dLoss/dE [N, D], in E's dtype. */
  dEmbeddings?: Tensor;
  /** dLoss/dW [V, D], in W's dtype. */
  dClassifier?: Tensor;
  /** dLoss/db [V], when a bias was given. */
  dBias?: Float32Array;
  /** Per-row log-sum-exp of the effective logits [N] (with returnLse). */
  lse?: Float32Array;
  /** cuda and cuda-emu: the device workspace the fused kernels used (linearCrossEntropyWorkspaceBytes). */
  workspaceBytes?: number;
  /** With classSample: the sampled classes' global ids, ascending; dClassifier and dBias have their rows only. */
  sampledClasses?: Int32Array;
}

/**
 * crossEntropy's result on device tensors: the loss and lse on the host, the gradient on the
 * device.
 *
 * @example
 * const { loss, dLogits } = crossEntropy(upload(x), labels); // dLogits: DeviceTensor
 */
export interface DeviceCrossEntropyResult<R extends Reduction = Reduction> {
  loss: LossValue<R>;
  /** dLoss/dlogits [N, V] on the logits' device. */
  dLogits?: DeviceTensor;
  /** Per-row log-sum-exp of the effective logits [N] (with returnLse). */
  lse?: Float32Array;
}

/**
 * linearCrossEntropy's result on device tensors: the loss, lse and dBias on the host, the
 * gradients of E and W on the device.
 *
 * @example
 * const r = linearCrossEntropy(upload(E), upload(W), labels); // r.dClassifier: DeviceTensor
 */
export interface DeviceLinearCrossEntropyResult<R extends Reduction = Reduction> {
  loss: LossValue<R>;
  /** dLoss/dE [N, D] on the device. */
  dEmbeddings?: DeviceTensor;
  /** dLoss/dW [V, D] on the device. */
  dClassifier?: DeviceTensor;
  /** dLoss/db [V], when a bias was given. */
  dBias?: Float32Array;
  /** Per-row log-sum-exp of the effective logits [N] (with returnLse). */
  lse?: Float32Array;
  /** The device workspace the fused kernels used (linearCrossEntropyWorkspaceBytes). */
  workspaceBytes: number;
  /** With classSample: the sampled classes' global ids, ascending; dClassifier and dBias have their rows only. */
  sampledClasses?: Int32Array;
}

/**
 * crossEntropy's result for logits of kind X and reduction R.
 *
 * @example
 * const r: CrossEntropyResultFor<Tensor, 'none'> = crossEntropy(x, labels, { reduction: 'none' });
 */
export type CrossEntropyResultFor<X extends AnyTensor, R extends Reduction = Reduction> =
  ByKind<X, CrossEntropyResult<R>, DeviceCrossEntropyResult<R>>;

/**
 * linearCrossEntropy's result for inputs of kind X and reduction R.
 *
 * @example
 * const r: LinearCrossEntropyResultFor<Tensor, 'mean'> = linearCrossEntropy(E, W, labels);
 */
export type LinearCrossEntropyResultFor<X extends AnyTensor, R extends Reduction = Reduction> =
  ByKind<X, LinearCrossEntropyResult<R>, DeviceLinearCrossEntropyResult<R>>;

/**
 * Options of upload.
 *
 * @example
 * const d = upload(x, { backend: 'cuda-emu' });
 */
export interface UploadOptions {
  /** Default: the selected backend when it is cuda or cuda-emu, else cuda. */
  backend?: DeviceBackendName;
}

// ---------------------------------------------------------------- device tensors

/**
 * Copies a host tensor to a device backend (cuda, or cuda-emu's host memory); the handle stays
 * there until disposed, and ops on it return DeviceTensors.
 *
 * @param t a Tensor [rows, cols] or [cols], f32 or bf16.
 * @param options `backend`: 'cuda' or 'cuda-emu' (default: the selected backend when it is one, else cuda).
 * @example
 * using d = upload(tensor(logits, [N, V]), { backend: 'cuda-emu' });
 * const probs = download(softmax(d));
 */
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

/**
 * A host copy of a device tensor, of its shape and dtype (bf16 as bits in a Uint16Array).
 *
 * @example
 * const host: Tensor = download(softmax(upload(x)));
 */
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

/**
 * The backend's async twins; a backend without them (js) computes at call time and settles
 * on a later turn of the event loop: like the native twins, which copy their inputs before
 * returning, the result never depends on what happens to the inputs after the call (a
 * buffer transferred to a worker, an array reused).
 */
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
// Public signatures are generic in the input kind X (see AnyTensor); each implementation
// signature below its public one takes either kind and is not visible to callers.

/**
 * Row-wise log-sum-exp: `lse_i = log Σ_j exp(x_ij / T)` over unmasked j (−inf for a fully masked row).
 *
 * @param x [rows, cols] (or [cols]: one row), a Tensor or a DeviceTensor.
 * @param options `temperature` T > 0 (default 1); `mask` Uint8Array [rows·cols] or [cols], 0 = masked.
 * @returns Float32Array [rows] for a Tensor; a DeviceTensor [rows] (f32) for a DeviceTensor.
 * @example
 * const lse = logSumExp(tensor(logits, [N, V]), { temperature: 0.7 }); // Float32Array [N]
 */
export function logSumExp<X extends AnyTensor>(x: X, options?: SoftmaxOptions): ByKind<X, Float32Array, DeviceTensor>;
export function logSumExp(x: AnyTensor, options?: SoftmaxOptions): Float32Array | DeviceTensor {
  if (x instanceof DeviceTensor) {
    return onDevice(x, 'logSumExp').device.logSumExp(x, softmaxSettings(x, options, 'logSumExp'));
  }
  const m = asMatrix(x, 'logSumExp: x');
  return currentBackend().logSumExp(m, softmaxSettings(m, options, 'logSumExp'));
}

/**
 * Row-wise softmax: `y_ij = exp(x_ij / T − lse_i)`; masked entries are 0 (a fully masked row is NaN, as PyTorch).
 *
 * @param x [rows, cols] (or [cols]), a Tensor (f32 or bf16) or a DeviceTensor.
 * @param options `temperature` T > 0 (default 1); `mask` Uint8Array [rows·cols] or [cols], 0 = masked.
 * @returns y of x's shape, dtype and kind.
 * @example
 * const probs = softmax(tensor(logits, [N, V]), { temperature: 0.7 });
 */
export function softmax<X extends AnyTensor>(x: X, options?: SoftmaxOptions): SameKind<X>;
export function softmax(x: AnyTensor, options?: SoftmaxOptions): AnyTensor {
  return softmaxOf(x, options, false, 'softmax');
}

/**
 * Row-wise log-softmax: `y_ij = x_ij / T − lse_i`; masked entries are −inf.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `temperature` T > 0 (default 1); `mask` Uint8Array [rows·cols] or [cols], 0 = masked.
 * @returns y of x's shape, dtype and kind.
 * @example
 * const logProbs = logSoftmax(tensor(logits, [N, V]));
 */
export function logSoftmax<X extends AnyTensor>(x: X, options?: SoftmaxOptions): SameKind<X>;
export function logSoftmax(x: AnyTensor, options?: SoftmaxOptions): AnyTensor {
  return softmaxOf(x, options, true, 'logSoftmax');
}

function softmaxOf(x: AnyTensor, options: unknown, log: boolean, fn: string): AnyTensor {
  if (x instanceof DeviceTensor) return onDevice(x, fn).device.softmax(x, softmaxSettings(x, options, fn), log);
  const m = asMatrix(x, `${fn}: x`);
  return resultLike(m, currentBackend().softmax(m, softmaxSettings(m, options, fn), log));
}

/**
 * softmax's vector-Jacobian product: `dx = (1/T)·y ⊙ (dy − Σ_j dy_j y_j)`, y = softmax(x).
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's: `temperature`, `mask`.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = softmaxBackward(x, dy, { temperature: 0.7 });
 */
export function softmaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: SoftmaxOptions): SameKind<X>;
export function softmaxBackward(x: AnyTensor, dy: AnyTensor, options?: SoftmaxOptions): AnyTensor {
  return now(softmaxBackwardOf(x, dy, options, false, 'softmaxBackward', 'sync'));
}

/**
 * logSoftmax's vector-Jacobian product: `dx = (1/T)·(dy − y·Σ_j dy_j)`, y = softmax(x).
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's: `temperature`, `mask`.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = logSoftmaxBackward(x, dy);
 */
export function logSoftmaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: SoftmaxOptions): SameKind<X>;
export function logSoftmaxBackward(x: AnyTensor, dy: AnyTensor, options?: SoftmaxOptions): AnyTensor {
  return now(softmaxBackwardOf(x, dy, options, true, 'logSoftmaxBackward', 'sync'));
}

function softmaxBackwardOf(x: AnyTensor, dy: unknown, options: unknown, log: boolean, fn: string, mode: Mode): Result<AnyTensor> {
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode).softmaxBackward(x, deviceUpstream(x, dy, fn), softmaxSettings(x, options, fn), log);
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  const g = upstream(m, dy, fn);
  return then(hostOps(mode).softmaxBackward(m, g, softmaxSettings(m, options, fn), log), (r) => resultLike(m, r));
}

/**
 * StableMax (Prieto et al. 2025): `y_j = s(x_j) / Σ_k s(x_k)`, s(x) = x + 1 (x ≥ 0), 1 / (1 − x) (x < 0).
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing (any key is E_OPTION).
 * @returns y of x's shape, dtype and kind.
 * @example
 * const y = stablemax(tensor(logits, [N, V]));
 */
export function stablemax<X extends AnyTensor>(x: X, options?: NoOptions): SameKind<X>;
export function stablemax(x: AnyTensor, options?: NoOptions): AnyTensor {
  return now(stablemaxOf(x, options, false, 'stablemax', 'sync'));
}

/**
 * log StableMax: `y_j = log s(x_j) − log Σ_k s(x_k)`, s as in stablemax.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing (any key is E_OPTION).
 * @returns y of x's shape, dtype and kind.
 * @example
 * const logY = logStablemax(tensor(logits, [N, V]));
 */
export function logStablemax<X extends AnyTensor>(x: X, options?: NoOptions): SameKind<X>;
export function logStablemax(x: AnyTensor, options?: NoOptions): AnyTensor {
  return now(stablemaxOf(x, options, true, 'logStablemax', 'sync'));
}

function stablemaxOf(x: AnyTensor, options: unknown, log: boolean, fn: string, mode: Mode): Result<AnyTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) return deviceOps(onDevice(x, fn), mode).stablemax(x, log);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode).stablemax(m, log), (r) => resultLike(m, r));
}

/**
 * stablemax's vector-Jacobian product: `dx_k = s'(x_k)/S · (dy_k − Σ_j dy_j y_j)`, S = Σ_j s(x_j).
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = stablemaxBackward(x, dy);
 */
export function stablemaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): SameKind<X>;
export function stablemaxBackward(x: AnyTensor, dy: AnyTensor, options?: NoOptions): AnyTensor {
  return now(stablemaxBackwardOf(x, dy, options, false, 'stablemaxBackward', 'sync'));
}

/**
 * logStablemax's vector-Jacobian product: `dx_k = dy_k·s'(x_k)/s(x_k) − s'(x_k)/S · Σ_j dy_j`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = logStablemaxBackward(x, dy);
 */
export function logStablemaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): SameKind<X>;
export function logStablemaxBackward(x: AnyTensor, dy: AnyTensor, options?: NoOptions): AnyTensor {
  return now(stablemaxBackwardOf(x, dy, options, true, 'logStablemaxBackward', 'sync'));
}

function stablemaxBackwardOf(x: AnyTensor, dy: unknown, options: unknown, log: boolean, fn: string, mode: Mode): Result<AnyTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode).stablemaxBackward(x, deviceUpstream(x, dy, fn), log);
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode).stablemaxBackward(m, upstream(m, dy, fn), log), (r) => resultLike(m, r));
}

/**
 * Sparsemax (Martins & Astudillo 2016), the Euclidean projection onto the simplex: `y_j = max(x_j − τ, 0)`, Σ_j y_j = 1, τ exact.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing (any key is E_OPTION).
 * @returns y of x's shape, dtype and kind (sparse: most entries exactly 0).
 * @example
 * const y = sparsemax(tensor(new Float32Array([1, 0.5, -1]), [3])); // [0.75, 0.25, 0]
 */
export function sparsemax<X extends AnyTensor>(x: X, options?: NoOptions): SameKind<X>;
export function sparsemax(x: AnyTensor, options?: NoOptions): AnyTensor {
  return now(projectionOf(x, options, 'sparsemax', 'sparsemax', 'sync'));
}

/**
 * sparsemax's vector-Jacobian product: `dx_k = [k ∈ support]·(dy_k − mean_{support} dy)`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = sparsemaxBackward(x, dy);
 */
export function sparsemaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): SameKind<X>;
export function sparsemaxBackward(x: AnyTensor, dy: AnyTensor, options?: NoOptions): AnyTensor {
  return now(projectionBackwardOf(x, dy, options, 'sparsemaxBackward', 'sparsemaxBackward', 'sync'));
}

/**
 * 1.5-entmax (Peters et al. 2019): `y_j = max(x_j / 2 − τ, 0)²`, Σ_j y_j = 1, τ exact.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing (any key is E_OPTION).
 * @returns y of x's shape, dtype and kind (sparse).
 * @example
 * const y = entmax15(tensor(logits, [N, V]));
 */
export function entmax15<X extends AnyTensor>(x: X, options?: NoOptions): SameKind<X>;
export function entmax15(x: AnyTensor, options?: NoOptions): AnyTensor {
  return now(projectionOf(x, options, 'entmax15', 'entmax15', 'sync'));
}

/**
 * entmax15's vector-Jacobian product: `dx_k = √y_k·dy_k − √y_k · Σ_j √y_j dy_j / Σ_j √y_j`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const dx = entmax15Backward(x, dy);
 */
export function entmax15Backward<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): SameKind<X>;
export function entmax15Backward(x: AnyTensor, dy: AnyTensor, options?: NoOptions): AnyTensor {
  return now(projectionBackwardOf(x, dy, options, 'entmax15Backward', 'entmax15Backward', 'sync'));
}

/** sparsemax and entmax15: ops without options yet. */
function projectionOf(x: AnyTensor, options: unknown, op: 'sparsemax' | 'entmax15', fn: string, mode: Mode): Result<AnyTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) return deviceOps(onDevice(x, fn), mode)[op](x);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode)[op](m), (r) => resultLike(m, r));
}

function projectionBackwardOf(
  x: AnyTensor, dy: unknown, options: unknown, op: 'sparsemaxBackward' | 'entmax15Backward', fn: string, mode: Mode,
): Result<AnyTensor> {
  noOptions(options, fn);
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn, [[dy, 'dy']]);
    return deviceOps(b, mode)[op](x, deviceUpstream(x, dy, fn));
  }
  hostOnly([[dy, 'dy']], fn);
  const m = asMatrix(x, `${fn}: x`);
  return then(hostOps(mode)[op](m, upstream(m, dy, fn)), (r) => resultLike(m, r));
}

/**
 * Gumbel-softmax: `y = softmax((x + g) / τ)`, g = −log(−log u) from counter-based Philox noise (the same on every backend for a seed); `hard`: the one-hot of the argmax forward with the soft gradient (straight-through).
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `tau` τ > 0 (default 1), `hard` (default false), `seed` integer in [0, 2^53) (default: drawn at random).
 * @returns y of x's shape, dtype and kind.
 * @example
 * const sample = gumbelSoftmax(tensor(logits, [N, V]), { tau: 0.5, hard: true, seed: 7 });
 */
export function gumbelSoftmax<X extends AnyTensor>(x: X, options?: GumbelSoftmaxOptions): SameKind<X>;
export function gumbelSoftmax(x: AnyTensor, options?: GumbelSoftmaxOptions): AnyTensor {
  return now(gumbelSoftmaxOf(x, options, 'gumbelSoftmax', 'sync'));
}

function gumbelSoftmaxOf(x: AnyTensor, options: unknown, fn: string, mode: Mode): Result<AnyTensor> {
  if (x instanceof DeviceTensor) {
    const b = onDevice(x, fn);
    const g = gumbelSettings(options, fn, false);
    return deviceOps(b, mode).gumbelSoftmax(x, g.tau, g.hard, g.seed);
  }
  const m = asMatrix(x, `${fn}: x`);
  const g = gumbelSettings(options, fn, false);
  return then(hostOps(mode).gumbelSoftmax(m, g.tau, g.hard, g.seed), (r) => resultLike(m, r));
}

/**
 * gumbelSoftmax's vector-Jacobian product (of the soft sample, also for hard ones): the softmax rule at (x + g) / τ with T = τ.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's `tau` and its `seed` (required: the backward redraws the same noise).
 * @returns dx of x's shape, dtype and kind.
 * @example
 * const y = gumbelSoftmax(x, { tau: 0.5, seed: 7 });
 * const dx = gumbelSoftmaxBackward(x, dy, { tau: 0.5, seed: 7 });
 */
export function gumbelSoftmaxBackward<X extends AnyTensor>(x: X, dy: SameKind<X>, options: GumbelSoftmaxBackwardOptions): SameKind<X>;
export function gumbelSoftmaxBackward(x: AnyTensor, dy: AnyTensor, options: GumbelSoftmaxBackwardOptions): AnyTensor {
  return now(gumbelSoftmaxBackwardOf(x, dy, options, 'gumbelSoftmaxBackward', 'sync'));
}

function gumbelSoftmaxBackwardOf(x: AnyTensor, dy: unknown, options: unknown, fn: string, mode: Mode): Result<AnyTensor> {
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
  if (v instanceof Promise) throw new CutlossError('E_INTERNAL', 'a sync op returned a Promise');
  return v;
}

// ---------------------------------------------------------------- losses

/**
 * Cross-entropy from logits: `loss_i = lse(z_i) − z_{i,t_i}`, z = softcap(x)/T, reduced by `reduction`; with the options of README "Losses" (class weights, label smoothing, z-loss, other normalizers, focal, Poly-1, …).
 *
 * @param logits [N, V], a Tensor (f32 or bf16) or a DeviceTensor.
 * @param labels Int32Array [N]: class ids in [0, V), or ignoreIndex (−100) for rows that count for nothing.
 * @param options see {@link CrossEntropyOptions}; `reduction` 'mean' (default) / 'sum' give a number, 'none' a Float32Array [N].
 * @returns `{ loss, dLogits?, lse? }`: dLogits in the logits' kind and dtype.
 * @example
 * const { loss, dLogits } = crossEntropy(tensor(logits, [N, V]), Int32Array.from(targets), { labelSmoothing: 0.1 });
 */
export function crossEntropy<X extends AnyTensor, R extends Reduction = 'mean'>(
  logits: X, labels: Int32Array, options?: CrossEntropyOptions<R>,
): CrossEntropyResultFor<X, R>;
export function crossEntropy(
  logits: AnyTensor, labels: Int32Array, options?: CrossEntropyOptions,
): CrossEntropyResult | DeviceCrossEntropyResult {
  rejectShardedGeneralizedCE(options, 'crossEntropy');
  if (logits instanceof DeviceTensor) {
    if (isScaleOut(options)) return shardedCrossEntropyOnDevice(logits, labels, options, 'crossEntropy');
    const b = onDevice(logits, 'crossEntropy');
    const { o, t } = lossArgs(logits, labels, options, logits);
    return deviceLossResult(b.device.crossEntropy(logits, t, o), o.returnLse);
  }
  const m = asMatrix(logits, 'crossEntropy: logits');
  const sharded = scaleOutCrossEntropy(currentBackend(), m, labels, options);
  if (sharded !== null) return crossEntropyResult(m, sharded, sharded.returnLse);
  const { o, t } = lossArgs(m, labels, options, logits);
  return crossEntropyResult(m, currentBackend().crossEntropy(m, t, o), o.returnLse, o.out);
}

/** `raw`: the caller's logits, which out and inPlace are checked against. */
function lossArgs(logits: { rows: number; cols: number; dtype: Matrix['dtype'] }, labels: unknown, options: unknown, raw: AnyTensor) {
  const inputs: OutputInputs = { tensors: [[raw, 'logits']], vectors: [[labels instanceof Int32Array ? labels : null, 'labels']] };
  const o = resolveLossOptions(options, logits.rows, logits.cols, logits.dtype, false, inputs);
  const t = resolveLabels(labels, logits.rows, logits.cols, o.ignoreIndex);
  return { o, t };
}

/**
 * A gradient result: the caller's output tensor when there is one (holding `values` already
 * when the backend wrote it there, else filled from them now), or a new tensor like `m`.
 */
function gradientResult(m: Matrix, values: Float32Array, dest: HostOutput | null | undefined): Tensor {
  if (dest === null || dest === undefined) return resultLike(m, values, true);
  if (values !== dest.data) writeGradient(dest, values, 'options.out');
  return dest.tensor;
}

function crossEntropyResult(m: Matrix, out: CrossEntropyOutput, returnLse: boolean, dest?: HostOutputs | null): CrossEntropyResult {
  const result: CrossEntropyResult = { loss: out.loss };
  if (out.dLogits !== null) result.dLogits = gradientResult(m, out.dLogits, dest?.dLogits);
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
 * Fused linear + cross-entropy (Cut Cross-Entropy): crossEntropy of the logits `E·Wᵀ + b` without ever holding the N×V logits; gradients for E, W and b.
 *
 * @param embeddings E [N, D], a Tensor (f32 or bf16) or a DeviceTensor.
 * @param classifier W [V, D], of E's kind (and on E's device).
 * @param labels Int32Array [N]: class ids in [0, V), or ignoreIndex.
 * @param options see {@link LinearCrossEntropyOptions}: every crossEntropy option plus `bias` [V], `filterEps`, `deterministic`, `tf32`, `workspaceBytes`.
 * @returns `{ loss, dEmbeddings?, dClassifier?, dBias?, lse?, workspaceBytes? }`, gradients in the inputs' kind and dtype.
 * @example
 * const { loss, dEmbeddings, dClassifier, dBias } =
 *   linearCrossEntropy(tensor(E, [N, D]), tensor(W, [V, D]), labels, { bias, zLoss: 1e-4 });
 */
export function linearCrossEntropy<X extends AnyTensor, R extends Reduction = 'mean'>(
  embeddings: X, classifier: SameKind<X>, labels: Int32Array, options?: LinearCrossEntropyOptions<R> | ZscoreLinearCrossEntropyOptions<R>,
): LinearCrossEntropyResultFor<X, R>;
export function linearCrossEntropy(
  embeddings: AnyTensor, classifier: AnyTensor, labels: Int32Array, options?: LinearCrossEntropyOptions | ZscoreLinearCrossEntropyOptions,
): LinearCrossEntropyResult | DeviceLinearCrossEntropyResult {
  if (isZscore(options)) { // the spherical Z-loss: its own moment-based kernels (lib/zscore.ts)
    if (embeddings instanceof DeviceTensor) return zscoreLinearCrossEntropyOnDevice(embeddings, classifier, labels, options);
    hostOnly([[classifier, 'classifier']], 'linearCrossEntropy');
    return zscoreLinearCrossEntropy(embeddings, classifier, labels, options);
  }
  const sample = readClassSample(options);
  if (sample !== null) {
    return classSampled(embeddings, classifier, labels, options!, sample, (W, t, o) => linearCrossEntropy(embeddings, W as never, t, o));
  }
  if (wantsCosine(options)) { // margin softmax (lib/cosine.ts): unit rows, then the fused loss on them
    return cosineLinearCrossEntropy(embeddings, classifier, labels, options!, (E, W, t, o) => linearCrossEntropy(E, W as never, t as never, o));
  }
  rejectShardedGeneralizedCE(options, 'linearCrossEntropy');
  if (embeddings instanceof DeviceTensor) {
    if (isScaleOut(options)) return shardedLinearOnDevice(embeddings, classifier, labels, options, 'linearCrossEntropy');
    const b = onDevice(embeddings, 'linearCrossEntropy', [[classifier, 'classifier']]);
    const W = classifier as DeviceTensor;
    const { o, t } = linearArgs(embeddings, W, labels, options, [embeddings, W]);
    return deviceLinearResult(b.device.linearCrossEntropy(embeddings, W, t, o), o.returnLse);
  }
  hostOnly([[classifier, 'classifier']], 'linearCrossEntropy');
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const sharded = scaleOutLinearCrossEntropy(currentBackend(), E, W, labels, options);
  if (sharded !== null) return linearResult(E, W, sharded, sharded.returnLse);
  const { o, t } = linearArgs(E, W, labels, options, [embeddings, classifier]);
  return linearResult(E, W, currentBackend().linearCrossEntropy(E, W, t, o), o.returnLse, o.out);
}

/**
 * Partial FC (lib/classSample.ts): the loss over the labels' classes and a seeded sample of the
 * others; W's sampled rows are gathered (on a device: downloaded, gathered, uploaded) and the
 * result names them in `sampledClasses`, dClassifier and dBias holding their rows only.
 */
function classSampled<T>(
  embeddings: AnyTensor, classifier: AnyTensor, labels: Int32Array, options: object, sample: ClassSampleOptions,
  run: (W: AnyTensor, labels: Int32Array, options: LinearCrossEntropyOptions) => T,
): T {
  if (!(labels instanceof Int32Array)) throw new CutlossError('E_DTYPE', `linearCrossEntropy: labels must be an Int32Array, got ${describe(labels)}`);
  const device = classifier instanceof DeviceTensor;
  const W = asMatrix(device ? (classifier as DeviceTensor).download() : classifier, 'linearCrossEntropy: classifier');
  const p = sampleProblem(W.rows, labels, options as Record<string, unknown>, sample);
  const gathered = gatherRows(W, p.ids);
  let Ws: AnyTensor = gathered;
  if (device) Ws = onDevice(classifier as DeviceTensor, 'linearCrossEntropy').upload(asMatrix(gathered, 'sampled classifier'));
  const withIds = (r: object) => Object.assign(r, { sampledClasses: p.globalIds });
  const dispose = () => { if (Ws instanceof DeviceTensor) Ws.dispose(); };
  let result: T;
  try {
    result = run(Ws, p.labels, p.options as LinearCrossEntropyOptions);
  } catch (e) {
    dispose();
    throw e;
  }
  if (result instanceof Promise) return result.then(withIds).finally(dispose) as T;
  dispose();
  return withIds(result as object) as T;
}

type Shaped = { rows: number; cols: number; dtype: Matrix['dtype'] };

function linearArgs(E: Shaped, W: Shaped, labels: unknown, options: unknown, raw: [AnyTensor, AnyTensor]) {
  if (E.cols !== W.cols) {
    throw new CutlossError(
      'E_SHAPE',
      `linearCrossEntropy: embeddings [N, D] and classifier [V, D] must share D; got D = ${E.cols} and ${W.cols}`,
    );
  }
  const dtype = E.dtype === 'bf16' || W.dtype === 'bf16' ? 'bf16' : 'f32';
  const inputs: OutputInputs = {
    tensors: [[raw[0], 'embeddings'], [raw[1], 'classifier']],
    vectors: [[labels instanceof Int32Array ? labels : null, 'labels']],
  };
  const o = resolveLossOptions(options, E.rows, W.rows, dtype, true, inputs);
  const t = resolveLabels(labels, E.rows, W.rows, o.ignoreIndex);
  return { o, t };
}

function linearResult(
  E: Matrix, W: Matrix, out: LinearCrossEntropyOutput, returnLse: boolean, dest?: HostOutputs | null,
): LinearCrossEntropyResult {
  const result: LinearCrossEntropyResult = { loss: out.loss };
  if (out.dEmbeddings !== null) result.dEmbeddings = gradientResult(E, out.dEmbeddings, dest?.dEmbeddings);
  if (out.dClassifier !== null) result.dClassifier = gradientResult(W, out.dClassifier, dest?.dClassifier);
  if (out.dBias !== null) {
    const db = dest?.dBias;
    if (db !== null && db !== undefined && out.dBias !== db) writeGradient({ data: db }, out.dBias, 'options.out.dBias');
    result.dBias = db ?? out.dBias;
  }
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

// vocabParallel / dataParallel on DeviceTensors: the inputs are downloaded, the host scale-out
// path runs on their backend, and the gradients are uploaded to it (README "Scale-out").

function shardedCrossEntropyOnDevice(logits: DeviceTensor, labels: unknown, options: unknown, fn: string): DeviceCrossEntropyResult {
  const b = onDevice(logits, fn);
  const m = asMatrix(logits.download(), `${fn}: logits`);
  const out = scaleOutCrossEntropy(b, m, labels, options)!;
  const result: DeviceCrossEntropyResult = { loss: out.loss };
  if (out.dLogits !== null) result.dLogits = b.upload(asMatrix(resultLike(m, out.dLogits), `${fn}: dLogits`));
  if (out.returnLse) result.lse = out.lse;
  return result;
}

function shardedLinearOnDevice(
  embeddings: DeviceTensor, classifier: unknown, labels: unknown, options: unknown, fn: string,
): DeviceLinearCrossEntropyResult {
  const b = onDevice(embeddings, fn, [[classifier, 'classifier']]);
  const E = asMatrix(embeddings.download(), `${fn}: embeddings`);
  const W = asMatrix((classifier as DeviceTensor).download(), `${fn}: classifier`);
  const out = scaleOutLinearCrossEntropy(b, E, W, labels, options)!;
  const result: DeviceLinearCrossEntropyResult = { loss: out.loss, workspaceBytes: out.workspaceBytes ?? 0 };
  if (out.dEmbeddings !== null) result.dEmbeddings = b.upload(asMatrix(resultLike(E, out.dEmbeddings), `${fn}: dEmbeddings`));
  if (out.dClassifier !== null) {
    try {
      result.dClassifier = b.upload(asMatrix(resultLike(W, out.dClassifier), `${fn}: dClassifier`));
    } catch (e) {
      result.dEmbeddings?.dispose();
      throw e;
    }
  }
  if (out.dBias !== null) result.dBias = out.dBias;
  if (out.returnLse) result.lse = out.lse;
  return result;
}

/**
 * Options of linearCrossEntropyWorkspaceBytes: the loss options the call will use, plus the
 * inputs' dtype and the backend whose kernels plan the work.
 *
 * @example
 * linearCrossEntropyWorkspaceBytes(N, D, V, { dtype: 'bf16', backend: 'cuda' });
 */
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
 * gradients and, with `deterministic`, dE's per-split partial sums (fewer than 32 768 rows of D
 * floats), never N×V. The same figure comes back as `workspaceBytes` of each result.
 *
 * @param N rows of E (tokens); D the embedding width; V rows of W (classes).
 * @param options the linearCrossEntropy options of the call, plus `dtype` ('f32' | 'bf16') and `backend` ('cuda' | 'cuda-emu').
 * @returns bytes, an integer.
 * @example
 * const bytes = linearCrossEntropyWorkspaceBytes(8192, 4096, 128000, { dtype: 'bf16' });
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

/** fn's result (or error) now, settled on a later turn of the event loop. */
function later<T>(fn: () => T): Promise<T> {
  let result: T;
  try {
    result = fn();
  } catch (e) {
    return new Promise((_, reject) => setImmediate(() => reject(e)));
  }
  return new Promise((resolve) => setImmediate(() => resolve(result)));
}

/**
 * logSumExp off the JS thread: `lse_i = log Σ_j exp(x_ij / T)` over unmasked j.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `temperature`, `mask`, as logSumExp.
 * @returns a Promise of Float32Array [rows] (Tensor input) or a DeviceTensor [rows].
 * @example
 * const lse = await logSumExpAsync(tensor(logits, [N, V]));
 */
export function logSumExpAsync<X extends AnyTensor>(x: X, options?: SoftmaxOptions): Promise<ByKind<X, Float32Array, DeviceTensor>>;
export async function logSumExpAsync(x: AnyTensor, options?: SoftmaxOptions): Promise<Float32Array | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    return onDevice(x, 'logSumExpAsync').deviceAsync.logSumExp(x, softmaxSettings(x, options, 'logSumExpAsync'));
  }
  const m = asMatrix(x, 'logSumExpAsync: x');
  return asyncOps(currentBackend()).logSumExp(m, softmaxSettings(m, options, 'logSumExpAsync'));
}

/**
 * softmax off the JS thread: `y_ij = exp(x_ij / T − lse_i)`.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `temperature`, `mask`, as softmax.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const probs = await softmaxAsync(tensor(logits, [N, V]));
 */
export function softmaxAsync<X extends AnyTensor>(x: X, options?: SoftmaxOptions): Promise<SameKind<X>>;
export function softmaxAsync(x: AnyTensor, options?: SoftmaxOptions): Promise<AnyTensor> {
  return softmaxOfAsync(x, options, false, 'softmaxAsync');
}

/**
 * logSoftmax off the JS thread: `y_ij = x_ij / T − lse_i`.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `temperature`, `mask`, as logSoftmax.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const logProbs = await logSoftmaxAsync(tensor(logits, [N, V]));
 */
export function logSoftmaxAsync<X extends AnyTensor>(x: X, options?: SoftmaxOptions): Promise<SameKind<X>>;
export function logSoftmaxAsync(x: AnyTensor, options?: SoftmaxOptions): Promise<AnyTensor> {
  return softmaxOfAsync(x, options, true, 'logSoftmaxAsync');
}

async function softmaxOfAsync(x: AnyTensor, options: unknown, log: boolean, fn: string): Promise<AnyTensor> {
  if (x instanceof DeviceTensor) return onDevice(x, fn).deviceAsync.softmax(x, softmaxSettings(x, options, fn), log);
  const m = asMatrix(x, `${fn}: x`);
  return resultLike(m, await asyncOps(currentBackend()).softmax(m, softmaxSettings(m, options, fn), log));
}

/**
 * softmaxBackward off the JS thread: `dx = (1/T)·y ⊙ (dy − Σ_j dy_j y_j)`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's `temperature`, `mask`.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await softmaxBackwardAsync(x, dy);
 */
export function softmaxBackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: SoftmaxOptions): Promise<SameKind<X>>;
export async function softmaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options?: SoftmaxOptions): Promise<AnyTensor> {
  return softmaxBackwardOf(x, dy, options, false, 'softmaxBackwardAsync', 'async');
}

/**
 * logSoftmaxBackward off the JS thread: `dx = (1/T)·(dy − y·Σ_j dy_j)`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's `temperature`, `mask`.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await logSoftmaxBackwardAsync(x, dy);
 */
export function logSoftmaxBackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: SoftmaxOptions): Promise<SameKind<X>>;
export async function logSoftmaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options?: SoftmaxOptions): Promise<AnyTensor> {
  return softmaxBackwardOf(x, dy, options, true, 'logSoftmaxBackwardAsync', 'async');
}

/**
 * stablemax off the JS thread: `y_j = s(x_j) / Σ_k s(x_k)`.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing (any key rejects with E_OPTION).
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const y = await stablemaxAsync(tensor(logits, [N, V]));
 */
export function stablemaxAsync<X extends AnyTensor>(x: X, options?: NoOptions): Promise<SameKind<X>>;
export async function stablemaxAsync(x: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return stablemaxOf(x, options, false, 'stablemaxAsync', 'async');
}

/**
 * logStablemax off the JS thread: `y_j = log s(x_j) − log Σ_k s(x_k)`.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const logY = await logStablemaxAsync(tensor(logits, [N, V]));
 */
export function logStablemaxAsync<X extends AnyTensor>(x: X, options?: NoOptions): Promise<SameKind<X>>;
export async function logStablemaxAsync(x: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return stablemaxOf(x, options, true, 'logStablemaxAsync', 'async');
}

/**
 * stablemaxBackward off the JS thread: `dx_k = s'(x_k)/S · (dy_k − Σ_j dy_j y_j)`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await stablemaxBackwardAsync(x, dy);
 */
export function stablemaxBackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): Promise<SameKind<X>>;
export async function stablemaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return stablemaxBackwardOf(x, dy, options, false, 'stablemaxBackwardAsync', 'async');
}

/**
 * logStablemaxBackward off the JS thread: `dx_k = dy_k·s'(x_k)/s(x_k) − s'(x_k)/S · Σ_j dy_j`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await logStablemaxBackwardAsync(x, dy);
 */
export function logStablemaxBackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): Promise<SameKind<X>>;
export async function logStablemaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return stablemaxBackwardOf(x, dy, options, true, 'logStablemaxBackwardAsync', 'async');
}

/**
 * sparsemax off the JS thread: `y_j = max(x_j − τ, 0)`, Σ_j y_j = 1.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const y = await sparsemaxAsync(tensor(logits, [N, V]));
 */
export function sparsemaxAsync<X extends AnyTensor>(x: X, options?: NoOptions): Promise<SameKind<X>>;
export async function sparsemaxAsync(x: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return projectionOf(x, options, 'sparsemax', 'sparsemaxAsync', 'async');
}

/**
 * sparsemaxBackward off the JS thread: `dx_k = [k ∈ support]·(dy_k − mean_{support} dy)`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await sparsemaxBackwardAsync(x, dy);
 */
export function sparsemaxBackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): Promise<SameKind<X>>;
export async function sparsemaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return projectionBackwardOf(x, dy, options, 'sparsemaxBackward', 'sparsemaxBackwardAsync', 'async');
}

/**
 * entmax15 off the JS thread: `y_j = max(x_j / 2 − τ, 0)²`, Σ_j y_j = 1.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const y = await entmax15Async(tensor(logits, [N, V]));
 */
export function entmax15Async<X extends AnyTensor>(x: X, options?: NoOptions): Promise<SameKind<X>>;
export async function entmax15Async(x: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return projectionOf(x, options, 'entmax15', 'entmax15Async', 'async');
}

/**
 * entmax15Backward off the JS thread: `dx_k = √y_k·dy_k − √y_k · Σ_j √y_j dy_j / Σ_j √y_j`.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options none yet: `{}` or nothing.
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await entmax15BackwardAsync(x, dy);
 */
export function entmax15BackwardAsync<X extends AnyTensor>(x: X, dy: SameKind<X>, options?: NoOptions): Promise<SameKind<X>>;
export async function entmax15BackwardAsync(x: AnyTensor, dy: AnyTensor, options?: NoOptions): Promise<AnyTensor> {
  return projectionBackwardOf(x, dy, options, 'entmax15Backward', 'entmax15BackwardAsync', 'async');
}

/**
 * gumbelSoftmax off the JS thread: `y = softmax((x + g) / τ)` with the same Philox noise as the sync op.
 *
 * @param x [rows, cols] (or [cols]), a Tensor or a DeviceTensor.
 * @param options `tau`, `hard`, `seed`, as gumbelSoftmax.
 * @returns a Promise of y, of x's shape, dtype and kind.
 * @example
 * const y = await gumbelSoftmaxAsync(tensor(logits, [N, V]), { tau: 0.5, seed: 7 });
 */
export function gumbelSoftmaxAsync<X extends AnyTensor>(x: X, options?: GumbelSoftmaxOptions): Promise<SameKind<X>>;
export async function gumbelSoftmaxAsync(x: AnyTensor, options?: GumbelSoftmaxOptions): Promise<AnyTensor> {
  return gumbelSoftmaxOf(x, options, 'gumbelSoftmaxAsync', 'async');
}

/**
 * gumbelSoftmaxBackward off the JS thread: the softmax rule at (x + g) / τ.
 *
 * @param x the forward's input [rows, cols]; dy the upstream gradient, x's shape and kind.
 * @param options the forward's `tau` and `seed` (required).
 * @returns a Promise of dx, of x's shape, dtype and kind.
 * @example
 * const dx = await gumbelSoftmaxBackwardAsync(x, dy, { tau: 0.5, seed: 7 });
 */
export function gumbelSoftmaxBackwardAsync<X extends AnyTensor>(
  x: X, dy: SameKind<X>, options: GumbelSoftmaxBackwardOptions,
): Promise<SameKind<X>>;
export async function gumbelSoftmaxBackwardAsync(x: AnyTensor, dy: AnyTensor, options: GumbelSoftmaxBackwardOptions): Promise<AnyTensor> {
  return gumbelSoftmaxBackwardOf(x, dy, options, 'gumbelSoftmaxBackwardAsync', 'async');
}

/**
 * crossEntropy off the JS thread: `loss_i = lse(z_i) − z_{i,t_i}`, reduced by `reduction`.
 *
 * @param logits [N, V], a Tensor or a DeviceTensor.
 * @param labels Int32Array [N].
 * @param options see {@link CrossEntropyOptions}.
 * @returns a Promise of `{ loss, dLogits?, lse? }`, as crossEntropy.
 * @example
 * const { loss } = await crossEntropyAsync(tensor(logits, [N, V]), labels, { reduction: 'sum' });
 */
export function crossEntropyAsync<X extends AnyTensor, R extends Reduction = 'mean'>(
  logits: X, labels: Int32Array, options?: CrossEntropyOptions<R>,
): Promise<CrossEntropyResultFor<X, R>>;
export async function crossEntropyAsync(
  logits: AnyTensor, labels: Int32Array, options?: CrossEntropyOptions,
): Promise<CrossEntropyResult | DeviceCrossEntropyResult> {
  if (isScaleOut(options)) return crossEntropy(logits, labels, options); // the communicator is synchronous
  if (logits instanceof DeviceTensor) {
    const b = onDevice(logits, 'crossEntropyAsync');
    const { o, t } = lossArgs(logits, labels, options, logits);
    return deviceLossResult(await b.deviceAsync.crossEntropy(logits, t, o), o.returnLse);
  }
  const m = asMatrix(logits, 'crossEntropy: logits');
  const { o, t } = lossArgs(m, labels, options, logits);
  return crossEntropyResult(m, await asyncOps(currentBackend()).crossEntropy(m, t, o), o.returnLse, o.out);
}

/**
 * linearCrossEntropy off the JS thread: crossEntropy of `E·Wᵀ + b` without the N×V logits.
 *
 * @param embeddings E [N, D]; classifier W [V, D] of E's kind; labels Int32Array [N].
 * @param options see {@link LinearCrossEntropyOptions}.
 * @returns a Promise of `{ loss, dEmbeddings?, dClassifier?, dBias?, lse?, workspaceBytes? }`, as linearCrossEntropy.
 * @example
 * const { loss, dEmbeddings } = await linearCrossEntropyAsync(tensor(E, [N, D]), tensor(W, [V, D]), labels);
 */
export function linearCrossEntropyAsync<X extends AnyTensor, R extends Reduction = 'mean'>(
  embeddings: X, classifier: SameKind<X>, labels: Int32Array, options?: LinearCrossEntropyOptions<R> | ZscoreLinearCrossEntropyOptions<R>,
): Promise<LinearCrossEntropyResultFor<X, R>>;
export async function linearCrossEntropyAsync(
  embeddings: AnyTensor, classifier: AnyTensor, labels: Int32Array, options?: LinearCrossEntropyOptions | ZscoreLinearCrossEntropyOptions,
): Promise<LinearCrossEntropyResult | DeviceLinearCrossEntropyResult> {
  if (isZscore(options)) {
    if (embeddings instanceof DeviceTensor) return zscoreLinearCrossEntropyOnDeviceAsync(embeddings, classifier, labels, options);
    hostOnly([[classifier, 'classifier']], 'linearCrossEntropyAsync');
    return zscoreLinearCrossEntropyAsync(embeddings, classifier, labels, options);
  }
  const sample = readClassSample(options);
  if (sample !== null) {
    return classSampled(embeddings, classifier, labels, options!, sample, (W, t, o) => linearCrossEntropyAsync(embeddings, W as never, t, o));
  }
  if (wantsCosine(options)) {
    return cosineLinearCrossEntropy(embeddings, classifier, labels, options!, (E, W, t, o) => linearCrossEntropyAsync(E, W as never, t as never, o));
  }
  if (isScaleOut(options)) return linearCrossEntropy(embeddings, classifier as never, labels, options);
  if (embeddings instanceof DeviceTensor) {
    const b = onDevice(embeddings, 'linearCrossEntropyAsync', [[classifier, 'classifier']]);
    const W = classifier as DeviceTensor;
    const { o, t } = linearArgs(embeddings, W, labels, options, [embeddings, W]);
    return deviceLinearResult(await b.deviceAsync.linearCrossEntropy(embeddings, W, t, o), o.returnLse);
  }
  hostOnly([[classifier, 'classifier']], 'linearCrossEntropyAsync');
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const { o, t } = linearArgs(E, W, labels, options, [embeddings, classifier]);
  return linearResult(E, W, await asyncOps(currentBackend()).linearCrossEntropy(E, W, t, o), o.returnLse, o.out);
}
