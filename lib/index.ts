// cutloss public API: validates arguments, resolves options, dispatches to the selected
// backend, and returns results in the input's kind of storage. Names and shapes follow
// DESIGN.md's contract; README "Semantics" gives every formula.

import { currentBackend, type SoftmaxSettings } from './backend.js';
import { CutlossError, describe } from './errors.js';
import {
  asOptionsObject, checkKnownKeys, resolveLabels, resolveLossOptions, resolveTemperature,
  type CrossEntropyOptions, type LinearCrossEntropyOptions,
} from './options.js';
import { asMatrix, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';

export { CutlossError, type CutlossErrorCode } from './errors.js';
export { backends, getBackend, setBackend, type BackendInfo, type BackendName } from './backend.js';
export { tensor, bf16ToF32, f32ToBf16, type Tensor, type Dtype } from './tensor.js';
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
}

// ---------------------------------------------------------------- argument checks

function softmaxSettings(x: Matrix, options: unknown, fn: string, allowMask = true): SoftmaxSettings {
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
export function logSumExp(x: Tensor, options?: SoftmaxOptions): Float32Array {
  const m = asMatrix(x, 'logSumExp: x');
  return currentBackend().logSumExp(m, softmaxSettings(m, options, 'logSumExp'));
}

export function softmax(x: Tensor, options?: SoftmaxOptions): Tensor {
  const m = asMatrix(x, 'softmax: x');
  return resultLike(m, currentBackend().softmax(m, softmaxSettings(m, options, 'softmax'), false));
}

export function logSoftmax(x: Tensor, options?: SoftmaxOptions): Tensor {
  const m = asMatrix(x, 'logSoftmax: x');
  return resultLike(m, currentBackend().softmax(m, softmaxSettings(m, options, 'logSoftmax'), true));
}

export function softmaxBackward(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Tensor {
  const m = asMatrix(x, 'softmaxBackward: x');
  const g = upstream(m, dy, 'softmaxBackward');
  return resultLike(m, currentBackend().softmaxBackward(m, g, softmaxSettings(m, options, 'softmaxBackward'), false));
}

export function logSoftmaxBackward(x: Tensor, dy: Tensor, options?: SoftmaxOptions): Tensor {
  const m = asMatrix(x, 'logSoftmaxBackward: x');
  const g = upstream(m, dy, 'logSoftmaxBackward');
  return resultLike(m, currentBackend().softmaxBackward(m, g, softmaxSettings(m, options, 'logSoftmaxBackward'), true));
}

/** StableMax: s(x_j) / Σ s(x_k), s(x) = x + 1 (x ≥ 0), 1 / (1 − x) (x < 0). */
export function stablemax(x: Tensor): Tensor {
  const m = asMatrix(x, 'stablemax: x');
  return resultLike(m, currentBackend().stablemax(m, false));
}

export function logStablemax(x: Tensor): Tensor {
  const m = asMatrix(x, 'logStablemax: x');
  return resultLike(m, currentBackend().stablemax(m, true));
}

export function stablemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor {
  noOptions(options, 'stablemaxBackward');
  const m = asMatrix(x, 'stablemaxBackward: x');
  return resultLike(m, currentBackend().stablemaxBackward(m, upstream(m, dy, 'stablemaxBackward'), false));
}

export function logStablemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor {
  noOptions(options, 'logStablemaxBackward');
  const m = asMatrix(x, 'logStablemaxBackward: x');
  return resultLike(m, currentBackend().stablemaxBackward(m, upstream(m, dy, 'logStablemaxBackward'), true));
}

/** Euclidean projection onto the simplex: max(x_j − τ, 0) with an exact τ. */
export function sparsemax(x: Tensor): Tensor {
  const m = asMatrix(x, 'sparsemax: x');
  return resultLike(m, currentBackend().sparsemax(m));
}

export function sparsemaxBackward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor {
  noOptions(options, 'sparsemaxBackward');
  const m = asMatrix(x, 'sparsemaxBackward: x');
  return resultLike(m, currentBackend().sparsemaxBackward(m, upstream(m, dy, 'sparsemaxBackward')));
}

/** 1.5-entmax: max(x_j / 2 − τ, 0)² with an exact τ. */
export function entmax15(x: Tensor): Tensor {
  const m = asMatrix(x, 'entmax15: x');
  return resultLike(m, currentBackend().entmax15(m));
}

export function entmax15Backward(x: Tensor, dy: Tensor, options?: Record<string, never>): Tensor {
  noOptions(options, 'entmax15Backward');
  const m = asMatrix(x, 'entmax15Backward: x');
  return resultLike(m, currentBackend().entmax15Backward(m, upstream(m, dy, 'entmax15Backward')));
}

/** softmax((x + g) / τ) with Philox Gumbel noise g; `hard` gives the straight-through one-hot. */
export function gumbelSoftmax(x: Tensor, options?: GumbelSoftmaxOptions): Tensor {
  const m = asMatrix(x, 'gumbelSoftmax: x');
  const g = gumbelSettings(options, 'gumbelSoftmax', false);
  return resultLike(m, currentBackend().gumbelSoftmax(m, g.tau, g.hard, g.seed));
}

/** The soft sample's VJP (also for hard samples); needs the forward's seed and tau. */
export function gumbelSoftmaxBackward(x: Tensor, dy: Tensor, options: GumbelSoftmaxOptions): Tensor {
  const m = asMatrix(x, 'gumbelSoftmaxBackward: x');
  const g = gumbelSettings(options, 'gumbelSoftmaxBackward', true);
  return resultLike(m, currentBackend().gumbelSoftmaxBackward(m, upstream(m, dy, 'gumbelSoftmaxBackward'), g.tau, g.seed));
}

// ---------------------------------------------------------------- losses

/** Cross-entropy from logits [N, V] with every option of README "Losses". */
export function crossEntropy(logits: Tensor, labels: Int32Array, options?: CrossEntropyOptions): CrossEntropyResult {
  const m = asMatrix(logits, 'crossEntropy: logits');
  const o = resolveLossOptions(options, m.rows, m.cols, m.dtype, false);
  const t = resolveLabels(labels, m.rows, m.cols, o.ignoreIndex);
  const out = currentBackend().crossEntropy(m, t, o);
  const result: CrossEntropyResult = { loss: out.loss };
  if (out.dLogits !== null) result.dLogits = resultLike(m, out.dLogits);
  if (o.returnLse) result.lse = out.lse;
  return result;
}

/**
 * Cross-entropy of E·Wᵀ + b without forming the N×V logits: embeddings E [N, D],
 * classifier W [V, D]; gradients for E, W and the bias.
 */
export function linearCrossEntropy(
  embeddings: Tensor, classifier: Tensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): LinearCrossEntropyResult {
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  if (E.cols !== W.cols) {
    throw new CutlossError(
      'E_SHAPE',
      `linearCrossEntropy: embeddings [N, D] and classifier [V, D] must share D; got D = ${E.cols} and ${W.cols}`,
    );
  }
  const dtype = E.dtype === 'bf16' || W.dtype === 'bf16' ? 'bf16' : 'f32';
  const o = resolveLossOptions(options, E.rows, W.rows, dtype, true);
  const t = resolveLabels(labels, E.rows, W.rows, o.ignoreIndex);
  const out = currentBackend().linearCrossEntropy(E, W, t, o);
  const result: LinearCrossEntropyResult = { loss: out.loss };
  if (out.dEmbeddings !== null) result.dEmbeddings = resultLike(E, out.dEmbeddings);
  if (out.dClassifier !== null) result.dClassifier = resultLike(W, out.dClassifier);
  if (out.dBias !== null) result.dBias = out.dBias;
  if (o.returnLse) result.lse = out.lse;
  return result;
}

// The reference backend computes on the calling thread; the async twins still settle
// asynchronously (errors reject, never throw), so code written for them works on every backend.
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

export function crossEntropyAsync(
  logits: Tensor, labels: Int32Array, options?: CrossEntropyOptions,
): Promise<CrossEntropyResult> {
  return later(() => crossEntropy(logits, labels, options));
}

export function linearCrossEntropyAsync(
  embeddings: Tensor, classifier: Tensor, labels: Int32Array, options?: LinearCrossEntropyOptions,
): Promise<LinearCrossEntropyResult> {
  return later(() => linearCrossEntropy(embeddings, classifier, labels, options));
}
