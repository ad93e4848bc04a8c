// A loss for tfjs-layers' model.compile({ loss }) on integer labels.
//
// tfjs-layers' own sparseCategoricalCrossentropy one-hot encodes the labels (an N×V tensor),
// and clips its input to [ε, 1 − ε] before it looks at fromLogits, so with fromLogits: true
// every logit outside (0, 1) is clipped and gets no gradient. This one reads the labels as
// integers and, with fromLogits, takes the logits as they are.

import * as tf from '@tensorflow/tfjs-core';
import { crossEntropy, type TfCrossEntropyOptions } from './ops.js';

/** tfjs-layers' epsilon (the clip of probabilities, fromLogits false). */
const EPSILON = 1e-7;

export interface SparseCategoricalCrossentropyOptions extends TfCrossEntropyOptions {
  /**
   * true: yPred are logits (nothing else is formed; the gradient is cutloss's). false (the
   * Keras default): yPred are probabilities, clipped to [ε, 1 − ε]; the loss is
   * −log(p_t / Σ_j p_j), Keras's normalize-then-log, formed as crossEntropy(log p).
   */
  fromLogits?: boolean;
}

export type LossFunction = (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Tensor;

/** Marks a loss whose targets are integer labels (one per row of yPred), for compileWithIntegerLabels. */
export const INTEGER_LABELS: unique symbol = Symbol.for('cutloss.tfjs.integerLabels');

export const takesIntegerLabels = (f: unknown): boolean =>
  typeof f === 'function' && (f as unknown as Record<symbol, unknown>)[INTEGER_LABELS] === true;

/**
 * A loss function for model.compile({ loss }) (through compileWithIntegerLabels from
 * 'cutloss/tfjs/layers', which lets fit accept integer targets): yTrue holds integer labels (int32 or float32,
 * one per row of yPred, e.g. [N] or [N, 1]), yPred [..., V]. Returns the per-row losses
 * (reduction 'none' by default, which is what compile expects: fit averages them and applies
 * sample weights); every other option of the core crossEntropy is accepted.
 */
export function sparseCategoricalCrossentropy(options: SparseCategoricalCrossentropyOptions = {}): LossFunction {
  const { fromLogits = false, ...rest } = options;
  const ce = { reduction: 'none' as const, ...rest };
  const loss: LossFunction = (yTrue, yPred) => {
    if (fromLogits) return crossEntropy(yPred, yTrue, ce);
    return tf.tidy(() => crossEntropy(tf.log(tf.clipByValue(yPred, EPSILON, 1 - EPSILON)), yTrue, ce));
  };
  Object.defineProperty(loss, INTEGER_LABELS, { value: true });
  return loss;
}

/**
 * The compile loss of a model whose output already is the loss (a FusedLinearCrossEntropy
 * head from 'cutloss/tfjs/layers'): returns yPred, ignores yTrue.
 */
export const passThroughLoss: LossFunction = (_yTrue, yPred) => yPred;
