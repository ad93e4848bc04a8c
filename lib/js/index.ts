// The reference backend: every op in plain TypeScript, blockwise where it matters.

import type { Backend } from '../backend.js';
import { toF32, type Matrix } from '../tensor.js';
import { gumbelSoftmax, gumbelSoftmaxBackward } from './gumbel.js';
import { crossEntropyJs, linearCrossEntropyJs } from './losses.js';
import { logSumExp, softmax, softmaxBackward, stablemax, stablemaxBackward, type RowwiseInput } from './rowwise.js';
import { entmax15, entmax15Backward, sparsemax, sparsemaxBackward } from './sparse.js';

const rows = (m: Matrix): RowwiseInput => ({ x: toF32(m), rows: m.rows, cols: m.cols });

export const jsBackend: Backend = {
  name: 'js',
  logSumExp: (x, o) => logSumExp(rows(x), o),
  softmax: (x, o, log) => softmax(rows(x), o, log),
  softmaxBackward: (x, dy, o, log) => softmaxBackward(rows(x), dy, o, log),
  stablemax: (x, log) => stablemax(rows(x), log),
  stablemaxBackward: (x, dy, log) => stablemaxBackward(rows(x), dy, log),
  sparsemax: (x) => sparsemax(rows(x)),
  sparsemaxBackward: (x, dy) => sparsemaxBackward(rows(x), dy),
  entmax15: (x) => entmax15(rows(x)),
  entmax15Backward: (x, dy) => entmax15Backward(rows(x), dy),
  gumbelSoftmax: (x, tau, hard, seed) => gumbelSoftmax(rows(x), tau, hard, seed),
  gumbelSoftmaxBackward: (x, dy, tau, seed) => gumbelSoftmaxBackward(rows(x), dy, tau, seed),
  crossEntropy: (logits, labels, o) => crossEntropyJs(toF32(logits), logits.rows, logits.cols, labels, o),
  linearCrossEntropy: (E, W, labels, o) => {
    const out = linearCrossEntropyJs(toF32(E), toF32(W), o.bias, E.rows, E.cols, W.rows, labels, o);
    return { loss: out.loss, lse: out.lse, dEmbeddings: out.dEmbeddings, dClassifier: out.dClassifier, dBias: out.dBias };
  },
};
