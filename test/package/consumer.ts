// A user's TypeScript file: compiled by `tsc --strict --noEmit` with default settings against
// the installed package's declarations, then run.
import { crossEntropy, linearCrossEntropy, logSoftmax, tensor, type Tensor } from 'cutloss';

const logits: Tensor = tensor(new Float32Array([1, 2, 3, 3, 2, 1]), [2, 3]);
const labels = new Int32Array([2, 0]);
const mean = crossEntropy(logits, labels);
const perRow = crossEntropy(logits, labels, { reduction: 'none', labelSmoothing: 0.1 });
const expected = Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)) - 3;
if (Math.abs(Number(mean.loss) - expected) > 1e-5) throw new Error(`mean loss ${String(mean.loss)}, expected ${expected}`);
if (!(perRow.loss instanceof Float32Array) || perRow.loss.length !== 2) throw new Error('reduction none gives a row per token');

const E = tensor(new Float32Array(8).fill(0.5), [2, 4]);
const W = tensor(new Float32Array(12).fill(0.25), [3, 4]);
const head = linearCrossEntropy(E, W, labels, { bias: new Float32Array(3) });
// equal logits: the loss is ln V
if (Math.abs(Number(head.loss) - Math.log(3)) > 1e-6) throw new Error(`linearCrossEntropy ${String(head.loss)}`);
const lp = logSoftmax(logits).data;
console.log(`ts: ok (${lp.length} log-probabilities)`);
