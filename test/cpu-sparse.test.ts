// The cpu backend's sparse gradient path: with filterEps > 0 (f32's default 2^-24 / V) it drops
// single gradient entries below min(filterEps, 2^-24 / V), skips slices wholly below filterEps
// (the rule of every backend), and runs the slices with few entries left as per-entry products. Held to the float64 closed form on peaked, flat and Zipf-like rows: within
// f32 rounding of the exact products plus the stated bound on what the filter drops (a row's
// dropped entries sum to under V·filterEps·s_i/T), and a threshold too high for that bound fails
// the same check.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { cpuLastGradientWork } from '../lib/cpuBackend.js';
import { UNIT_ROUNDOFF } from './helpers.js';
import * as ref from './reference64.js';

const cpuAvailable = lib.backends().some((b) => b.name === 'cpu' && b.available);
afterAll(() => lib.setBackend('auto'));

// 3000 columns: six slices of 512 and a short one
const [N, D, V] = [40, 16, 3000];
const SLICES = Math.ceil(V / 512);

interface Problem {
  E: Float32Array;
  W: Float32Array;
  labels: Int32Array;
  bias?: Float32Array;
  temperature?: number;
}

/** Row kinds: logits of std ≈ 20 (a trained model's), of std ≈ 0.05 (untrained), and Zipf-like: z_j ≈ −a·log(j + 1). */
function problem(kind: 'peaked' | 'flat' | 'zipf', seed: number, zipfExponent = 1.2): Problem {
  const rng = ref.mulberry32(seed);
  const E = new Float32Array(N * D);
  const W = new Float32Array(V * D);
  for (let k = 0; k < E.length; k++) E[k] = ref.randn(rng);
  const std = kind === 'peaked' ? 5 : kind === 'flat' ? 0.0125 : 0.1;
  for (let k = 0; k < W.length; k++) W[k] = std * ref.randn(rng);
  const labels = new Int32Array(N);
  for (let i = 0; i < N; i++) labels[i] = Math.floor(rng() * V);
  if (kind === 'zipf') {
    // E_i0 = 1 and W_j0 = −a·log(j + 1): a Zipf prior shared by every row; labels drawn from its head
    for (let i = 0; i < N; i++) {
      E[i * D] = 1;
      labels[i] = Math.min(V - 1, Math.floor(Math.exp(rng() * Math.log(64))) - 1);
    }
    for (let j = 0; j < V; j++) W[j * D] = -zipfExponent * Math.log(j + 1);
  }
  return { E, W, labels };
}

/**
 * float64 closed form for the mean of plain CE of (E·Wᵀ + b)/T: ∂loss/∂x_ij = (p_ij − [j = t_i])/(n·T)
 * over the n rows not ignored. Also, per element, Σ|g|·|other factor| weighted by the f32 logit's
 * error bound (γ_D·Σ_d|E_id·W_jd|, which p carries relatively: the scale of the f32 result's
 * rounding), and the most filterEps may drop.
 */
function float64(p: Problem, eps: number) {
  const T = p.temperature ?? 1;
  const valid = Array.from(p.labels, (t) => t !== -100);
  const n = valid.filter(Boolean).length;
  const dE = new Float64Array(N * D), dW = new Float64Array(V * D), dB = new Float64Array(V), magB = new Float64Array(V);
  const magE = new Float64Array(N * D), magW = new Float64Array(V * D);
  const dropE = new Float64Array(N * D), dropW = new Float64Array(V * D);
  const maxW = new Float64Array(D);
  for (let j = 0; j < V; j++) for (let d = 0; d < D; d++) maxW[d] = Math.max(maxW[d]!, Math.abs(p.W[j * D + d]!));
  const z = new Float64Array(V);
  for (let i = 0; i < N; i++) {
    if (!valid[i]) continue;
    const zErr = new Float64Array(V);
    for (let j = 0; j < V; j++) {
      let x = p.bias?.[j] ?? 0;
      let a = Math.abs(x);
      for (let d = 0; d < D; d++) {
        x += p.E[i * D + d]! * p.W[j * D + d]!;
        a += Math.abs(p.E[i * D + d]! * p.W[j * D + d]!);
      }
      z[j] = x / T;
      zErr[j] = 1 + ((D + 1) * a) / T;
    }
    let max = -Infinity;
    for (const v of z) max = Math.max(max, v);
    let sum = 0;
    for (const v of z) sum += Math.exp(v - max);
    const lse = max + Math.log(sum);
    const s = 1 / (n * T);
    for (let j = 0; j < V; j++) {
      const g = (Math.exp(z[j]! - lse) - (j === p.labels[i] ? 1 : 0)) * s;
      dB[j] += g;
      magB[j] += Math.abs(g);
      for (let d = 0; d < D; d++) {
        dE[i * D + d] += g * p.W[j * D + d]!;
        dW[j * D + d] += g * p.E[i * D + d]!;
        magE[i * D + d] += Math.abs(g * p.W[j * D + d]!) * zErr[j]!;
        magW[j * D + d] += Math.abs(g * p.E[i * D + d]!) * zErr[j]!;
      }
    }
    // each dropped |g| < eps·s (the row's scale s·T, times dz/dx = 1/T), at most V of them
    for (let d = 0; d < D; d++) dropE[i * D + d] = V * eps * s * maxW[d]!;
    for (let j = 0; j < V; j++) for (let d = 0; d < D; d++) dropW[j * D + d] += eps * s * Math.abs(p.E[i * D + d]!);
  }
  return { dE, dW, dB, magB, magE, magW, dropE, dropW };
}

/** The largest |got − want| / (f32 rounding + what filterEps may drop); ≤ 1 passes. */
function worstRatio(got: Float32Array, want: Float64Array, mag: Float64Array, drop: Float64Array | null): number {
  let worst = 0;
  for (let k = 0; k < got.length; k++) {
    const tol = 1e-5 * Math.abs(want[k]!) + 64 * UNIT_ROUNDOFF.f32 * mag[k]! + (drop === null ? 0 : drop[k]!) + 1e-13;
    const r = Math.abs(got[k]! - want[k]!) / tol;
    if (!(r <= worst)) worst = r; // NaN propagates as a failure
  }
  return worst;
}

function run(p: Problem, options: lib.LinearCrossEntropyOptions) {
  const r = lib.linearCrossEntropy(lib.tensor(p.E, [N, D]), lib.tensor(p.W, [V, D]), p.labels, {
    bias: p.bias, temperature: p.temperature, ...options,
  });
  return { dE: r.dEmbeddings!.data as Float32Array, dW: r.dClassifier!.data as Float32Array, dB: r.dBias, work: cpuLastGradientWork()! };
}

const DEFAULT_EPS = 2 ** -24 / V;

describe.runIf(cpuAvailable)('cpu sparse gradients (filterEps per entry)', () => {
  it.each([
    ['peaked', 0.9, 1],
    ['flat', 0, 0],
    ['zipf', 0, 0], // p_j ∝ j^-1.2: none below 2^-24/V
  ] as const)('%s rows: the default stays within f32 rounding of float64 plus 2^-24 of the row scale', (kind, minSkipped, minSparse) => {
    lib.setBackend('cpu');
    const p = problem(kind, kind.length * 77);
    const want = float64(p, DEFAULT_EPS);
    const exact = run(p, { filterEps: 0 });
    expect(exact.work.skippedFraction).toBe(0);
    expect(worstRatio(exact.dE, want.dE, want.magE, null)).toBeLessThanOrEqual(1);
    expect(worstRatio(exact.dW, want.dW, want.magW, null)).toBeLessThanOrEqual(1);
    const dflt = run(p, {});
    const ratios = [worstRatio(dflt.dE, want.dE, want.magE, want.dropE), worstRatio(dflt.dW, want.dW, want.magW, want.dropW)];
    console.log(`${kind}: default filterEps skipped ${(100 * dflt.work.skippedFraction).toFixed(2)}% of the gradient work, ` +
      `${dflt.work.sparseSlices} of ${dflt.work.slices} slices sparse; worst error / bound ${ratios.map((r) => r.toFixed(3)).join(', ')}`);
    expect(ratios[0]).toBeLessThanOrEqual(1);
    expect(ratios[1]).toBeLessThanOrEqual(1);
    expect(dflt.work.skippedFraction).toBeGreaterThanOrEqual(minSkipped);
    expect(dflt.work.sparseSlices).toBeGreaterThanOrEqual(minSparse);
    if (kind === 'flat') expect(dflt.work.used).toBe(N * V); // every p ≈ 1/V: nothing below 2^-24/V
  });

  it('a threshold far above the default drops more than the default bound allows: the check fails', () => {
    lib.setBackend('cpu');
    const p = problem('peaked', 5);
    const want = float64(p, DEFAULT_EPS);
    // chunks of 2 rows: most slices then hold no entry ≥ 2^-6 and are skipped whole
    const coarse = run(p, { filterEps: 2 ** -6, workspaceBytes: 2 * V * 4 });
    expect(coarse.work.skippedSlices).toBeGreaterThan(0);
    expect(worstRatio(coarse.dE, want.dE, want.magE, want.dropE)).toBeGreaterThan(1);
    // and within its own bound
    const own = float64(p, 2 ** -6);
    expect(worstRatio(coarse.dE, own.dE, own.magE, own.dropE)).toBeLessThanOrEqual(1);
  });

  it('dense and sparse slices in one call, several row chunks, bias, temperature and ignored rows', () => {
    lib.setBackend('cpu');
    const p = problem('zipf', 11, 2); // p_j ∝ j^-4 at T = 0.5: the first slice dense, the rest sparse
    const rng = ref.mulberry32(12);
    p.bias = Float32Array.from({ length: V }, () => 0.5 * ref.randn(rng));
    p.temperature = 0.5; // sharper rows
    p.labels[3] = -100;
    p.labels[17] = -100;
    const eps = DEFAULT_EPS;
    const want = float64(p, eps);
    const got = run(p, { workspaceBytes: 7 * V * 4 }); // chunks of 7 rows
    console.log(`zipf (p ∝ j^-4), chunks of 7 rows: ${JSON.stringify(got.work)}`);
    expect(got.work.sparseSlices).toBeGreaterThan(0);
    expect(got.work.sparseSlices + got.work.skippedSlices).toBeLessThan(got.work.slices); // some dense
    expect(got.work.slices).toBe(SLICES * Math.ceil(N / 7));
    expect(worstRatio(got.dE, want.dE, want.magE, want.dropE)).toBeLessThanOrEqual(1);
    expect(worstRatio(got.dW, want.dW, want.magW, want.dropW)).toBeLessThanOrEqual(1);
    // dBias: the columns of kept slices carry every entry; a skipped slice's drop at most V·eps·s each
    const dropB = Float64Array.from(want.dB, () => (N * eps) / (N - 2) / p.temperature!);
    expect(worstRatio(got.dB!, want.dB, want.magB, dropB)).toBeLessThanOrEqual(1);
    for (const i of [3, 17]) expect(Array.from(got.dE.subarray(i * D, (i + 1) * D)).every((v) => v === 0)).toBe(true);
  });

  it('filterEps means the same on cpu and js: both within its bound of float64', () => {
    const p = problem('peaked', 21);
    const eps = 2 ** -16;
    const want = float64(p, eps);
    for (const backend of ['cpu', 'js'] as const) {
      lib.setBackend(backend);
      const r = lib.linearCrossEntropy(lib.tensor(p.E, [N, D]), lib.tensor(p.W, [V, D]), p.labels, { filterEps: eps });
      expect(worstRatio(r.dEmbeddings!.data as Float32Array, want.dE, want.magE, want.dropE), backend).toBeLessThanOrEqual(1);
      expect(worstRatio(r.dClassifier!.data as Float32Array, want.dW, want.magW, want.dropW), backend).toBeLessThanOrEqual(1);
    }
  });

  it('sparse products deferred to the call\'s end, or done at once where a slice\'s share of the budget is full: the same gradients', () => {
    lib.setBackend('cpu');
    const p = problem('peaked', 31);
    const want = float64(p, DEFAULT_EPS);
    const rowBytes = V * 4;
    // a budget of 13.9 rows: 4 chunks of 10 (equal sizes), and the 47 kB left hold the deferred entries (12 bytes each)
    const all = run(p, { workspaceBytes: 13 * rowBytes + 11000 });
    const none = run(p, { workspaceBytes: 10 * rowBytes });
    expect(all.work.chunkRows).toBe(10);
    expect(none.work.chunkRows).toBe(10);
    expect(all.work.sparseSlices).toBe(all.work.slices);
    expect(all.work.deferredEntries).toBe(all.work.used);
    expect(none.work.deferredEntries).toBe(0);
    // room for about half of them: each slice's first chunks wait, its later ones go at once
    const share = Math.floor(all.work.deferredEntries / SLICES / 2);
    const some = run(p, { workspaceBytes: 10 * rowBytes + SLICES * 12 * share });
    expect(some.work.deferredEntries).toBeGreaterThan(0);
    expect(some.work.deferredEntries).toBeLessThan(all.work.deferredEntries);
    for (const [name, r] of Object.entries({ all, none, some })) {
      expect(worstRatio(r.dE, want.dE, want.magE, want.dropE), name).toBeLessThanOrEqual(1);
      expect(worstRatio(r.dW, want.dW, want.magW, want.dropW), name).toBeLessThanOrEqual(1);
      expect(r.work.used, name).toBe(all.work.used);
    }
    // every product deferred: the order of every sum depends on the data alone
    const again = run(p, { workspaceBytes: 13 * rowBytes + 11000 });
    expect(Buffer.from(again.dW.buffer).equals(Buffer.from(all.dW.buffer))).toBe(true);
    expect(Buffer.from(again.dE.buffer).equals(Buffer.from(all.dE.buffer))).toBe(true);
  });

  it('outputs given with any contents: every element of dE and dW is written (skipped, sparse and dense slices; whole rows and tiles)', () => {
    lib.setBackend('cpu');
    const p = problem('zipf', 11, 2);
    p.temperature = 0.5;
    const E = lib.tensor(p.E, [N, D]);
    const W = lib.tensor(p.W, [V, D]);
    const before = process.env.CUTLOSS_CPU_VOCAB_TILES;
    try {
      for (const tiles of ['off', 'on']) {
        process.env.CUTLOSS_CPU_VOCAB_TILES = tiles;
        // softcap: whole slices filtered on dloss/dz, no entries dropped
        for (const [filterEps, softcap] of [[0, 0], [undefined, 0], [2 ** -8, 0], [2 ** -8, 30]]) {
          const options = { temperature: p.temperature, filterEps, softcap: softcap || undefined, workspaceBytes: 7 * V * 4 };
          const plain = lib.linearCrossEntropy(E, W, p.labels, options);
          const work = cpuLastGradientWork()!;
          expect(work.tileCols).toBe(tiles === 'on' ? 512 : 0);
          if (filterEps === 2 ** -8) expect(work.skippedSlices).toBeGreaterThan(0);
          const dE = new Float32Array(N * D).fill(NaN);
          const dW = new Float32Array(V * D).fill(NaN);
          const out = { dEmbeddings: lib.tensor(dE, [N, D]), dClassifier: lib.tensor(dW, [V, D]) };
          const r = lib.linearCrossEntropy(E, W, p.labels, { ...options, out });
          const label = `tiles ${tiles}, filterEps ${filterEps}, softcap ${softcap}`;
          expect(r.dClassifier!.data, label).toBe(dW);
          expect(Buffer.from(dW.buffer).equals(Buffer.from((plain.dClassifier!.data as Float32Array).buffer)), label).toBe(true);
          // dE: the threads' partials meet in the order they finish (bit-identical only with `deterministic`)
          const plainE = plain.dEmbeddings!.data as Float32Array;
          const scale = plainE.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
          for (let k = 0; k < dE.length; k++) expect(Math.abs(dE[k]! - plainE[k]!), `${label}: dE[${k}]`).toBeLessThanOrEqual(1e-6 * scale);
        }
      }
      // no rows: dW is all zeros
      process.env.CUTLOSS_CPU_VOCAB_TILES = 'off';
      const dW = new Float32Array(V * D).fill(NaN);
      lib.linearCrossEntropy(lib.tensor(new Float32Array(0), [0, D]), W, new Int32Array(0), { out: { dClassifier: lib.tensor(dW, [V, D]) } });
      expect(dW.every((v) => v === 0)).toBe(true);
    } finally {
      if (before === undefined) delete process.env.CUTLOSS_CPU_VOCAB_TILES;
      else process.env.CUTLOSS_CPU_VOCAB_TILES = before;
    }
  });
});
