// `loss` is a number for 'mean' (also when no reduction is given) and 'sum', a Float32Array
// for 'none', and the union when the reduction is only known at run time.
import { crossEntropy, linearCrossEntropy, tensor, type Reduction } from 'cutloss';

const x = tensor(new Float32Array(6), [2, 3]);
const labels = new Int32Array([0, 2]);
const E = tensor(new Float32Array(4), [2, 2]);
const W = tensor(new Float32Array(6), [3, 2]);

const byDefault: number = crossEntropy(x, labels).loss;
const withOptions: number = crossEntropy(x, labels, { zLoss: 1e-4 }).loss;
const mean: number = crossEntropy(x, labels, { reduction: 'mean' }).loss;
const sum: number = linearCrossEntropy(E, W, labels, { reduction: 'sum' }).loss;
const perRow: Float32Array = crossEntropy(x, labels, { reduction: 'none' }).loss;
const perRowLinear: Float32Array = linearCrossEntropy(E, W, labels, { reduction: 'none' }).loss;

declare const reduction: Reduction;
const either: number | Float32Array = crossEntropy(x, labels, { reduction }).loss;
console.log(byDefault, withOptions, mean, sum, perRow, perRowLinear, either);
