// The CommonJS declarations (dist/cjs), reached through the exports map's "require" condition.
import cutloss = require('cutloss');

const x = cutloss.tensor(new Float32Array(6), [2, 3]);
const mean: number = cutloss.crossEntropy(x, new Int32Array([0, 2])).loss;
const perRow: Float32Array = cutloss.crossEntropy(x, new Int32Array([0, 2]), { reduction: 'none' }).loss;
const d: cutloss.DeviceTensor = cutloss.softmax(cutloss.upload(x));
// @error TS2561|TS2353 'temprature'
cutloss.softmax(x, { temprature: 2 });
export = [mean, perRow, d];
