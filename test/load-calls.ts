// Mixed calls for the load tests (test/load.test.ts), in a module of their own so worker threads
// can import it too: call i has inputs seeded by i (a result that came from another call
// differs), a sync form and its async twin, and a flattening of its result into bytes.
import type * as Lib from '../lib/index.js';

type L = typeof Lib;

export interface MixedCall {
  name: string;
  sync(): unknown;
  async(): Promise<unknown>;
  /** Device tensors the call reads, disposed once both forms ran. */
  inputs: Lib.DeviceTensor[];
}

/** Small uniform values in [-4, 4) from a 32-bit LCG. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out[i] = (s / 2 ** 32) * 8 - 4;
  }
  return out;
}

/** Kinds of call, in the order call i picks them (i modulo the count). */
export const KINDS = [
  'softmax', 'logSoftmax', 'logSumExp', 'softmaxBackward', 'stablemax', 'logStablemaxBackward', 'sparsemax',
  'entmax15', 'gumbelSoftmax', 'crossEntropy', 'crossEntropyNone', 'linearCrossEntropy',
] as const;

/**
 * Call i on the current backend. `device` puts its float inputs in DeviceTensors of `device`
 * ('cuda-emu' or 'cuda'); `linearEvery` makes only every k-th linear call fused (the rest are
 * cross-entropy), for backends where the fused kernel is slow.
 */
export function mixedCall(m: L, i: number, { device, linearEvery = 1 }: { device?: 'cuda-emu' | 'cuda'; linearEvery?: number } = {}): MixedCall {
  const N = 2 + (i % 3);
  const V = 16 + (i % 17);
  const D = 8;
  const inputs: Lib.DeviceTensor[] = [];
  const put = (t: Lib.Tensor): Lib.AnyTensor => {
    if (device === undefined) return t;
    const d = m.upload(t, { backend: device });
    inputs.push(d);
    return d;
  };
  const x = put(m.tensor(values(N * V, i), [N, V]));
  const dy = put(m.tensor(values(N * V, i + 1e6), [N, V]));
  const labels = Int32Array.from({ length: N }, (_, r) => (i * 7 + r * 13) % V);
  let kind: (typeof KINDS)[number] = KINDS[i % KINDS.length]!;
  if (kind === 'linearCrossEntropy' && Math.floor(i / KINDS.length) % linearEvery !== 0) kind = 'crossEntropy';
  const pair = <R>(sync: () => R, async: () => Promise<R>) => ({ name: kind, sync, async, inputs });
  switch (kind) {
    case 'softmax': return pair(() => m.softmax(x, { temperature: 0.75 }), () => m.softmaxAsync(x, { temperature: 0.75 }));
    case 'logSoftmax': return pair(() => m.logSoftmax(x), () => m.logSoftmaxAsync(x));
    case 'logSumExp': return pair(() => m.logSumExp(x), () => m.logSumExpAsync(x));
    case 'softmaxBackward': return pair(() => m.softmaxBackward(x, dy), () => m.softmaxBackwardAsync(x, dy));
    case 'stablemax': return pair(() => m.stablemax(x), () => m.stablemaxAsync(x));
    case 'logStablemaxBackward': return pair(() => m.logStablemaxBackward(x, dy), () => m.logStablemaxBackwardAsync(x, dy));
    case 'sparsemax': return pair(() => m.sparsemax(x), () => m.sparsemaxAsync(x));
    case 'entmax15': return pair(() => m.entmax15(x), () => m.entmax15Async(x));
    case 'gumbelSoftmax': {
      const o = { tau: 0.7, seed: i };
      return pair(() => m.gumbelSoftmax(x, o), () => m.gumbelSoftmaxAsync(x, o));
    }
    case 'crossEntropy': {
      const o = { labelSmoothing: 0.1, returnLse: true } as const;
      return pair(() => m.crossEntropy(x, labels, o), () => m.crossEntropyAsync(x, labels, o));
    }
    case 'crossEntropyNone': {
      const o = { reduction: 'none', zLoss: 1e-3 } as const;
      return pair(() => m.crossEntropy(x, labels, o), () => m.crossEntropyAsync(x, labels, o));
    }
    case 'linearCrossEntropy': {
      const e = put(m.tensor(values(N * D, i + 2e6), [N, D]));
      const w = put(m.tensor(values(V * D, i + 3e6), [V, D]));
      return pair(() => m.linearCrossEntropy(e, w, labels), () => m.linearCrossEntropyAsync(e, w, labels));
    }
  }
}

/**
 * The bytes of a result: numbers as float64, typed arrays as they are, DeviceTensors
 * downloaded (and disposed), objects by sorted key. Equal bytes = bit-identical results.
 */
export function resultBytes(m: L, r: unknown): Uint8Array {
  const parts: Uint8Array[] = [];
  const walk = (v: unknown): void => {
    if (v === undefined) return;
    if (typeof v === 'number') parts.push(new Uint8Array(Float64Array.of(v).buffer));
    else if (typeof v === 'string') parts.push(new TextEncoder().encode(v));
    else if (v instanceof m.DeviceTensor) {
      walk(v.download()); // the Tensor a host call returns
      v.dispose();
    } else if (ArrayBuffer.isView(v)) parts.push(new Uint8Array(v.buffer, v.byteOffset, v.byteLength).slice());
    else if (typeof v === 'object' && v !== null) {
      for (const k of Object.keys(v).sort()) walk((v as Record<string, unknown>)[k]);
    } else throw new Error(`unexpected result part ${String(v)}`);
  };
  walk(r);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
