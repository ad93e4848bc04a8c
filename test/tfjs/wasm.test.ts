// The same ops on tfjs's wasm backend: the bridge reads through dataSync (a copy out of the
// WebAssembly heap) and hands results to tf.tensor (a copy into it); values and gradients
// must not depend on the backend.
import '@tensorflow/tfjs-backend-wasm';
import '@tensorflow/tfjs'; // gradient registrations
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { crossEntropy, linearCrossEntropy, sparsemax } from '../../lib/tfjs/index.js';
import { expectClose, lossList } from '../helpers.js';
import * as ref from '../reference64.js';

beforeAll(async () => {
  expect(await tf.setBackend('wasm')).toBe(true);
  await tf.ready();
});

describe('tfjs wasm backend', () => {
  it('is the active backend, and its dataSync copies (what the README says is copied)', () => {
    expect(tf.getBackend()).toBe('wasm');
    const t = tf.tensor1d([1, 2, 3]);
    expect(t.dataSync()).not.toBe(t.dataSync());
    t.dispose();
  });

  it('linearCrossEntropy with a bias: loss and gradients as the float64 reference; no leak', () => {
    const rng = ref.mulberry32(12);
    const [N, D, V] = [7, 6, 29];
    const E = ref.randomRows(rng, N, D, 1);
    const W = ref.randomRows(rng, V, D, 1);
    const b = ref.randomRows(rng, 1, V, 0.5)[0]!;
    const labels = Int32Array.from(ref.randomLabels(rng, N, V));
    labels[2] = -100;
    const xs = [tf.tensor2d(ref.rowsToF32(E), [N, D]), tf.tensor2d(ref.rowsToF32(W), [V, D]), tf.tensor1d(Float32Array.from(b))];
    const y = tf.tensor1d(labels, 'int32');
    const before = tf.memory().numTensors;
    const got = tf.tidy(() => {
      const { value, grads } = tf.valueAndGrads((e: tf.Tensor, w: tf.Tensor, bb: tf.Tensor) =>
        linearCrossEntropy(e, w as tf.Tensor2D, y, { bias: bb as tf.Tensor1D, zLoss: 1e-3, labelSmoothing: 0.1 }))(xs);
      return { value: value.dataSync()[0]!, grads: grads.map((g) => Float32Array.from(g.dataSync())) };
    });
    expect(tf.memory().numTensors).toBe(before);
    const want = ref.linearCrossEntropy(E, W, labels, { bias: b, zLoss: 1e-3, labelSmoothing: 0.1 });
    expectClose([got.value], lossList(want.loss), { rtol: 1e-5, label: 'loss' });
    expectClose(got.grads[0]!, want.dE, { rtol: 1e-5, label: 'dE' });
    expectClose(got.grads[1]!, want.dW, { rtol: 1e-5, label: 'dW' });
    expectClose(got.grads[2]!, want.dBias!, { rtol: 1e-5, label: 'dBias' });
    tf.dispose([...xs, y]);
  });

  it('crossEntropy (none, under tf.mean) and sparsemax gradients as the reference', () => {
    const X = ref.randomRows(ref.mulberry32(2), 5, 11, 2);
    const labels = [3, 0, 10, 4, 4];
    const x = tf.tensor2d(ref.rowsToF32(X), [5, 11]);
    const y = tf.tensor1d(labels, 'int32');
    const [g] = tf.grads((t: tf.Tensor) => tf.mean(crossEntropy(t, y, { reduction: 'none' })))([x]);
    expectClose(g!.dataSync(), ref.crossEntropy(X, labels, { reduction: 'none', gradScale: 0.2 }).dLogits, { rtol: 1e-5, label: 'dLogits' });
    const DY = ref.randomRows(ref.mulberry32(3), 5, 11, 1);
    const [s] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(sparsemax(t), tf.tensor2d(ref.rowsToF32(DY), [5, 11]))))([x]);
    expectClose(s!.dataSync(), ref.sparsemaxBackward(X, DY), { rtol: 1e-5, atol: 1e-6, label: 'sparsemax dx' });
    tf.dispose([x, y, g!, s!]);
  });
});
