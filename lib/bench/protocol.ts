// What the runner and a case's process say to each other: the spec a worker (or the Python
// peer) is started with, the result it prints, and the addon's benchmark probe.

import type { BenchCase } from './cases.js';
import { median } from './measure.js';
import { native } from '../native.js';

export type Contestant =
  | 'cutloss' | 'cutloss-js' | 'materialized' | 'gemm-limit' | 'tfjs-cpu' | 'tfjs-wasm' | 'onnxruntime'
  | 'paired-gemm-limit' | 'paired-stream-limit';

export type RunBackend = 'cuda' | 'cuda-emu' | 'cpu' | 'js';

export interface WorkerSpec {
  case: BenchCase;
  contestant: Contestant;
  /** The backend of cutloss and of the materialized baseline. */
  backend: RunBackend;
  /** Rows of the case actually run (fewer than N: times are scaled by N / rows). */
  rows: number;
  runs: number;
  threads: number;
  /** cutloss on cpu, linear: linearCrossEntropy's workspaceBytes. */
  workspaceBytes?: number;
  /** paired-stream-limit: the built stream.cc. */
  streamExe?: string;
  /** Device backends: the length of the energy window, ms (0: none). */
  energyWindowMs: number;
  /** Read nvidia-smi's energy counter around the window (the parent samples the rest). */
  smi: boolean;
}

export interface Stats {
  medianMs: number;
  minMs: number;
  maxMs: number;
  runs: number;
}

/** What a worker (or the Python peer) reports of its energy window; the parent adds its samples. */
export interface WindowReport {
  startMs: number;
  windowMs: number;
  tokens: number;
  counterBeforeMJ: number | null;
  counterAfterMJ: number | null;
  /** memory.used before the contestant allocated anything, MiB. */
  memoryBeforeMiB: number | null;
  counterNote: string | null;
}

export interface DeviceMemoryReport {
  /** The allocator's high-water mark during the first call, above what was live before it. */
  peakBytes: number;
  /** What the allocator or framework measures: cutloss's buffers, torch.cuda.max_memory_allocated. */
  peakSource: string;
  /** Device memory held by the inputs before the first call. */
  inputBytes: number;
  /** cudaMemGetInfo (or the emulator's accounting) before the first call and after it (results alive). */
  before: { freeBytes: number; totalBytes: number };
  after: { freeBytes: number; totalBytes: number };
  infoSource: string;
}

export interface WorkerResult {
  case: string;
  contestant: Contestant | 'torch' | 'torch-chunked' | 'cce' | 'liger';
  label: string;
  note: string;
  /** N / rows: the factor applied to every time below. */
  scale: number;
  /** 'cudaEvent' (device clock), 'host' (performance.now / steady clock), 'torch.cuda.Event'. */
  clock: string;
  firstMs: number | null;
  fwd: Stats | null;
  fwdBwd: Stats;
  /** Host memory: peak growth of the first call, and beyond the results it returns. */
  host: { growthBytes: number; returnedBytes: number; extraBytes: number } | null;
  device: DeviceMemoryReport | null;
  window: WindowReport | null;
  loss: number | null;
}

export function stats(times: number[], scale = 1): Stats {
  return {
    medianMs: median(times) * scale,
    minMs: Math.min(...times) * scale,
    maxMs: Math.max(...times) * scale,
    runs: times.length,
  };
}

/** The entry points src/bench_probe.cc adds to the addon. */
export interface BenchProbe {
  deviceMemory(backend: 0 | 1): { liveBytes: number; peakBytes: number; freeBytes: number; totalBytes: number; source: string };
  resetDeviceMemoryPeak(backend: 0 | 1): void;
  timeOnDevice<T>(backend: 0 | 1, fn: () => T): { ms: number; clock: 'cudaEvent' | 'host'; value: T };
}

/** The addon's benchmark probe; a message saying to rebuild when the addon predates it. */
export function benchProbe(): BenchProbe {
  const { addon, error } = native();
  if (addon === null) throw new Error(`the native addon is unavailable: ${error}`);
  const p = addon as unknown as Partial<BenchProbe>;
  if (typeof p.deviceMemory !== 'function' || typeof p.timeOnDevice !== 'function') {
    throw new Error('the addon has no benchmark probe (deviceMemory, timeOnDevice): rebuild it (npm run build:native)');
  }
  return p as BenchProbe;
}

/** The result of a paired run: two contestants timed alternately in one process. */
export interface PairedResult {
  case: string;
  labels: [string, string];
  mediansMs: [number, number];
  /** The median over the pairs of time(first) ÷ time(second). */
  ratio: number;
  pairs: number;
}

