// A user's TypeScript file: compiled by `tsc --strict --noEmit` with default settings against
// the installed package's declarations, then run.
import { crossEntropy, linearCrossEntropy, logSoftmax, tensor, type Tensor } from 'cutloss';

const logits: Tensor = tensor(new Float32Array([1, 2, 3, 3, 2, 1]), [2, 3]);
const labels = new Int32Array([2, 0]);
// the loss's type follows the reduction: a number for 'mean', a Float32Array [N] for 'none'
const mean: number = crossEntropy(logits, labels).loss;
const perRow: Float32Array = crossEntropy(logits, labels, { reduction: 'none', labelSmoothing: 0.1 }).loss;
const expected = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3;
if (Math.abs(mean - expected) > 1e-5) throw new Error(`mean loss ${mean}, expected ${expected}`);
if (!(perRow instanceof Float32Array) || perRow.length !== 2) throw new Error('reduction none gives a row per token');

const E = tensor(new Float32Array(8).fill(0.5), [2, 4]);
const W = tensor(new Float32Array(12).fill(0.25), [3, 4]);
const head = linearCrossEntropy(E, W, labels, { bias: new Float32Array(3) });
// equal logits: the loss is ln V
if (Math.abs(head.loss - Math.log(3)) > 1e-6) throw new Error(`linearCrossEntropy ${head.loss}`);
const lp = logSoftmax(logits).data;
console.log(`ts: ok (${lp.length} log-probabilities)`);
