// A misspelt or misplaced option is reported by name, not as "No overload matches this call".
import { crossEntropy, crossEntropyAsync, linearCrossEntropy, softmax, stablemax, sparsemaxAsync, tensor, upload } from 'cutloss';

const x = tensor(new Float32Array(6), [2, 3]);
const labels = new Int32Array([0, 2]);
const E = tensor(new Float32Array(4), [2, 2]);
const W = tensor(new Float32Array(6), [3, 2]);

// @error TS2561|TS2353 'temprature'
crossEntropy(x, labels, { temprature: 2 });
// @error TS2561|TS2353 'temprature'
crossEntropy(upload(x), labels, { temprature: 2 });
// @error TS2353 'bias'
crossEntropy(x, labels, { bias: new Float32Array(3) });
// @error TS2561|TS2353 'labelSmothing'
linearCrossEntropy(E, W, labels, { labelSmothing: 0.1 });
// @error TS2561|TS2353 'temprature'
crossEntropyAsync(x, labels, { temprature: 2 });
// @error TS2561|TS2353 'temprature'
softmax(x, { temprature: 2 });
// @error TS2353 'temperature'
stablemax(x, { temperature: 2 });
// @error TS2353 'seed'
sparsemaxAsync(x, { seed: 1 });
