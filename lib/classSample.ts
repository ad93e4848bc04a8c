// Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine"):
// `linearCrossEntropy(E, W, labels, { classSample: { fraction, seed } })` keeps every class that
// is a label of this batch and a seeded random subset of the others, so the loss, its softmax
// and dClassifier cover ⌈fraction·V⌉ classes (or all the labels' classes, if more) instead of V.
// The sampled rows of W (and of bias and classWeights) are gathered, the labels renumbered, and
// the ordinary fused loss runs on them; the result names the sampled classes and carries
// dClassifier / dBias rows for them only. With vocabParallel each rank samples its own slice
// (its seed stream offset by vocabStart) and the sampled slices form the sharded vocabulary.

import type { Communicator, VocabParallelOptions } from './communicator.js';
import { CutlossError, describe } from './errors.js';
import { mulberry32 } from './random.js';
import type { Matrix, Tensor } from './tensor.js';

/**
 * `classSample` of linearCrossEntropy (Partial FC): the share of the classes the loss covers and
 * the seed of the draw; every label's class is always among them.
 *
 * @example
 * const r = linearCrossEntropy(E, W, labels, { classSample: { fraction: 0.1, seed: step } });
 * r.sampledClasses; // the classes dClassifier's rows belong to
 */
export interface ClassSampleOptions {
  /** Share of the (local) classes the loss covers, in (0, 1]; every label's class is always kept. */
  fraction: number;
  /** Seed of the sample: the same seed, labels and V give the same classes on every backend. */
  seed: number;
}

export interface ClassSampleResult {
  /** Global ids of the sampled classes, ascending: dClassifier row k is class sampledClasses[k]. */
  sampledClasses: Int32Array;
}

function optionError(expected: string, got: unknown): CutlossError {
  return new CutlossError('E_OPTION', `linearCrossEntropy: option classSample must be ${expected}, got ${describe(got)}`);
}

/** The validated option, or null when absent. */
export function readClassSample(options: unknown): ClassSampleOptions | null {
  if (options === null || typeof options !== 'object') return null;
  const raw = (options as Record<string, unknown>).classSample;
  if (raw === undefined) return null;
  if (raw === null || typeof raw !== 'object') throw optionError('an object { fraction, seed }', raw);
  const { fraction, seed, ...rest } = raw as Record<string, unknown>;
  const unknownKey = Object.keys(rest)[0];
  if (unknownKey !== undefined) throw optionError('{ fraction, seed } only', `a key '${unknownKey}'`);
  if (typeof fraction !== 'number' || !(fraction > 0 && fraction <= 1)) throw optionError('{ fraction } in (0, 1]', fraction);
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed > Number.MAX_SAFE_INTEGER) {
    throw optionError('{ seed } an integer in [0, 2^53)', seed);
  }
  const o = options as Record<string, unknown>;
  if (o.out !== undefined) throw new CutlossError('E_OPTION', 'linearCrossEntropy: options out and classSample cannot be combined (dClassifier has the sampled rows only)');
  if (o.normalizer === 'zscore') throw new CutlossError('E_OPTION', "linearCrossEntropy: classSample is not defined for normalizer 'zscore'");
  if (o.dataParallel !== undefined) throw new CutlossError('E_OPTION', 'linearCrossEntropy: classSample with dataParallel: sample per rank with vocabParallel, or call without classSample');
  return { fraction, seed };
}

/** A 32-bit stream seed from the caller's seed (up to 2^53) and the slice's first class. */
function streamSeed(seed: number, vocabStart: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  return (lo ^ Math.imul(hi, 0x9e3779b1) ^ Math.imul(vocabStart + 1, 0x85ebca6b)) >>> 0;
}

/**
 * The sampled local classes (0-based within the slice [vocabStart, vocabStart + V)), ascending:
 * every class of a label in the slice, then uniformly chosen others up to ⌈fraction·V⌉.
 */
export function sampleClasses(V: number, labels: Int32Array, ignoreIndex: number, vocabStart: number, o: ClassSampleOptions): Int32Array {
  const chosen = new Uint8Array(V);
  let positives = 0;
  for (const t of labels) {
    const c = t - vocabStart;
    if (t !== ignoreIndex && c >= 0 && c < V && chosen[c] === 0) {
      chosen[c] = 1;
      positives++;
    }
  }
  const target = Math.max(positives, Math.min(V, Math.ceil(o.fraction * V - 1e-9)));
  // the other classes, shuffled just far enough (a partial Fisher–Yates) to draw what is missing
  const others = new Int32Array(V - positives);
  for (let c = 0, k = 0; c < V; c++) if (chosen[c] === 0) others[k++] = c;
  const random = mulberry32(streamSeed(o.seed, vocabStart));
  for (let k = 0; k < target - positives; k++) {
    const pick = k + Math.floor(random() * (others.length - k));
    const c = others[pick]!;
    others[pick] = others[k]!;
    chosen[c] = 1;
  }
  const ids = new Int32Array(target);
  for (let c = 0, k = 0; c < V; c++) if (chosen[c] === 1) ids[k++] = c;
  return ids;
}

/** Rows `ids` of a [V, D] matrix, in its dtype. */
export function gatherRows(m: Matrix, ids: Int32Array): Tensor {
  const D = m.cols;
  const data = m.dtype === 'bf16' ? new Uint16Array(ids.length * D) : new Float32Array(ids.length * D);
  for (let k = 0; k < ids.length; k++) data.set(m.data.subarray(ids[k]! * D, (ids[k]! + 1) * D), k * D);
  return { data, shape: [ids.length, D], dtype: m.dtype };
}

function gatherVector(v: unknown, ids: Int32Array): unknown {
  if (!(v instanceof Float32Array)) return v; // absent, or wrong: the inner call reports it
  return Float32Array.from(ids, (c) => v[c]!);
}

/** What the inner call takes: the renumbered labels and the options for the sampled classes. */
export interface SampledProblem {
  ids: Int32Array; // local, ascending
  globalIds: Int32Array;
  labels: Int32Array;
  options: Record<string, unknown>;
}

/**
 * Samples the classes of W [V, D] (a slice under vocabParallel) and renumbers the labels:
 * a label's new id is its class's position among all ranks' sampled classes.
 */
export function sampleProblem(V: number, labels: Int32Array, options: Record<string, unknown>, o: ClassSampleOptions): SampledProblem {
  const ignoreIndex = typeof options.ignoreIndex === 'number' ? options.ignoreIndex : -100;
  const vp = options.vocabParallel as VocabParallelOptions | undefined;
  const vocabStart = vp !== undefined && typeof vp === 'object' && vp !== null && Number.isInteger(vp.vocabStart) ? vp.vocabStart : 0;
  const vocabSize = vp !== undefined && typeof vp === 'object' && vp !== null && Number.isInteger(vp.vocabSize) ? vp.vocabSize : V;
  for (let n = 0; n < labels.length; n++) {
    const t = labels[n]!;
    if (t !== ignoreIndex && !(t >= 0 && t < vocabSize)) {
      throw new CutlossError('E_LABEL', `linearCrossEntropy: labels[${n}] = ${t} is outside [0, ${vocabSize}) and is not ignoreIndex (${ignoreIndex})`);
    }
  }
  const ids = sampleClasses(V, labels, ignoreIndex, vocabStart, o);
  const globalIds = Int32Array.from(ids, (c) => c + vocabStart);
  // position of each local class in the sample (-1: not sampled)
  const position = new Int32Array(V).fill(-1);
  ids.forEach((c, k) => (position[c] = k));
  let offset = 0;
  let total = ids.length;
  let renumbered: Int32Array;
  if (vp === undefined) {
    renumbered = Int32Array.from(labels, (t) => (t === ignoreIndex ? t : position[t]!));
  } else {
    const comm: Communicator = vp.communicator;
    // every rank's sample size, so each knows its offset and the sampled vocabulary's size
    const counts = new Float64Array(comm.size);
    counts[comm.rank] = ids.length;
    comm.allReduce(counts, 'sum');
    for (let r = 0; r < comm.rank; r++) offset += counts[r]!;
    total = counts.reduce((a, b) => a + b, 0);
    // a label's new id comes from the rank that owns its class (the others add 0)
    const ids64 = new Float64Array(labels.length);
    labels.forEach((t, n) => {
      const c = t - vocabStart;
      if (t !== ignoreIndex && c >= 0 && c < V) ids64[n] = offset + position[c]!;
    });
    comm.allReduce(ids64, 'sum');
    renumbered = Int32Array.from(labels, (t, n) => (t === ignoreIndex ? t : ids64[n]!));
  }
  const { classSample: _dropped, ...rest } = options;
  const inner: Record<string, unknown> = { ...rest, bias: gatherVector(options.bias, ids), classWeights: gatherVector(options.classWeights, ids) };
  if (inner.bias === undefined) delete inner.bias;
  if (inner.classWeights === undefined) delete inner.classWeights;
  if (vp !== undefined) inner.vocabParallel = { ...vp, vocabStart: offset, vocabSize: total };
  return { ids, globalIds, labels: renumbered, options: inner };
}
