// Validation of labels and loss options: one place that turns what the caller passed into
// the resolved settings every backend receives, or throws a CutlossError naming the option.

import type { ClassSampleOptions } from './classSample.js';
import type { DataParallelOptions, VocabParallelOptions } from './communicator.js';
import { DeviceTensor } from './device.js';
import { CutlossError, describe } from './errors.js';
import {
  FILTER_ROW_MASS, labelMargin, NORMALIZER_GUMBEL, NORMALIZER_SOFTMAX, NORMALIZER_SPARSEMAX, NORMALIZER_STABLEMAX, type LabelMargin,
} from './js/math.js';
import { asMatrix, type Dtype, type Tensor } from './tensor.js';

/**
 * How a loss is reduced over the N rows: `'mean'` (over non-ignored rows; weighted by the
 * target's class weight when there are class weights), `'sum'`, or `'none'` (one value per row).
 */
export type Reduction = 'mean' | 'sum' | 'none';

/**
 * What turns logits into probabilities inside a loss: `'softmax'`, `'stablemax'` (Prieto et al.
 * 2025), `'sparsemax'` (the sparsemax loss of Martins & Astudillo 2016) or `'gumbel'` (the Gumbel
 * optimized loss of Alexandridis et al. 2022: p_j = exp(−exp(−z_j)) per class, unnormalized, and
 * the loss w_t·[−log p_t − Σ_{j≠t} log(1 − p_j)]; not with labelSmoothing, focalGamma, polyEpsilon
 * or generalizedCE). linearCrossEntropy also takes `'zscore'` (see ZscoreLinearCrossEntropyOptions).
 */
export type Normalizer = 'softmax' | 'stablemax' | 'sparsemax' | 'gumbel';

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
  /**
   * q in (0, 1]: generalized cross-entropy (Zhang & Sabuncu 2018), w_t·(1 − p_t^q)/q in place of
   * −w_t·log p_t (q → 0 is CE, q = 1 is MAE on p). softmax or stablemax; not with labelSmoothing or focalGamma.
   */
  generalizedCE?: number;
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
  /**
   * Caller-provided gradients, written in place and returned as they are (see {@link LossOutputs});
   * crossEntropy's `{ dLogits: logits }` means inPlace. README "Caller-provided outputs".
   */
  out?: LossOutputs;
  /** crossEntropy: write dLogits into the logits tensor itself (the result's dLogits is the logits object). */
  inPlace?: boolean;
}

/**
 * Caller-provided gradients (`options.out`), each written in place and returned as it is:
 * crossEntropy takes `dLogits` (the logits' shape and dtype); linearCrossEntropy takes
 * `dEmbeddings` (E's shape and dtype), `dClassifier` (W's) and `dBias` (a Float32Array [V]).
 * Tensors for host inputs, DeviceTensors on the inputs' backend for device inputs; dBias is
 * always host memory, like the dBias result. An entry the op has no result for is E_OPTION.
 *
 * @example
 * const dLogits = tensor(new Float32Array(N * V), [N, V]);
 * crossEntropy(x, labels, { out: { dLogits } }); // result.dLogits === dLogits
 */
export interface LossOutputs {
  dLogits?: Tensor | DeviceTensor;
  dEmbeddings?: Tensor | DeviceTensor;
  dClassifier?: Tensor | DeviceTensor;
  dBias?: Float32Array;
}

/**
 * Options of `linearCrossEntropy`: those of {@link CrossEntropyOptions} plus the bias and the
 * fused kernels' settings.
 *
 * @example
 * const options: LinearCrossEntropyOptions = { bias: new Float32Array(V), filterEps: 'auto' };
 */
export interface LinearCrossEntropyOptions<R extends Reduction = Reduction> extends Omit<CrossEntropyOptions<R>, 'inPlace'> {
  /** Float32Array [V], added to the logits (kind 'dot' only). */
  bias?: Float32Array;
  /** How the raw logits come from E and W (default `{ kind: 'dot' }`); see {@link LogitsOptions}. */
  logits?: LogitsOptions;
  /**
   * Partial FC: the loss covers every label's class and a seeded random share of the others
   * (⌈fraction·V⌉ in all); the result's `sampledClasses` names them, dClassifier / dBias hold their rows.
   */
  classSample?: ClassSampleOptions;
  /**
   * Drop gradient entries whose |dloss/dz| (relative to the row's gradient scale) are below this:
   * tiles wholly below it are skipped, and the cpu backend drops single entries. 0 = exact,
   * 'auto' = dtype ε / 32. Default: 2^-24 / V for f32 (float32 rounding of the exact gradient), 'auto' for bf16.
   */
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

/**
 * The raw logits of linearCrossEntropy, before softcap, temperature and normalizer:
 * - `'dot'` (default): E·Wᵀ + b.
 * - `'cosine'`: margin softmax (CosFace / ArcFace): `scale`·cos θ_ij of row-normalized E and W
 *   (PyTorch's F.normalize: x / max(‖x‖, 1e-12), gradients through the norms), and at the label
 *   `scale`·(cos(θ_t + angularMargin) − margin). Defaults: scale 64, margin 0, angularMargin 0
 *   (in [0, π)). No bias.
 * - `'harmonic'` (Baek et al. 2025): −`exponent`·log d_ij with d_ij = ‖e_i − w_j‖ (from
 *   ‖e‖² + ‖w‖² − 2e·w, clamped at 0), so softmax gives p ∝ d^(−exponent); exponent > 0,
 *   default √D. A distance of 0 at the label gives loss 0 and zero gradient, never NaN. No bias.
 */
export interface LogitsOptions {
  kind: 'dot' | 'cosine' | 'harmonic';
  scale?: number;
  margin?: number;
  angularMargin?: number;
  exponent?: number;
}

/** LogitsOptions resolved; `exponent` null means √D (the caller knows D). */
export interface ResolvedLogits {
  kind: number; // LOGITS_*
  scale: number;
  margin: number;
  angularMargin: number;
  exponent: number | null;
}

export const LOGITS_DOT = 0;
export const LOGITS_COSINE = 1;
export const LOGITS_HARMONIC = 2;

const LOGITS_KEYS: Record<string, readonly string[]> = {
  dot: ['kind'],
  cosine: ['kind', 'scale', 'margin', 'angularMargin'],
  harmonic: ['kind', 'exponent'],
};

/** options.logits → ResolvedLogits; bias only with kind 'dot'. */
export function resolveLogits(raw: unknown, hasBias: boolean, fn: string): ResolvedLogits {
  const dot: ResolvedLogits = { kind: LOGITS_DOT, scale: 1, margin: 0, angularMargin: 0, exponent: null };
  if (raw === undefined) return dot;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw optErr('logits', "an object { kind: 'dot' | 'cosine' | 'harmonic', ... }", raw);
  }
  const o = raw as Record<string, unknown>;
  const kindName = o.kind;
  if (kindName !== 'dot' && kindName !== 'cosine' && kindName !== 'harmonic') {
    throw optErr('logits.kind', "'dot', 'cosine' or 'harmonic'", kindName);
  }
  const allowed = LOGITS_KEYS[kindName]!;
  for (const key of Object.keys(o)) {
    if (o[key] !== undefined && !allowed.includes(key)) { // an undefined field is an absent one
      throw new CutlossError('E_OPTION', `${fn}: options.logits.${key} does not apply to kind '${kindName}' (it takes ${allowed.join(', ')})`);
    }
  }
  if (kindName === 'dot') return dot;
  if (hasBias) throw new CutlossError('E_OPTION', `${fn}: options.bias applies to logits kind 'dot' only, got kind '${kindName}'`);
  const num = (name: string, dflt: number, check: (v: number) => boolean, expected: string): number => {
    const v = o[name];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw optErr(`logits.${name}`, expected, v);
    return v;
  };
  if (kindName === 'cosine') {
    return {
      kind: LOGITS_COSINE,
      scale: num('scale', 64, (v) => v > 0, 'a finite number > 0'),
      margin: num('margin', 0, () => true, 'a finite number'),
      angularMargin: num('angularMargin', 0, (v) => v >= 0 && v < Math.PI, 'a number in [0, π)'),
      exponent: null,
    };
  }
  const exponent = o.exponent === undefined ? null : num('exponent', 0, (v) => v > 0, 'a finite number > 0');
  return { kind: LOGITS_HARMONIC, scale: 1, margin: 0, angularMargin: 0, exponent };
}

/** Kind 'cosine' with a margin: the engines' label map (lib/js/math.ts, cuda/math/margin.cuh); else null. */
export function labelMarginOf(l: ResolvedLogits | undefined): LabelMargin | null {
  if (l === undefined || l.kind !== LOGITS_COSINE || (l.margin === 0 && l.angularMargin === 0)) return null;
  return labelMargin(l.scale, l.margin, l.angularMargin);
}

/** The harmonic exponent for embedding width D: the caller's, or √D (Baek et al.'s choice). */
export function harmonicExponent(l: ResolvedLogits, dim: number): number {
  return l.exponent ?? Math.sqrt(dim);
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
  /** q of generalized CE; 0 = off. */
  generalizedCE: number;
  /** linearCrossEntropy's logit kind ({ kind: LOGITS_DOT } for crossEntropy). */
  logits: ResolvedLogits;
  computeGrad: boolean;
  gradScale: number | Float32Array;
  returnLse: boolean;
  bias: Float32Array | null;
  filterEps: number;
  deterministic: boolean;
  tf32: boolean;
  /** null: the backend's default. */
  workspaceBytes: number | null;
  /** Caller-provided host outputs (host inputs), or null. */
  out: HostOutputs | null;
  /** Caller-provided device outputs (device inputs), or null. */
  deviceOut: DeviceOutputs | null;
}

/** A caller's host output: its tensor (returned as the result) and the array it had when validated. */
export interface HostOutput {
  tensor: Tensor;
  data: Float32Array | Uint16Array;
}

/**
 * Where a backend may write gradients: each in the input's dtype. A backend writes f32 results
 * straight into `data` and returns that very array; any other array it returns holds f32 values
 * the facade copies (and rounds to bf16) into the output. dLogits may be the logits' own array
 * (in place): kernels read each logit before writing its gradient.
 */
export interface HostOutputs {
  dLogits: HostOutput | null;
  dEmbeddings: HostOutput | null;
  dClassifier: HostOutput | null;
  dBias: Float32Array | null;
}

/** Caller-provided DeviceTensors (dLogits may be the logits tensor itself); dBias stays on the host. */
export interface DeviceOutputs {
  dLogits: DeviceTensor | null;
  dEmbeddings: DeviceTensor | null;
  dClassifier: DeviceTensor | null;
  dBias: Float32Array | null;
}

/** The inputs an op's outputs are checked against: tensors of either kind, and host vectors. */
export interface OutputInputs {
  /** logits (crossEntropy) or embeddings and classifier (linear), with their names. */
  tensors: [Tensor | DeviceTensor, string][];
  /** labels, classWeights, bias, gradScale: host arrays no output may overlap. */
  vectors: [ArrayBufferView | null, string][];
}

const COMMON_KEYS = [
  'reduction', 'ignoreIndex', 'labelSmoothing', 'classWeights', 'zLoss', 'softcap', 'temperature', 'normalizer',
  'focalGamma', 'polyEpsilon', 'squentropy', 'computeGrad', 'gradScale', 'returnLse', 'generalizedCE',
];
const CROSS_ENTROPY_KEYS = [...COMMON_KEYS, 'out', 'inPlace'];
const LINEAR_KEYS = [...COMMON_KEYS, 'bias', 'filterEps', 'deterministic', 'tf32', 'workspaceBytes', 'out', 'classSample', 'logits'];

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

/**
 * vocabParallel forms each row's loss from all-reduced sums with its own epilogue, which has no
 * generalized CE; dataParallel runs the local loss and is fine.
 */
export function rejectShardedGeneralizedCE(options: unknown, fn: string): void {
  if (typeof options !== 'object' || options === null) return;
  const o = options as Record<string, unknown>;
  if (o.generalizedCE !== undefined && o.vocabParallel !== undefined) {
    throw new CutlossError('E_OPTION', `${fn}: options.generalizedCE cannot be combined with vocabParallel yet`);
  }
}

/** Positive finite temperature (default 1). */
export function resolveTemperature(o: Record<string, unknown>, name = 'temperature'): number {
  return finite(o, name, 1, (v) => v > 0, 'a finite number > 0');
}

/**
 * The loss options, resolved. `inputs` are the call's tensors, against which `out` and
 * `inPlace` are checked; without them (the scale-out paths) those options are E_OPTION.
 */
export function resolveLossOptions(
  options: unknown, rows: number, vocab: number, dtype: Dtype, linear: boolean, inputs?: OutputInputs,
): ResolvedLossOptions {
  const fn = linear ? 'linearCrossEntropy' : 'crossEntropy';
  const o = asOptionsObject(options, fn);
  checkKnownKeys(o, linear ? LINEAR_KEYS : CROSS_ENTROPY_KEYS, fn);

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
    : normalizerName === 'gumbel' ? NORMALIZER_GUMBEL
    : -1;
  if (normalizer < 0) throw optErr('normalizer', "'softmax', 'stablemax', 'sparsemax' or 'gumbel'", normalizerName);
  const focalGamma = finite(o, 'focalGamma', 0, (v) => v >= 0, 'a finite number >= 0');
  const polyEpsilon = finite(o, 'polyEpsilon', 0, () => true, 'a finite number');
  const squentropy = bool(o, 'squentropy', false) ? 1 : 0;
  const generalizedCE = finite(o, 'generalizedCE', 0, (v) => v > 0 && v <= 1, 'a number in (0, 1]');
  if (generalizedCE > 0) {
    // C = (1 − p_t^q)/q needs C = −log p_t to generalize: sparsemax's loss is not, label smoothing
    // and focal have no single agreed generalized form.
    const clash = normalizer === NORMALIZER_SPARSEMAX ? "normalizer 'sparsemax'" : smoothing > 0 ? 'labelSmoothing' : focalGamma > 0 ? 'focalGamma' : null;
    if (clash !== null) throw new CutlossError('E_OPTION', `${fn}: options.generalizedCE cannot be combined with ${clash}`);
  }
  if (normalizer === NORMALIZER_GUMBEL) {
    // Gumbel's p_j are independent per class, not a distribution: the terms built on a normalized
    // p_t (smoothing's uniform mixture, focal, Poly-1, generalized CE) have no agreed meaning here
    const clash = smoothing > 0 ? 'labelSmoothing' : focalGamma > 0 ? 'focalGamma' : polyEpsilon !== 0 ? 'polyEpsilon'
      : generalizedCE > 0 ? 'generalizedCE' : null;
    if (clash !== null) throw new CutlossError('E_OPTION', `${fn}: options.${clash} cannot be combined with normalizer 'gumbel'`);
  }
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
  let logits = resolveLogits(undefined, false, fn);
  let filterEps = 0;
  const deterministic = linear ? bool(o, 'deterministic', false) : false;
  const tf32 = linear ? bool(o, 'tf32', false) : false;
  const workspaceBytes = linear && o.workspaceBytes !== undefined
    ? finite(o, 'workspaceBytes', 0, (v) => Number.isSafeInteger(v) && v >= 1, 'an integer number of bytes >= 1')
    : null;
  if (linear) {
    bias = vectorOption(o, 'bias', vocab, 'V');
    logits = resolveLogits(o.logits, bias !== null, fn);
    const f = o.filterEps ?? (dtype === 'bf16' ? 'auto' : defaultF32FilterEps(vocab));
    if (f === 'auto') filterEps = autoFilterEps(dtype);
    else if (typeof f === 'number' && f >= 0 && Number.isFinite(f)) filterEps = f;
    else throw optErr('filterEps', "a finite number >= 0 or 'auto'", f);
  }

  let out: HostOutputs | null = null;
  let deviceOut: DeviceOutputs | null = null;
  const inPlace = linear ? false : bool(o, 'inPlace', false);
  if (o.out !== undefined || inPlace) {
    if (inputs === undefined) {
      throw new CutlossError('E_OPTION', `${fn}: options.out and options.inPlace cannot be combined with vocabParallel or dataParallel`);
    }
    if (!computeGrad) {
      throw new CutlossError(
        'E_OPTION', `${fn}: options.${inPlace ? 'inPlace' : 'out'} asks for gradients but options.computeGrad is false`,
      );
    }
    const vectors: [ArrayBufferView | null, string][] = [
      ...inputs.vectors, [classWeights, 'options.classWeights'], [bias, 'options.bias'],
      [gradScale instanceof Float32Array ? gradScale : null, 'options.gradScale'],
    ];
    ({ out, deviceOut } = resolveOutputs(o.out, inPlace, linear, { tensors: inputs.tensors, vectors }, vocab, fn));
  }

  return {
    reduction, ignoreIndex, smoothing, classWeights, zLoss, softcap, invTemperature: 1 / temperature, normalizer,
    focalGamma, polyEpsilon, squentropy, generalizedCE, logits, computeGrad, gradScale, returnLse, bias, filterEps, deterministic, tf32,
    workspaceBytes, out, deviceOut,
  };
}

// ---------------------------------------------------------------- caller-provided outputs

/** Bytes [start, end) of host memory, in one ArrayBuffer. */
interface HostRange {
  buffer: ArrayBufferLike;
  start: number;
  end: number;
}

/** Bytes [start, end) of device memory, as addresses. */
interface DeviceRange {
  start: bigint;
  end: bigint;
}

const hostRange = (v: ArrayBufferView): HostRange => ({ buffer: v.buffer, start: v.byteOffset, end: v.byteOffset + v.byteLength });

function deviceRange(t: DeviceTensor, name: string): DeviceRange {
  t.idOf(name);
  const bytes = BigInt(t.rows * t.cols * (t.dtype === 'bf16' ? 2 : 4));
  const start = t.address;
  return { start, end: start + bytes };
}

/** Empty ranges overlap nothing; otherwise host ranges overlap within one ArrayBuffer. */
function overlaps(a: HostRange | DeviceRange, b: HostRange | DeviceRange): boolean {
  if ('buffer' in a && 'buffer' in b) return a.buffer === b.buffer && a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end;
  if (!('buffer' in a) && !('buffer' in b)) return a.start < b.end && b.start < a.end && a.start < a.end && b.start < b.end;
  return false;
}

function rangeOf(t: Tensor | DeviceTensor, name: string): HostRange | DeviceRange {
  return t instanceof DeviceTensor ? deviceRange(t, name) : hostRange((t as Tensor).data);
}

/**
 * Checks `out` (and `inPlace`) against the inputs: each output of its result's kind, shape and
 * dtype (device ones live and on the inputs' backend), no two outputs sharing memory, and no
 * output sharing memory with an input, except dLogits being the logits tensor itself (in place).
 */
function resolveOutputs(
  raw: unknown, inPlace: boolean, linear: boolean, inputs: OutputInputs, vocab: number, fn: string,
): { out: HostOutputs | null; deviceOut: DeviceOutputs | null } {
  if (raw !== undefined && (raw === null || typeof raw !== 'object' || Array.isArray(raw))) {
    throw optErr('out', linear ? 'an object { dEmbeddings?, dClassifier?, dBias? }' : 'an object { dLogits? }', raw);
  }
  const given = (raw ?? {}) as Record<string, unknown>;
  const names = linear ? ['dEmbeddings', 'dClassifier', 'dBias'] : ['dLogits'];
  for (const key of Object.keys(given)) {
    if (!names.includes(key)) throw new CutlossError('E_OPTION', `${fn}: unknown output 'out.${key}'; known outputs: ${names.join(', ')}`);
  }
  const first = inputs.tensors[0]![0];
  const device = first instanceof DeviceTensor;
  // each output with the input whose shape and dtype it takes
  const like: [string, Tensor | DeviceTensor][] = linear
    ? [['dEmbeddings', inputs.tensors[0]![0]], ['dClassifier', inputs.tensors[1]![0]]]
    : [['dLogits', first]];
  const chosen: [string, Tensor | DeviceTensor, Tensor | DeviceTensor][] = [];
  for (const [key, input] of like) {
    const v = given[key];
    if (v !== undefined) chosen.push([key, v as Tensor | DeviceTensor, input]);
  }
  if (inPlace) {
    if (given.dLogits !== undefined && given.dLogits !== first) {
      throw new CutlossError('E_OPTION', `${fn}: options.inPlace writes dLogits into the logits; options.out.dLogits must then be absent or the logits tensor`);
    }
    if (given.dLogits === undefined) chosen.push(['dLogits', first, first]);
  }

  const ranges: [string, HostRange | DeviceRange][] = [];
  const hostOut: HostOutputs = { dLogits: null, dEmbeddings: null, dClassifier: null, dBias: null };
  const deviceOut: DeviceOutputs = { dLogits: null, dEmbeddings: null, dClassifier: null, dBias: null };
  for (const [key, v, input] of chosen) {
    const name = `options.out.${key}`;
    if (v === input) {
      if (key !== 'dLogits') throw new CutlossError('E_OPTION', `${fn}: ${name} is an input tensor; outputs must not share memory with the inputs`);
      // in place: the logits' memory; checked against the other inputs below
      if (device) deviceOut.dLogits = v as DeviceTensor;
      else hostOut.dLogits = { tensor: v as Tensor, data: asMatrix(v, name).data };
      continue;
    }
    if (device) {
      const d = input as DeviceTensor;
      if (!(v instanceof DeviceTensor)) {
        throw new CutlossError('E_BACKEND', `${fn}: ${name} must be a DeviceTensor on ${d.backend} like the inputs, got ${describe(v)}`);
      }
      v.idOf(name);
      if (v.backend !== d.backend) throw new CutlossError('E_BACKEND', `${fn}: ${name} is on ${v.backend}, the inputs are on ${d.backend}`);
      checkLike(v.rows, v.cols, v.dtype, d.rows, d.cols, d.dtype, name, fn);
      deviceOut[key as 'dLogits'] = v;
    } else {
      if (v instanceof DeviceTensor) {
        throw new CutlossError('E_BACKEND', `${fn}: ${name} is a DeviceTensor but the inputs are host tensors`);
      }
      const m = asMatrix(v, `${fn}: ${name}`);
      const im = asMatrix(input, name);
      checkLike(m.rows, m.cols, m.dtype, im.rows, im.cols, im.dtype, name, fn);
      if (m.data.buffer instanceof SharedArrayBuffer) {
        throw new CutlossError('E_OPTION', `${fn}: ${name} is on a SharedArrayBuffer, which another thread could write meanwhile`);
      }
      hostOut[key as 'dLogits'] = { tensor: v as Tensor, data: m.data };
    }
    ranges.push([name, rangeOf(v, name)]);
  }
  const dBias = given.dBias;
  if (dBias !== undefined) {
    if (!(dBias instanceof Float32Array)) throw optErr('out.dBias', 'a Float32Array [V]', dBias);
    if (dBias.length !== vocab) throw new CutlossError('E_SHAPE', `${fn}: options.out.dBias must have length V = ${vocab}, got ${dBias.length}`);
    if (dBias.buffer instanceof SharedArrayBuffer) {
      throw new CutlossError('E_OPTION', `${fn}: options.out.dBias is on a SharedArrayBuffer, which another thread could write meanwhile`);
    }
    hostOut.dBias = dBias;
    deviceOut.dBias = dBias;
    ranges.push(['options.out.dBias', hostRange(dBias)]);
  }

  // no two outputs share memory, and none shares memory with an input
  for (let i = 0; i < ranges.length; i++) {
    for (let j = i + 1; j < ranges.length; j++) {
      if (overlaps(ranges[i]![1], ranges[j]![1])) {
        throw new CutlossError('E_OPTION', `${fn}: ${ranges[i]![0]} and ${ranges[j]![0]} share memory; each output needs its own`);
      }
    }
  }
  const inputRanges: [string, HostRange | DeviceRange][] = [
    ...inputs.tensors.map(([t, n]): [string, HostRange | DeviceRange] => [n, rangeOf(t, n)]),
    ...inputs.vectors.filter(([v]) => v !== null).map(([v, n]): [string, HostRange] => [n, hostRange(v!)]),
  ];
  const inPlaceOut = chosen.some(([key, v]) => key === 'dLogits' && v === first);
  if (inPlaceOut) ranges.push(['the in-place dLogits', rangeOf(first, 'logits')]);
  for (const [outName, r] of ranges) {
    for (const [inName, ir] of inputRanges) {
      if (outName === 'the in-place dLogits' && inName === inputs.tensors[0]![1]) continue;
      if (overlaps(r, ir)) {
        const hint = outName === 'options.out.dLogits' && inName === inputs.tensors[0]![1]
          ? '; pass the logits tensor itself (or inPlace: true) to write the gradient in place' : '';
        throw new CutlossError('E_OPTION', `${fn}: ${outName} shares memory with ${inName}${hint}`);
      }
    }
  }
  return device ? { out: null, deviceOut } : { out: hostOut, deviceOut: null };
}

function checkLike(rows: number, cols: number, dtype: Dtype, wantRows: number, wantCols: number, wantDtype: Dtype, name: string, fn: string): void {
  if (rows !== wantRows || cols !== wantCols) {
    throw new CutlossError('E_SHAPE', `${fn}: ${name} has shape [${rows}, ${cols}], the result has [${wantRows}, ${wantCols}]`);
  }
  if (dtype !== wantDtype) throw new CutlossError('E_DTYPE', `${fn}: ${name} is ${dtype}, the result is ${wantDtype}`);
}

/**
 * The f32 default, 2^-24 / V: every entry it drops has |∂loss_i/∂z_ij| < 2^-24·s_i/V (s_i the
 * row's gradient scale), so a row's dropped entries sum to under 2^-24·s_i. dE_i then moves by
 * less than 2^-24·s_i·max_j |W_j| and dW_j by less than 2^-24/V·Σ_i s_i|E_i|: float32 rounding
 * of the exact gradient's scale. Peaked rows (a trained model's) keep ~0.1% of their entries.
 */
export function defaultF32FilterEps(vocab: number): number {
  return FILTER_ROW_MASS / Math.max(1, vocab);
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
