// The native backends, cuda (a real GPU) and cuda-emu (the same kernels under the SIMT
// emulator). Each op is written once as a plan: a generator that yields native calls and does
// the host work between them (the loss reduction). A plan runs now on the JS thread, or with
// each call on the libuv pool (the async twins). Host tensors are uploaded, run, downloaded
// (into the caller's arrays with options.out); device tensors stay where they are, and
// caller-provided DeviceTensors are written in place. Ops without a native kernel yet run on the next backend
// (none at present: FALLBACK_OPS lists them).

import { allocate } from './alloc.js';
import type {
  AsyncBackendOps, Backend, CrossEntropyOutput, LinearCrossEntropyOutput, SoftmaxSettings,
} from './backend.js';
import { CutlossError } from './errors.js';
import { BACKEND_CODE, adopt, nativeMatrix, type DeviceBackendName, type DeviceTensor } from './device.js';
import {
  fromNativeError, nativeLossParams, unshared, type NativeAddon, type NativeAsyncOps, type NativeCrossEntropyForward,
  type NativeLinearConfig, type NativeLinearCrossEntropy, type NativeOpName, type NativeOps,
} from './native.js';
import type { HostOutput, ResolvedLossOptions } from './options.js';
import { toF32, type Dtype, type Matrix, type Tensor } from './tensor.js';

/** Ops with a native kernel (README names); the rest fall through to the next backend. */
export const NATIVE_OPS = [
  'logSumExp', 'softmax', 'logSoftmax', 'softmaxBackward', 'logSoftmaxBackward', 'stablemax', 'logStablemax',
  'stablemaxBackward', 'logStablemaxBackward', 'sparsemax', 'sparsemaxBackward', 'entmax15', 'entmax15Backward',
  'gumbelSoftmax', 'gumbelSoftmaxBackward', 'crossEntropy', 'linearCrossEntropy', 'sigmoidPairLoss',
];
export const FALLBACK_OPS: string[] = [];

export interface DeviceCrossEntropyOutput {
  loss: number | Float32Array;
  lse: Float32Array;
  dLogits: DeviceTensor | null;
}

export interface DeviceLinearCrossEntropyOutput {
  loss: number | Float32Array;
  lse: Float32Array;
  dEmbeddings: DeviceTensor | null;
  dClassifier: DeviceTensor | null;
  dBias: Float32Array | null;
  /** Device workspace the kernels used (cuda/kernels.h linearCrossEntropyPlan). */
  workspaceBytes: number;
}

/** Every op on device tensors. Inputs are validated by the facade and on this backend. */
export interface DeviceOps {
  logSumExp(x: DeviceTensor, o: SoftmaxSettings): DeviceTensor;
  softmax(x: DeviceTensor, o: SoftmaxSettings, log: boolean): DeviceTensor;
  softmaxBackward(x: DeviceTensor, dy: DeviceTensor, o: SoftmaxSettings, log: boolean): DeviceTensor;
  stablemax(x: DeviceTensor, log: boolean): DeviceTensor;
  stablemaxBackward(x: DeviceTensor, dy: DeviceTensor, log: boolean): DeviceTensor;
  sparsemax(x: DeviceTensor): DeviceTensor;
  sparsemaxBackward(x: DeviceTensor, dy: DeviceTensor): DeviceTensor;
  entmax15(x: DeviceTensor): DeviceTensor;
  entmax15Backward(x: DeviceTensor, dy: DeviceTensor): DeviceTensor;
  gumbelSoftmax(x: DeviceTensor, tau: number, hard: boolean, seed: number): DeviceTensor;
  gumbelSoftmaxBackward(x: DeviceTensor, dy: DeviceTensor, tau: number, seed: number): DeviceTensor;
  crossEntropy(logits: DeviceTensor, labels: Int32Array, o: ResolvedLossOptions): DeviceCrossEntropyOutput;
  linearCrossEntropy(E: DeviceTensor, W: DeviceTensor, labels: Int32Array, o: ResolvedLossOptions): DeviceLinearCrossEntropyOutput;
}

export type DeviceAsyncOps = {
  [K in keyof DeviceOps]: (...args: Parameters<DeviceOps[K]>) => Promise<ReturnType<DeviceOps[K]>>;
};

// ---------------------------------------------------------------- plans

interface NativeCall<K extends NativeOpName = NativeOpName> {
  op: K;
  args: Parameters<NativeOps[K]>;
}

type Plan<T> = Generator<NativeCall, T, unknown>;

function call<K extends NativeOpName>(op: K, ...args: Parameters<NativeOps[K]>): NativeCall {
  return { op, args } as NativeCall;
}

function invoke(fn: unknown, args: unknown[]): unknown {
  return (fn as (...a: unknown[]) => unknown)(...args);
}

function runNow<T>(addon: NativeAddon, plan: Plan<T>): T {
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    try {
      result = invoke(addon[step.value.op], step.value.args);
    } catch (e) {
      step = plan.throw(fromNativeError(e)); // the plan's finally blocks free what it holds
      continue;
    }
    step = plan.next(result);
  }
  return step.value;
}

async function runOffThread<T>(addon: NativeAddon, plan: Plan<T>): Promise<T> {
  let step = plan.next();
  while (!step.done) {
    let result: unknown;
    try {
      const name = `${step.value.op}Async` as keyof NativeAsyncOps;
      result = await invoke(addon[name], step.value.args);
    } catch (e) {
      step = plan.throw(fromNativeError(e));
      continue;
    }
    step = plan.next(result);
  }
  return step.value;
}

/** The linear kernels' settings from the resolved options. */
function linearConfig(o: ResolvedLossOptions): NativeLinearConfig {
  return { filterEps: o.filterEps, deterministic: o.deterministic, tf32: o.tf32, gemm: 0 };
}

/**
 * Each row's reduction scales s_W, s_U (README "Losses": g/Σw_t and g/n for the mean, g or
 * g_i otherwise; 0 for ignored rows). They depend on labels and class weights only, so the
 * fused linear kernels get them before the forward and do the backward in the same call.
 */
export function gradientScales(
  labels: Int32Array, o: ResolvedLossOptions,
): { valid: number; sumTargetWeights: number; scaleWeighted: Float32Array; scaleUnweighted: Float32Array } {
  const N = labels.length;
  const w = o.classWeights;
  let valid = 0;
  let sumTargetWeights = 0;
  for (let i = 0; i < N; i++) {
    const t = labels[i]!;
    if (t === o.ignoreIndex) continue;
    valid++;
    sumTargetWeights += w === null ? 1 : w[t]!;
  }
  const scaleWeighted = allocate(Float32Array, N, 'scaleWeighted');
  const scaleUnweighted = allocate(Float32Array, N, 'scaleUnweighted');
  if (o.computeGrad) {
    for (let i = 0; i < N; i++) {
      if (labels[i] === o.ignoreIndex) continue;
      const g = typeof o.gradScale === 'number' ? o.gradScale : o.gradScale[i]!;
      if (o.reduction === 'mean') {
        // target weights summing to 0: the weighted mean Σ w·ℓ / 0 has no gradient (NaN)
        scaleWeighted[i] = sumTargetWeights === 0 ? NaN : g / sumTargetWeights;
        scaleUnweighted[i] = g / valid;
      } else {
        scaleWeighted[i] = g;
        scaleUnweighted[i] = g;
      }
    }
  }
  return { valid, sumTargetWeights, scaleWeighted, scaleUnweighted };
}

/** The loss from per-row terms and each row's gradient scales s_W, s_U (README "Losses"). */
export function reduceLoss(
  labels: Int32Array, weighted: Float32Array, unweighted: Float32Array, o: ResolvedLossOptions,
): { loss: number | Float32Array; valid: number; scaleWeighted: Float32Array; scaleUnweighted: Float32Array } {
  const N = labels.length;
  const { valid, sumTargetWeights, scaleWeighted, scaleUnweighted } = gradientScales(labels, o);
  let totalWeighted = 0;
  let totalUnweighted = 0;
  for (let i = 0; i < N; i++) {
    if (labels[i] === o.ignoreIndex) continue;
    totalWeighted += weighted[i]!;
    totalUnweighted += unweighted[i]!;
  }
  let loss: number | Float32Array;
  if (o.reduction === 'none') {
    const perRow = allocate(Float32Array, N, 'perRow');
    for (let i = 0; i < N; i++) if (labels[i] !== o.ignoreIndex) perRow[i] = weighted[i]! + unweighted[i]!;
    loss = perRow;
  } else if (o.reduction === 'sum') {
    loss = totalWeighted + totalUnweighted;
  } else {
    loss = valid === 0 ? NaN : totalWeighted / sumTargetWeights + totalUnweighted / valid;
  }
  return { loss, valid, scaleWeighted, scaleUnweighted };
}

// ---------------------------------------------------------------- the backend

export class NativeBackend implements Backend {
  readonly code: 0 | 1;
  readonly device: DeviceOps;
  readonly deviceAsync: DeviceAsyncOps;
  readonly async: AsyncBackendOps;

  constructor(
    readonly name: DeviceBackendName,
    private readonly addon: NativeAddon,
    /** The next available backend, for ops this one has no kernel for. */
    private readonly fallback: () => Backend,
  ) {
    this.code = BACKEND_CODE[name];
    this.device = this.deviceOps();
    this.deviceAsync = this.deviceAsyncOps();
    this.async = {
      logSumExp: (x, o) => this.onHostAsync([x], ([t]) => this.logSumExpPlan(t!, o)),
      softmax: (x, o, log) => this.onHostAsync([x], ([t]) => this.softmaxPlan(t!, o, log)),
      softmaxBackward: (x, dy, o, log) => this.onHostAsync([x, like(x, dy)], ([t, g]) => this.softmaxBackwardPlan(t!, g!, o, log)),
      stablemax: (x, log) => this.onHostAsync([x], ([t]) => this.stablemaxPlan(t!, log)),
      stablemaxBackward: (x, dy, log) => this.onHostAsync([x, like(x, dy)], ([t, g]) => this.stablemaxBackwardPlan(t!, g!, log)),
      sparsemax: (x) => this.onHostAsync([x], ([t]) => this.sparsemaxPlan(t!)),
      sparsemaxBackward: (x, dy) => this.onHostAsync([x, like(x, dy)], ([t, g]) => this.sparsemaxBackwardPlan(t!, g!)),
      entmax15: (x) => this.onHostAsync([x], ([t]) => this.entmax15Plan(t!)),
      entmax15Backward: (x, dy) => this.onHostAsync([x, like(x, dy)], ([t, g]) => this.entmax15BackwardPlan(t!, g!)),
      gumbelSoftmax: (x, tau, hard, seed) => this.onHostAsync([x], ([t]) => this.gumbelSoftmaxPlan(t!, tau, hard, seed)),
      gumbelSoftmaxBackward: (x, dy, tau, seed) =>
        this.onHostAsync([x, like(x, dy)], ([t, g]) => this.gumbelSoftmaxBackwardPlan(t!, g!, tau, seed)),
      crossEntropy: async (logits, labels, o) => {
        const t = this.upload(logits);
        try {
          return this.toHost(await runOffThread(this.addon, this.crossEntropyPlan(t, labels, o)), o);
        } finally {
          t.dispose();
        }
      },
      linearCrossEntropy: async (E, W, labels, o) => {
        const [Et, Wt] = this.uploadBoth(E, W);
        try {
          return await this.linearToHost(await runOffThread(this.addon, this.linearCrossEntropyPlan(Et, Wt, labels, o)), o);
        } finally {
          Et.dispose();
          Wt.dispose();
        }
      },
    };
  }

  upload(m: Matrix): DeviceTensor {
    let id: number;
    try {
      id = this.addon.upload(this.code, unshared(m.data));
    } catch (e) {
      throw fromNativeError(e);
    }
    return adopt(this.name, id, m.shape, m.dtype);
  }

  /** linearCrossEntropy's device workspace for these shapes and options (both inputs of `dtype`). */
  linearWorkspaceBytes(N: number, D: number, V: number, o: ResolvedLossOptions, dtype: Dtype): number {
    const code = dtype === 'bf16' ? 1 : 0;
    try {
      return this.addon.linearCrossEntropyWorkspaceBytes(N, D, V, o.normalizer, linearConfig(o), o.computeGrad, code, code);
    } catch (e) {
      throw fromNativeError(e);
    }
  }

  /** Both inputs of the linear loss; the first is freed again if the second fails. */
  private uploadBoth(E: Matrix, W: Matrix): [DeviceTensor, DeviceTensor] {
    const Et = this.upload(E);
    try {
      return [Et, this.upload(W)];
    } catch (e) {
      Et.dispose();
      throw e;
    }
  }

  private zeros(shape: Tensor['shape'], dtype: Dtype): DeviceTensor {
    const n = shape.length === 2 ? shape[0] * shape[1]! : shape[0];
    let id: number;
    try {
      id = this.addon.alloc(this.code, n * (dtype === 'bf16' ? 2 : 4));
    } catch (e) {
      throw fromNativeError(e);
    }
    return adopt(this.name, id, shape, dtype);
  }

  /** Reads a temporary f32 buffer of n elements (into `into` when given) and frees it. */
  private take(id: number, n: number, into: Float32Array | null = null): Float32Array {
    let out: Float32Array;
    try {
      out = into ?? allocate(Float32Array, n, 'the result');
    } catch (e) {
      this.addon.free(id);
      throw e;
    }
    if (out.length !== n) {
      this.addon.free(id);
      throw detachedOutput();
    }
    try {
      this.addon.download(id, out);
    } catch (e) {
      throw fromNativeError(e);
    } finally {
      this.addon.free(id);
    }
    return out;
  }

  // ---- one plan per op

  private *logSumExpPlan(x: DeviceTensor, o: SoftmaxSettings): Plan<DeviceTensor> {
    const id = (yield call('logSumExp', nativeMatrix(x, 'x'), o.invTemperature, unshared(o.mask))) as number;
    return adopt(this.name, id, [x.rows], 'f32');
  }
  private *softmaxPlan(x: DeviceTensor, o: SoftmaxSettings, log: boolean): Plan<DeviceTensor> {
    const id = (yield call('softmax', nativeMatrix(x, 'x'), o.invTemperature, unshared(o.mask), log)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *softmaxBackwardPlan(x: DeviceTensor, dy: DeviceTensor, o: SoftmaxSettings, log: boolean): Plan<DeviceTensor> {
    const id = (yield call('softmaxBackward', nativeMatrix(x, 'x'), nativeMatrix(dy, 'dy'), o.invTemperature, unshared(o.mask), log)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *stablemaxPlan(x: DeviceTensor, log: boolean): Plan<DeviceTensor> {
    const id = (yield call('stablemax', nativeMatrix(x, 'x'), log)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *stablemaxBackwardPlan(x: DeviceTensor, dy: DeviceTensor, log: boolean): Plan<DeviceTensor> {
    const id = (yield call('stablemaxBackward', nativeMatrix(x, 'x'), nativeMatrix(dy, 'dy'), log)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *sparsemaxPlan(x: DeviceTensor): Plan<DeviceTensor> {
    const id = (yield call('sparsemax', nativeMatrix(x, 'x'))) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *sparsemaxBackwardPlan(x: DeviceTensor, dy: DeviceTensor): Plan<DeviceTensor> {
    const id = (yield call('sparsemaxBackward', nativeMatrix(x, 'x'), nativeMatrix(dy, 'dy'))) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *entmax15Plan(x: DeviceTensor): Plan<DeviceTensor> {
    const id = (yield call('entmax15', nativeMatrix(x, 'x'))) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *entmax15BackwardPlan(x: DeviceTensor, dy: DeviceTensor): Plan<DeviceTensor> {
    const id = (yield call('entmax15Backward', nativeMatrix(x, 'x'), nativeMatrix(dy, 'dy'))) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *gumbelSoftmaxPlan(x: DeviceTensor, tau: number, hard: boolean, seed: number): Plan<DeviceTensor> {
    const id = (yield call('gumbelSoftmax', nativeMatrix(x, 'x'), tau, hard, seed)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }
  private *gumbelSoftmaxBackwardPlan(x: DeviceTensor, dy: DeviceTensor, tau: number, seed: number): Plan<DeviceTensor> {
    const id = (yield call('gumbelSoftmaxBackward', nativeMatrix(x, 'x'), nativeMatrix(dy, 'dy'), tau, seed)) as number;
    return adopt(this.name, id, x.shape, x.dtype);
  }

  /** The forward per row on the device; the reduction and its scales on the host; then the backward. */
  private *crossEntropyPlan(logits: DeviceTensor, labels: Int32Array, o: ResolvedLossOptions): Plan<DeviceCrossEntropyOutput> {
    const N = logits.rows;
    const params = nativeLossParams(o);
    const fwd = (yield call('crossEntropyForward', nativeMatrix(logits, 'logits'), unshared(labels), params, unshared(o.classWeights))) as NativeCrossEntropyForward;
    try {
      const lse = this.take(fwd.lse, N);
      const r = reduceLoss(labels, this.take(fwd.weighted, N), this.take(fwd.unweighted, N), o);
      if (!o.computeGrad) return { loss: r.loss, lse, dLogits: null };
      const dest = o.deviceOut?.dLogits ?? null;
      if (dest !== null) {
        // every row ignored included: the kernel writes zeros for ignored rows
        yield call('crossEntropyBackward', fwd.state, r.scaleWeighted, r.scaleUnweighted, nativeMatrix(dest, 'options.out.dLogits'));
        return { loss: r.loss, lse, dLogits: dest };
      }
      if (r.valid === 0) return { loss: r.loss, lse, dLogits: this.zeros(logits.shape, logits.dtype) };
      const id = (yield call('crossEntropyBackward', fwd.state, r.scaleWeighted, r.scaleUnweighted)) as number;
      return { loss: r.loss, lse, dLogits: adopt(this.name, id, logits.shape, logits.dtype) };
    } finally {
      for (const id of [fwd.lse, fwd.weighted, fwd.unweighted, fwd.state]) this.addon.free(id);
    }
  }

  /**
   * Fused linear + cross-entropy: the host forms the reduction scales from labels and class
   * weights, one native call runs the forward and (with gradients) the backward, and the host
   * reduces the per-row terms to the loss.
   */
  private *linearCrossEntropyPlan(
    E: DeviceTensor, W: DeviceTensor, labels: Int32Array, o: ResolvedLossOptions,
  ): Plan<DeviceLinearCrossEntropyOutput> {
    const N = E.rows;
    const config = linearConfig(o);
    const scales = o.computeGrad ? gradientScales(labels, o) : null;
    let workspaceBytes: number;
    try {
      workspaceBytes = this.addon.linearCrossEntropyWorkspaceBytes(
        N, E.cols, W.rows, o.normalizer, config, o.computeGrad, E.dtype === 'bf16' ? 1 : 0, W.dtype === 'bf16' ? 1 : 0);
    } catch (e) {
      throw fromNativeError(e);
    }
    const destE = scales === null ? null : o.deviceOut?.dEmbeddings ?? null;
    const destW = scales === null ? null : o.deviceOut?.dClassifier ?? null;
    const r = (yield call(
      'linearCrossEntropy', nativeMatrix(E, 'embeddings'), nativeMatrix(W, 'classifier'), unshared(labels),
      nativeLossParams(o, E.cols), unshared(o.classWeights), unshared(o.bias), config, scales?.scaleWeighted ?? null,
      scales?.scaleUnweighted ?? null, destE === null ? null : nativeMatrix(destE, 'options.out.dEmbeddings'),
      destW === null ? null : nativeMatrix(destW, 'options.out.dClassifier'),
    )) as NativeLinearCrossEntropy;
    const made: DeviceTensor[] = []; // freed again if the call fails after all
    const dEmbeddings = r.dEmbeddings === undefined ? destE : adopt(this.name, r.dEmbeddings, E.shape, E.dtype);
    const dClassifier = r.dClassifier === undefined ? destW : adopt(this.name, r.dClassifier, W.shape, W.dtype);
    if (r.dEmbeddings !== undefined) made.push(dEmbeddings!);
    if (r.dClassifier !== undefined) made.push(dClassifier!);
    try {
      const lse = this.take(r.lse, N);
      const { loss } = reduceLoss(labels, this.take(r.weighted, N), this.take(r.unweighted, N), o);
      const dBias = r.dBias === undefined ? null : this.take(r.dBias, W.rows, o.deviceOut?.dBias ?? o.out?.dBias ?? null);
      return { loss, lse, dEmbeddings, dClassifier, dBias, workspaceBytes };
    } catch (e) {
      for (const t of made) t.dispose();
      throw e;
    } finally {
      for (const id of [r.lse, r.weighted, r.unweighted, r.dBias]) if (id !== undefined) this.addon.free(id);
    }
  }

  private deviceOps(): DeviceOps {
    const now = <T>(plan: Plan<T>): T => runNow(this.addon, plan);
    return {
      logSumExp: (x, o) => now(this.logSumExpPlan(x, o)),
      softmax: (x, o, log) => now(this.softmaxPlan(x, o, log)),
      softmaxBackward: (x, dy, o, log) => now(this.softmaxBackwardPlan(x, dy, o, log)),
      stablemax: (x, log) => now(this.stablemaxPlan(x, log)),
      stablemaxBackward: (x, dy, log) => now(this.stablemaxBackwardPlan(x, dy, log)),
      sparsemax: (x) => now(this.sparsemaxPlan(x)),
      sparsemaxBackward: (x, dy) => now(this.sparsemaxBackwardPlan(x, dy)),
      entmax15: (x) => now(this.entmax15Plan(x)),
      entmax15Backward: (x, dy) => now(this.entmax15BackwardPlan(x, dy)),
      gumbelSoftmax: (x, tau, hard, seed) => now(this.gumbelSoftmaxPlan(x, tau, hard, seed)),
      gumbelSoftmaxBackward: (x, dy, tau, seed) => now(this.gumbelSoftmaxBackwardPlan(x, dy, tau, seed)),
      crossEntropy: (logits, labels, o) => now(this.crossEntropyPlan(logits, labels, o)),
      linearCrossEntropy: (E, W, labels, o) => now(this.linearCrossEntropyPlan(E, W, labels, o)),
    };
  }

  private deviceAsyncOps(): DeviceAsyncOps {
    const later = <T>(plan: Plan<T>): Promise<T> => runOffThread(this.addon, plan);
    return {
      logSumExp: async (x, o) => later(this.logSumExpPlan(x, o)),
      softmax: async (x, o, log) => later(this.softmaxPlan(x, o, log)),
      softmaxBackward: async (x, dy, o, log) => later(this.softmaxBackwardPlan(x, dy, o, log)),
      stablemax: async (x, log) => later(this.stablemaxPlan(x, log)),
      stablemaxBackward: async (x, dy, log) => later(this.stablemaxBackwardPlan(x, dy, log)),
      sparsemax: async (x) => later(this.sparsemaxPlan(x)),
      sparsemaxBackward: async (x, dy) => later(this.sparsemaxBackwardPlan(x, dy)),
      entmax15: async (x) => later(this.entmax15Plan(x)),
      entmax15Backward: async (x, dy) => later(this.entmax15BackwardPlan(x, dy)),
      gumbelSoftmax: async (x, tau, hard, seed) => later(this.gumbelSoftmaxPlan(x, tau, hard, seed)),
      gumbelSoftmaxBackward: async (x, dy, tau, seed) => later(this.gumbelSoftmaxBackwardPlan(x, dy, tau, seed)),
      crossEntropy: async (logits, labels, o) => later(this.crossEntropyPlan(logits, labels, o)),
      linearCrossEntropy: async (E, W, labels, o) => later(this.linearCrossEntropyPlan(E, W, labels, o)),
    };
  }

  // ---- the Backend interface: host tensors in and out

  /** Uploads the inputs, runs the plan, downloads its result as f32, frees everything. */
  private onHost(inputs: Matrix[], plan: (t: DeviceTensor[]) => Plan<DeviceTensor>): Float32Array {
    const uploaded: DeviceTensor[] = [];
    try {
      for (const m of inputs) uploaded.push(this.upload(m));
      const out = runNow(this.addon, plan(uploaded));
      try {
        return toF32(hostMatrix(out.download()));
      } finally {
        out.dispose();
      }
    } finally {
      for (const t of uploaded) t.dispose();
    }
  }

  private async onHostAsync(inputs: Matrix[], plan: (t: DeviceTensor[]) => Plan<DeviceTensor>): Promise<Float32Array> {
    const uploaded: DeviceTensor[] = [];
    try {
      for (const m of inputs) uploaded.push(this.upload(m));
      const out = await runOffThread(this.addon, plan(uploaded));
      try {
        return toF32(hostMatrix(out.download()));
      } finally {
        out.dispose();
      }
    } finally {
      for (const t of uploaded) t.dispose();
    }
  }

  private toHost(r: DeviceCrossEntropyOutput, o: ResolvedLossOptions): CrossEntropyOutput {
    if (r.dLogits === null) return { loss: r.loss, lse: r.lse, dLogits: null };
    try {
      return { loss: r.loss, lse: r.lse, dLogits: this.toHostValues(r.dLogits, o.out?.dLogits) };
    } finally {
      r.dLogits.dispose();
    }
  }

  /**
   * A device result as host f32 values: downloaded straight into the caller's f32 output (an
   * async call's inputs were copied when it began, so this may be the logits themselves), or
   * into a new array the facade copies into a bf16 output.
   */
  private toHostValues(t: DeviceTensor, dest: HostOutput | null | undefined): Float32Array {
    if (dest === null || dest === undefined || !(dest.data instanceof Float32Array) || t.dtype !== 'f32') {
      return toF32(hostMatrix(t.download()));
    }
    if (dest.data.length !== t.rows * t.cols) throw detachedOutput();
    try {
      this.addon.download(t.idOf('result'), dest.data);
    } catch (e) {
      throw fromNativeError(e);
    }
    return dest.data;
  }

  /** The linear loss's device gradients as host f32 values; frees them. */
  private linearToHost(r: DeviceLinearCrossEntropyOutput, o: ResolvedLossOptions): LinearCrossEntropyOutput {
    const grads = [r.dEmbeddings, r.dClassifier];
    try {
      const host = (t: DeviceTensor | null, dest: HostOutput | null | undefined) => (t === null ? null : this.toHostValues(t, dest));
      return {
        loss: r.loss, lse: r.lse, dEmbeddings: host(r.dEmbeddings, o.out?.dEmbeddings),
        dClassifier: host(r.dClassifier, o.out?.dClassifier), dBias: r.dBias, workspaceBytes: r.workspaceBytes,
      };
    } finally {
      for (const t of grads) t?.dispose();
    }
  }

  logSumExp(x: Matrix, o: SoftmaxSettings): Float32Array {
    return this.onHost([x], ([t]) => this.logSumExpPlan(t!, o));
  }
  softmax(x: Matrix, o: SoftmaxSettings, log: boolean): Float32Array {
    return this.onHost([x], ([t]) => this.softmaxPlan(t!, o, log));
  }
  softmaxBackward(x: Matrix, dy: Float32Array, o: SoftmaxSettings, log: boolean): Float32Array {
    return this.onHost([x, like(x, dy)], ([t, g]) => this.softmaxBackwardPlan(t!, g!, o, log));
  }
  stablemax(x: Matrix, log: boolean): Float32Array {
    return this.onHost([x], ([t]) => this.stablemaxPlan(t!, log));
  }
  stablemaxBackward(x: Matrix, dy: Float32Array, log: boolean): Float32Array {
    return this.onHost([x, like(x, dy)], ([t, g]) => this.stablemaxBackwardPlan(t!, g!, log));
  }
  sparsemax(x: Matrix): Float32Array {
    return this.onHost([x], ([t]) => this.sparsemaxPlan(t!));
  }
  sparsemaxBackward(x: Matrix, dy: Float32Array): Float32Array {
    return this.onHost([x, like(x, dy)], ([t, g]) => this.sparsemaxBackwardPlan(t!, g!));
  }
  entmax15(x: Matrix): Float32Array {
    return this.onHost([x], ([t]) => this.entmax15Plan(t!));
  }
  entmax15Backward(x: Matrix, dy: Float32Array): Float32Array {
    return this.onHost([x, like(x, dy)], ([t, g]) => this.entmax15BackwardPlan(t!, g!));
  }
  gumbelSoftmax(x: Matrix, tau: number, hard: boolean, seed: number): Float32Array {
    return this.onHost([x], ([t]) => this.gumbelSoftmaxPlan(t!, tau, hard, seed));
  }
  gumbelSoftmaxBackward(x: Matrix, dy: Float32Array, tau: number, seed: number): Float32Array {
    return this.onHost([x, like(x, dy)], ([t, g]) => this.gumbelSoftmaxBackwardPlan(t!, g!, tau, seed));
  }
  crossEntropy(logits: Matrix, labels: Int32Array, o: ResolvedLossOptions): CrossEntropyOutput {
    const t = this.upload(logits);
    try {
      return this.toHost(runNow(this.addon, this.crossEntropyPlan(t, labels, o)), o);
    } finally {
      t.dispose();
    }
  }
  linearCrossEntropy(E: Matrix, W: Matrix, labels: Int32Array, o: ResolvedLossOptions): LinearCrossEntropyOutput {
    const [Et, Wt] = this.uploadBoth(E, W);
    try {
      return this.linearToHost(runNow(this.addon, this.linearCrossEntropyPlan(Et, Wt, labels, o)), o);
    } finally {
      Et.dispose();
      Wt.dispose();
    }
  }
}

/** The upstream gradient (f32, x's shape) as a matrix to upload. */
function like(x: Matrix, dy: Float32Array): Matrix {
  return { data: dy, rows: x.rows, cols: x.cols, dtype: 'f32', shape: x.shape };
}

function hostMatrix(t: Tensor): Matrix {
  const rows = t.shape.length === 2 ? t.shape[0] : 1;
  const cols = t.shape.length === 2 ? t.shape[1]! : t.shape[0];
  return { data: t.data, rows, cols, dtype: t.dtype ?? 'f32', shape: t.shape };
}

function detachedOutput(): CutlossError {
  return new CutlossError('E_DISPOSED', 'options.out: an output array was detached or resized before the result could be written into it');
}

export function unavailable(name: DeviceBackendName, reason: string): CutlossError {
  return new CutlossError('E_BACKEND', `backend '${name}' is unavailable: ${reason}`);
}
