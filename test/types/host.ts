// Every op on host tensors, as a user writes it: compiles with zero errors.
import {
  CutlossError, backends, bf16ToF32, crossEntropy, crossEntropyAsync, entmax15, entmax15Backward, f32ToBf16, getBackend,
  gumbelSoftmax, gumbelSoftmaxBackward, linearCrossEntropy, linearCrossEntropyAsync, logSoftmax, logSoftmaxBackward,
  logStablemax, logStablemaxBackward, logSumExp, setBackend, softmax, softmaxAsync, softmaxBackward, sparsemax,
  sparsemaxBackward, stablemax, stablemaxAsync, stablemaxBackward, tensor,
  type CrossEntropyOptions, type LinearCrossEntropyOptions, type Tensor,
} from 'cutloss';

const [N, V, D] = [4, 10, 3];
const x = tensor(new Float32Array(N * V), [N, V]);
const dy: Tensor = { data: new Float32Array(N * V), shape: [N, V] };
const labels = new Int32Array([1, 2, -100, 9]);

const lse: Float32Array = logSumExp(x, { temperature: 2, mask: new Uint8Array(V) });
const ys: Tensor[] = [
  softmax(x), logSoftmax(x, { temperature: 0.5 }), stablemax(x), logStablemax(x, {}), sparsemax(x), entmax15(x),
  gumbelSoftmax(x, { tau: 0.5, hard: true, seed: 1 }),
  softmaxBackward(x, dy), logSoftmaxBackward(x, dy, { temperature: 2 }), stablemaxBackward(x, dy),
  logStablemaxBackward(x, dy, {}), sparsemaxBackward(x, dy), entmax15Backward(x, dy),
  gumbelSoftmaxBackward(x, dy, { tau: 0.5, seed: 1 }),
  softmax({ data: new Uint16Array(N * V), shape: [N, V], dtype: 'bf16' }),
];

const r = crossEntropy(x, labels, { labelSmoothing: 0.1, zLoss: 1e-4, returnLse: true, classWeights: new Float32Array(V) });
const dLogits: Tensor | undefined = r.dLogits;
const rowLse: Float32Array | undefined = r.lse;

const E = tensor(new Float32Array(N * D), [N, D]);
const W = tensor(new Float32Array(V * D), [V, D]);
const lin = linearCrossEntropy(E, W, labels, { bias: new Float32Array(V), filterEps: 'auto', deterministic: true });
const grads: (Tensor | Float32Array | undefined)[] = [lin.dEmbeddings, lin.dClassifier, lin.dBias];

// options held in variables keep their checks and their reduction
const ceOptions: CrossEntropyOptions = { normalizer: 'stablemax', ignoreIndex: -1 };
const linOptions: LinearCrossEntropyOptions<'sum'> = { reduction: 'sum', softcap: 30 };
const anyLoss: number | Float32Array = crossEntropy(x, labels, ceOptions).loss;
const sumLoss: number = linearCrossEntropy(E, W, labels, linOptions).loss;

softmaxAsync(x).then((y: Tensor) => y.shape);
stablemaxAsync(x, {}).then((y: Tensor) => y.data);
crossEntropyAsync(x, labels).then((res) => {
  const l: number = res.loss;
  return l;
});
linearCrossEntropyAsync(E, W, labels, { reduction: 'none' }).then((res) => {
  const perRow: Float32Array = res.loss;
  return perRow;
});

try {
  setBackend('js');
} catch (e) {
  if (e instanceof CutlossError && e.code === 'E_BACKEND') console.log(e.message);
}
const names: string[] = backends().filter((b) => b.available).map((b) => b.name);
const bits: number = f32ToBf16(bf16ToF32(0x3f80));
console.log(lse, ys, dLogits, rowLse, grads, anyLoss, sumLoss, names, bits, getBackend());
