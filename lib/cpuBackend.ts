// The native CPU backend (src/cpu/): every op in C++ on host memory, on a pool of threads
// with SIMD loops, and linearCrossEntropy on a statically linked OpenBLAS in chunks of rows
// bounded by a workspace. Host arrays go to the addon as they are (a synchronous call reads
// them in place; an async one copies them and runs on the libuv pool), and results come back
// as new Float32Arrays, or in the caller's f32 arrays (options.out: written in place by a
// synchronous call, copied in when an async one is done). The loss reductions happen here, around one native call: each row's
// gradient scales are known from the labels before it, and the per-row terms reduce after.

import type { AsyncBackendOps, Backend, BackendInfo, CrossEntropyOutput, LinearCrossEntropyOutput, SoftmaxSettings } from './backend.js';
import { CutlossError, describe } from './errors.js';
import { fromNativeError, native as loadNative, nativeLossParams, unshared, type NativeAddon, type NativeLossParams } from './native.js';
import { gradientScales, reduceLoss } from './nativeBackend.js';
import type { HostOutput, ResolvedLossOptions } from './options.js';
import { useNativeBf16Rounding, type Matrix } from './tensor.js';

/**
 * Default budget for linearCrossEntropy's chunk of logits (`workspaceBytes`): each chunk reads W
 * twice and dW once, so fewer chunks cost less memory traffic. On the benchmark machine S2 at
 * 32, 48 and 64 MiB is the same within the noise (48 MiB a few percent ahead of 32 in paired
 * runs), 16 MiB ~10% slower; at 48 MiB the call's memory beyond its gradients (~45 MiB) stays
 * under 64 MB.
 */
export const DEFAULT_CPU_WORKSPACE_BYTES = 48 * 2 ** 20;

type HostData = Float32Array | Uint16Array;
type Dtype01 = 0 | 1;

interface CpuLossRows {
  lse: Float32Array;
  weighted: Float32Array;
  unweighted: Float32Array;
}

interface CpuCrossEntropyResult extends CpuLossRows {
  dLogits?: Float32Array;
}

interface CpuLinearResult extends CpuLossRows {
  dEmbeddings?: Float32Array;
  dClassifier?: Float32Array;
  dBias?: Float32Array;
  chunkRows: number;
  /** Vocabulary columns per tile of a chunk's rows (the fourth GEMM's path); 0: whole rows. */
  tileCols: number;
  chunks: number;
  workspaceBytes: number;
  blocks: number;
  skippedBlocks: number;
  sparseBlocks: number;
  gradEntries: number;
  gradEntriesUsed: number;
  deferredEntries: number;
}

/** What the last linearCrossEntropy's backward did with filterEps, for backends() and the benchmark. */
export interface CpuGradientWork {
  /** Entries of the gradient N×V formed, and those its products spent work on (whole dense slices). */
  entries: number;
  used: number;
  /** 1 − used / entries. */
  skippedFraction: number;
  /** Vocabulary slices (of 512 columns, per row chunk): all, skipped, done as per-entry products. */
  slices: number;
  skippedSlices: number;
  sparseSlices: number;
  /** Of the sparse slices' entries, those whose products waited for the end of the call (sorted by column there). */
  deferredEntries: number;
  /** Rows per chunk; vocabulary columns per tile of them (0: whole rows); the workspace allocated. */
  chunkRows: number;
  tileCols: number;
  workspaceBytes: number;
}

let lastGradientWork: CpuGradientWork | null = null;

/** The last cpu linearCrossEntropy's gradient work (null before any call with gradients). */
export function cpuLastGradientWork(): CpuGradientWork | null {
  return lastGradientWork;
}

export interface CpuInfo {
  gemm: { library: string; kernel: string; kernelNote: string; blasLinked: boolean };
  /** bf16 linearCrossEntropy's GEMMs: oneDNN on bf16 instructions (isa) or the portable path (note says why). */
  bf16Gemm: { path: string; isa: string; note: string };
  simd: string;
  threads: number;
  defaultThreads: number;
  flushesDenormals: boolean;
}

/** The addon's CPU entry points (src/cpu/binding.cc); each also exists as `<name>Async`. */
export interface CpuOps {
  cpuLogSumExp(x: HostData, rows: number, cols: number, dtype: Dtype01, invTemperature: number, mask: Uint8Array | null): Float32Array;
  cpuSoftmax(x: HostData, rows: number, cols: number, dtype: Dtype01, invTemperature: number, mask: Uint8Array | null, log: boolean): Float32Array;
  cpuSoftmaxBackward(
    x: HostData, dy: Float32Array, rows: number, cols: number, dtype: Dtype01, invTemperature: number, mask: Uint8Array | null, log: boolean,
  ): Float32Array;
  cpuStablemax(x: HostData, rows: number, cols: number, dtype: Dtype01, log: boolean): Float32Array;
  cpuStablemaxBackward(x: HostData, dy: Float32Array, rows: number, cols: number, dtype: Dtype01, log: boolean): Float32Array;
  cpuSparsemax(x: HostData, rows: number, cols: number, dtype: Dtype01): Float32Array;
  cpuSparsemaxBackward(x: HostData, dy: Float32Array, rows: number, cols: number, dtype: Dtype01): Float32Array;
  cpuEntmax15(x: HostData, rows: number, cols: number, dtype: Dtype01): Float32Array;
  cpuEntmax15Backward(x: HostData, dy: Float32Array, rows: number, cols: number, dtype: Dtype01): Float32Array;
  cpuGumbelSoftmax(x: HostData, rows: number, cols: number, dtype: Dtype01, tau: number, hard: boolean, seed: number): Float32Array;
  cpuGumbelSoftmaxBackward(x: HostData, dy: Float32Array, rows: number, cols: number, dtype: Dtype01, tau: number, seed: number): Float32Array;
  cpuCrossEntropy(
    logits: HostData, rows: number, cols: number, dtype: Dtype01, labels: Int32Array, params: NativeLossParams,
    classWeights: Float32Array | null, scaleWeighted: Float32Array | null, scaleUnweighted: Float32Array | null,
    dLogitsOut?: Float32Array | null,
  ): CpuCrossEntropyResult;
  cpuLinearCrossEntropy(
    E: HostData, N: number, D: number, eDtype: Dtype01, W: HostData, V: number, wDtype: Dtype01, labels: Int32Array,
    params: NativeLossParams, classWeights: Float32Array | null, bias: Float32Array | null,
    scaleWeighted: Float32Array | null, scaleUnweighted: Float32Array | null, filterEps: number, workspaceBytes: number,
    dEOut?: Float32Array | null, dWOut?: Float32Array | null, dBiasOut?: Float32Array | null,
  ): CpuLinearResult;
  /** C = op(A)·op(B) [M, N] with the backend's GEMM (benchmarks, tests), into `out` where given. */
  cpuSgemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Float32Array, B: Float32Array, out?: Float32Array): Float32Array;
  /** values rounded to bf16 bits (nearest even; NaN stays NaN), on all threads into pooled memory. */
  cpuRoundToBf16(values: Float32Array): Uint16Array;
  /** The same with A and B bf16 bits: bf16 linearCrossEntropy's GEMM (benchmarks). */
  cpuBf16Gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, A: Uint16Array, B: Uint16Array, out?: Float32Array): Float32Array;
}

export type CpuAsyncOps = {
  [K in keyof CpuOps as `${K}Async`]: (...args: Parameters<CpuOps[K]>) => Promise<ReturnType<CpuOps[K]>>;
};

export interface CpuAddon extends CpuOps, CpuAsyncOps {
  cpuInfo(): CpuInfo;
  cpuSetThreads(n: number): void;
  /** 'blas' (OpenBLAS, where linked) or 'portable'; false when not available. */
  cpuSetGemm(name: 'blas' | 'portable'): boolean;
  /**
   * 'auto' (the best bf16 GEMM here: oneDNN on AMX, cutloss's kernel on AVX512-BF16; the logits'
   * gradient rounded to bf16; false where neither serves), 'split' (the same, the gradient as two
   * bf16 terms), 'onednn' (oneDNN's bf16 GEMM, whatever the ISA) or 'off' (bf16 widened, the fp32 GEMM).
   */
  cpuSetBf16Gemm(name: 'auto' | 'split' | 'onednn' | 'off'): boolean;
  /**
   * Detaches values and gives its memory back to the output pool when it is a whole result of
   * this addon (true); leaves anything else alone (false).
   */
  cpuRecycle(values: Float32Array): boolean;
}

/** The addon's CPU part, or null when this build of the addon has none. */
export function cpuAddon(addon: NativeAddon | null): CpuAddon | null {
  if (addon === null) return null;
  const a = addon as unknown as Partial<CpuAddon>;
  return typeof a.cpuInfo === 'function' && typeof a.cpuLinearCrossEntropy === 'function' ? (a as CpuAddon) : null;
}

// ---------------------------------------------------------------- helpers

const dtypeCode = (m: Matrix): Dtype01 => (m.dtype === 'bf16' ? 1 : 0);

function native<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNativeError(e);
  }
}

async function nativeAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw fromNativeError(e);
  }
}

type GradientScales = ReturnType<typeof gradientScales>;

/** A caller's output the kernels write straight into: f32 only (the facade rounds into bf16 ones). */
function f32Out(o: HostOutput | null | undefined): Float32Array | null {
  return o !== null && o !== undefined && o.data instanceof Float32Array ? o.data : null;
}

/** The linear loss's dE, dW and dBias outputs, where the caller gave f32 ones (and gradients are asked for). */
function linearOuts(o: ResolvedLossOptions, s: GradientScales | null): [Float32Array | null, Float32Array | null, Float32Array | null] {
  if (s === null || o.out === null) return [null, null, null];
  return [f32Out(o.out.dEmbeddings), f32Out(o.out.dClassifier), o.bias === null ? null : o.out.dBias];
}

// ---------------------------------------------------------------- the backend

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  readonly async: AsyncBackendOps;

  constructor(private readonly addon: CpuAddon) {
    const a = addon;
    this.async = {
      logSumExp: (x, o) =>
        nativeAsync(() => a.cpuLogSumExpAsync(unshared(x.data), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask))),
      softmax: (x, o, log) =>
        nativeAsync(() => a.cpuSoftmaxAsync(unshared(x.data), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask), log)),
      softmaxBackward: (x, dy, o, log) =>
        nativeAsync(() =>
          a.cpuSoftmaxBackwardAsync(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask), log)),
      stablemax: (x, log) => nativeAsync(() => a.cpuStablemaxAsync(unshared(x.data), x.rows, x.cols, dtypeCode(x), log)),
      stablemaxBackward: (x, dy, log) =>
        nativeAsync(() => a.cpuStablemaxBackwardAsync(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), log)),
      sparsemax: (x) => nativeAsync(() => a.cpuSparsemaxAsync(unshared(x.data), x.rows, x.cols, dtypeCode(x))),
      sparsemaxBackward: (x, dy) =>
        nativeAsync(() => a.cpuSparsemaxBackwardAsync(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x))),
      entmax15: (x) => nativeAsync(() => a.cpuEntmax15Async(unshared(x.data), x.rows, x.cols, dtypeCode(x))),
      entmax15Backward: (x, dy) =>
        nativeAsync(() => a.cpuEntmax15BackwardAsync(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x))),
      gumbelSoftmax: (x, tau, hard, seed) =>
        nativeAsync(() => a.cpuGumbelSoftmaxAsync(unshared(x.data), x.rows, x.cols, dtypeCode(x), tau, hard, seed)),
      gumbelSoftmaxBackward: (x, dy, tau, seed) =>
        nativeAsync(() => a.cpuGumbelSoftmaxBackwardAsync(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), tau, seed)),
      crossEntropy: async (logits, labels, o) => {
        const s = o.computeGrad ? gradientScales(labels, o) : null;
        const r = await nativeAsync(() => a.cpuCrossEntropyAsync(...this.crossEntropyArgs(logits, labels, o, s)));
        return this.crossEntropyResult(labels, o, r, s);
      },
      linearCrossEntropy: async (E, W, labels, o) => {
        const s = o.computeGrad ? gradientScales(labels, o) : null;
        const r = await nativeAsync(() => a.cpuLinearCrossEntropyAsync(...this.linearArgs(E, W, labels, o, s)));
        return this.linearResult(labels, o, r, s);
      },
    };
  }

  logSumExp(x: Matrix, o: SoftmaxSettings): Float32Array {
    return native(() => this.addon.cpuLogSumExp(unshared(x.data), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask)));
  }
  softmax(x: Matrix, o: SoftmaxSettings, log: boolean): Float32Array {
    return native(() => this.addon.cpuSoftmax(unshared(x.data), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask), log));
  }
  softmaxBackward(x: Matrix, dy: Float32Array, o: SoftmaxSettings, log: boolean): Float32Array {
    return native(() =>
      this.addon.cpuSoftmaxBackward(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), o.invTemperature, unshared(o.mask), log));
  }
  stablemax(x: Matrix, log: boolean): Float32Array {
    return native(() => this.addon.cpuStablemax(unshared(x.data), x.rows, x.cols, dtypeCode(x), log));
  }
  stablemaxBackward(x: Matrix, dy: Float32Array, log: boolean): Float32Array {
    return native(() => this.addon.cpuStablemaxBackward(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), log));
  }
  sparsemax(x: Matrix): Float32Array {
    return native(() => this.addon.cpuSparsemax(unshared(x.data), x.rows, x.cols, dtypeCode(x)));
  }
  sparsemaxBackward(x: Matrix, dy: Float32Array): Float32Array {
    return native(() => this.addon.cpuSparsemaxBackward(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x)));
  }
  entmax15(x: Matrix): Float32Array {
    return native(() => this.addon.cpuEntmax15(unshared(x.data), x.rows, x.cols, dtypeCode(x)));
  }
  entmax15Backward(x: Matrix, dy: Float32Array): Float32Array {
    return native(() => this.addon.cpuEntmax15Backward(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x)));
  }
  gumbelSoftmax(x: Matrix, tau: number, hard: boolean, seed: number): Float32Array {
    return native(() => this.addon.cpuGumbelSoftmax(unshared(x.data), x.rows, x.cols, dtypeCode(x), tau, hard, seed));
  }
  gumbelSoftmaxBackward(x: Matrix, dy: Float32Array, tau: number, seed: number): Float32Array {
    return native(() => this.addon.cpuGumbelSoftmaxBackward(unshared(x.data), unshared(dy), x.rows, x.cols, dtypeCode(x), tau, seed));
  }

  crossEntropy(logits: Matrix, labels: Int32Array, o: ResolvedLossOptions): CrossEntropyOutput {
    const s = o.computeGrad ? gradientScales(labels, o) : null;
    const r = native(() => this.addon.cpuCrossEntropy(...this.crossEntropyArgs(logits, labels, o, s)));
    return this.crossEntropyResult(labels, o, r, s);
  }

  linearCrossEntropy(E: Matrix, W: Matrix, labels: Int32Array, o: ResolvedLossOptions): LinearCrossEntropyOutput {
    const s = o.computeGrad ? gradientScales(labels, o) : null;
    const r = native(() => this.addon.cpuLinearCrossEntropy(...this.linearArgs(E, W, labels, o, s)));
    return this.linearResult(labels, o, r, s);
  }

  // ---- the losses' arguments and results

  private crossEntropyArgs(
    logits: Matrix, labels: Int32Array, o: ResolvedLossOptions, s: ReturnType<typeof gradientScales> | null,
  ): Parameters<CpuOps['cpuCrossEntropy']> {
    return [
      unshared(logits.data), logits.rows, logits.cols, dtypeCode(logits), unshared(labels), nativeLossParams(o),
      unshared(o.classWeights), s?.scaleWeighted ?? null, s?.scaleUnweighted ?? null, s === null ? null : f32Out(o.out?.dLogits),
    ];
  }

  private crossEntropyResult(
    labels: Int32Array, o: ResolvedLossOptions, r: CpuCrossEntropyResult, s: GradientScales | null,
  ): CrossEntropyOutput {
    const { loss } = reduceLoss(labels, r.weighted, r.unweighted, o);
    return { loss, lse: r.lse, dLogits: r.dLogits ?? (s === null ? null : f32Out(o.out?.dLogits)) };
  }

  private linearArgs(
    E: Matrix, W: Matrix, labels: Int32Array, o: ResolvedLossOptions, s: ReturnType<typeof gradientScales> | null,
  ): Parameters<CpuOps['cpuLinearCrossEntropy']> {
    return [
      unshared(E.data), E.rows, E.cols, dtypeCode(E), unshared(W.data), W.rows, dtypeCode(W), unshared(labels), nativeLossParams(o, E.cols),
      unshared(o.classWeights), unshared(o.bias), s?.scaleWeighted ?? null, s?.scaleUnweighted ?? null, o.filterEps,
      o.workspaceBytes ?? DEFAULT_CPU_WORKSPACE_BYTES, ...linearOuts(o, s),
    ];
  }

  private linearResult(
    labels: Int32Array, o: ResolvedLossOptions, r: CpuLinearResult, s: GradientScales | null,
  ): LinearCrossEntropyOutput {
    const { loss } = reduceLoss(labels, r.weighted, r.unweighted, o);
    if (r.gradEntries > 0) {
      lastGradientWork = {
        entries: r.gradEntries, used: r.gradEntriesUsed, skippedFraction: 1 - r.gradEntriesUsed / r.gradEntries,
        slices: r.blocks, skippedSlices: r.skippedBlocks, sparseSlices: r.sparseBlocks, deferredEntries: r.deferredEntries,
        chunkRows: r.chunkRows, tileCols: r.tileCols, workspaceBytes: r.workspaceBytes,
      };
    }
    const [dE, dW, dB] = linearOuts(o, s);
    const withGrad = s !== null;
    return {
      loss, lse: r.lse, dEmbeddings: r.dEmbeddings ?? (withGrad ? dE : null), dClassifier: r.dClassifier ?? (withGrad ? dW : null),
      dBias: r.dBias ?? (withGrad && o.bias !== null ? dB : null), workspaceBytes: r.workspaceBytes,
    };
  }
}

// ---------------------------------------------------------------- selection

/** The cpu entry of backends(): available with the addon's CPU part; details say what runs. */
export function probeCpu(addon: NativeAddon | null, loadError: string | null, file: string | null = null): { backend: CpuBackend | null; info: BackendInfo } {
  const name = 'cpu' as const;
  if (addon === null) {
    return { backend: null, info: { name, available: false, reason: `the native addon did not load: ${loadError}`, details: {} } };
  }
  const cpu = cpuAddon(addon);
  if (cpu === null) {
    return {
      backend: null,
      info: { name, available: false, reason: 'the native addon was built without the CPU backend: rebuild it (npm run build:native)', details: {} },
    };
  }
  useNativeBf16Rounding((values, consumed) => {
    const bits = native(() => cpu.cpuRoundToBf16(values));
    if (consumed) cpu.cpuRecycle(values);
    return bits;
  });
  const i = cpu.cpuInfo();
  const details: BackendInfo['details'] = (cpuDetails = {
    addon: file === null ? 'unknown' : `${file} (${file.startsWith('prebuilds') ? 'prebuilt' : 'built from source'})`,
    gemm: i.gemm.library,
    gemmKernel: i.gemm.kernel,
    // read at each backends() call: it also says when products fell back to the portable kernel
    get gemmKernelNote() {
      return cpu.cpuInfo().gemm.kernelNote;
    },
    // the last linearCrossEntropy's backward: the share of the gradient's entries filterEps spared
    get lastGradientWorkSkipped() {
      return lastGradientWork === null ? 'no call yet' : `${(100 * lastGradientWork.skippedFraction).toFixed(2)}%`;
    },
    // read at each backends() call: CUTLOSS_CPU_BF16=off or cpuSetBf16Gemm changes it
    get bf16Gemm() {
      const b = cpu.cpuInfo().bf16Gemm;
      return b.isa === '' ? `${b.path}: ${b.note}` : `${b.path} on ${b.isa}`;
    },
    simd: i.simd,
    threads: i.threads,
    denormals: i.flushesDenormals ? 'flushed to zero (FTZ/DAZ) on cutloss threads' : 'IEEE (not flushed)',
    workspaceBytes: DEFAULT_CPU_WORKSPACE_BYTES,
  });
  const reason = `${i.threads} thread${i.threads === 1 ? '' : 's'}, ${i.simd} kernels, GEMM: ${i.gemm.library}` +
    (i.gemm.blasLinked ? ` with its ${i.gemm.kernel} kernels` : '');
  return { backend: new CpuBackend(cpu), info: { name, available: true, reason, details } };
}

/** backends()'s details of cpu, kept current by setThreads. */
let cpuDetails: BackendInfo['details'] | null = null;

function loadedCpu(fn: string): CpuAddon {
  const { addon, error } = loadNative();
  const cpu = cpuAddon(addon);
  if (cpu === null) {
    throw new CutlossError('E_BACKEND', `${fn}: the cpu backend is unavailable: ${addon === null ? error : 'the addon was built without it'}`);
  }
  return cpu;
}

/**
 * Threads the cpu backend uses (its kernels and its BLAS), for later calls. Default: the CPUs
 * this process may run on, or CUTLOSS_THREADS. Waits for a running cpu call to finish.
 *
 * @param n an integer in [1, 256] (E_OPTION otherwise).
 * @example
 * setThreads(4);
 */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 256) {
    throw new CutlossError('E_OPTION', `setThreads: expected an integer in [1, 256], got ${describe(n)}`);
  }
  const cpu = loadedCpu('setThreads');
  native(() => cpu.cpuSetThreads(n));
  if (cpuDetails !== null) cpuDetails.threads = n;
}

/**
 * The cpu backend's thread count (E_BACKEND when the native addon is not loaded).
 *
 * @example
 * console.log(`cpu backend on ${getThreads()} threads`);
 */
export function getThreads(): number {
  return loadedCpu('getThreads').cpuInfo().threads;
}
