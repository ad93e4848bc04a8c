// The losses of README "Losses" composed from TensorFlow.js's own ops (one-hot labels,
// logSoftmax, …) so that tfjs's autodiff gives an independent gradient to compare with.
// Softmax and StableMax normalizers; sparsemax needs a sort that tfjs cannot differentiate,
// so those cases are held to the float64 reference only.

import * as tf from '@tensorflow/tfjs-core';
import type { CrossEntropyOptions } from '../../lib/index.js';

/** Whether tfjs can compose this option set here. */
export const composable = (o: CrossEntropyOptions) => o.normalizer !== 'sparsemax';

/** Options without the upstream gradient (it comes in as dy). */
export type ComposeOptions = Omit<CrossEntropyOptions, 'gradScale'>;

/**
 * loss(logits [N, V], labels) as tfjs ops. The plain softmax case is exactly
 * tf.losses.softmaxCrossEntropy on one-hot labels with ignored rows weighted 0.
 */
export function composedLoss(logits: tf.Tensor2D, labels: Int32Array, o: ComposeOptions): tf.Tensor {
  const V = logits.shape[1];
  const ignore = o.ignoreIndex ?? -100;
  const keep = Float32Array.from(labels, (t) => (t === ignore ? 0 : 1));
  const safe = Int32Array.from(labels, (t) => (t === ignore ? 0 : t));
  const m = tf.tensor1d(keep);
  const onehot = tf.oneHot(tf.tensor1d(safe, 'int32'), V).toFloat() as tf.Tensor2D;
  const reduction = o.reduction ?? 'mean';
  const plain = Object.keys(o).every((k) => k === 'reduction' || k === 'ignoreIndex');
  if (plain && reduction === 'mean') return tf.losses.softmaxCrossEntropy(onehot, logits, m);

  let x: tf.Tensor2D = logits;
  if (o.softcap !== undefined) x = tf.mul(tf.tanh(tf.div(x, o.softcap)), o.softcap);
  const z = tf.div(x, o.temperature ?? 1) as tf.Tensor2D;
  const lse = tf.logSumExp(z, -1);
  let logp: tf.Tensor2D; // log p_j, and ℓ_j = −log p_j
  if (o.normalizer === 'stablemax') {
    const s = tf.where(tf.greaterEqual(z, 0), tf.add(z, 1), tf.div(1, tf.sub(1, tf.minimum(z, 0))));
    logp = tf.sub(tf.log(s), tf.log(tf.sum(s, -1, true)));
  } else {
    logp = tf.logSoftmax(z);
  }
  const p = tf.exp(logp);
  const w = o.classWeights ? tf.tensor1d(o.classWeights) : tf.ones([V]);
  const wt = tf.sum(tf.mul(onehot, w), -1); // w_{t_i}
  const alpha = o.labelSmoothing ?? 0;
  const a = tf.add(tf.mul(onehot, tf.expandDims(tf.mul(wt, 1 - alpha), 1)), tf.mul(w, alpha / V));
  const C = tf.neg(tf.sum(tf.mul(a, logp), -1));
  const pt = tf.sum(tf.mul(onehot, p), -1);
  const gamma = o.focalGamma ?? 0;
  const F = gamma === 0 ? tf.onesLike(pt) : tf.pow(tf.sub(1, pt), gamma);
  let U: tf.Tensor = tf.zerosLike(pt);
  if (o.polyEpsilon) U = tf.add(U, tf.mul(tf.sub(1, pt), o.polyEpsilon));
  if (o.zLoss) U = tf.add(U, tf.mul(tf.square(lse), o.zLoss));
  if (o.squentropy && V > 1) U = tf.add(U, tf.div(tf.sum(tf.mul(tf.sub(1, onehot), tf.square(z)), -1), V - 1));
  const FC = tf.mul(tf.mul(F, C), m);
  U = tf.mul(U, m);
  if (reduction === 'none') return tf.add(FC, U);
  if (reduction === 'sum') return tf.add(tf.sum(FC), tf.sum(U));
  const n = keep.reduce((s, v) => s + v, 0);
  return tf.add(tf.div(tf.sum(FC), tf.sum(tf.mul(wt, m))), tf.div(tf.sum(U), n));
}
