// Sparsemax rows whose threshold search runs over the vocabulary (candidates overflow, so the
// fused kernels make passes over the vocabulary tiles): the search of cuda/math/michelot.cuh
// and lib/js/math.ts against the float64 sort, the pass counts the JS engine and the emulated
// kernels report (bounded by SPARSEMAX_PASS_LIMIT for any V), and the fused sparsemax loss on js
// and cuda-emu against float64 (a closed form at V = 8192, test/reference64.ts at V = 300).
import { describe, expect, it } from 'vitest';
import * as lib from '../../lib/index.js';
import { runFusedLoss, type LogitSource } from '../../lib/js/fusedLoss.js';
import { SEARCH_DONE, SPARSEMAX_MICHELOT_PASSES, SPARSEMAX_PASS_LIMIT, sparsemaxSearchStart, sparsemaxSearchStep } from '../../lib/js/math.js';
import { gradientScales, reduceLoss } from '../../lib/nativeBackend.js';
import { resolveLossOptions } from '../../lib/options.js';
import * as ref from '../reference64.js';
import { blobBytes, blobValues, buildRunner, runKernels } from './kernel-runner.js';

/** Michelot's fixed point from τ₀ = −1 over values relative to their max, in float64: its passes. */
function michelotPasses(a: ArrayLike<number>): number {
  let tau = -1, support = -1;
  for (let p = 1; ; p++) {
    let c = 0, s = 0;
    for (let i = 0; i < a.length; i++) if (a[i]! > tau) { c++; s += a[i]!; }
    if (c === support) return p;
    support = c;
    tau = Math.max(tau, (s - 1) / c);
  }
}

/** The exact τ and |supp| of values relative to their max, by sorting, in float64. */
function sortedThreshold(a: ArrayLike<number>): { tau: number; support: number } {
  const z = Float64Array.from(a).sort().reverse();
  let cum = 0, tau = z[0]! - 1, support = 1;
  for (let k = 0; k < z.length; k++) {
    cum += z[k]!;
    const t = (cum - 1) / (k + 1);
    if (z[k]! > t) { tau = t; support = k + 1; } else break;
  }
  return { tau, support };
}

/** The search of math.ts run to its end over a row (float32 values relative to the max). */
function search(a: Float32Array): { tau: number; support: number; sumSqP: number; passes: number } {
  const st = sparsemaxSearchStart();
  while (st.phase !== SEARCH_DONE) {
    let c = 0, s = 0, q = 0;
    for (const z of a) if (z > st.x) { c++; s += z; q += (z - st.x) * (z - st.x); }
    sparsemaxSearchStep(st, c, s, q);
  }
  return { tau: st.tau, support: st.gen, sumSqP: st.sumSqP, passes: st.passes };
}

const f32 = (n: number, f: (j: number) => number) => Float32Array.from({ length: n }, (_, j) => Math.fround(f(j)));

// 200 logits spread as −0.9·√(j/199) below the max: each Michelot pass drops only the bottom few,
// and the rest of the vocabulary far below. (The fused kernels split V = 300 into 64-class
// splits whose candidates do not overflow: their short list runs the same search.)
const slow = f32(300, (j) => (j < 200 ? -0.9 * Math.sqrt(j / 199) : -5 - j / 300));
const V = 8192;
const rng = ref.mulberry32(13);
const ROWS: [string, Float32Array][] = [
  // every logit within 1 of the max, spread so that Michelot's fixed point drops a few per pass
  ['adversarial', f32(V, (j) => -0.9 * Math.sqrt(j / (V - 1)))],
  // 1024 at the max and 4096 tied at exactly τ = −2^-10 (outside the support), the rest spread below
  ['heavy ties', f32(V, (j) => (j < 1024 ? 0 : j < 5120 ? -(2 ** -10) : -0.002 - 0.9 * rng()))],
  ['all equal', f32(V, () => 0)],
  // one logit at the max, the rest just within 1 below it: τ a hair above −1, every logit in the support
  ['one dominant', f32(V, (j) => (j === 0 ? 0 : -0.9999 + 1e-5 * rng()))],
];

describe('the sparsemax threshold search (cuda/math/michelot.cuh, lib/js/math.ts)', () => {
  it('the rows are adversarial for Michelot alone', () => {
    expect(michelotPasses(slow)).toBeGreaterThanOrEqual(8); // a smooth row takes 2 or 3
    // more than the search's Michelot phase: its bisection runs
    expect(michelotPasses(ROWS[0]![1])).toBeGreaterThan(SPARSEMAX_MICHELOT_PASSES);
  });

  for (const [name, row] of [['V = 300', slow] as const, ...ROWS]) {
    it(`${name}: exact against the float64 sort, within the pass bound`, () => {
      const want = sortedThreshold(row);
      const got = search(row);
      console.log(`${name}: search ${got.passes} passes, Michelot alone ${michelotPasses(row)}, |supp| ${want.support}`);
      expect(got.passes).toBeLessThanOrEqual(SPARSEMAX_PASS_LIMIT);
      expect(got.support).toBe(want.support);
      expect(Math.abs(got.tau - want.tau)).toBeLessThanOrEqual(1e-7 * Math.abs(want.tau));
      let q = 0;
      for (const z of row) if (z > want.tau) q += (z - want.tau) ** 2;
      expect(Math.abs(got.sumSqP - q)).toBeLessThanOrEqual(1e-9 + 1e-6 * q);
    });
  }

  it('the bound holds for random crowded rows of every width', () => {
    const r = ref.mulberry32(5);
    for (let k = 0; k < 300; k++) {
      const n = 2 + Math.floor(r() * 3000);
      const scale = [1e-6, 1e-3, 0.1, 1, 3][k % 5]!;
      const row = f32(n, (j) => (j === 0 ? 0 : -scale * r() ** (1 + 3 * r())));
      const want = sortedThreshold(row);
      const got = search(row);
      expect(got.passes).toBeLessThanOrEqual(SPARSEMAX_PASS_LIMIT);
      expect(got.support).toBe(want.support);
      expect(Math.abs(got.tau - want.tau)).toBeLessThanOrEqual(1e-7 * Math.abs(want.tau));
    }
  });
});

/** The JS engine's loss and pass count over a dense row repeated on N rows (no gradient). */
function jsEngine(row: Float32Array, labels: Int32Array) {
  const N = labels.length;
  const Vr = row.length;
  const source: LogitSource = {
    fill(r0, nr, c0, nc, out) { for (let r = 0; r < nr; r++) for (let j = 0; j < nc; j++) out[r * nc + j] = row[c0 + j]!; },
    beginClassTile() {}, accumulateGrad() {}, endClassTile() {},
  };
  const o = resolveLossOptions({ normalizer: 'sparsemax', reduction: 'none', computeGrad: false }, N, Vr, 'f32', true);
  return runFusedLoss({ ...o, rows: N, vocab: Vr, labels, tileRows: 64, tileCols: 256 }, source);
}

const exe = buildRunner();

/** The emulated launcher on E = 1 (D = 1), W = the row: each logit row is the row, exactly in float32. */
function emulated(row: Float32Array, labels: Int32Array) {
  const N = labels.length;
  const Vr = row.length;
  const o = resolveLossOptions({ normalizer: 'sparsemax', reduction: 'none' }, N, Vr, 'f32', true);
  const sc = gradientScales(labels, o);
  const keys = {
    rows: N, cols: Vr, dim: 1, eDtype: 'f32', wDtype: 'f32', normalizer: o.normalizer, smoothing: 0, focalGamma: 0,
    polyEpsilon: 0, zLoss: 0, squentropy: 0, softcap: 0, invTemperature: 1, ignoreIndex: o.ignoreIndex, sumWeights: Vr,
    gemm: 1, tf32: false, deterministic: false, filterEps: 0, vocabSplits: 0,
  };
  const blobs = {
    E: new Float32Array(N).fill(1), W: row, labels, scaleWeighted: sc.scaleWeighted, scaleUnweighted: sc.scaleUnweighted,
  };
  const [r] = runKernels(exe, [{ op: 'linearCrossEntropy', order: 'shuffled', keys, blobs }]);
  if (!r!.ok) throw new Error(r!.error);
  const info = new Uint32Array(blobBytes(r!, 'info').slice().buffer);
  return {
    loss: reduceLoss(labels, blobValues(r!, 'weighted'), blobValues(r!, 'unweighted'), o).loss as Float32Array,
    dE: blobValues(r!, 'dE'), dW: blobValues(r!, 'dW'), passes: info[3]!,
  };
}

/**
 * The sparsemax loss of logit row z for each label in float64, closed form from the sorted τ
 * (test/reference64.ts's general reference is quadratic in V): loss = ½Σ_supp(z² − τ²) + ½ − z_t,
 * and with E = 1, W = z (D = 1): dW_v = Σ_i (p_v − [v = t_i]), dE_i = Σ_v p_v z_v − z_{t_i}.
 */
function closedForm(row: Float32Array, labels: Int32Array) {
  const max = Math.max(...row);
  const { tau: rel, support } = sortedThreshold(Array.from(row, (z) => z - max));
  const tau = rel + max;
  let omega = 0.5, pz = 0;
  const p = Array.from(row, (z) => Math.max(z - tau, 0));
  row.forEach((z, v) => { if (z > tau) { omega += 0.5 * (z * z - tau * tau); pz += p[v]! * z; } });
  const dW = p.map((pv) => labels.length * pv);
  labels.forEach((t) => { dW[t]! -= 1; });
  return { loss: Array.from(labels, (t) => omega - row[t]!), dE: Array.from(labels, (t) => pz - row[t]!), dW, support };
}

describe('fused sparsemax loss on crowded rows: js engine and emulated kernels', () => {
  const labels = Int32Array.from([0, 7, 4000]);
  for (const [name, row] of ROWS) {
    it(`${name} (V = ${V}): passes within the bound, loss and gradients equal float64`, () => {
      const N = labels.length;
      const want = closedForm(row, labels);
      const js = jsEngine(row, labels);
      const emu = emulated(row, labels);
      console.log(`${name}: js ${js.sparsemaxPasses} passes, cuda-emu ${emu.passes}, Michelot alone ${michelotPasses(row)}`);
      expect(js.sparsemaxPasses).toBeGreaterThan(0); // the rows overflowed their candidates
      expect(js.sparsemaxPasses).toBeLessThanOrEqual(SPARSEMAX_PASS_LIMIT);
      // float32 sums on the kernels, float64 in JS: a decision near τ may differ, the bound may not
      expect(emu.passes).toBeGreaterThan(0);
      expect(emu.passes).toBeLessThanOrEqual(SPARSEMAX_PASS_LIMIT);
      for (let i = 0; i < N; i++) {
        const w = want.loss[i]!;
        expect(Math.abs((js.loss as Float32Array)[i]! - w)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(w)));
        expect(Math.abs(emu.loss[i]! - w)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(w)));
        // dE = Σ_v p_v z_v moves by |supp|·Δτ: τ held in float32 is off by up to half its step
        const tauStep = 2 ** -23 * want.support;
        expect(Math.abs(emu.dE[i]! - want.dE[i]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want.dE[i]!)) + tauStep);
      }
      for (let v = 0; v < V; v++) expect(Math.abs(emu.dW[v]! - want.dW[v]!)).toBeLessThanOrEqual(1e-5);
    }, 300_000);
  }
});

describe('sparsemax through the public API on a crowded row', () => {
  for (const backend of ['js', 'cuda-emu'] as const) {
    it(`${backend}: loss and gradients equal the float64 reference`, () => {
      // z = E·Wᵀ with D = 1: every row is the crowded row, exactly in float32
      const N = 3;
      const Vr = slow.length;
      const E = lib.tensor(Float32Array.from([1, 1, 1]), [N, 1]);
      const W = lib.tensor(slow, [Vr, 1]);
      const labels = Int32Array.from([0, 7, 140]);
      lib.setBackend(backend);
      try {
        const options = { normalizer: 'sparsemax', reduction: 'none' } as const;
        const r = lib.linearCrossEntropy(E, W, labels, options);
        const want = ref.linearCrossEntropy(ref.toF64Rows(E.data as Float32Array, N, 1), ref.toF64Rows(slow, Vr, 1),
          labels, options);
        const loss = r.loss as Float32Array;
        for (let i = 0; i < N; i++) expect(Math.abs(loss[i]! - (want.loss as number[])[i]!)).toBeLessThanOrEqual(1e-5);
        const dW = r.dClassifier!.data as Float32Array;
        for (let v = 0; v < Vr; v++) expect(Math.abs(dW[v]! - want.dW[v]![0]!)).toBeLessThanOrEqual(1e-5);
        const dE = r.dEmbeddings!.data as Float32Array;
        for (let i = 0; i < N; i++) expect(Math.abs(dE[i]! - want.dE[i]![0]!)).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(want.dE[i]![0]!)));
      } finally {
        lib.setBackend('auto');
      }
    }, 60_000);
  }
});
