// cutloss's losses and normalizers as TensorFlow.js ops with gradients.
//
// Mechanism: tf.customGrad. The op's forward and its vector-Jacobian product are both
// cutloss calls on host data, so one definition serves every tfjs backend (cpu, wasm, webgl,
// node), and the op takes part in tf.grads, tf.variableGrads, optimizer.minimize and
// model.fit like any built-in op. registerKernel + registerGradient would need one kernel
// per backend and cannot carry plain option values (class weights, a mask) as cleanly as a
// closure does; it would buy nothing here because cutloss does the arithmetic either way.
//
// The fused losses compute loss and gradients in one native call (three GEMMs for the linear
// head where a forward and a separate backward take four). So when the tape is recording,
// the forward asks for the gradients at gradScale 1 and keeps them as plain typed arrays
// (never as tfjs tensors, which would leak if no backward came); the backward multiplies
// them by the upstream gradient dy, since gradients are linear in it. Only a per-row dy that
// differs between rows (reduction 'none' followed by something other than a mean or a sum)
// needs a second call, with gradScale = dy. Outside a tape the forward computes the loss only.

import * as tf from '@tensorflow/tfjs-core';
import * as core from '../index.js';
import { CutlossError } from '../index.js';
import type { CrossEntropyOptions, LinearCrossEntropyOptions, Tensor as HostTensor } from '../index.js';
import { adopt, hostLabels, hostMatrix, hostVector, tapeIsRecording } from './bridge.js';

/** Options of the core crossEntropy that tfjs cannot set itself (the upstream gradient comes from dy). */
export type TfCrossEntropyOptions =
  Omit<CrossEntropyOptions, 'gradScale' | 'computeGrad' | 'returnLse' | 'vocabParallel' | 'dataParallel' | 'out' | 'inPlace'>;

/** Options of the core linearCrossEntropy, with the bias as a tfjs tensor. */
export interface TfLinearCrossEntropyOptions
  extends Omit<LinearCrossEntropyOptions, 'gradScale' | 'computeGrad' | 'returnLse' | 'bias' | 'vocabParallel' | 'dataParallel' | 'out' | 'classSample'> {
  /** [V], added to the logits; differentiable. */
  bias?: tf.Tensor1D | tf.Variable;
}

type CustomGradientFunc = Parameters<typeof tf.customGrad>[0];

const SET_BY_TFJS = ['gradScale', 'computeGrad', 'returnLse'] as const;

function checkOptions(options: object | undefined, fn: string): Record<string, unknown> {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object') throw new CutlossError('E_OPTION', `${fn}: options must be an object`);
  for (const key of SET_BY_TFJS) {
    if (key in options) {
      throw new CutlossError(
        'E_OPTION',
        `${fn}: options.${key} is not accepted by the tfjs op: tfjs supplies the upstream gradient (dy) and decides whether gradients are needed`,
      );
    }
  }
  return options as Record<string, unknown>;
}

/**
 * The upstream gradient as gradScale: a number when it is one value for every counted row
 * (always for 'mean' and 'sum'; for 'none' when dy is uniform over non-ignored rows, as after
 * tf.mean or tf.sum), else dy itself, per row.
 */
function upstreamScale(dy: tf.Tensor, labels: Int32Array, ignoreIndex: number): number | Float32Array {
  const g = dy.dataSync() as Float32Array;
  if (g.length === 1) return g[0]!;
  let common: number | null = null;
  for (let i = 0; i < g.length; i++) {
    if (labels[i] === ignoreIndex) continue;
    if (common === null) common = g[i]!;
    else if (g[i] !== common) return g;
  }
  return common ?? 0;
}

function scaleInPlace(a: Float32Array | Uint16Array | undefined, s: number): void {
  if (a === undefined || s === 1) return;
  if (!(a instanceof Float32Array)) throw new CutlossError('E_INTERNAL', 'tfjs bridge: expected an f32 gradient');
  for (let i = 0; i < a.length; i++) a[i]! *= s;
}

function lossTensor(loss: number | Float32Array, shape: number[]): tf.Tensor {
  return typeof loss === 'number' ? tf.scalar(loss) : adopt(loss, shape);
}

function f32(t: HostTensor | undefined, what: string): Float32Array {
  if (t === undefined || !(t.data instanceof Float32Array)) throw new CutlossError('E_INTERNAL', `tfjs bridge: missing ${what}`);
  return t.data;
}

/**
 * Cross-entropy of E·Wᵀ + b without the N×V logits. embeddings [..., D] (rows = leading
 * axes), classifier [V, D], labels int32 with one label per row (ignoreIndex rows count
 * for nothing). Returns a tf.Scalar, or for reduction 'none' a tensor of the labels' row
 * shape (embeddings.shape without its last axis). Differentiable in embeddings, classifier
 * and options.bias; every other option of the core API is a plain value.
 */
export function linearCrossEntropy(
  embeddings: tf.Tensor, classifier: tf.Tensor2D | tf.Variable, labels: tf.Tensor, options?: TfLinearCrossEntropyOptions,
): tf.Tensor {
  const fn = 'linearCrossEntropy';
  const { bias, ...rest } = checkOptions(options, fn) as TfLinearCrossEntropyOptions;
  const E0 = hostMatrix(embeddings, `${fn}: embeddings`, 2);
  const W0 = hostMatrix(classifier, `${fn}: classifier`, 2);
  if (classifier.rank !== 2) throw new CutlossError('E_SHAPE', `${fn}: classifier must be [V, D], got [${classifier.shape.join(', ')}]`);
  const [N, V] = [E0.shape[0]!, W0.shape[0]!];
  const ignoreIndex = rest.ignoreIndex ?? -100;
  const t = hostLabels(labels, N, `${fn}: labels`);
  const lossShape = rest.reduction === 'none' ? embeddings.shape.slice(0, -1) : [];
  const taping = tapeIsRecording();

  type Grads = { dE: Float32Array; dW: Float32Array; dB: Float32Array | undefined };
  const run = (E: tf.Tensor, W: tf.Tensor, b: tf.Tensor | undefined, gradScale: number | Float32Array, computeGrad: boolean) => {
    const r = core.linearCrossEntropy(hostMatrix(E, `${fn}: embeddings`, 2), hostMatrix(W, `${fn}: classifier`, 2), t, {
      ...rest,
      ...(b === undefined ? {} : { bias: hostVector(b, V, `${fn}: options.bias`) }),
      gradScale,
      computeGrad,
    });
    const grads: Grads | null = computeGrad
      ? { dE: f32(r.dEmbeddings, 'dEmbeddings'), dW: f32(r.dClassifier, 'dClassifier'), dB: r.dBias }
      : null;
    return { loss: r.loss, grads };
  };

  const op = tf.customGrad(((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    const [E, W, b] = args as [tf.Tensor, tf.Tensor, tf.Tensor | undefined];
    const { loss, grads } = run(E, W, b, 1, taping);
    save(args as tf.Tensor[]); // clones that share storage: nothing is copied
    let kept = grads; // at gradScale 1, until the backward scales and hands them over once
    return {
      value: lossTensor(loss, lossShape),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [Es, Ws, bs] = saved as [tf.Tensor, tf.Tensor, tf.Tensor | undefined];
        const s = upstreamScale(dy, t, ignoreIndex);
        let g: Grads;
        if (kept !== null && typeof s === 'number') {
          g = kept;
          scaleInPlace(g.dE, s);
          scaleInPlace(g.dW, s);
          scaleInPlace(g.dB, s);
        } else {
          g = run(Es, Ws, bs, s, true).grads!;
        }
        kept = null;
        const out: tf.Tensor[] = [adopt(g.dE, Es.shape), adopt(g.dW, Ws.shape)];
        if (bs !== undefined) out.push(adopt(g.dB ?? new Float32Array(V), [V]));
        return out;
      },
    };
  }) as unknown as CustomGradientFunc);
  return bias === undefined ? op(embeddings, classifier) : op(embeddings, classifier, bias);
}

/**
 * Cross-entropy from logits [..., V] and integer labels (one per row, no one-hot), with
 * every option of the core API. A tf.Scalar, or for 'none' a tensor of the row shape.
 */
export function crossEntropy(logits: tf.Tensor, labels: tf.Tensor, options?: TfCrossEntropyOptions): tf.Tensor {
  const fn = 'crossEntropy';
  const rest = checkOptions(options, fn) as TfCrossEntropyOptions;
  const X0 = hostMatrix(logits, `${fn}: logits`, 1);
  const t = hostLabels(labels, X0.shape[0]!, `${fn}: labels`);
  const ignoreIndex = rest.ignoreIndex ?? -100;
  const lossShape = rest.reduction === 'none' ? logits.shape.slice(0, -1) : [];
  const taping = tapeIsRecording();
  const run = (x: tf.Tensor, gradScale: number | Float32Array, computeGrad: boolean) => {
    const r = core.crossEntropy(hostMatrix(x, `${fn}: logits`, 1), t, { ...rest, gradScale, computeGrad });
    return { loss: r.loss, dLogits: computeGrad ? f32(r.dLogits, 'dLogits') : null };
  };
  const op = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => {
    const { loss, dLogits } = run(x, 1, taping);
    save([x]);
    let kept = dLogits;
    return {
      value: lossTensor(loss, lossShape),
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => {
        const s = upstreamScale(dy, t, ignoreIndex);
        let d: Float32Array;
        if (kept !== null && typeof s === 'number') {
          d = kept;
          scaleInPlace(d, s);
        } else {
          d = run(xs!, s, true).dLogits!;
        }
        kept = null;
        return adopt(d, xs!.shape);
      },
    };
  }) as unknown as CustomGradientFunc);
  return op(logits);
}

// ---------------------------------------------------------------- row-wise normalizers

type HostForward = (x: HostTensor) => HostTensor;
type HostBackward = (x: HostTensor, dy: HostTensor) => HostTensor;

/** A row-wise op over the last axis whose backward is the core VJP at the saved input. */
function rowwise(fn: string, forward: HostForward, backward: HostBackward): (x: tf.Tensor) => tf.Tensor {
  return (x: tf.Tensor) => {
    hostMatrix(x, `${fn}: x`, 1);
    const op = tf.customGrad(((xt: tf.Tensor, save: tf.GradSaveFunc) => {
      const y = forward(hostMatrix(xt, `${fn}: x`));
      save([xt]);
      return {
        value: adopt(f32(y, fn), xt.shape),
        gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) =>
          adopt(f32(backward(hostMatrix(xs!, `${fn}: x`), hostMatrix(dy, `${fn}: dy`)), `${fn} gradient`), xs!.shape),
      };
    }) as unknown as CustomGradientFunc);
    return op(x);
  };
}

/** StableMax over the last axis: s(x_j) / Σ_k s(x_k), s(x) = x + 1 (x ≥ 0), 1/(1 − x) (x < 0). */
export const stablemax = rowwise('stablemax', (x) => core.stablemax(x), (x, dy) => core.stablemaxBackward(x, dy));
/** log StableMax over the last axis. */
export const logStablemax = rowwise('logStablemax', (x) => core.logStablemax(x), (x, dy) => core.logStablemaxBackward(x, dy));
/** Sparsemax over the last axis (exact, sort-based threshold). */
export const sparsemax = rowwise('sparsemax', (x) => core.sparsemax(x), (x, dy) => core.sparsemaxBackward(x, dy));
/** 1.5-entmax over the last axis (exact, sort-based threshold). */
export const entmax15 = rowwise('entmax15', (x) => core.entmax15(x), (x, dy) => core.entmax15Backward(x, dy));

export interface TfLogSumExpOptions {
  /** T > 0: log Σ_j exp(x_j / T). */
  temperature?: number;
  /** Uint8Array of rows·cols or cols; 0 = masked (left out of the sum, zero gradient). */
  mask?: Uint8Array;
}

/**
 * log Σ_j exp(x_j / T) over the last axis (unmasked entries): a tensor of x's shape without
 * its last axis. Gradient dy_i·softmax(x_i / T)/T; a fully masked row (−inf) gets a zero
 * gradient rather than NaN.
 */
export function logSumExp(x: tf.Tensor, options?: TfLogSumExpOptions): tf.Tensor {
  const fn = 'logSumExp';
  hostMatrix(x, `${fn}: x`, 1);
  const o = options ?? {};
  const invT = 1 / (o.temperature ?? 1);
  const op = tf.customGrad(((xt: tf.Tensor, save: tf.GradSaveFunc) => {
    const lse = core.logSumExp(hostMatrix(xt, `${fn}: x`), o);
    save([xt]);
    return {
      value: tf.tensor(lse, xt.shape.slice(0, -1), 'float32'),
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]) => {
        const m = hostMatrix(xs!, `${fn}: x`);
        const p = f32(core.softmax(m, o), 'softmax');
        const g = dy.dataSync() as Float32Array;
        const cols = m.shape[1]!;
        for (let i = 0; i < g.length; i++) {
          const s = lse[i] === -Infinity ? 0 : g[i]! * invT;
          for (let j = i * cols; j < (i + 1) * cols; j++) p[j] = s === 0 ? 0 : p[j]! * s;
        }
        return adopt(p, xs!.shape);
      },
    };
  }) as unknown as CustomGradientFunc);
  return op(x);
}
