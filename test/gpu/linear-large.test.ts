// linearCrossEntropy on a real GPU at a realistic size (N 8192, D 2048, V 128000; bf16 and f32;
// the default filterEps), checked per element against a float64 recomputation of a sample of
// rows (and of classes, for dW) on the host, and timed with CUDA events: the forward alone and
// the fused forward + backward, medians of 10 after a warm-up; the backward's time is their
// difference. The caching allocator must serve every call of the timed loop (no cudaMalloc).
// Skipped, saying why, without a GPU.
import { describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { autoFilterEps, defaultF32FilterEps } from '../../lib/options.js';
import * as ref from '../reference64.js';
import { onGpu } from './device.js';

const runs = onGpu('test/gpu/linear-large.test.ts');
const [N, D, V] = [8192, 2048, 128000];
const SAMPLE_ROWS = 8;
const SAMPLE_CLASSES = 4;
const TIMED = 10;

type Dtype = 'f32' | 'bf16';
const addon = () => native().addon! as ReturnType<typeof native>['addon'] & {
  timeOnDevice(backend: 1, fn: () => unknown): { ms: number; clock: string; value: unknown };
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Gaussian values (as float32, and as the bf16 the device gets when dtype is bf16). */
function gaussian(n: number, std: number, seed: number, dtype: Dtype): { device: Float32Array | Uint16Array; exact: Float32Array } {
  const rng = ref.mulberry32(seed);
  const exact = new Float32Array(n);
  for (let i = 0; i < n; i++) exact[i] = ref.randn(rng) * std;
  if (dtype === 'f32') return { device: exact, exact };
  const bits = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    bits[i] = ref.f32ToBf16(exact[i]!);
    exact[i] = ref.bf16ToF32(bits[i]!);
  }
  return { device: bits, exact };
}

/** Row i of E·Wᵀ in float64. */
function logitRow(E: Float32Array, W: Float32Array, i: number): Float64Array {
  const z = new Float64Array(V);
  const e = E.subarray(i * D, (i + 1) * D);
  for (let v = 0; v < V; v++) {
    const w = W.subarray(v * D, (v + 1) * D);
    let acc = 0;
    for (let d = 0; d < D; d++) acc += e[d]! * w[d]!;
    z[v] = acc;
  }
  return z;
}

function lse64(z: Float64Array): number {
  let m = -Infinity;
  for (const x of z) m = Math.max(m, x);
  let s = 0;
  for (const x of z) s += Math.exp(x - m);
  return m + Math.log(s);
}

describe.skipIf(!runs)(`linearCrossEntropy at N ${N}, D ${D}, V ${V} on the GPU`, () => {
  for (const dtype of ['bf16', 'f32'] as const) {
    it(`${dtype}: per-element agreement with float64 on sampled rows and classes; CUDA-event timings`, () => {
      lib.setBackend('cuda');
      const e = gaussian(N * D, 1, 1, dtype);
      const w = gaussian(V * D, 2 / Math.sqrt(D), 2, dtype); // logits of standard deviation ~2
      const labels = Int32Array.from({ length: N }, (_, i) => (i * 7919 + 13) % V);
      const E = lib.upload(lib.tensor(e.device, [N, D], dtype), { backend: 'cuda' });
      const W = lib.upload(lib.tensor(w.device, [V, D], dtype), { backend: 'cuda' });
      const options = { reduction: 'sum', returnLse: true } as const; // filterEps: the default
      const eps = dtype === 'bf16' ? autoFilterEps('bf16') : defaultF32FilterEps(V);

      const r = lib.linearCrossEntropy(E, W, labels, options);
      const lse = r.lse!;
      const dE = r.dEmbeddings!.download().data;
      const dW = r.dClassifier!.download().data;
      const value = (a: Float32Array | Uint16Array, i: number) => (a instanceof Uint16Array ? ref.bf16ToF32(a[i]!) : a[i]!);
      r.dEmbeddings!.dispose();
      r.dClassifier!.dispose();

      // fp32 accumulation of D products; bf16 outputs are rounded once more (2^-9 relative)
      const rtol = dtype === 'bf16' ? 2 ** -8 : 2e-5;
      const rows = Array.from({ length: SAMPLE_ROWS }, (_, k) => Math.floor(((k + 0.5) * N) / SAMPLE_ROWS));
      let worst = 0;
      for (const i of rows) {
        const z = logitRow(e.exact, w.exact, i);
        const l = lse64(z);
        expect(Math.abs(lse[i]! - l)).toBeLessThanOrEqual(2e-5 * (1 + Math.abs(l)));
        // dE_i = Σ_v g_v·W_v with g = softmax − onehot; filtering may drop the g with |g| < eps
        const g = z.map((x, v) => Math.exp(x - l) - (v === labels[i] ? 1 : 0));
        for (let d = 0; d < D; d++) {
          let want = 0, terms = 0, dropped = 0;
          for (let v = 0; v < V; v++) {
            const t = g[v]! * w.exact[v * D + d]!;
            want += t;
            terms += Math.abs(t);
            if (Math.abs(g[v]!) < eps) dropped += Math.abs(t);
          }
          const err = Math.abs(value(dE, i * D + d) - want);
          const tol = rtol * (terms + Math.abs(want)) + dropped;
          worst = Math.max(worst, err / tol);
          expect(err).toBeLessThanOrEqual(tol);
        }
      }
      // dW_v = Σ_i g_iv·E_i over every row: the rows' lse from the device (checked above on a sample)
      let maxLse = 0;
      for (let i = 0; i < N; i++) maxLse = Math.max(maxLse, Math.abs(lse[i]!));
      const lseError = 2e-5 * (1 + maxLse);
      const classes = Array.from({ length: SAMPLE_CLASSES }, (_, k) => (labels[k * 97]! + k) % V);
      for (const v of classes) {
        const wv = w.exact.subarray(v * D, (v + 1) * D);
        const want = new Float64Array(D), terms = new Float64Array(D), dropped = new Float64Array(D);
        for (let i = 0; i < N; i++) {
          const ei = e.exact.subarray(i * D, (i + 1) * D);
          let zi = 0;
          for (let d = 0; d < D; d++) zi += ei[d]! * wv[d]!;
          const g = Math.exp(zi - lse[i]!) - (labels[i] === v ? 1 : 0);
          for (let d = 0; d < D; d++) {
            want[d] += g * ei[d]!;
            terms[d] += Math.abs(g * ei[d]!);
            if (Math.abs(g) < eps) dropped[d] += Math.abs(g * ei[d]!);
          }
        }
        for (let d = 0; d < D; d++) {
          const err = Math.abs(value(dW, v * D + d) - want[d]!);
          // the device's lse moves each g by up to |g|·lseError
          const tol = (rtol + lseError) * (terms[d]! + Math.abs(want[d]!)) + dropped[d]!;
          expect(err).toBeLessThanOrEqual(tol);
        }
      }

      // timings: CUDA events around each call (the device's clock), after a warm-up
      const time = (computeGrad: boolean) => {
        const ms: number[] = [];
        for (let k = 0; k < 3 + TIMED; k++) {
          let out: lib.DeviceLinearCrossEntropyResult | undefined;
          const t = addon().timeOnDevice(1, () => {
            out = lib.linearCrossEntropy(E, W, labels, { ...options, computeGrad });
          });
          out?.dEmbeddings?.dispose();
          out?.dClassifier?.dispose();
          if (k >= 3) ms.push(t.ms);
        }
        return median(ms);
      };
      time(false);
      const before = addon().deviceCacheStats(1);
      const forward = time(false);
      const both = time(true);
      const after = addon().deviceCacheStats(1);
      console.log(`linearCrossEntropy ${dtype} N ${N} D ${D} V ${V} (filterEps ${eps.toExponential(2)}): ` +
        `forward ${forward.toFixed(2)} ms, forward+backward ${both.toFixed(2)} ms, backward ${(both - forward).toFixed(2)} ms ` +
        `(medians of ${TIMED}, CUDA events); workspace ${(r.workspaceBytes / 2 ** 20).toFixed(1)} MiB; ` +
        `worst dE error / tolerance ${worst.toFixed(3)}; cudaMalloc calls in the timed loops ${after.allocations - before.allocations}`);
      expect(after.allocations - before.allocations).toBe(0); // the cache served every call
      E.dispose();
      W.dispose();
    }, 1_200_000);
  }
});
