// cutloss for TensorFlow.js: tfjs ops with gradients over the core API, and a loss for
// tfjs-layers' model.compile. Needs @tensorflow/tfjs-core (an optional peer dependency) and a
// tfjs backend; the fused-head layer is in 'cutloss/tfjs/layers' (needs tfjs-layers too).

export {
  linearCrossEntropy, crossEntropy, stablemax, logStablemax, sparsemax, entmax15, logSumExp,
  type TfCrossEntropyOptions, type TfLinearCrossEntropyOptions, type TfLogSumExpOptions,
} from './ops.js';
export {
  sparseCategoricalCrossentropy, passThroughLoss, type SparseCategoricalCrossentropyOptions, type LossFunction,
} from './losses.js';
