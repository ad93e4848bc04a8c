// The same first use as consumer.mjs, from CommonJS.
const { backends, crossEntropy, linearCrossEntropy, softmax, tensor, CutlossError } = require('cutloss');
const { checkAddon, checkLoss } = require('./consumer-checks.cjs');

checkAddon(Object.fromEntries(backends().map((b) => [b.name, b])), process.env.CUTLOSS_EXPECT);
checkLoss({ crossEntropy, linearCrossEntropy, softmax, tensor, CutlossError });
if (!require.resolve('cutloss').endsWith('dist/cjs/index.js')) throw new Error(`require resolved ${require.resolve('cutloss')}`);
console.log('cjs: ok');
