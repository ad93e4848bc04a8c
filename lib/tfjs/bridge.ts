// Moving data between TensorFlow.js tensors and cutloss's host tensors, with as few copies
// as tfjs allows:
//   - tfjs `cpu` backend: `dataSync()` returns the backing Float32Array / Int32Array itself,
//     and `tf.tensor(typedArray)` adopts the array it is given. So inputs are read as views
//     (cutloss never writes its inputs) and cutloss's results become tfjs's storage: no copy
//     either way.
//   - `wasm`: `dataSync()` copies out of the WebAssembly heap and `tf.tensor()` copies into
//     it: one copy of each input, one of each result. tfjs-node copies the same way.
// tfjs has no bf16, so everything here is f32 (labels int32).

import * as tf from '@tensorflow/tfjs-core';
import { CutlossError, type Tensor as HostTensor } from '../index.js';

/** A float32 tfjs tensor of rank ≥ 1 as a cutloss matrix over its last axis (a view where tfjs allows). */
export function hostMatrix(t: tf.Tensor, name: string, minRank = 1): HostTensor & { data: Float32Array } {
  if (!(t instanceof tf.Tensor)) {
    throw new CutlossError('E_DTYPE', `${name} must be a tf.Tensor, got ${describeValue(t)}`);
  }
  if (t.dtype !== 'float32') {
    throw new CutlossError('E_DTYPE', `${name} must be a float32 tensor, got dtype '${t.dtype}'`);
  }
  if (t.rank < minRank) {
    throw new CutlossError('E_SHAPE', `${name} must have rank ≥ ${minRank}, got shape [${t.shape.join(', ')}]`);
  }
  const cols = t.rank === 0 ? 1 : t.shape[t.rank - 1]!;
  const rows = cols === 0 ? 0 : t.size / cols;
  return { data: t.dataSync() as Float32Array, shape: [rows, cols] };
}

/** A float32 vector [n] (bias): a view where tfjs allows. */
export function hostVector(t: tf.Tensor, n: number, name: string): Float32Array {
  if (!(t instanceof tf.Tensor)) {
    throw new CutlossError('E_DTYPE', `${name} must be a tf.Tensor, got ${describeValue(t)}`);
  }
  if (t.dtype !== 'float32') throw new CutlossError('E_DTYPE', `${name} must be a float32 tensor, got dtype '${t.dtype}'`);
  if (t.size !== n || t.rank !== 1) {
    throw new CutlossError('E_SHAPE', `${name} must have shape [${n}], got [${t.shape.join(', ')}]`);
  }
  return t.dataSync() as Float32Array;
}

/**
 * Integer labels of `rows` elements: an int32 tensor is read as is (a view on `cpu`); a
 * float32 one (what tfjs-layers feeds as targets) is converted, and must hold integers.
 */
export function hostLabels(t: tf.Tensor, rows: number, name: string): Int32Array {
  if (!(t instanceof tf.Tensor)) {
    throw new CutlossError('E_DTYPE', `${name} must be a tf.Tensor of integer labels, got ${describeValue(t)}`);
  }
  if (t.size !== rows) {
    throw new CutlossError('E_SHAPE', `${name} must have ${rows} elements (one per row), got shape [${t.shape.join(', ')}]`);
  }
  if (t.dtype === 'int32') return t.dataSync() as Int32Array;
  if (t.dtype !== 'float32') throw new CutlossError('E_DTYPE', `${name} must be int32 (or float32 holding integers), got '${t.dtype}'`);
  const f = t.dataSync() as Float32Array;
  const out = new Int32Array(rows);
  for (let i = 0; i < rows; i++) {
    const v = f[i]!;
    if (!Number.isInteger(v)) throw new CutlossError('E_LABEL', `${name}[${i}] = ${v} is not an integer`);
    out[i] = v;
  }
  return out;
}

/** A tfjs float32 tensor that adopts `data` (no copy on `cpu`); the caller must not touch `data` afterwards. */
export function adopt(data: Float32Array, shape: number[]): tf.Tensor {
  return tf.tensor(data, shape, 'float32');
}

/**
 * Whether the op being called now is recorded on a gradient tape (inside tf.grads,
 * tf.variableGrads, optimizer.minimize, model.fit). Read before the custom op runs: inside
 * it tfjs has already paused the tape. Unknown engine internals count as recording, which
 * only costs a gradient that may go unused.
 */
export function tapeIsRecording(): boolean {
  const e = tf.engine() as unknown as { isTapeOn?: () => boolean };
  return typeof e.isTapeOn === 'function' ? e.isTapeOn() : true;
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'object') return v.constructor?.name ?? 'object';
  return typeof v;
}
