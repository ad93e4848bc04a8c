// The CPU benchmark's scenarios and their inputs. Values come from a counter hash (murmur3's
// finalizer), so the Python peer (torch_peer.py) builds bit-identical inputs from the same
// formula without a file in between, and the losses of the two can be compared.

export type ScenarioName = 'S1' | 'S2' | 'S2-peaked' | 'S3';

export interface Scenario {
  name: ScenarioName;
  what: string;
  /** Rows: N of the logits (S1, S3) or of E (S2). */
  N: number;
  V: number;
  /** S2 only. */
  D: number;
  /** Standard deviation of the logits (S1, S3) or of W's entries (S2; E has 1). */
  std: number;
}

export const SCENARIOS: Record<ScenarioName, Scenario> = {
  S1: { name: 'S1', what: 'crossEntropy fwd+bwd, logits [4096, 32000]', N: 4096, V: 32000, D: 0, std: 2 },
  // logits E·Wᵀ have std √D·1·0.05 ≈ 1.1
  S2: { name: 'S2', what: 'linearCrossEntropy fwd+bwd, E [2048, 512], W [32000, 512]', N: 2048, V: 32000, D: 512, std: 0.05 },
  // std √512·0.884 ≈ 20: a trained model's spread, whose peaked softmax rows are mostly denormal
  'S2-peaked': { name: 'S2-peaked', what: 'S2 with logits of std ≈ 20 (W scaled)', N: 2048, V: 32000, D: 512, std: 0.884 },
  S3: { name: 'S3', what: 'softmax, [4096, 32000]', N: 4096, V: 32000, D: 0, std: 2 },
};

/** murmur3's 32-bit finalizer. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Uniform values of the given standard deviation: element i from fmix32(i + seed·0x9e3779b9). */
export function uniformValues(count: number, seed: number, std: number): Float32Array {
  const out = new Float32Array(count);
  const a = std * Math.sqrt(3);
  const offset = Math.imul(seed, 0x9e3779b9) >>> 0;
  for (let i = 0; i < count; i++) {
    const u = (fmix32((i + offset) >>> 0) >>> 8) * 2 ** -24; // [0, 1) on a 2^-24 grid
    out[i] = (2 * u - 1) * a;
  }
  return out;
}

export function labelValues(count: number, V: number, seed: number): Int32Array {
  const out = new Int32Array(count);
  const offset = Math.imul(seed, 0x9e3779b9) >>> 0;
  for (let i = 0; i < count; i++) out[i] = fmix32((i ^ offset) >>> 0) % V;
  return out;
}

export interface ScenarioInputs {
  logits?: Float32Array; // S1, S3 [N, V]
  E?: Float32Array; // S2 [N, D]
  W?: Float32Array; // S2 [V, D]
  labels: Int32Array;
}

/** The inputs of a scenario, for its first `rows` rows (fewer for slow contestants). */
export function scenarioInputs(s: Scenario, rows = s.N): ScenarioInputs {
  const labels = labelValues(rows, s.V, 3);
  if (s.D === 0) return { logits: uniformValues(rows * s.V, 1, s.std), labels };
  return { E: uniformValues(rows * s.D, 1, 1), W: uniformValues(s.V * s.D, 2, s.std), labels };
}
