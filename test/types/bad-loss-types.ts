// The swapped assignments: a mean loss is no Float32Array, a per-row loss no number.
import { crossEntropy, crossEntropyAsync, linearCrossEntropy, tensor, type Reduction } from 'cutloss';

const x = tensor(new Float32Array(6), [2, 3]);
const labels = new Int32Array([0, 2]);
const E = tensor(new Float32Array(4), [2, 2]);
const W = tensor(new Float32Array(6), [3, 2]);

// @error TS2322 'number' is not assignable to type 'Float32Array
const a: Float32Array = crossEntropy(x, labels).loss;
// @error TS2322 'Float32Array<ArrayBuffer(?:Like)?>' is not assignable to type 'number'
const b: number = crossEntropy(x, labels, { reduction: 'none' }).loss;
// @error TS2322 'number' is not assignable to type 'Float32Array
const c: Float32Array = linearCrossEntropy(E, W, labels, { reduction: 'sum' }).loss;
declare const reduction: Reduction;
// @error TS2322 'number' is not assignable to type 'Float32Array
const d: Float32Array = crossEntropy(x, labels, { reduction }).loss;
crossEntropyAsync(x, labels, { reduction: 'none' }).then((r) => {
  // @error TS2322 'Float32Array<ArrayBuffer(?:Like)?>' is not assignable to type 'number'
  const e: number = r.loss;
  return e;
});
console.log(a, b, c, d);
