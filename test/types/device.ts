// Every op on device tensors: results stay DeviceTensors, losses and lse come back to the host.
import {
  DeviceTensor, crossEntropy, crossEntropyAsync, download, entmax15, gumbelSoftmaxBackward, linearCrossEntropy,
  linearCrossEntropyWorkspaceBytes, logSumExp, logSumExpAsync, softmax, softmaxBackward, sparsemaxBackward, stablemax,
  tensor, upload, type AnyTensor, type SameKind, type Tensor,
} from 'cutloss';

const [N, V, D] = [4, 10, 3];
const labels = new Int32Array([1, 2, -100, 9]);
const x: DeviceTensor = upload(tensor(new Float32Array(N * V), [N, V]), { backend: 'cuda-emu' });
const dy = upload(tensor(new Float32Array(N * V), [N, V]));

const lse: DeviceTensor = logSumExp(x);
const ys: DeviceTensor[] = [
  softmax(x, { temperature: 2 }), stablemax(x), entmax15(x, {}), softmaxBackward(x, dy), sparsemaxBackward(x, dy),
  gumbelSoftmaxBackward(x, dy, { seed: 3 }),
];
const r = crossEntropy(x, labels, { reduction: 'sum' });
const loss: number = r.loss;
const dLogits: DeviceTensor | undefined = r.dLogits;

const E = upload(tensor(new Float32Array(N * D), [N, D]));
const W = upload(tensor(new Float32Array(V * D), [V, D]));
const lin = linearCrossEntropy(E, W, labels);
const workspace: number = lin.workspaceBytes + linearCrossEntropyWorkspaceBytes(N, D, V, { dtype: 'bf16' });
const dE: DeviceTensor | undefined = lin.dEmbeddings;

logSumExpAsync(x).then((t: DeviceTensor) => t.dispose());
crossEntropyAsync(x, labels, { reduction: 'none' }).then((res) => {
  const perRow: Float32Array = res.loss;
  const g: DeviceTensor | undefined = res.dLogits;
  return [perRow, g];
});

// a value of either kind gets either kind back
declare const either: AnyTensor;
const back: Tensor | DeviceTensor = softmax(either);
const same: SameKind<typeof x> = softmax(x);

const host: Tensor = download(x);
x.dispose();
console.log(lse, ys, loss, dLogits, workspace, dE, back, same, host, x.disposed, x.shape, DeviceTensor.fromHandle);
