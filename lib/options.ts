// Validation of labels and loss options: one place that turns what the caller passed into
// the resolved settings every backend receives, or throws a CutlossError naming the option.

import type { DataParallelOptions, VocabParallelOptions } from './communicator.js';
import { CutlossError, describe } from './errors.js';
import { NORMALIZER_SOFTMAX, NORMALIZER_SPARSEMAX, NORMALIZER_STABLEMAX } from './js/math.js';
import type { Dtype } from './tensor.js';

/**
 * How a loss is reduced over the N rows: `'mean'` (over non-ignored rows; weighted by the
 * target's class weight when there are class weights), `'sum'`, or `'none'` (one value per row).
 */
export type Reduction = 'mean' | 'sum' | 'none';

/**
 * What turns logits into probabilities inside a loss: `'softmax'`, `'stablemax'` (Prieto et al.
 * 2025) or `'sparsemax'` (the sparsemax loss of Martins & Astudillo 2016).
 */
export type Normalizer = 'softmax' | 'stablemax' | 'sparsemax';

/**
 * The type of `loss` for a reduction: a number for `'mean'` and `'sum'`, a Float32Array [N]
 * for `'none'`; a reduction only known at run time (`Reduction`) gives the union.
 *
 * @example
 * const perRow: LossValue<'none'> = crossEntropy(x, labels, { reduction: 'none' }).loss; // Float32Array
 */
export type LossValue<R extends Reduction> = R extends 'none' ? Float32Array : number;

/**
 * Options of `crossEntropy` (and of `linearCrossEntropy`, which adds its own). Every field is
 * optional; an unknown key is a compile error and, at run time, `E_OPTION`. `R` is the
 * reduction literal, which decides the type of `loss` (see {@link LossValue}).
 *
 * @example
 * const options: CrossEntropyOptions = { labelSmoothing: 0.1, zLoss: 1e-4, ignoreIndex: -100 };
 */
export interface CrossEntropyOptions<R extends Reduction = Reduction> {
  /** 'mean' (default): over non-ignored rows; 'sum'; 'none': a Float32Array [N]. */
  reduction?: R;
  /** Label value whose rows contribute nothing (default −100). */
  ignoreIndex?: number;
  /** α in [0, 1): the target mixes with the uniform distribution, as PyTorch. */
  labelSmoothing?: number;
  /** Float32Array [V] of per-class weights (PyTorch's `weight`). */
  classWeights?: Float32Array;
  /** λ: adds λ·lse² per row. */
  zLoss?: number;
  /** c > 0: logits become c·tanh(x / c) before the temperature. */
  softcap?: number;
  /** T > 0: logits are divided by T after the softcap. */
  temperature?: number;
  /** Default 'softmax'. */
  normalizer?: Normalizer;
  /** γ ≥ 0: focal loss factor (1 − p_t)^γ. */
  focalGamma?: number;
  /** ε: Poly-1 adds ε·(1 − p_t). */
  polyEpsilon?: number;
  /** Adds Σ_{j≠t} z_j² / (V − 1) (Hui & Belkin's squentropy). */
  squentropy?: boolean;
  /** Default true. */
  computeGrad?: boolean;
  /** Upstream gradient: a number, or a Float32Array [N] for reduction 'none'. */
  gradScale?: number | Float32Array;
  /** Return the per-row log-sum-exp of the effective logits. */
  returnLse?: boolean;
  /**
   * The classes are split over processes: this call holds classes [vocabStart, vocabStart + V_local)
   * (classifier rows, or logit columns; `bias` and `classWeights` are those slices) and labels are
   * global ids. Every rank gets the global loss and lse; see README "Scale-out".
   */
  vocabParallel?: VocabParallelOptions;
  /** The batch is split over processes: 'mean' divides by the global token count (or weight sum). */
  dataParallel?: DataParallelOptions;
}

/**
 * Options of `linearCrossEntropy`: those of {@link CrossEntropyOptions} plus the bias and the
 * fused kernels' settings.
 *
 * @example
 * const options: LinearCrossEntropyOptions = { bias: new Float32Array(V), filterEps: 'auto' };
 */
export interface LinearCrossEntropyOptions<R extends Reduction = Reduction> extends CrossEntropyOptions<R> {
  /** Float32Array [V], added to the logits. */
  bias?: Float32Array;
  /** Skip backward tiles whose |dloss/dz| are all below this: 0 = exact, 'auto' = dtype ε / 32. */
  filterEps?: number | 'auto';
  /**
   * cuda / cuda-emu: reduce dE, dW and dBias in a fixed order (bit-identical from run to run)
   * instead of with atomics; one more logit recomputation. Other backends are always deterministic.
   */
  deterministic?: boolean;
  /** cuda / cuda-emu: f32 inputs through tf32 tensor cores (10-bit mantissas, ~1e-3 relative). Ignored elsewhere. */
  tf32?: boolean;
  /**
   * cpu: the budget in bytes for a chunk of logits (rows × V × 4, at least one row); bigger
   * chunks make the GEMMs more efficient. Default 48 MiB. Ignored elsewhere.
   */
  workspaceBytes?: number;
}

export interface ResolvedLossOptions {
  reduction: Reduction;
  ignoreIndex: number;
  smoothing: number;
  classWeights: Float32Array | null;
  zLoss: number;
  softcap: number;
  invTemperature: number;
  normalizer: number;
  focalGamma: number;
  polyEpsilon: number;
  squentropy: number;
  computeGrad: boolean;
  gradScale: number | Float32Array;
  returnLse: boolean;
  bias: Float32Array | null;
  filterEps: number;
  deterministic: boolean;
  tf32: boolean;
  /** null: the backend's default. */
  workspaceBytes: number | null;
}

const COMMON_KEYS = [
  'reduction', 'ignoreIndex', 'labelSmoothing', 'classWeights', 'zLoss', 'softcap', 'temperature', 'normalizer',
  'focalGamma', 'polyEpsilon', 'squentropy', 'computeGrad', 'gradScale', 'returnLse',
];
const LINEAR_KEYS = [...COMMON_KEYS, 'bias', 'filterEps', 'deterministic', 'tf32', 'workspaceBytes'];

function optErr(name: string, expected: string, got: unknown): CutlossError {
  return new CutlossError('E_OPTION', `options.${name} must be ${expected}, got ${describe(got)}`);
}

function finite(o: Record<string, unknown>, name: string, dflt: number, check: (v: number) => boolean, expected: string): number {
  const v = o[name];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw optErr(name, expected, v);
  return v;
}

function bool(o: Record<string, unknown>, name: string, dflt: boolean): boolean {
  const v = o[name];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw optErr(name, 'a boolean', v);
  return v;
}

function vectorOption(o: Record<string, unknown>, name: string, length: number, lengthName: string): Float32Array | null {
  const v = o[name];
  if (v === undefined || v === null) return null;
  if (!(v instanceof Float32Array)) throw optErr(name, `a Float32Array [${lengthName}]`, v);
  if (v.length !== length) {
    throw new CutlossError('E_SHAPE', `options.${name} must have length ${lengthName} = ${length}, got ${v.length}`);
  }
  return v;
}

export function checkKnownKeys(o: Record<string, unknown>, allowed: readonly string[], fn: string): void {
  for (const key of Object.keys(o)) {
    if (!allowed.includes(key)) {
      const known = allowed.length === 0 ? 'it takes no options' : `known options: ${allowed.join(', ')}`;
      throw new CutlossError('E_OPTION', `${fn}: unknown option '${key}'; ${known}`);
    }
  }
}

export function asOptionsObject(options: unknown, fn: string): Record<string, unknown> {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new CutlossError('E_OPTION', `${fn}: options must be an object, got ${describe(options)}`);
  }
  return options as Record<string, unknown>;
}

/** Positive finite temperature (default 1). */
export function resolveTemperature(o: Record<string, unknown>, name = 'temperature'): number {
  return finite(o, name, 1, (v) => v > 0, 'a finite number > 0');
}

export function resolveLossOptions(
  options: unknown, rows: number, vocab: number, dtype: Dtype, linear: boolean,
): ResolvedLossOptions {
  const fn = linear ? 'linearCrossEntropy' : 'crossEntropy';
  const o = asOptionsObject(options, fn);
  checkKnownKeys(o, linear ? LINEAR_KEYS : COMMON_KEYS, fn);

  const reduction = o.reduction ?? 'mean';
  if (reduction !== 'mean' && reduction !== 'sum' && reduction !== 'none') {
    throw optErr('reduction', "'mean', 'sum' or 'none'", reduction);
  }
  const ignoreIndex = finite(o, 'ignoreIndex', -100, Number.isInteger, 'an integer');
  const smoothing = finite(o, 'labelSmoothing', 0, (v) => v >= 0 && v < 1, 'a number in [0, 1)');
  const classWeights = vectorOption(o, 'classWeights', vocab, 'V');
  if (classWeights !== null) {
    for (let j = 0; j < vocab; j++) {
      if (!Number.isFinite(classWeights[j]!)) {
        throw new CutlossError('E_OPTION', `options.classWeights[${j}] must be finite, got ${classWeights[j]}`);
      }
    }
  }
  const zLoss = finite(o, 'zLoss', 0, (v) => v >= 0, 'a finite number >= 0');
  const softcap = o.softcap === undefined ? 0 : finite(o, 'softcap', 0, (v) => v > 0, 'a finite number > 0');
  const temperature = resolveTemperature(o);
  const normalizerName = o.normalizer ?? 'softmax';
  const normalizer =
    normalizerName === 'softmax' ? NORMALIZER_SOFTMAX
    : normalizerName === 'stablemax' ? NORMALIZER_STABLEMAX
    : normalizerName === 'sparsemax' ? NORMALIZER_SPARSEMAX
    : -1;
  if (normalizer < 0) throw optErr('normalizer', "'softmax', 'stablemax' or 'sparsemax'", normalizerName);
  const focalGamma = finite(o, 'focalGamma', 0, (v) => v >= 0, 'a finite number >= 0');
  const polyEpsilon = finite(o, 'polyEpsilon', 0, () => true, 'a finite number');
  const squentropy = bool(o, 'squentropy', false) ? 1 : 0;
  const computeGrad = bool(o, 'computeGrad', true);
  const returnLse = bool(o, 'returnLse', false);

  let gradScale: number | Float32Array = 1;
  if (o.gradScale !== undefined) {
    if (typeof o.gradScale === 'number') {
      if (!Number.isFinite(o.gradScale)) throw optErr('gradScale', 'a finite number or a Float32Array [N]', o.gradScale);
      gradScale = o.gradScale;
    } else if (o.gradScale instanceof Float32Array) {
      if (reduction !== 'none') {
        throw new CutlossError('E_OPTION', `options.gradScale may be a Float32Array only with reduction 'none', got reduction '${reduction}'`);
      }
      gradScale = vectorOption(o, 'gradScale', rows, 'N')!;
    } else {
      throw optErr('gradScale', 'a finite number or a Float32Array [N]', o.gradScale);
    }
  }

  let bias: Float32Array | null = null;
  let filterEps = 0;
  const deterministic = linear ? bool(o, 'deterministic', false) : false;
  const tf32 = linear ? bool(o, 'tf32', false) : false;
  const workspaceBytes = linear && o.workspaceBytes !== undefined
    ? finite(o, 'workspaceBytes', 0, (v) => Number.isSafeInteger(v) && v >= 1, 'an integer number of bytes >= 1')
    : null;
  if (linear) {
    bias = vectorOption(o, 'bias', vocab, 'V');
    const f = o.filterEps ?? (dtype === 'bf16' ? 'auto' : 0);
    if (f === 'auto') filterEps = autoFilterEps(dtype);
    else if (typeof f === 'number' && f >= 0 && Number.isFinite(f)) filterEps = f;
    else throw optErr('filterEps', "a finite number >= 0 or 'auto'", f);
  }

  return {
    reduction, ignoreIndex, smoothing, classWeights, zLoss, softcap, invTemperature: 1 / temperature, normalizer,
    focalGamma, polyEpsilon, squentropy, computeGrad, gradScale, returnLse, bias, filterEps, deterministic, tf32,
    workspaceBytes,
  };
}

/** Cut Cross-Entropy's 'auto': machine epsilon of the input dtype / 32. */
export function autoFilterEps(dtype: Dtype): number {
  return dtype === 'bf16' ? 2 ** -7 / 32 : 2 ** -23 / 32;
}

/**
 * Labels: exactly an Int32Array of length N (the contract's type, on every backend), each in
 * [0, V) or ignoreIndex. Other arrays are E_DTYPE rather than converted: a silent copy would
 * hide wrapped or truncated values (Uint8Array, Float32Array) and cost a pass per call.
 */
export function resolveLabels(labels: unknown, rows: number, vocab: number, ignoreIndex: number): Int32Array {
  if (!(labels instanceof Int32Array)) {
    throw new CutlossError(
      'E_DTYPE',
      `labels must be an Int32Array of length N = ${rows}, got ${describe(labels)}; convert with Int32Array.from(labels)`,
    );
  }
  const out = labels;
  if (out.length !== rows) {
    throw new CutlossError('E_SHAPE', `labels must have length N = ${rows}, got ${out.length}`);
  }
  for (let i = 0; i < rows; i++) {
    const t = out[i]!;
    if (t !== ignoreIndex && (t < 0 || t >= vocab)) {
      throw new CutlossError(
        'E_LABEL',
        `labels[${i}] = ${t} is outside [0, ${vocab}) and is not ignoreIndex (${ignoreIndex})`,
      );
    }
  }
  return out;
}
