// linearCrossEntropy with `normalizer: 'zscore'`: the spherical Z-loss (de Brébisson & Vincent
// 2016), loss_i = (1/a)·softplus(a·(b − z̃_i)) with z̃_i the label's logit z-normalized over the
// vocabulary. Not `zLoss`, which is PaLM's λ·lse² on the softmax loss. Every backend computes
// the row mean and standard deviation from moments of the classifier (lib/js/zscore.ts), so a
// token costs O(D²) whatever V is; the logits E·Wᵀ are never formed. This module validates the
// options (those without a clear meaning for this loss are E_OPTION), forms each row's scale
// from the reduction and class weights, and reduces the per-row losses.

import { currentBackend, deviceBackend } from './backend.js';
import { cpuAddon } from './cpuBackend.js';
import { DeviceTensor, adopt, deviceArg, nativeMatrix, type DeviceBackendName } from './device.js';
import { CutlossError, describe } from './errors.js';
import { zscoreLinearJs, type ZscoreOutput, type ZscoreSettings } from './js/zscore.js';
import { fromNativeError, native, unshared, type NativeMatrix } from './native.js';
import { gradientScales, reduceLoss } from './nativeBackend.js';
import {
  asOptionsObject, resolveLabels, resolveLossOptions, type LinearCrossEntropyOptions, type Reduction, type ResolvedLossOptions,
} from './options.js';
import { asMatrix, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';

/** The Z-loss's hyperparameters: loss = (1/a)·softplus(a·(b − z̃)). */
export interface ZscoreOptions {
  /** a > 0: the sharpness of the softplus. */
  a: number;
  /** b: the z-score the label's logit is pushed past. */
  b: number;
}

/**
 * linearCrossEntropy's options for the spherical Z-loss: `normalizer: 'zscore'` with
 * `zscore: { a, b }`, and the options that keep their meaning (reduction, ignoreIndex, class
 * weights, gradScale, computeGrad, bias); the fused kernels' settings are accepted and unused.
 *
 * @example
 * linearCrossEntropy(E, W, labels, { normalizer: 'zscore', zscore: { a: 0.1, b: 10 } });
 */
export interface ZscoreLinearCrossEntropyOptions<R extends Reduction = Reduction> extends Pick<
  LinearCrossEntropyOptions<R>,
  'reduction' | 'ignoreIndex' | 'classWeights' | 'computeGrad' | 'gradScale' | 'bias' | 'filterEps' | 'deterministic' | 'tf32' | 'workspaceBytes'
> {
  normalizer: 'zscore';
  zscore: ZscoreOptions;
}

/** Options of the softmax losses that have no clear meaning for the Z-loss, with their neutral value. */
const REJECTED: [key: string, neutral: unknown, why: string][] = [
  ['labelSmoothing', 0, 'the Z-loss has no target distribution to smooth'],
  ['zLoss', 0, "PaLM's λ·lse² needs the softmax normalizer"],
  ['softcap', undefined, 'softcap is per logit, which the moments of W cannot see'],
  ['temperature', 1, 'z-normalized logits do not depend on a temperature'],
  ['focalGamma', 0, 'focal loss needs a probability of the target'],
  ['polyEpsilon', 0, 'Poly-1 needs a probability of the target'],
  ['squentropy', false, 'squentropy is a softmax-loss term'],
  ['generalizedCE', undefined, 'generalized CE needs a probability of the target'],
  ['returnLse', false, 'the Z-loss computes no log-sum-exp'],
  ['logits', undefined, 'the Z-loss works on the dot logits E·Wᵀ + b through the moments of W'],
  ['vocabParallel', undefined, 'not supported with the Z-loss yet'],
  ['dataParallel', undefined, 'not supported with the Z-loss yet'],
];

/** Whether these linearCrossEntropy options ask for the Z-loss. */
export function isZscore(options: unknown): boolean {
  return typeof options === 'object' && options !== null && (options as { normalizer?: unknown }).normalizer === 'zscore';
}

interface ZscoreCall {
  o: ResolvedLossOptions;
  labels: Int32Array;
  s: ZscoreSettings;
}

function resolveZscore(E: { rows: number; cols: number; dtype: Matrix['dtype'] }, W: { rows: number; cols: number; dtype: Matrix['dtype'] },
  labels: unknown, options: unknown): ZscoreCall {
  const fn = 'linearCrossEntropy';
  if (E.cols !== W.cols) {
    throw new CutlossError('E_SHAPE', `${fn}: embeddings [N, D] and classifier [V, D] must share D; got D = ${E.cols} and ${W.cols}`);
  }
  const { normalizer: _n, zscore, ...rest } = asOptionsObject(options, fn);
  for (const [key, neutral, why] of REJECTED) {
    if (rest[key] !== undefined && rest[key] !== neutral) {
      throw new CutlossError('E_OPTION', `${fn}: options.${key} cannot be used with normalizer 'zscore': ${why}`);
    }
  }
  const z = zscore as Partial<ZscoreOptions> | undefined;
  if (typeof z !== 'object' || z === null) {
    throw new CutlossError('E_OPTION', `${fn}: normalizer 'zscore' needs options.zscore = { a, b }, got ${describe(zscore)}`);
  }
  for (const key of Object.keys(z)) {
    if (key !== 'a' && key !== 'b') throw new CutlossError('E_OPTION', `${fn}: unknown option 'zscore.${key}'; known: a, b`);
  }
  if (typeof z.a !== 'number' || !Number.isFinite(z.a) || z.a <= 0) {
    throw new CutlossError('E_OPTION', `${fn}: options.zscore.a must be a finite number > 0, got ${describe(z.a)}`);
  }
  if (typeof z.b !== 'number' || !Number.isFinite(z.b)) {
    throw new CutlossError('E_OPTION', `${fn}: options.zscore.b must be a finite number, got ${describe(z.b)}`);
  }
  const dtype = E.dtype === 'bf16' || W.dtype === 'bf16' ? 'bf16' : 'f32';
  const o = resolveLossOptions(rest, E.rows, W.rows, dtype, true);
  const t = resolveLabels(labels, E.rows, W.rows, o.ignoreIndex);
  let rowScale: Float32Array | null = null;
  if (o.computeGrad) {
    // dL/dloss_i: the reduction's scale of the weighted term times the target's weight
    rowScale = gradientScales(t, o).scaleWeighted;
    if (o.classWeights !== null) {
      for (let i = 0; i < t.length; i++) if (t[i] !== o.ignoreIndex) rowScale[i]! *= o.classWeights[t[i]!]!;
    }
  }
  return { o, labels: t, s: { a: z.a, b: z.b, bias: o.bias, ignoreIndex: o.ignoreIndex, rowScale } };
}

// ---------------------------------------------------------------- backends

type CpuZscoreArgs = [
  E: Float32Array | Uint16Array, N: number, D: number, eDtype: 0 | 1, W: Float32Array | Uint16Array, V: number, wDtype: 0 | 1,
  labels: Int32Array, bias: Float32Array | null, a: number, b: number, ignoreIndex: number, rowScale: Float32Array | null,
];
interface CpuZscoreResult { rowLoss: Float32Array; zt: Float32Array; dEmbeddings?: Float32Array; dClassifier?: Float32Array; dBias?: Float32Array }

interface CpuZscoreAddon {
  cpuZscoreLinear(...args: CpuZscoreArgs): CpuZscoreResult;
  cpuZscoreLinearAsync(...args: CpuZscoreArgs): Promise<CpuZscoreResult>;
}

function cpuZscoreAddon(): Partial<CpuZscoreAddon> | null {
  return cpuAddon(native().addon) as unknown as Partial<CpuZscoreAddon> | null;
}

function cpuArgs(E: Matrix, W: Matrix, labels: Int32Array, s: ZscoreSettings): CpuZscoreArgs {
  return [
    unshared(E.data), E.rows, E.cols, E.dtype === 'bf16' ? 1 : 0, unshared(W.data), W.rows, W.dtype === 'bf16' ? 1 : 0,
    unshared(labels), unshared(s.bias), s.a, s.b, s.ignoreIndex, unshared(s.rowScale),
  ];
}

const fromCpu = (r: CpuZscoreResult): ZscoreOutput =>
  ({ rowLoss: r.rowLoss, zt: r.zt, dE: r.dEmbeddings ?? null, dW: r.dClassifier ?? null, dBias: r.dBias ?? null });

function cpuZscore(E: Matrix, W: Matrix, labels: Int32Array, s: ZscoreSettings): ZscoreOutput {
  const a = cpuZscoreAddon();
  if (a === null || typeof a.cpuZscoreLinear !== 'function') {
    throw new CutlossError('E_BACKEND', "linearCrossEntropy: this build of the native addon has no CPU kernel for normalizer 'zscore'; rebuild it");
  }
  try {
    return fromCpu(a.cpuZscoreLinear(...cpuArgs(E, W, labels, s)));
  } catch (e) {
    throw fromNativeError(e);
  }
}

interface NativeZscoreIds { rowLoss: number; zt: number; dEmbeddings?: number; dClassifier?: number; dBias?: number }
type NativeZscoreArgs = [
  E: NativeMatrix, W: NativeMatrix, labels: Int32Array, bias: Float32Array | null, a: number, b: number, ignoreIndex: number,
  rowScale: Float32Array | null,
];

interface NativeZscoreAddon {
  zscoreLinear(...args: NativeZscoreArgs): NativeZscoreIds;
  zscoreLinearAsync(...args: NativeZscoreArgs): Promise<NativeZscoreIds>;
  download(id: number, out: ArrayBufferView): void;
  free(id: number): boolean;
}

/** The CUDA kernels (cuda/zscore.cu), or null in a build without them. */
function nativeZscoreAddon(): NativeZscoreAddon | null {
  const a = native().addon as unknown as Partial<NativeZscoreAddon> | null;
  return a !== null && typeof a.zscoreLinear === 'function' ? (a as NativeZscoreAddon) : null;
}

/** The kernels' result: per-row values on the host, gradients as DeviceTensors (dBias on the host). */
interface DeviceZscoreOutput {
  rowLoss: Float32Array;
  zt: Float32Array;
  dE: DeviceTensor | null;
  dW: DeviceTensor | null;
  dBias: Float32Array | null;
}

function deviceArgs(E: DeviceTensor, W: DeviceTensor, labels: Int32Array, s: ZscoreSettings): NativeZscoreArgs {
  return [nativeMatrix(E, 'embeddings'), nativeMatrix(W, 'classifier'), unshared(labels), unshared(s.bias), s.a, s.b, s.ignoreIndex, unshared(s.rowScale)];
}

function collect(a: NativeZscoreAddon, E: DeviceTensor, W: DeviceTensor, ids: NativeZscoreIds): DeviceZscoreOutput {
  const dE = ids.dEmbeddings === undefined ? null : adopt(E.backend, ids.dEmbeddings, E.shape, E.dtype);
  const dW = ids.dClassifier === undefined ? null : adopt(E.backend, ids.dClassifier, W.shape, W.dtype);
  const host = [ids.rowLoss, ids.zt, ...(ids.dBias === undefined ? [] : [ids.dBias])];
  try {
    const rowLoss = new Float32Array(E.rows);
    const zt = new Float32Array(E.rows);
    const dBias = ids.dBias === undefined ? null : new Float32Array(W.rows);
    if (E.rows > 0) {
      a.download(ids.rowLoss, rowLoss);
      a.download(ids.zt, zt);
    }
    if (dBias !== null) a.download(ids.dBias!, dBias);
    return { rowLoss, zt, dE, dW, dBias };
  } catch (e) {
    dE?.dispose();
    dW?.dispose();
    throw fromNativeError(e);
  } finally {
    for (const id of host) a.free(id);
  }
}

function deviceZscore(a: NativeZscoreAddon, E: DeviceTensor, W: DeviceTensor, labels: Int32Array, s: ZscoreSettings): DeviceZscoreOutput {
  let ids: NativeZscoreIds;
  try {
    ids = a.zscoreLinear(...deviceArgs(E, W, labels, s));
  } catch (e) {
    throw fromNativeError(e);
  }
  return collect(a, E, W, ids);
}

async function deviceZscoreAsync(a: NativeZscoreAddon, E: DeviceTensor, W: DeviceTensor, labels: Int32Array, s: ZscoreSettings): Promise<DeviceZscoreOutput> {
  let ids: NativeZscoreIds;
  try {
    ids = await a.zscoreLinearAsync(...deviceArgs(E, W, labels, s));
  } catch (e) {
    throw fromNativeError(e);
  }
  return collect(a, E, W, ids);
}

/** Host results of device ones: the gradients downloaded (as f32) and freed. */
function downloaded(r: DeviceZscoreOutput): ZscoreOutput {
  try {
    return {
      rowLoss: r.rowLoss, zt: r.zt, dBias: r.dBias,
      dE: r.dE === null ? null : toF32(asMatrix(r.dE.download(), 'dEmbeddings')),
      dW: r.dW === null ? null : toF32(asMatrix(r.dW.download(), 'dClassifier')),
    };
  } finally {
    r.dE?.dispose();
    r.dW?.dispose();
  }
}

/** Runs f on device copies of host E and W, freed afterwards. */
async function withUploaded<T>(backend: DeviceBackendName, E: Matrix, W: Matrix, f: (E: DeviceTensor, W: DeviceTensor) => T | Promise<T>): Promise<T> {
  const b = deviceBackend(backend);
  const Ed = b.upload(E);
  try {
    const Wd = b.upload(W);
    try {
      return await f(Ed, Wd);
    } finally {
      Wd.dispose();
    }
  } finally {
    Ed.dispose();
  }
}

function withUploadedSync<T>(backend: DeviceBackendName, E: Matrix, W: Matrix, f: (E: DeviceTensor, W: DeviceTensor) => T): T {
  const b = deviceBackend(backend);
  const Ed = b.upload(E);
  try {
    const Wd = b.upload(W);
    try {
      return f(Ed, Wd);
    } finally {
      Wd.dispose();
    }
  } finally {
    Ed.dispose();
  }
}

/** The selected backend's kernel: js, cpu, or the CUDA kernels on uploaded copies (cuda, cuda-emu). */
function hostZscore(E: Matrix, W: Matrix, labels: Int32Array, s: ZscoreSettings): ZscoreOutput {
  const name = currentBackend().name;
  if (name === 'js' || E.rows === 0) return zscoreLinearJs(E, W, labels, s);
  if (name === 'cpu') return cpuZscore(E, W, labels, s);
  const a = nativeZscoreAddon();
  if (a === null) return cpuZscore(E, W, labels, s); // a build without cuda/zscore.cu
  return withUploadedSync(name as DeviceBackendName, E, W, (Ed, Wd) => downloaded(deviceZscore(a, Ed, Wd, labels, s)));
}

async function hostZscoreAsync(E: Matrix, W: Matrix, labels: Int32Array, s: ZscoreSettings): Promise<ZscoreOutput> {
  const name = currentBackend().name;
  if (name === 'js' || E.rows === 0) return zscoreLinearJs(E, W, labels, s);
  if (name === 'cpu') {
    const c = cpuZscoreAddon();
    if (c === null || typeof c.cpuZscoreLinearAsync !== 'function') return cpuZscore(E, W, labels, s);
    try {
      return fromCpu(await c.cpuZscoreLinearAsync(...cpuArgs(E, W, labels, s)));
    } catch (e) {
      throw fromNativeError(e);
    }
  }
  const a = nativeZscoreAddon();
  if (a === null) return cpuZscore(E, W, labels, s);
  return withUploaded(name as DeviceBackendName, E, W, async (Ed, Wd) => downloaded(await deviceZscoreAsync(a, Ed, Wd, labels, s)));
}

// ---------------------------------------------------------------- results

export interface ZscoreResult {
  loss: number | Float32Array;
  dEmbeddings?: Tensor;
  dClassifier?: Tensor;
  dBias?: Float32Array;
}

function reduce(call: ZscoreCall, out: ZscoreOutput): number | Float32Array {
  const { o, labels } = call;
  const weighted = new Float32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] === o.ignoreIndex) continue;
    weighted[i] = (o.classWeights === null ? 1 : o.classWeights[labels[i]!]!) * out.rowLoss[i]!;
  }
  return reduceLoss(labels, weighted, new Float32Array(labels.length), o).loss;
}

/** linearCrossEntropy(E, W, labels, { normalizer: 'zscore', zscore: { a, b }, ... }) on host tensors. */
export function zscoreLinearCrossEntropy(embeddings: unknown, classifier: unknown, labels: unknown, options: unknown): ZscoreResult {
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const call = resolveZscore(E, W, labels, options);
  return hostResult(E, W, call, hostZscore(E, W, call.labels, call.s));
}

function hostResult(E: Matrix, W: Matrix, call: ZscoreCall, out: ZscoreOutput): ZscoreResult {
  const result: ZscoreResult = { loss: reduce(call, out) };
  if (!call.o.computeGrad) return result;
  result.dEmbeddings = resultLike(E, out.dE!);
  result.dClassifier = resultLike(W, out.dW!);
  if (out.dBias !== null) result.dBias = out.dBias;
  return result;
}

/** linearCrossEntropyAsync with normalizer 'zscore' on host tensors: native kernels run off the JS thread. */
export async function zscoreLinearCrossEntropyAsync(embeddings: unknown, classifier: unknown, labels: unknown, options: unknown): Promise<ZscoreResult> {
  const E = asMatrix(embeddings, 'linearCrossEntropy: embeddings');
  const W = asMatrix(classifier, 'linearCrossEntropy: classifier');
  const call = resolveZscore(E, W, labels, options);
  return hostResult(E, W, call, await hostZscoreAsync(E, W, call.labels, call.s));
}

export interface DeviceZscoreResult {
  loss: number | Float32Array;
  dEmbeddings?: DeviceTensor;
  dClassifier?: DeviceTensor;
  dBias?: Float32Array;
  workspaceBytes: number;
}

function deviceResult(call: ZscoreCall, r: DeviceZscoreOutput): DeviceZscoreResult {
  const result: DeviceZscoreResult = { loss: reduce(call, { rowLoss: r.rowLoss, zt: r.zt, dE: null, dW: null, dBias: null }), workspaceBytes: 0 };
  if (r.dE !== null) result.dEmbeddings = r.dE;
  if (r.dW !== null) result.dClassifier = r.dW;
  if (r.dBias !== null) result.dBias = r.dBias;
  return result;
}

/**
 * The same on DeviceTensors: the CUDA kernels of cuda/zscore.cu on the inputs' device, gradients
 * left there. (A build without them reads E and W back and runs the CPU kernel.)
 */
export function zscoreLinearCrossEntropyOnDevice(embeddings: DeviceTensor, classifier: unknown, labels: unknown, options: unknown): DeviceZscoreResult {
  deviceArg(embeddings, 'linearCrossEntropy: embeddings');
  const Wd = deviceArg(classifier, 'linearCrossEntropy: classifier', embeddings.backend);
  const a = nativeZscoreAddon();
  if (a === null) return hostFallbackOnDevice(embeddings, Wd, labels, options);
  const call = resolveZscore(embeddings, Wd, labels, options);
  return deviceResult(call, deviceZscore(a, embeddings, Wd, call.labels, call.s));
}

/** linearCrossEntropyAsync's Z-loss on DeviceTensors, the kernels run off the JS thread. */
export async function zscoreLinearCrossEntropyOnDeviceAsync(
  embeddings: DeviceTensor, classifier: unknown, labels: unknown, options: unknown,
): Promise<DeviceZscoreResult> {
  deviceArg(embeddings, 'linearCrossEntropy: embeddings');
  const Wd = deviceArg(classifier, 'linearCrossEntropy: classifier', embeddings.backend);
  const a = nativeZscoreAddon();
  if (a === null) return hostFallbackOnDevice(embeddings, Wd, labels, options);
  const call = resolveZscore(embeddings, Wd, labels, options);
  return deviceResult(call, await deviceZscoreAsync(a, embeddings, Wd, call.labels, call.s));
}

function hostFallbackOnDevice(embeddings: DeviceTensor, Wd: DeviceTensor, labels: unknown, options: unknown): DeviceZscoreResult {
  const b = deviceBackend(embeddings.backend);
  const r = zscoreLinearCrossEntropy(embeddings.download(), Wd.download(), labels, options);
  const result: DeviceZscoreResult = { loss: r.loss, workspaceBytes: 0 };
  if (r.dEmbeddings !== undefined) result.dEmbeddings = b.upload(asMatrix(r.dEmbeddings, 'dEmbeddings'));
  if (r.dClassifier !== undefined) result.dClassifier = b.upload(asMatrix(r.dClassifier, 'dClassifier'));
  if (r.dBias !== undefined) result.dBias = r.dBias;
  return result;
}
