// cutloss/tfjs ops on tfjs-core + the cpu backend: values and gradients (through tf.grads,
// with the upstream gradient arriving as dy) against tfjs's own composition of the same loss
// and against the float64 reference, over the shared option matrix; no tensor may leak.
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs'; // gradient registrations for the tfjs-composed references
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import type { CrossEntropyOptions } from '../../lib/index.js';
import {
  crossEntropy, entmax15, linearCrossEntropy, logStablemax, logSumExp, sparsemax, stablemax,
} from '../../lib/tfjs/index.js';
import { casesFor, labelsFor } from '../cases.js';
import { codeOf, expectClose, lossList } from '../helpers.js';
import * as ref from '../reference64.js';
import { composable, composedLoss, type ComposeOptions } from './compose.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

const [N, D, V] = [9, 5, 37];
const CASES = casesFor(N, V);

/** Values and gradients of f at xs as plain arrays, checking that nothing stays behind. */
function gradsOf(f: (...xs: tf.Tensor[]) => tf.Tensor, xs: tf.Tensor[]): { value: number[]; grads: Float32Array[] } {
  const before = tf.memory().numTensors;
  const out = tf.tidy(() => {
    const { value, grads } = tf.valueAndGrads(f)(xs);
    return { value: Array.from(value.dataSync()), grads: grads.map((g) => Float32Array.from(g.dataSync())) };
  });
  expect(tf.memory().numTensors, 'tensors left behind').toBe(before);
  return out;
}

/** The loss with the case's gradScale applied the tfjs way: as the upstream gradient. */
function withUpstream(loss: tf.Tensor, gradScale: CrossEntropyOptions['gradScale']): tf.Tensor {
  if (gradScale === undefined) return loss;
  return typeof gradScale === 'number' ? tf.mul(loss, gradScale) : tf.mul(loss, tf.tensor1d(gradScale));
}

function split(o: CrossEntropyOptions): { gradScale: CrossEntropyOptions['gradScale']; rest: ComposeOptions } {
  const { gradScale, ...rest } = o;
  return { gradScale, rest };
}

describe('linearCrossEntropy (tfjs op)', () => {
  for (const [name, options] of CASES) {
    for (const withBias of [true, false]) {
      it(`${name}${withBias ? '' : ', no bias'}: values and gradients`, () => {
        const rng = ref.mulberry32(7);
        const E = ref.randomRows(rng, N, D, 1);
        const W = ref.randomRows(rng, V, D, 1);
        const b = ref.randomRows(rng, 1, V, 0.5)[0]!;
        const labels = labelsFor(rng, N, V, options);
        const { gradScale, rest } = split(options);
        const [Et, Wt, bt, yt] = [tf.tensor2d(ref.rowsToF32(E), [N, D]), tf.tensor2d(ref.rowsToF32(W), [V, D]),
          tf.tensor1d(Float32Array.from(b)), tf.tensor1d(labels, 'int32')];
        const ours = (e: tf.Tensor, w: tf.Tensor, bb?: tf.Tensor) =>
          withUpstream(linearCrossEntropy(e, w as tf.Tensor2D, yt, { ...rest, ...(bb ? { bias: bb as tf.Tensor1D } : {}) }), gradScale);
        const xs = withBias ? [Et, Wt, bt] : [Et, Wt];
        const got = gradsOf(ours, xs);
        const loss = tf.tidy(() => Array.from(linearCrossEntropy(Et, Wt, yt, { ...rest, ...(withBias ? { bias: bt } : {}) }).dataSync()));

        // float64 reference (every case)
        const want = ref.linearCrossEntropy(E, W, labels, { ...options, ...(withBias ? { bias: b } : {}) });
        expectClose(loss, lossList(want.loss), { rtol: 1e-5, label: 'loss' });
        expectClose(got.grads[0]!, want.dE, { rtol: 1e-5, label: 'dE' });
        expectClose(got.grads[1]!, want.dW, { rtol: 1e-5, label: 'dW' });
        if (withBias) expectClose(got.grads[2]!, want.dBias!, { rtol: 1e-5, label: 'dBias' });

        // tfjs's own composition: matMul, then the loss from tfjs ops, gradients by tfjs autodiff
        if (composable(options)) {
          const theirs = (e: tf.Tensor, w: tf.Tensor, bb?: tf.Tensor) => {
            let z = tf.matMul(e, w, false, true);
            if (bb) z = tf.add(z, bb);
            return withUpstream(composedLoss(z as tf.Tensor2D, labels, rest), gradScale);
          };
          const tfjs = gradsOf(theirs, xs);
          expectClose(got.value, tfjs.value, { rtol: 1e-5, label: 'tfjs value' });
          got.grads.forEach((g, i) => expectClose(g, tfjs.grads[i]!, { rtol: 2e-5, label: `tfjs grad ${i}` }));
        }
        tf.dispose([Et, Wt, bt, yt]);
      });
    }
  }

  it('embeddings of rank 3 give per-label losses in the labels\' shape, and the gradient in E\'s shape', () => {
    const rng = ref.mulberry32(3);
    const E = tf.tensor3d(ref.rowsToF32(ref.randomRows(rng, 6, 4, 1)), [2, 3, 4]);
    const W = tf.tensor2d(ref.rowsToF32(ref.randomRows(rng, 7, 4, 1)), [7, 4]);
    const y = tf.tensor2d([[1, 2, 3], [4, 5, 6]], [2, 3], 'int32');
    const l = linearCrossEntropy(E, W, y, { reduction: 'none' });
    expect(l.shape).toEqual([2, 3]);
    const [dE] = tf.grads((e: tf.Tensor) => tf.sum(linearCrossEntropy(e, W, y, { reduction: 'none' })))([E]);
    expect(dE!.shape).toEqual([2, 3, 4]);
    const flat = tf.grads((e: tf.Tensor) => linearCrossEntropy(e, W, tf.reshape(y, [6]), { reduction: 'sum' }))([tf.reshape(E, [6, 4])]);
    expectClose(dE!.dataSync(), flat[0]!.dataSync(), { rtol: 1e-6, label: 'dE rank 3' });
    tf.dispose([E, W, y, l, dE!, flat[0]!]);
  });
});

describe('crossEntropy (tfjs op, integer labels)', () => {
  for (const [name, options] of CASES) {
    it(`${name}: values and gradients`, () => {
      const rng = ref.mulberry32(11);
      const X = ref.randomRows(rng, N, V, 2);
      const labels = labelsFor(rng, N, V, options);
      const { gradScale, rest } = split(options);
      const [Xt, yt] = [tf.tensor2d(ref.rowsToF32(X), [N, V]), tf.tensor1d(labels, 'int32')];
      const got = gradsOf((x) => withUpstream(crossEntropy(x, yt, rest), gradScale), [Xt]);
      const loss = tf.tidy(() => Array.from(crossEntropy(Xt, yt, rest).dataSync()));
      const want = ref.crossEntropy(X, labels, options);
      expectClose(loss, lossList(want.loss), { rtol: 1e-5, label: 'loss' });
      expectClose(got.grads[0]!, want.dLogits, { rtol: 1e-5, label: 'dLogits' });
      if (composable(options)) {
        const tfjs = gradsOf((x) => withUpstream(composedLoss(x as tf.Tensor2D, labels, rest), gradScale), [Xt]);
        expectClose(got.value, tfjs.value, { rtol: 1e-5, label: 'tfjs value' });
        expectClose(got.grads[0]!, tfjs.grads[0]!, { rtol: 2e-5, label: 'tfjs dLogits' });
      }
      tf.dispose([Xt, yt]);
    });
  }

  it('float32 labels holding integers are accepted (what tfjs-layers feeds); others are E_LABEL', () => {
    const x = tf.tensor2d([[1, 2, 3], [0, 0, 1]]);
    const a = crossEntropy(x, tf.tensor1d([2, 0], 'int32')).dataSync()[0];
    const b = crossEntropy(x, tf.tensor2d([[2], [0]])).dataSync()[0];
    expect(b).toBe(a);
    expect(codeOf(() => crossEntropy(x, tf.tensor1d([2.5, 0])))).toBe('E_LABEL');
    expect(codeOf(() => crossEntropy(x, tf.tensor1d([3, 0], 'int32')))).toBe('E_LABEL');
    expect(codeOf(() => crossEntropy(tf.tensor2d([[1, 2]], [1, 2], 'int32'), tf.tensor1d([0], 'int32')))).toBe('E_DTYPE');
    expect(codeOf(() => crossEntropy(x, tf.tensor1d([2, 0], 'int32'), { gradScale: 2 } as never))).toBe('E_OPTION');
    expect(codeOf(() => linearCrossEntropy(x, tf.zeros([4, 2]) as tf.Tensor2D, tf.tensor1d([0, 1], 'int32')))).toBe('E_SHAPE');
  });
});

describe('row-wise ops (tfjs ops)', () => {
  const OPS: [string, (x: tf.Tensor) => tf.Tensor, (r: ref.Rows) => number[][], (x: ref.Rows, dy: ref.Rows) => number[][]][] = [
    ['stablemax', stablemax, ref.stablemax, ref.stablemaxBackward],
    ['logStablemax', logStablemax, ref.logStablemax, ref.logStablemaxBackward],
    ['sparsemax', sparsemax, ref.sparsemax, ref.sparsemaxBackward],
    ['entmax15', entmax15, ref.entmax15, ref.entmax15Backward],
  ];
  const SHAPES: number[][] = [[1, 1], [3, 7], [5, 33], [2, 300], [2, 3, 5], [6]];
  for (const [name, op, fwd, bwd] of OPS) {
    it(`${name}: forward and VJP against the float64 reference, any rank`, () => {
      for (const shape of SHAPES) {
        const cols = shape[shape.length - 1]!;
        const rows = shape.reduce((a, b) => a * b, 1) / cols;
        const rng = ref.mulberry32(rows * 1000 + cols);
        const X = ref.randomRows(rng, rows, cols, 2);
        const DY = ref.randomRows(rng, rows, cols, 1);
        const [x, dy] = [tf.tensor(ref.rowsToF32(X), shape), tf.tensor(ref.rowsToF32(DY), shape)];
        const y = tf.tidy(() => op(x));
        expect(y.shape).toEqual(shape);
        expectClose(y.dataSync(), fwd(X), { rtol: 1e-5, atol: 1e-6, label: `${name} [${shape}]` });
        const got = gradsOf((t) => tf.sum(tf.mul(op(t), dy)), [x]);
        expectClose(got.grads[0]!, bwd(X, DY), { rtol: 1e-5, atol: 1e-6, label: `${name} dx [${shape}]` });
        tf.dispose([x, dy, y]);
      }
    });
  }

  it('stablemax equals its tfjs composition, gradients included', () => {
    const x = tf.tensor2d(ref.rowsToF32(ref.randomRows(ref.mulberry32(5), 4, 9, 3)), [4, 9]);
    const dy = tf.randomNormal([4, 9], 0, 1, 'float32', 9);
    const composed = (t: tf.Tensor) => {
      const s = tf.where(tf.greaterEqual(t, 0), tf.add(t, 1), tf.div(1, tf.sub(1, tf.minimum(t, 0))));
      return tf.div(s, tf.sum(s, -1, true));
    };
    const a = gradsOf((t) => tf.sum(tf.mul(stablemax(t), dy)), [x]);
    const b = gradsOf((t) => tf.sum(tf.mul(composed(t), dy)), [x]);
    expectClose(a.value, b.value, { rtol: 1e-5, label: 'value' });
    expectClose(a.grads[0]!, b.grads[0]!, { rtol: 1e-5, label: 'dx' });
    tf.dispose([x, dy]);
  });

  it('logSumExp equals tf.logSumExp (plain and with temperature), and the masked reference', () => {
    const X = ref.randomRows(ref.mulberry32(8), 5, 13, 3);
    const x = tf.tensor2d(ref.rowsToF32(X), [5, 13]);
    const dy = tf.tensor1d([1, -2, 0.5, 3, 0]);
    for (const T of [1, 0.7]) {
      const a = gradsOf((t) => tf.sum(tf.mul(logSumExp(t, { temperature: T }), dy)), [x]);
      const b = gradsOf((t) => tf.sum(tf.mul(tf.logSumExp(tf.div(t, T), -1), dy)), [x]);
      expectClose(a.value, b.value, { rtol: 1e-6, label: `T=${T} value` });
      expectClose(a.grads[0]!, b.grads[0]!, { rtol: 1e-5, label: `T=${T} dx` });
    }
    const mask = Uint8Array.from({ length: 5 * 13 }, (_, i) => (i < 13 ? 0 : (i * 7) % 3 !== 0 ? 1 : 0)); // row 0 fully masked
    const y = tf.tidy(() => Array.from(logSumExp(x, { mask }).dataSync()));
    expectClose(y, ref.logSumExp(X, { mask }), { rtol: 1e-6, label: 'masked lse' });
    const got = gradsOf((t) => tf.sum(tf.mul(logSumExp(t, { mask }), dy)), [x]);
    const p = ref.softmax(X, { mask });
    const g = [1, -2, 0.5, 3, 0];
    const want = p.map((row, i) => row.map((v) => (i === 0 ? 0 : v * g[i]!)));
    expectClose(got.grads[0]!, want, { rtol: 1e-5, label: 'masked dx (fully masked row: 0)' });
    tf.dispose([x, dy]);
  });
});

describe('tapes, tidy and leaks', () => {
  it('tf.variableGrads and optimizer.minimize on variables keep the tensor count flat; no tape costs no tensors', () => {
    const rng = ref.mulberry32(21);
    const E = tf.variable(tf.tensor2d(ref.rowsToF32(ref.randomRows(rng, 16, 8, 1)), [16, 8]));
    const W = tf.variable(tf.tensor2d(ref.rowsToF32(ref.randomRows(rng, 40, 8, 0.5)), [40, 8]));
    const b = tf.variable(tf.zeros([40]) as tf.Tensor1D);
    const y = tf.tensor1d(Int32Array.from({ length: 16 }, (_, i) => (i * 7) % 40), 'int32');
    const f = () => linearCrossEntropy(E, W, y, { bias: b, labelSmoothing: 0.1 }) as tf.Scalar;
    const { value, grads } = tf.variableGrads(f);
    expect(Object.keys(grads).sort()).toEqual([E.name, W.name, b.name].sort());
    tf.dispose([value, ...Object.values(grads)]);
    const opt = tf.train.adam(0.05);
    opt.minimize(f); // creates the optimizer's slots
    const before = tf.memory().numTensors;
    let first = NaN;
    let last = NaN;
    for (let i = 0; i < 20; i++) {
      const l = opt.minimize(f, true)!;
      last = l.dataSync()[0]!;
      if (i === 0) first = last;
      l.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    expect(last).toBeLessThan(first);
    const n = tf.memory().numTensors;
    const l = tf.tidy(() => tf.add(f(), crossEntropy(tf.matMul(E, W, false, true), y)));
    expect(tf.memory().numTensors).toBe(n + 1);
    l.dispose();
    tf.dispose([E, W, b, y]);
    opt.dispose();
  });

  it('reduction none: a uniform dy (tf.mean) and a per-row dy (weighted sum) both give the right gradients', () => {
    const rng = ref.mulberry32(4);
    const E = tf.tensor2d(ref.rowsToF32(ref.randomRows(rng, 8, 6, 1)), [8, 6]);
    const W = tf.tensor2d(ref.rowsToF32(ref.randomRows(rng, 30, 6, 1)), [30, 6]);
    const labels = Int32Array.from({ length: 8 }, (_, i) => (i * 11) % 30);
    const y = tf.tensor1d(labels, 'int32');
    const weights = [0.5, 1, 2, 0, 1, 1, 3, 1];
    const a = gradsOf((e, w) => tf.mean(linearCrossEntropy(e, w as tf.Tensor2D, y, { reduction: 'none' })), [E, W]);
    const b = gradsOf((e, w) => tf.sum(tf.mul(linearCrossEntropy(e, w as tf.Tensor2D, y, { reduction: 'none' }), tf.tensor1d(weights))), [E, W]);
    const Er = Array.from({ length: 8 }, (_, i) => Array.from(E.dataSync().subarray(i * 6, i * 6 + 6)));
    const Wr = Array.from({ length: 30 }, (_, i) => Array.from(W.dataSync().subarray(i * 6, i * 6 + 6)));
    const ra = ref.linearCrossEntropy(Er, Wr, labels, { reduction: 'mean' });
    const rb = ref.linearCrossEntropy(Er, Wr, labels, { reduction: 'none', gradScale: weights });
    expectClose(a.grads[0]!, ra.dE, { rtol: 1e-5, label: 'mean dE' });
    expectClose(a.grads[1]!, ra.dW, { rtol: 1e-5, label: 'mean dW' });
    expectClose(b.grads[0]!, rb.dE, { rtol: 1e-5, label: 'weighted dE' });
    expectClose(b.grads[1]!, rb.dW, { rtol: 1e-5, label: 'weighted dW' });
    tf.dispose([E, W, y]);
  });

  it('a second backward through the same forward (tf.grad of a reused loss) is right too', () => {
    const x = tf.tensor2d([[1, 2, 0.5], [-1, 0, 3]]);
    const y = tf.tensor1d([0, 2], 'int32');
    // The loss is used twice: two paths reach the op's output, which tfjs sums into one dy.
    const f = (t: tf.Tensor) => { const l = crossEntropy(t, y); return tf.add(tf.mul(l, 2), tf.mul(l, 3)); };
    const g = gradsOf(f, [x]);
    const want = ref.crossEntropy([[1, 2, 0.5], [-1, 0, 3]], [0, 2], { gradScale: 5 }).dLogits;
    expectClose(g.grads[0]!, want, { rtol: 1e-5, label: 'dx' });
    tf.dispose([x, y]);
  });
});

describe('data movement on the cpu backend', () => {
  it('dataSync returns the backing array and tf.tensor adopts a Float32Array: the bridge copies nothing', () => {
    // The bridge's zero-copy claim rests on these two tfjs behaviours; if tfjs changes them this fails.
    const f = new Float32Array([1, 2, 3, 4]);
    const t = tf.tensor(f, [2, 2]);
    expect(t.dataSync()).toBe(f);
    expect(t.dataSync()).toBe(t.dataSync());
    const i = tf.tensor1d([1, 2], 'int32');
    expect(i.dataSync()).toBe(i.dataSync());
    tf.dispose([t, i]);
  });

  it('gradients come back as the arrays cutloss wrote (one allocation each, no copy into tfjs)', () => {
    const backend = tf.backend() as unknown as { write: (values: unknown, shape: number[], dtype: string) => unknown };
    const written: unknown[] = [];
    const write = backend.write.bind(backend);
    backend.write = (values, shape, dtype) => { written.push(values); return write(values, shape, dtype); };
    try {
      const E = tf.randomNormal([64, 32]);
      const W = tf.randomNormal([500, 32]);
      const y = tf.tensor1d(Int32Array.from({ length: 64 }, (_, i) => i), 'int32');
      written.length = 0;
      const [dE, dW] = tf.grads((e: tf.Tensor, w: tf.Tensor) => linearCrossEntropy(e, w as tf.Tensor2D, y))([E, W]);
      // each gradient's storage is an array handed to write() as is, and nothing N×V was written
      const store = (t: tf.Tensor) => (tf.backend() as unknown as { data: { get: (id: object) => { values: unknown } } }).data.get(t.dataId).values;
      expect(written).toContain(store(dE!));
      expect(written).toContain(store(dW!));
      expect(Math.max(...written.map((v) => (v as { length: number }).length))).toBeLessThan(64 * 500);
      tf.dispose([E, W, y, dE!, dW!]);
    } finally {
      backend.write = write;
    }
  });
});
