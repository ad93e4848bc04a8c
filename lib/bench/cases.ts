// The benchmark's case matrix. S1–S3 are the CPU scenarios (crossEntropy, linearCrossEntropy,
// softmax at a 32k vocabulary); CCE is the Cut Cross-Entropy paper's head (Gemma-2 2B: N 8192,
// D 2304, V 256000, bf16); the sweep varies V at fixed N and D (the CCE shape on a GPU, S2's on
// a CPU). Every case also has a tiny shape, for cuda-emu (thousands of times slower than a GPU)
// and smoke tests.

import { labelValues, toBf16, uniformValues } from './data.js';

export type CaseKind = 'crossEntropy' | 'linear' | 'softmax';

export interface Shape {
  /** Rows: of the logits (crossEntropy, softmax) or of E (linear). */
  N: number;
  V: number;
  /** linear only (0 otherwise). */
  D: number;
}

export interface BenchCase extends Shape {
  name: string;
  kind: CaseKind;
  what: string;
  dtype: 'f32' | 'bf16';
  /** Standard deviation of the logits (crossEntropy, softmax) or of W's entries (linear; E's are 1). */
  std: number;
  /** Sweep cases: their vocabulary is the chart's x axis. */
  sweep: boolean;
}

/** The CPU scenarios at full size and tiny. */
const FIXED: { name: string; kind: CaseKind; what: string; full: Shape; tiny: Shape; dtype: 'f32' | 'bf16'; std: number }[] = [
  { name: 'S1', kind: 'crossEntropy', what: 'crossEntropy fwd+bwd', full: { N: 4096, V: 32000, D: 0 }, tiny: { N: 64, V: 500, D: 0 }, dtype: 'f32', std: 2 },
  // logits E·Wᵀ have std √D·0.05 ≈ 1.1
  { name: 'S2', kind: 'linear', what: 'linearCrossEntropy fwd+bwd', full: { N: 2048, V: 32000, D: 512 }, tiny: { N: 32, V: 500, D: 32 }, dtype: 'f32', std: 0.05 },
  // std √512·0.884 ≈ 20: a trained model's spread, whose peaked softmax rows are mostly denormal
  { name: 'S2-peaked', kind: 'linear', what: 'S2 with logits of std ≈ 20', full: { N: 2048, V: 32000, D: 512 }, tiny: { N: 32, V: 500, D: 32 }, dtype: 'f32', std: 0.884 },
  { name: 'S3', kind: 'softmax', what: 'softmax', full: { N: 4096, V: 32000, D: 0 }, tiny: { N: 64, V: 500, D: 0 }, dtype: 'f32', std: 2 },
  // logits std √2304·0.02 ≈ 1
  { name: 'CCE', kind: 'linear', what: 'linearCrossEntropy fwd+bwd, the Cut Cross-Entropy paper\'s Gemma-2 2B head', full: { N: 8192, V: 256000, D: 2304 }, tiny: { N: 64, V: 1000, D: 48 }, dtype: 'bf16', std: 0.02 },
];

export const SWEEP_VOCABS = [8000, 16000, 32000, 64000, 128000, 256000];
const SWEEP_VOCABS_TINY = [256, 512, 1024, 2048];

export interface MatrixOptions {
  /** A GPU backend: the sweep at the CCE shape (bf16) rather than S2's (f32). */
  gpu: boolean;
  tiny: boolean;
  /** Fewer sweep points. */
  quick: boolean;
}

/** Every case, in the order they run. */
export function caseMatrix(o: MatrixOptions): BenchCase[] {
  const out: BenchCase[] = FIXED.map((c) => ({ name: c.name, kind: c.kind, what: c.what, dtype: c.dtype, std: c.std, sweep: false, ...(o.tiny ? c.tiny : c.full) }));
  let vocabs = o.tiny ? SWEEP_VOCABS_TINY : SWEEP_VOCABS;
  if (o.quick) vocabs = vocabs.filter((_, i) => i % 2 === 0 || i === vocabs.length - 1);
  const base = o.gpu ? FIXED[4]! : FIXED[1]!;
  const shape = o.tiny ? base.tiny : base.full;
  for (const V of vocabs) {
    out.push({
      name: `sweep-V${V >= 1000 && V % 1000 === 0 ? `${V / 1000}k` : V}`, kind: 'linear', sweep: true, dtype: base.dtype, std: base.std,
      what: `linearCrossEntropy fwd+bwd, N ${shape.N}, D ${shape.D}, V ${V}`, N: shape.N, D: shape.D, V,
    });
  }
  return out;
}

/** Model FLOPs of one call: 2NVD for the logits, 4NVD more for dE and dW (recomputation not counted). */
export function modelFlops(c: BenchCase, mode: 'fwd' | 'fwdbwd'): number {
  if (c.kind !== 'linear') return 0;
  return (mode === 'fwd' ? 2 : 6) * c.N * c.V * c.D;
}

/** Bytes a materialized head holds at once: the logits and their gradient, in the input dtype. */
export function materializedBytes(c: BenchCase): number {
  return 2 * c.N * c.V * (c.dtype === 'bf16' ? 2 : 4);
}

export interface CaseInputs {
  logits?: Float32Array | Uint16Array; // crossEntropy, softmax [rows, V]
  E?: Float32Array | Uint16Array; // linear [rows, D]
  W?: Float32Array | Uint16Array; // linear [V, D]
  labels: Int32Array;
}

/** The inputs of a case, for its first `rows` rows (fewer for slow contestants); bf16 as raw bits. */
export function caseInputs(c: BenchCase, rows = c.N): CaseInputs {
  const labels = labelValues(rows, c.V, 3);
  const cast = (x: Float32Array) => (c.dtype === 'bf16' ? toBf16(x) : x);
  if (c.kind !== 'linear') return { logits: cast(uniformValues(rows * c.V, 1, c.std)), labels };
  return { E: cast(uniformValues(rows * c.D, 1, 1)), W: cast(uniformValues(c.V * c.D, 2, c.std)), labels };
}

/** The bytes a call hands back: the gradients (crossEntropy, linear) or the probabilities (softmax). */
export function returnedBytes(c: BenchCase, rows = c.N): number {
  const size = c.dtype === 'bf16' ? 2 : 4;
  return (c.kind === 'linear' ? (rows + c.V) * c.D : rows * c.V) * size;
}
