// Labels of the wrong type are reported as such (labels are exactly an Int32Array).
import { crossEntropy, linearCrossEntropyAsync, tensor, upload } from 'cutloss';

const x = tensor(new Float32Array(6), [2, 3]);
const E = tensor(new Float32Array(4), [2, 2]);
const W = tensor(new Float32Array(6), [3, 2]);

// @error TS2345|TS2740 'number\[\]'
crossEntropy(x, [0, 2]);
// @error TS2345|TS2740 'number\[\]'
crossEntropy(upload(x), [0, 2]);
// @error TS2345|TS2740 'number\[\]'
linearCrossEntropyAsync(E, W, [0, 2], { reduction: 'none' });
