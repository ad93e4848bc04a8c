// Host and device tensors cannot be mixed in one call; the backward needs the forward's seed.
import { gumbelSoftmaxBackward, linearCrossEntropy, softmax, softmaxBackward, tensor, upload, type Tensor } from 'cutloss';

const x = tensor(new Float32Array(6), [2, 3]);
const E = tensor(new Float32Array(4), [2, 2]);
const W = tensor(new Float32Array(6), [3, 2]);

// @error TS2345|TS2741 'DeviceTensor'
linearCrossEntropy(E, upload(W), new Int32Array([0, 2]));
// @error TS2345|TS2741 'DeviceTensor'
softmaxBackward(x, upload(x));
// @error TS2345|TS2741 'seed'
gumbelSoftmaxBackward(x, x, { tau: 0.5 });
// @error TS2322|TS2741 'DeviceTensor'
const y: Tensor = softmax(upload(x));
console.log(y);
