// sigmoidPairLoss: the pairwise sigmoid loss of SigLIP (Zhai et al. 2023) between two batches
// of embeddings, −(1/N)·Σ_ij log σ(z_ij·(t·x_i·y_j + b)), z = +1 on the diagonal and −1
// elsewhere, with its gradients for x, y, t and b; no backend ever holds the N×N logits.
// This module validates, picks the kernel of the selected backend (or of the DeviceTensors'
// backend), and all-reduces the sums across ranks when y is sharded (options.yParallel).

import { currentBackend, deviceBackend } from './backend.js';
import { checkCommunicator, type Communicator } from './communicator.js';
import { cpuAddon } from './cpuBackend.js';
import { BACKEND_CODE, DeviceTensor, adopt, deviceArg, nativeMatrix, type DeviceBackendName } from './device.js';
import { CutlossError, describe } from './errors.js';
import { sigmoidPairLossJs, type PairOutput, type PairSettings } from './js/sigmoidPair.js';
import { fromNativeError, native, unshared, type NativeMatrix } from './native.js';
import { asOptionsObject, checkKnownKeys } from './options.js';
import { asMatrix, resultLike, toF32, type Matrix, type Tensor } from './tensor.js';

/** y's rows are split over ranks: this rank holds the global rows [yStart, yStart + rows of y). */
export interface PairParallelOptions {
  communicator: Communicator;
  /** The global index of this rank's first y row (its diagonal partner is x row yStart). */
  yStart: number;
}

/**
 * Options of sigmoidPairLoss.
 *
 * @example
 * const o: SigmoidPairLossOptions = { temperature: 10, bias: -10 };
 */
export interface SigmoidPairLossOptions {
  /** t, the logit multiplier itself (SigLIP learns t' with t = exp(t'): pass Math.exp(t')). Default 1. */
  temperature?: number;
  /** b, added to every logit (SigLIP starts at −10). Default 0. */
  bias?: number;
  /** Default true. */
  computeGrad?: boolean;
  /** The upstream gradient of the loss (a number). Default 1. */
  gradScale?: number;
  /** cpu: bytes of the N × chunk block of logits (chunks of y rows). Default 8 MiB. Ignored elsewhere. */
  workspaceBytes?: number;
  /** y is sharded over ranks; x is whole on every rank. */
  yParallel?: PairParallelOptions;
}

/**
 * sigmoidPairLoss's result on host tensors: the gradients are absent with computeGrad: false.
 *
 * @example
 * const { loss, dX, dY, dTemperature, dBias } = sigmoidPairLoss(x, y, { temperature: 10, bias: -10 });
 */
export interface SigmoidPairLossResult {
  loss: number;
  /** dloss/dx [N, D] in x's dtype (all-reduced over ranks with yParallel). */
  dX?: Tensor;
  /** dloss/dy [M, D] in y's dtype (this rank's rows). */
  dY?: Tensor;
  dTemperature?: number;
  dBias?: number;
}

/** sigmoidPairLoss's result on device tensors: dX and dY stay on the device. */
export interface DeviceSigmoidPairLossResult {
  loss: number;
  dX?: DeviceTensor;
  dY?: DeviceTensor;
  dTemperature?: number;
  dBias?: number;
}

/** The result for inputs of kind X. */
export type SigmoidPairLossResultFor<X> = X extends DeviceTensor ? DeviceSigmoidPairLossResult : SigmoidPairLossResult;

/** cpu's default block of logits: N × chunk floats. */
export const PAIR_WORKSPACE_BYTES = 8 * 2 ** 20;

interface Resolved extends PairSettings {
  N: number;
  parallel: { communicator: Communicator; yStart: number } | null;
  workspaceBytes: number;
}

const KEYS = ['temperature', 'bias', 'computeGrad', 'gradScale', 'workspaceBytes', 'yParallel'];
const FN = 'sigmoidPairLoss';

function finiteOption(o: Record<string, unknown>, name: string, dflt: number): number {
  const v = o[name];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new CutlossError('E_OPTION', `${FN}: options.${name} must be a finite number, got ${describe(v)}`);
  }
  return v;
}

function resolve(x: { rows: number; cols: number }, y: { rows: number; cols: number }, options: unknown): Resolved {
  const o = asOptionsObject(options, FN);
  checkKnownKeys(o, KEYS, FN);
  if (x.cols !== y.cols) {
    throw new CutlossError('E_SHAPE', `${FN}: x [N, D] and y [M, D] must share D; got D = ${x.cols} and ${y.cols}`);
  }
  const temperature = finiteOption(o, 'temperature', 1);
  const bias = finiteOption(o, 'bias', 0);
  const gradScale = finiteOption(o, 'gradScale', 1);
  if (o.computeGrad !== undefined && typeof o.computeGrad !== 'boolean') {
    throw new CutlossError('E_OPTION', `${FN}: options.computeGrad must be a boolean, got ${describe(o.computeGrad)}`);
  }
  const ws = o.workspaceBytes;
  if (ws !== undefined && (typeof ws !== 'number' || !Number.isSafeInteger(ws) || ws < 1)) {
    throw new CutlossError('E_OPTION', `${FN}: options.workspaceBytes must be an integer number of bytes >= 1, got ${describe(ws)}`);
  }
  const N = x.rows;
  let parallel: Resolved['parallel'] = null;
  let yStart = 0;
  if (o.yParallel !== undefined) {
    const p = asOptionsObject(o.yParallel, `${FN}: options.yParallel`);
    checkKnownKeys(p, ['communicator', 'yStart'], `${FN}: options.yParallel`);
    const communicator = checkCommunicator(p.communicator, 'yParallel.communicator');
    yStart = p.yStart as number;
    if (!Number.isSafeInteger(yStart) || yStart < 0 || yStart + y.rows > N) {
      throw new CutlossError(
        'E_SHAPE',
        `${FN}: options.yParallel.yStart must be an integer with 0 <= yStart and yStart + M <= N = ${N} (M = ${y.rows}), got ${describe(p.yStart)}`,
      );
    }
    parallel = { communicator, yStart };
  } else if (y.rows !== N) {
    throw new CutlossError('E_SHAPE', `${FN}: x and y must have the same rows N (pairs i ↔ i); got ${N} and ${y.rows}`);
  }
  return {
    N, temperature, bias, yStart, gradScale: N === 0 ? 0 : gradScale / N,
    computeGrad: o.computeGrad !== false, parallel, workspaceBytes: (ws as number | undefined) ?? PAIR_WORKSPACE_BYTES,
  };
}

// ---------------------------------------------------------------- backends

/** The selected host backend's kernel. */
function hostPair(x: Matrix, y: Matrix, s: Resolved): PairOutput {
  const b = currentBackend();
  if (b.name === 'js' || y.rows === 0 || x.rows === 0) return sigmoidPairLossJs(x, y, s);
  if (b.name === 'cpu') return cpuPair(x, y, s);
  return withUploaded(b.name, x, y, (xd, yd) => {
    const r = devicePair(xd, yd, s);
    try {
      return { ...r, dX: r.dX === null ? null : toF32(asMatrix(r.dX.download(), 'dX')), dY: r.dY === null ? null : toF32(asMatrix(r.dY.download(), 'dY')) };
    } finally {
      r.dX?.dispose();
      r.dY?.dispose();
    }
  });
}

function cpuArgs(x: Matrix, y: Matrix, s: Resolved) {
  return [
    unshared(x.data), x.rows, x.cols, x.dtype === 'bf16' ? 1 : 0, unshared(y.data), y.rows, y.dtype === 'bf16' ? 1 : 0,
    s.temperature, s.bias, s.gradScale, s.yStart, s.computeGrad, s.workspaceBytes,
  ] as const;
}

interface CpuPairResult {
  dX?: Float32Array;
  dY?: Float32Array;
  lossSum: number;
  dTemperature: number;
  dBias: number;
}

interface CpuPairAddon {
  cpuSigmoidPairLoss(...args: ReturnType<typeof cpuArgs>): CpuPairResult;
  cpuSigmoidPairLossAsync(...args: ReturnType<typeof cpuArgs>): Promise<CpuPairResult>;
}

function cpuPairAddon(): CpuPairAddon {
  const a = cpuAddon(native().addon) as unknown as Partial<CpuPairAddon> | null;
  if (a === null || typeof a.cpuSigmoidPairLoss !== 'function') {
    throw new CutlossError('E_BACKEND', `${FN}: this build of the native addon has no CPU sigmoidPairLoss; rebuild it`);
  }
  return a as CpuPairAddon;
}

function fromCpu(r: CpuPairResult): PairOutput {
  return { lossSum: r.lossSum, dTemperature: r.dTemperature, dBias: r.dBias, dX: r.dX ?? null, dY: r.dY ?? null };
}

function cpuPair(x: Matrix, y: Matrix, s: Resolved): PairOutput {
  try {
    return fromCpu(cpuPairAddon().cpuSigmoidPairLoss(...cpuArgs(x, y, s)));
  } catch (e) {
    throw fromNativeError(e);
  }
}

interface NativePairIds {
  partials: number;
  dX?: number;
  dY?: number;
}

interface NativePairAddon {
  sigmoidPairLoss(x: NativeMatrix, y: NativeMatrix, t: number, b: number, g: number, yStart: number, grad: boolean): NativePairIds;
  sigmoidPairLossAsync(x: NativeMatrix, y: NativeMatrix, t: number, b: number, g: number, yStart: number, grad: boolean): Promise<NativePairIds>;
  download(id: number, out: ArrayBufferView): void;
  free(id: number): boolean;
  upload(code: 0 | 1, data: ArrayBufferView): number;
}

function nativePairAddon(): NativePairAddon {
  const a = native().addon as unknown as Partial<NativePairAddon> | null;
  if (a === null || typeof a.sigmoidPairLoss !== 'function') {
    throw new CutlossError('E_BACKEND', `${FN}: this build of the native addon has no sigmoidPairLoss kernel; rebuild it`);
  }
  return a as NativePairAddon;
}

interface DevicePairOutput {
  lossSum: number;
  dTemperature: number;
  dBias: number;
  dX: DeviceTensor | null;
  dY: DeviceTensor | null;
}

function devicePairArgs(x: DeviceTensor, y: DeviceTensor, s: Resolved) {
  return [nativeMatrix(x, 'x'), nativeMatrix(y, 'y'), s.temperature, s.bias, s.gradScale, s.yStart, s.computeGrad] as const;
}

/** The row tiles' partial sums (f32, summed here in float64) and the gradient handles. */
function collect(a: NativePairAddon, x: DeviceTensor, y: DeviceTensor, ids: NativePairIds): DevicePairOutput {
  const dX = ids.dX === undefined ? null : adopt(x.backend, ids.dX, x.shape, x.dtype);
  const dY = ids.dY === undefined ? null : adopt(x.backend, ids.dY, y.shape, y.dtype);
  try {
    const tiles = Math.max(1, Math.ceil(x.rows / 32));
    const partials = new Float32Array(tiles * 3);
    a.download(ids.partials, partials);
    let lossSum = 0;
    let dT = 0;
    let dB = 0;
    for (let k = 0; k < tiles; k++) {
      lossSum += partials[3 * k]!;
      dT += partials[3 * k + 1]!;
      dB += partials[3 * k + 2]!;
    }
    return { lossSum, dTemperature: dT, dBias: dB, dX, dY };
  } catch (e) {
    dX?.dispose();
    dY?.dispose();
    throw fromNativeError(e);
  } finally {
    a.free(ids.partials);
  }
}

function devicePair(x: DeviceTensor, y: DeviceTensor, s: Resolved): DevicePairOutput {
  const a = nativePairAddon();
  let ids: NativePairIds;
  try {
    ids = a.sigmoidPairLoss(...devicePairArgs(x, y, s));
  } catch (e) {
    throw fromNativeError(e);
  }
  return collect(a, x, y, ids);
}

async function devicePairAsync(x: DeviceTensor, y: DeviceTensor, s: Resolved): Promise<DevicePairOutput> {
  const a = nativePairAddon();
  let ids: NativePairIds;
  try {
    ids = await a.sigmoidPairLossAsync(...devicePairArgs(x, y, s));
  } catch (e) {
    throw fromNativeError(e);
  }
  return collect(a, x, y, ids);
}

function withUploaded<T>(backend: DeviceBackendName, x: Matrix, y: Matrix, f: (x: DeviceTensor, y: DeviceTensor) => T): T {
  const b = deviceBackend(backend);
  const xd = b.upload(x);
  let yd: DeviceTensor | null = null;
  try {
    yd = b.upload(y);
    const r = f(xd, yd);
    if (r instanceof Promise) {
      const keep = yd;
      return r.finally(() => {
        xd.dispose();
        keep.dispose();
      }) as T;
    }
    xd.dispose();
    yd.dispose();
    return r;
  } catch (e) {
    xd.dispose();
    yd?.dispose();
    throw e;
  }
}

// ---------------------------------------------------------------- reduction over ranks

/** Loss and scalar gradients from the (all-reduced) sums. */
function finish(s: Resolved, lossSum: number, dT: number, dB: number, yRows: number) {
  if (s.parallel !== null) {
    const sums = Float64Array.of(lossSum, dT, dB, yRows);
    s.parallel.communicator.allReduce(sums, 'sum');
    if (sums[3] !== s.N) {
      throw new CutlossError('E_SHAPE', `${FN}: the ranks' y rows add up to ${sums[3]}, x has N = ${s.N} rows`);
    }
    [lossSum, dT, dB] = [sums[0]!, sums[1]!, sums[2]!];
  }
  return { loss: s.N === 0 ? NaN : lossSum / s.N, dT, dB };
}

function allReduceDX(s: Resolved, dX: Float32Array | null): void {
  if (s.parallel !== null && dX !== null) s.parallel.communicator.allReduce(dX, 'sum');
}

// ---------------------------------------------------------------- public API

/**
 * The pairwise sigmoid loss of SigLIP (Zhai et al. 2023): `−(1/N)·Σ_ij log σ(z_ij·(t·x_i·y_j + b))`,
 * z_ij = +1 for i = j (a matching pair) and −1 otherwise, over x [N, D] and y [N, D]; computed a
 * chunk of y at a time, never the N×N logits. Gradients of x, y, t and b.
 *
 * @param x [N, D], a Tensor (f32 or bf16) or a DeviceTensor.
 * @param y [N, D] of x's kind (with yParallel: this rank's [M, D] rows of y).
 * @param options `temperature` t (the multiplier itself), `bias` b, `computeGrad`, `gradScale`, `yParallel`.
 * @returns `{ loss, dX?, dY?, dTemperature?, dBias? }`, gradients in the inputs' kind and dtype.
 * @example
 * const { loss, dX, dY, dTemperature, dBias } =
 *   sigmoidPairLoss(tensor(img, [N, D]), tensor(txt, [N, D]), { temperature: 10, bias: -10 });
 */
export function sigmoidPairLoss<X extends Tensor | DeviceTensor>(x: X, y: X, options?: SigmoidPairLossOptions): SigmoidPairLossResultFor<X>;
export function sigmoidPairLoss(x: Tensor | DeviceTensor, y: Tensor | DeviceTensor, options?: SigmoidPairLossOptions): SigmoidPairLossResult | DeviceSigmoidPairLossResult {
  if (x instanceof DeviceTensor) {
    deviceArg(x, `${FN}: x`);
    const yd = deviceArg(y, `${FN}: y`, x.backend);
    const s = resolve(x, yd, options);
    const r = s.N === 0 || yd.rows === 0 ? emptyDevice(x, yd, s) : devicePair(x, yd, s);
    return deviceResult(x, s, r, yd.rows);
  }
  if (y instanceof DeviceTensor) {
    throw new CutlossError('E_BACKEND', `${FN}: y is a DeviceTensor but x is a host tensor: upload both`);
  }
  const xm = asMatrix(x, `${FN}: x`);
  const ym = asMatrix(y, `${FN}: y`);
  const s = resolve(xm, ym, options);
  return hostResult(xm, ym, s, hostPair(xm, ym, s));
}

function emptyDevice(x: DeviceTensor, y: DeviceTensor, s: Resolved): DevicePairOutput {
  const b = deviceBackend(x.backend);
  const zeros = (m: DeviceTensor) => b.upload({ data: m.dtype === 'bf16' ? new Uint16Array(m.rows * m.cols) : new Float32Array(m.rows * m.cols), rows: m.rows, cols: m.cols, dtype: m.dtype, shape: m.shape });
  return { lossSum: 0, dTemperature: 0, dBias: 0, dX: s.computeGrad ? zeros(x) : null, dY: s.computeGrad ? zeros(y) : null };
}

function hostResult(x: Matrix, y: Matrix, s: Resolved, r: PairOutput): SigmoidPairLossResult {
  allReduceDX(s, r.dX);
  const { loss, dT, dB } = finish(s, r.lossSum, r.dTemperature, r.dBias, y.rows);
  if (!s.computeGrad) return { loss };
  return { loss, dX: resultLike(x, r.dX!), dY: resultLike(y, r.dY!), dTemperature: dT, dBias: dB };
}

function deviceResult(x: DeviceTensor, s: Resolved, r: DevicePairOutput, yRows: number): DeviceSigmoidPairLossResult {
  try {
    if (s.parallel !== null && r.dX !== null) {
      // the communicator reduces host arrays: dX goes down, is summed over ranks and comes back
      const m = asMatrix(r.dX.download(), 'dX');
      const host = m.dtype === 'f32' ? (m.data as Float32Array) : toF32(m);
      s.parallel.communicator.allReduce(host, 'sum');
      const summed = deviceBackend(x.backend).upload(asMatrix(resultLike(m, host), 'dX'));
      r.dX.dispose();
      r.dX = summed;
    }
    const { loss, dT, dB } = finish(s, r.lossSum, r.dTemperature, r.dBias, yRows);
    if (!s.computeGrad) return { loss };
    return { loss, dX: r.dX!, dY: r.dY!, dTemperature: dT, dBias: dB };
  } catch (e) {
    r.dX?.dispose();
    r.dY?.dispose();
    throw e;
  }
}

/**
 * sigmoidPairLoss off the JS thread (cpu, cuda, cuda-emu run on the libuv pool; js settles on a
 * later turn). With yParallel it runs synchronously: the communicator is synchronous.
 *
 * @param x [N, D]; y [N, D] of x's kind.
 * @param options as sigmoidPairLoss.
 * @returns a Promise of sigmoidPairLoss's result.
 * @example
 * const { loss } = await sigmoidPairLossAsync(x, y, { temperature: 10, bias: -10 });
 */
export function sigmoidPairLossAsync<X extends Tensor | DeviceTensor>(x: X, y: X, options?: SigmoidPairLossOptions): Promise<SigmoidPairLossResultFor<X>>;
export async function sigmoidPairLossAsync(x: Tensor | DeviceTensor, y: Tensor | DeviceTensor, options?: SigmoidPairLossOptions): Promise<SigmoidPairLossResult | DeviceSigmoidPairLossResult> {
  if (options?.yParallel !== undefined) return sigmoidPairLoss(x, y, options);
  if (x instanceof DeviceTensor) {
    deviceArg(x, `${FN}Async: x`);
    const yd = deviceArg(y, `${FN}Async: y`, x.backend);
    const s = resolve(x, yd, options);
    const r = s.N === 0 ? emptyDevice(x, yd, s) : await devicePairAsync(x, yd, s);
    return deviceResult(x, s, r, yd.rows);
  }
  if (y instanceof DeviceTensor) {
    throw new CutlossError('E_BACKEND', `${FN}Async: y is a DeviceTensor but x is a host tensor: upload both`);
  }
  const xm = asMatrix(x, `${FN}: x`);
  const ym = asMatrix(y, `${FN}: y`);
  const s = resolve(xm, ym, options);
  const b = currentBackend();
  let r: PairOutput;
  if (b.name === 'cpu' && s.N > 0) {
    try {
      r = fromCpu(await cpuPairAddon().cpuSigmoidPairLossAsync(...cpuArgs(xm, ym, s)));
    } catch (e) {
      throw fromNativeError(e);
    }
  } else if ((b.name === 'cuda' || b.name === 'cuda-emu') && s.N > 0) {
    r = await withUploaded(b.name, xm, ym, async (xd, yd) => {
      const o = await devicePairAsync(xd, yd, s);
      try {
        return { ...o, dX: o.dX === null ? null : toF32(asMatrix(o.dX.download(), 'dX')), dY: o.dY === null ? null : toF32(asMatrix(o.dY.download(), 'dY')) };
      } finally {
        o.dX?.dispose();
        o.dY?.dispose();
      }
    });
  } else {
    r = hostPair(xm, ym, s);
    await new Promise((resolveLater) => setImmediate(resolveLater));
  }
  return hostResult(xm, ym, s, r);
}
