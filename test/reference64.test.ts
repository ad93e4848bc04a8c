/**
 * Tests of the float64 reference itself (test/reference64.ts), so the library's tests can
 * trust it: published known-answer vectors, closed forms worked out by hand, PyTorch facts,
 * dual-number gradients against central finite differences, and a third opinion from the
 * hand-derived gradient formulas of README "Semantics".
 */
import { describe, expect, it } from 'vitest';
import {
  type CeOptions,
  bf16ToF32,
  crossEntropy,
  crossEntropyGrad,
  crossEntropyLoss,
  Dual,
  entmax15,
  entmax15Backward,
  f32ToBf16,
  finiteDiff,
  gumbelNoise,
  gumbelSoftmax,
  gumbelSoftmaxBackward,
  gumbelUniforms,
  linearCrossEntropy,
  logSoftmax,
  logSoftmaxBackward,
  logStablemax,
  logStablemaxBackward,
  logSumExp,
  mulberry32,
  philox4x32_10,
  randn,
  randomLabels,
  randomRows,
  rowsToBf16,
  rowsToF32,
  softmax,
  softmaxBackward,
  sparsemax,
  sparsemaxBackward,
  stablemax,
  stablemaxBackward,
  toF64Rows,
} from './reference64.js';

// ---------------------------------------------------------------------------------------
// Test helpers
// ---------------------------------------------------------------------------------------

const flat = (x: unknown): number[] =>
  Array.isArray(x) || ArrayBuffer.isView(x) ? Array.from(x as ArrayLike<unknown>).flatMap(flat) : [x as number];

/** Element-wise |a − e| ≤ atol + rtol·|e|; NaN and ±inf must match exactly. */
function expectClose(actual: unknown, expected: unknown, { rtol = 1e-12, atol = 1e-12 } = {}): void {
  const a = flat(actual);
  const e = flat(expected);
  expect(a.length).toBe(e.length);
  a.forEach((ai, i) => {
    const ei = e[i];
    if (!Number.isFinite(ei)) {
      expect(Object.is(ai, ei) || (Number.isNaN(ai) && Number.isNaN(ei)), `[${i}] got ${ai}, expected ${ei}`).toBe(true);
      return;
    }
    const tol = atol + rtol * Math.abs(ei);
    if (!(Math.abs(ai - ei) <= tol)) throw new Error(`element ${i}: got ${ai}, expected ${ei} (tol ${tol.toExponential(2)})`);
  });
}

const rowSum = (r: ArrayLike<number>) => Array.from(r).reduce((a, b) => a + b, 0);
const unflatten = (x: Float64Array, rows: number, cols: number) =>
  Array.from({ length: rows }, (_, r) => Array.from(x.subarray(r * cols, (r + 1) * cols)));

/** The scalar whose gradient crossEntropyGrad returns: Σ g_i·loss_i ('none') or g·loss. */
function ceObjective(logits: number[][], labels: number[], o: CeOptions): number {
  const { loss } = crossEntropyLoss(logits, labels, o);
  if (Array.isArray(loss)) {
    const g = o.gradScale ?? 1;
    return loss.reduce((acc, l, i) => acc + (typeof g === 'number' ? g : g[i]) * l, 0);
  }
  return (typeof o.gradScale === 'number' ? o.gradScale : 1) * (loss as number);
}

/** The dz/dx closed form of README "Semantics", transcribed literally (a third opinion). */
function docCeGrad(logits: number[][], labels: number[], o: CeOptions): number[][] {
  const V = logits[0].length;
  const red = o.reduction ?? 'mean';
  const ignoreIndex = o.ignoreIndex ?? -100;
  const alpha = o.labelSmoothing ?? 0;
  const w = (j: number) => (o.classWeights ? o.classWeights[j] : 1);
  const c = o.softcap ?? 0;
  const T = o.temperature ?? 1;
  const gamma = o.focalGamma ?? 0;
  const eps = o.polyEpsilon ?? 0;
  const lambda = o.zLoss ?? 0;
  const sigma = o.squentropy ? 1 : 0;
  const live = labels.map((t) => t !== ignoreIndex);
  const n = live.filter(Boolean).length;
  const weightSum = labels.reduce((acc, t, i) => acc + (live[i] ? w(t) : 0), 0);
  const g = (i: number) => (typeof o.gradScale === 'object' ? o.gradScale[i] : (o.gradScale ?? 1));
  const s = (x: number) => (x >= 0 ? x + 1 : 1 / (1 - x));
  const sPrime = (x: number) => (x >= 0 ? 1 : 1 / (1 - x) ** 2);

  return logits.map((x, i) => {
    if (!live[i] || (red === 'mean' && (n === 0 || weightSum === 0))) return x.map(() => 0);
    const sW = red === 'mean' ? g(i) / weightSum : g(i);
    const sU = red === 'mean' ? g(i) / n : g(i);
    const t = labels[i];
    const z = x.map((v) => (c ? c * Math.tanh(v / c) : v) / T);
    const dzdx = x.map((v) => (c ? 1 - Math.tanh(v / c) ** 2 : 1) / T);
    const m = Math.max(...z);
    const lse = m + Math.log(rowSum(z.map((zj) => Math.exp(zj - m))));
    const q = z.map((zj) => Math.exp(zj - lse));
    const a = z.map((_, j) => (1 - alpha) * w(t) * (j === t ? 1 : 0) + (alpha / V) * w(j));
    const A = rowSum(a);
    const delta = (k: number) => (k === t ? 1 : 0);
    let p: number[];
    let ell: number[];
    let dC: (k: number) => number;
    let dpt: (k: number) => number;
    if ((o.normalizer ?? 'softmax') === 'softmax') {
      p = q;
      ell = z.map((zj) => lse - zj);
      dC = (k) => A * p[k] - a[k];
      dpt = (k) => p[t] * (delta(k) - p[k]);
    } else if (o.normalizer === 'stablemax') {
      const sv = z.map(s);
      const S = rowSum(sv);
      p = sv.map((v) => v / S);
      ell = sv.map((v) => Math.log(S) - Math.log(v));
      dC = (k) => (A * sPrime(z[k])) / S - (a[k] * sPrime(z[k])) / sv[k];
      dpt = (k) => p[t] * ((delta(k) * sPrime(z[t])) / sv[t] - sPrime(z[k]) / S);
    } else {
      p = sparsemax([z])[0];
      const supp = p.map((pj) => pj > 0);
      const size = supp.filter(Boolean).length;
      const tau = rowSum(z.map((zj, j) => (supp[j] ? zj - p[j] : 0))) / size;
      const omega = 0.5 * rowSum(z.map((zj, j) => (supp[j] ? zj * zj - tau * tau : 0))) + 0.5;
      ell = z.map((zj) => omega - zj);
      dC = (k) => A * p[k] - a[k];
      dpt = (k) => (supp[t] && supp[k] ? delta(k) - 1 / size : 0);
    }
    const C = rowSum(ell.map((l, j) => (a[j] === 0 ? 0 : a[j] * l)));
    const F = gamma === 0 ? 1 : (1 - p[t]) ** gamma;
    const Fp = gamma === 0 ? 0 : -gamma * (1 - p[t]) ** (gamma - 1);
    return z.map((zk, k) => {
      const dz =
        sW * F * dC(k) +
        (sW * C * Fp - sU * eps) * dpt(k) +
        sU * (2 * lambda * lse * q[k] + (sigma && V > 1 ? (2 * zk * (k === t ? 0 : 1)) / (V - 1) : 0));
      return dz * dzdx[k];
    });
  });
}

// ---------------------------------------------------------------------------------------
// Dual numbers
// ---------------------------------------------------------------------------------------

describe('Dual', () => {
  it('differentiates each primitive', () => {
    const x = new Dual(0.7, 1);
    expectClose(x.exp().d, Math.exp(0.7));
    expectClose(x.log().d, 1 / 0.7);
    expectClose(x.sqrt().d, 0.5 / Math.sqrt(0.7));
    expectClose(x.tanh().d, 1 - Math.tanh(0.7) ** 2);
    expectClose(x.pow(2.5).d, 2.5 * 0.7 ** 1.5);
    expectClose(x.square().d, 1.4);
    expectClose(x.mul(3).add(1).div(x).d, -1 / 0.49); // (3x + 1)/x = 3 + 1/x
    expect(x.relu().d).toBe(1);
    expect(new Dual(-0.7, 1).relu().d).toBe(0);
    expect(new Dual(0.3, 1).pow(0).v).toBe(1);
    expect(new Dual(0.3, 1).pow(0).d).toBe(0);
  });
  it('treats a zero tangent as a hard zero', () => {
    expect(new Dual(Infinity).mul(new Dual(2, 0)).d).toBe(0);
    expect(new Dual(0, 0).pow(0.5).d).toBe(0); // no 0·inf in focal factors with p_t = 1
  });
});

// ---------------------------------------------------------------------------------------
// Philox and Gumbel noise
// ---------------------------------------------------------------------------------------

describe('philox4x32_10', () => {
  // Random123's kat_vectors for philox4x32 with 10 rounds.
  it.each([
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
    [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
  ] as const)('matches the known-answer vector %#', (counter, key, expected) => {
    expect(philox4x32_10(counter, key)).toEqual(expected);
  });
  it('rejects words outside uint32', () => {
    expect(() => philox4x32_10([2 ** 32, 0, 0, 0], [0, 0])).toThrow();
  });
});

describe('gumbel noise', () => {
  const uOf = (word: number) => ((word >>> 9) + 0.5) * 2 ** -23;

  it('seed 0, elements 0..3 use the zero-counter known-answer block', () => {
    const kat = [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8];
    expect(gumbelUniforms(0, 1, 4)[0]).toEqual(kat.map(uOf));
    expectClose(gumbelNoise(0, 2, 2), [kat.slice(0, 2), kat.slice(2)].map((r) => r.map((w) => -Math.log(-Math.log(uOf(w))))), { rtol: 0, atol: 0 });
  });

  it('maps flat element e to word e mod 4 of counter floor(e/4), key split at 2^32', () => {
    const seed = 2 ** 32 * 3 + 7; // key [7, 3]
    const [rows, cols] = [3, 5];
    const u = gumbelUniforms(seed, rows, cols);
    for (let e = 0; e < rows * cols; e++) {
      const block = philox4x32_10([Math.floor(e / 4), 0, 0, 0], [7, 3]);
      expect(u[Math.floor(e / cols)][e % cols]).toBe(uOf(block[e % 4]));
    }
  });

  it('u lies strictly inside (0, 1) and is exact in fp32, at the extreme words too', () => {
    expect(uOf(0)).toBe(2 ** -24);
    expect(uOf(0xffffffff)).toBe(1 - 2 ** -24);
    expect(Math.fround(uOf(0xffffffff))).toBe(uOf(0xffffffff)); // fp32 never rounds it up to 1
    for (const u of gumbelUniforms(12345, 50, 41).flat()) expect(u > 0 && u < 1).toBe(true);
  });

  it('has the Gumbel mean (Euler–Mascheroni) and variance π²/6', () => {
    const g = gumbelNoise(2024, 400, 250).flat(); // 1e5 draws: standard errors 0.004 and 0.008
    const mean = rowSum(g) / g.length;
    const variance = rowSum(g.map((v) => (v - mean) ** 2)) / g.length;
    expect(Math.abs(mean - 0.5772156649015329)).toBeLessThan(0.02);
    expect(Math.abs(variance - Math.PI ** 2 / 6)).toBeLessThan(0.05);
  });

  it('passes the Gumbel-max test: argmax(x + g) ~ softmax(x)', () => {
    const rows = 30000;
    const x = [0, Math.log(2), Math.log(3)];
    const g = gumbelNoise(99, rows, 3);
    const counts = [0, 0, 0];
    g.forEach((gr) => {
      const y = x.map((v, j) => v + gr[j]);
      counts[y.indexOf(Math.max(...y))]++;
    });
    [1 / 6, 2 / 6, 3 / 6].forEach((pj, j) => expect(Math.abs(counts[j] / rows - pj)).toBeLessThan(0.015));
  });

  it('gumbelSoftmax = softmax((x + g)/tau); hard = one-hot of its argmax', () => {
    const x = randomRows(mulberry32(1), 3, 6);
    const g = gumbelNoise(77, 3, 6);
    const soft = gumbelSoftmax(x, { tau: 0.5, seed: 77 });
    expectClose(soft, softmax(x.map((r, i) => r.map((v, j) => v + g[i][j])), { temperature: 0.5 }));
    const hard = gumbelSoftmax(x, { tau: 0.5, seed: 77, hard: true });
    hard.forEach((h, i) => {
      expect(rowSum(h)).toBe(1);
      expect(h.indexOf(1)).toBe(soft[i].indexOf(Math.max(...soft[i])));
    });
  });

  it('rejects seeds outside [0, 2^53)', () => {
    expect(() => gumbelNoise(-1, 1, 1)).toThrow();
    expect(() => gumbelNoise(2 ** 53, 1, 1)).toThrow();
    expect(() => gumbelNoise(1.5, 1, 1)).toThrow();
  });
});

// ---------------------------------------------------------------------------------------
// Row-wise forwards
// ---------------------------------------------------------------------------------------

describe('logSumExp / softmax / logSoftmax', () => {
  it('equal logits: lse = c + log V, softmax = 1/V', () => {
    expectClose(logSumExp([[2, 2, 2, 2]]), [2 + Math.log(4)]);
    expectClose(softmax([[2, 2, 2, 2]]), [[0.25, 0.25, 0.25, 0.25]]);
    expectClose(logSoftmax([[2, 2, 2]]), [[-Math.log(3), -Math.log(3), -Math.log(3)]]);
  });
  it('temperature divides the logits', () => {
    expectClose(logSumExp([[2, 4]], { temperature: 2 }), [Math.log(Math.E + Math.E ** 2)]);
    expectClose(softmax([[0, 2 * Math.log(3)]], { temperature: 2 }), [[0.25, 0.75]]);
  });
  it('does not overflow on huge logits', () => {
    expectClose(logSumExp([[1000, 1000]]), [1000 + Math.log(2)]);
    expectClose(softmax([[-1000, 0]]), [[0, 1]], { atol: 1e-300 });
  });
  it('masks: 0 = excluded, per element (nested or flat) or shared by every row', () => {
    const x = [
      [1, 100, 2],
      [3, 4, 5],
    ];
    const expectLse = [Math.log(Math.E + Math.E ** 2), Math.log(Math.E ** 3 + Math.E ** 5)];
    expectClose(logSumExp(x, { mask: Uint8Array.of(1, 0, 1) }), expectLse); // shared
    expectClose(logSumExp(x, { mask: [[1, 0, 1], [true, false, true]] }), expectLse);
    expectClose(logSumExp(x, { mask: Uint8Array.of(1, 0, 1, 0, 1, 1) }), [expectLse[0], Math.log(Math.E ** 4 + Math.E ** 5)]);
    const sm = softmax(x, { mask: Uint8Array.of(1, 0, 1) });
    expectClose(sm[0], [1 / (1 + Math.E), 0, Math.E / (1 + Math.E)]);
    expect(logSoftmax(x, { mask: Uint8Array.of(1, 0, 1) })[0][1]).toBe(-Infinity);
  });
  it('fully masked row: lse -inf, softmax and logSoftmax NaN', () => {
    const opts = { mask: [[0, 0], [1, 1]] };
    expect(logSumExp([[1, 2], [1, 2]], opts)[0]).toBe(-Infinity);
    expect(softmax([[1, 2], [1, 2]], opts)[0].every(Number.isNaN)).toBe(true);
    expect(logSoftmax([[1, 2], [1, 2]], opts)[0].every(Number.isNaN)).toBe(true);
    expectClose(softmax([[1, 2], [1, 2]], opts)[1], [1 / (1 + Math.E), Math.E / (1 + Math.E)]);
  });
  it('rejects non-positive or non-finite temperatures', () => {
    expect(() => softmax([[1]], { temperature: 0 })).toThrow();
    expect(() => softmax([[1]], { temperature: Infinity })).toThrow();
  });
});

describe('stablemax', () => {
  it('closed forms', () => {
    expectClose(stablemax([[0, 0]]), [[0.5, 0.5]]);
    expectClose(stablemax([[1, -1]]), [[0.8, 0.2]]); // s = [2, 1/2]
    expectClose(logStablemax([[1, -1]]), [[Math.log(0.8), Math.log(0.2)]]);
    expectClose(stablemax([[3, 3, 3]]), [[1 / 3, 1 / 3, 1 / 3]]);
  });
});

describe('sparsemax', () => {
  it('closed forms', () => {
    expectClose(sparsemax([[0, 10]]), [[0, 1]]);
    expectClose(sparsemax([[0.5, 0.5]]), [[0.5, 0.5]]);
    expectClose(sparsemax([[0.1, 0.2, 0.3]]), [[0.1 + 0.4 / 3, 0.2 + 0.4 / 3, 0.3 + 0.4 / 3]]); // τ = −0.4/3
    expectClose(sparsemax([[1, 0, -1]]), [[1, 0, 0]]); // boundary: z_2 = τ = 0
  });
  it('a row with +inf or NaN, or only −inf, is NaN (README), loss and gradient too; −inf entries get 0', () => {
    for (const row of [[Infinity, 1, 2], [NaN, 1, 2], [-Infinity, -Infinity, -Infinity]]) {
      expect(sparsemax([row])[0].every(Number.isNaN)).toBe(true);
      const ce = crossEntropy([row], [1], { normalizer: 'sparsemax', reduction: 'none' });
      expect((ce.loss as number[])[0]).toBeNaN();
      expect(ce.dLogits[0].every(Number.isNaN)).toBe(true);
    }
    expectClose(sparsemax([[-Infinity, 0, 0]]), [[0, 0.5, 0.5]]);
    // a −inf label logit: loss +inf, gradient p − onehot
    const ce = crossEntropy([[-Infinity, 0, 0]], [0], { normalizer: 'sparsemax', reduction: 'none' });
    expect((ce.loss as number[])[0]).toBe(Infinity);
    expectClose(ce.dLogits, [[-1, 0.5, 0.5]]);
  });
  it('is the Euclidean projection onto the simplex (KKT conditions) on random rows', () => {
    const rng = mulberry32(7);
    for (const row of randomRows(rng, 50, 9, 0.7)) {
      const p = sparsemax([row])[0];
      expectClose(rowSum(p), 1, { atol: 1e-14 });
      const supp = p.map((pj, j) => j).filter((j) => p[j] > 0);
      const tau = row[supp[0]] - p[supp[0]];
      supp.forEach((j) => expectClose(row[j] - p[j], tau, { atol: 1e-14 }));
      row.forEach((zj, j) => p[j] === 0 && expect(zj).toBeLessThanOrEqual(tau + 1e-14));
    }
  });
});

/** The sort-based closed form of Peters et al. 2019, only here to cross-check the bisection. */
function entmax15BySorting(x: number[]): number[] {
  const z = x.map((v) => v / 2);
  const zs = [...z].sort((a, b) => b - a);
  const taus = zs.map((_, k0) => {
    const k = k0 + 1;
    const mean = rowSum(zs.slice(0, k)) / k;
    const meanSq = rowSum(zs.slice(0, k).map((v) => v * v)) / k;
    return mean - Math.sqrt(Math.max((1 - k * (meanSq - mean * mean)) / k, 0));
  });
  const support = taus.filter((tau, k0) => tau <= zs[k0]).length;
  const tau = taus[support - 1];
  return z.map((zj) => Math.max(zj - tau, 0) ** 2);
}

describe('entmax15', () => {
  it('closed forms', () => {
    expectClose(entmax15([[0.3, 0.3]]), [[0.5, 0.5]], { rtol: 1e-14 });
    expectClose(entmax15([[0, 10]]), [[0, 1]]);
    // Two logits [1, 0]: u = x_1/2 − τ solves u² + (u − d)² = 1 with d = 1/2.
    const u = (0.5 + Math.sqrt(2 - 0.25)) / 2;
    expectClose(entmax15([[1, 0]]), [[u * u, (u - 0.5) ** 2]], { rtol: 1e-14 });
  });
  it('sums to 1 and matches the sort-based closed form on random rows', () => {
    const rng = mulberry32(8);
    for (const row of randomRows(rng, 50, 9, 1.5)) {
      const p = entmax15([row])[0];
      expectClose(rowSum(p), 1, { atol: 1e-14 });
      expectClose(p, entmax15BySorting(row), { atol: 1e-14, rtol: 1e-12 });
    }
  });
});

// ---------------------------------------------------------------------------------------
// Row-wise VJPs: dual numbers vs finite differences vs the formulas of README "Semantics"
// ---------------------------------------------------------------------------------------

describe('row-wise backward (Jᵀ·dy)', () => {
  const rng = mulberry32(3);
  const [R, C] = [4, 7];
  const x = randomRows(rng, R, C, 1.3);
  const dy = randomRows(rng, R, C);

  /** FD of x ↦ Σ dy·f(x), over the outputs where keep is true. */
  function fdVjp(f: (x: number[][]) => number[][], keep = (_i: number, _j: number) => true): number[][] {
    const obj = (v: Float64Array) =>
      f(unflatten(v, R, C)).reduce((acc, row, i) => acc + row.reduce((a, y, j) => a + (keep(i, j) ? dy[i][j] * y : 0), 0), 0);
    return unflatten(finiteDiff(obj, Float64Array.from(x.flat())), R, C);
  }
  const dot = (a: number[], b: number[]) => rowSum(a.map((v, j) => v * b[j]));
  const FD = { rtol: 1e-6, atol: 1e-8 };

  it('softmax (temperature)', () => {
    const T = 0.8;
    const dx = softmaxBackward(x, dy, { temperature: T });
    expectClose(dx, fdVjp((v) => softmax(v, { temperature: T })), FD);
    const y = softmax(x, { temperature: T });
    expectClose(dx, y.map((yr, i) => yr.map((yk, k) => (yk * (dy[i][k] - dot(dy[i], yr))) / T)));
  });

  it('logSoftmax (temperature)', () => {
    const T = 1.7;
    const dx = logSoftmaxBackward(x, dy, { temperature: T });
    expectClose(dx, fdVjp((v) => logSoftmax(v, { temperature: T })), FD);
    const y = softmax(x, { temperature: T });
    expectClose(dx, y.map((yr, i) => yr.map((yk, k) => (dy[i][k] - yk * rowSum(dy[i])) / T)));
  });

  it('masked softmax / logSoftmax: masked inputs get 0, sums run over kept classes', () => {
    const mask = Uint8Array.from({ length: R * C }, (_, e) => (e % 3 === 1 ? 0 : 1));
    const kept = (i: number, j: number) => mask[i * C + j] === 1;
    const T = 1.3;
    const dxs = softmaxBackward(x, dy, { temperature: T, mask });
    expectClose(dxs, fdVjp((v) => softmax(v, { temperature: T, mask })), FD);
    const dxl = logSoftmaxBackward(x, dy, { temperature: T, mask });
    expectClose(dxl, fdVjp((v) => logSoftmax(v, { temperature: T, mask }), kept), FD);
    const y = softmax(x, { temperature: T, mask });
    const keptDySum = (i: number) => rowSum(dy[i].filter((_, j) => kept(i, j)));
    expectClose(dxl, y.map((yr, i) => yr.map((yk, k) => (kept(i, k) ? (dy[i][k] - yk * keptDySum(i)) / T : 0))));
  });

  it('fully masked row: NaN gradient', () => {
    const dx = softmaxBackward([[1, 2]], [[1, 1]], { mask: [[0, 0]] });
    expect(dx[0].every(Number.isNaN)).toBe(true);
  });

  const s = (v: number) => (v >= 0 ? v + 1 : 1 / (1 - v));
  const sPrime = (v: number) => (v >= 0 ? 1 : 1 / (1 - v) ** 2);

  it('stablemax', () => {
    const dx = stablemaxBackward(x, dy);
    expectClose(dx, fdVjp(stablemax), FD);
    const y = stablemax(x);
    expectClose(dx, x.map((xr, i) => xr.map((xk, k) => (sPrime(xk) / rowSum(xr.map(s))) * (dy[i][k] - dot(dy[i], y[i])))));
  });

  it('logStablemax', () => {
    const dx = logStablemaxBackward(x, dy);
    expectClose(dx, fdVjp(logStablemax), FD);
    expectClose(
      dx,
      x.map((xr, i) => xr.map((xk, k) => (dy[i][k] * sPrime(xk)) / s(xk) - (sPrime(xk) / rowSum(xr.map(s))) * rowSum(dy[i]))),
    );
  });

  it('sparsemax', () => {
    const dx = sparsemaxBackward(x, dy);
    expectClose(dx, fdVjp(sparsemax), FD);
    const y = sparsemax(x);
    const expected = y.map((yr, i) => {
      const supp = yr.map((v) => v > 0);
      const mean = rowSum(dy[i].filter((_, j) => supp[j])) / supp.filter(Boolean).length;
      return yr.map((_, k) => (supp[k] ? dy[i][k] - mean : 0));
    });
    expectClose(dx, expected);
  });

  it('entmax15', () => {
    const dx = entmax15Backward(x, dy);
    expectClose(dx, fdVjp(entmax15), FD);
    const y = entmax15(x);
    const expected = y.map((yr, i) => {
      const r = yr.map(Math.sqrt);
      const ratio = dot(r, dy[i]) / rowSum(r);
      return r.map((rk, k) => rk * dy[i][k] - rk * ratio);
    });
    expectClose(dx, expected, { rtol: 1e-10, atol: 1e-13 });
  });

  it('gumbelSoftmax: the softmax rule at (x + g)/tau, hard or not', () => {
    const opts = { tau: 0.6, seed: 4242 };
    const dx = gumbelSoftmaxBackward(x, dy, opts);
    expectClose(dx, fdVjp((v) => gumbelSoftmax(v, opts)), FD);
    const g = gumbelNoise(opts.seed, R, C);
    const shifted = x.map((r, i) => r.map((v, j) => v + g[i][j]));
    expectClose(dx, softmaxBackward(shifted, dy, { temperature: opts.tau }));
  });
});

// ---------------------------------------------------------------------------------------
// Cross-entropy: values
// ---------------------------------------------------------------------------------------

describe('crossEntropyLoss values', () => {
  it('uniform logits give log V (softmax, stablemax) and 1/2 − 1/(2V) (sparsemax)', () => {
    for (const V of [1, 2, 5, 11]) {
      const logits = [new Array(V).fill(0.3), new Array(V).fill(0.3)];
      expectClose(crossEntropyLoss(logits, [0, V - 1]).loss, Math.log(V), { atol: 1e-15 });
      expectClose(crossEntropyLoss(logits, [0, V - 1], { normalizer: 'stablemax' }).loss, Math.log(V), { atol: 1e-15 });
      expectClose(crossEntropyLoss(logits, [0, V - 1], { normalizer: 'sparsemax' }).loss, 0.5 - 1 / (2 * V), { atol: 1e-15 });
    }
  });

  it('PyTorch: F.cross_entropy([[1., 2., 3.]], [0]) = 2.4076059644443806', () => {
    const { loss, lse } = crossEntropyLoss([[1, 2, 3]], [0]);
    expect(loss as number).toBeCloseTo(2.4076059644443806, 14);
    expect(lse[0]).toBeCloseTo(3.4076059644443806, 14);
  });

  it('label smoothing (PyTorch mix): [[1,2,3]], t=0, α=0.1 → 0.9·(lse−1) + (0.1/3)·Σ(lse − z_j) = lse − 1.1', () => {
    expect(crossEntropyLoss([[1, 2, 3]], [0], { labelSmoothing: 0.1 }).loss as number).toBeCloseTo(2.30760596444438, 14);
  });

  it('label smoothing by hand, 2 classes: [2, 0], t = 0, α = 0.2 → a = [0.9, 0.1], C = lse − 1.8', () => {
    const lse = 2 + Math.log1p(Math.exp(-2));
    const { loss } = crossEntropyLoss([[2, 0]], [0], { labelSmoothing: 0.2 });
    expectClose(loss, 0.9 * (lse - 2) + 0.1 * lse, { rtol: 1e-15 });
    expect(loss as number).toBeCloseTo(0.32692801104297264, 15);
  });

  const l3 = (z: number[], t: number) => Math.log(rowSum(z.map(Math.exp))) - z[t];

  it('reductions: none / sum / mean, ignoreIndex rows count nowhere', () => {
    const logits = [
      [1, 2, 3],
      [0.5, -1, 2],
      [9, 9, 9],
    ];
    const labels = [0, -100, 2];
    const per = [l3(logits[0], 0), 0, l3(logits[2], 2)];
    expectClose(crossEntropyLoss(logits, labels, { reduction: 'none' }).loss, per);
    expectClose(crossEntropyLoss(logits, labels, { reduction: 'sum' }).loss, per[0] + per[2]);
    expectClose(crossEntropyLoss(logits, labels).loss, (per[0] + per[2]) / 2);
    expectClose(crossEntropyLoss(logits, [0, 1, 1], { ignoreIndex: 1 }).loss, per[0]); // a valid class as ignoreIndex
  });

  it('all rows ignored: mean NaN with zero gradient, sum 0', () => {
    expect(crossEntropyLoss([[1, 2]], [-100]).loss).toBeNaN();
    expect(crossEntropyGrad([[1, 2]], [-100])).toEqual([[0, 0]]);
    expect(crossEntropyLoss([[1, 2]], [-100], { reduction: 'sum' }).loss).toBe(0);
    expect(crossEntropyLoss([[1, 2]], [-100], { classWeights: [0, 1] }).lse).toHaveLength(1); // lse is still returned
  });

  it('class weights: PyTorch weighted mean Σ w_t ℓ_t / Σ w_t; zero total weight gives NaN', () => {
    const logits = [
      [1, 2, 3],
      [1, 2, 3],
    ];
    const w = [1, 1, 3];
    expectClose(crossEntropyLoss(logits, [0, 2], { classWeights: w }).loss, (l3(logits[0], 0) + 3 * l3(logits[1], 2)) / 4);
    expectClose(crossEntropyLoss(logits, [0, 2], { classWeights: w, reduction: 'none' }).loss, [l3(logits[0], 0), 3 * l3(logits[1], 2)]);
    expect(crossEntropyLoss(logits, [0, 0], { classWeights: [0, 1, 1] }).loss).toBeNaN();
    expect(crossEntropyGrad(logits, [0, 0], { classWeights: [0, 1, 1] }).flat().every((v) => v === 0)).toBe(true);
  });

  it('class weights + smoothing: PyTorch (1−α)·nll_w + (α/V)·Σ_i Σ_j w_j ℓ_ij / Σ_i w_ti', () => {
    const logits = [
      [1, 2, 3],
      [0, -1, 0.5],
    ];
    const labels = [0, 2];
    const w = [0.5, 2, 3];
    const alpha = 0.3;
    const ell = logits.map((z) => z.map((_, j) => l3(z, j)));
    const nll = (0.5 * ell[0][0] + 3 * ell[1][2]) / 3.5;
    const smooth = ell.reduce((acc, row) => acc + rowSum(row.map((l, j) => w[j] * l)), 0) / 3.5;
    expectClose(crossEntropyLoss(logits, labels, { classWeights: w, labelSmoothing: alpha }).loss, (1 - alpha) * nll + (alpha / 3) * smooth);
  });

  it('zLoss adds λ·lse², averaged over tokens even with class weights', () => {
    const logits = [
      [1, 2, 3],
      [0, -1, 0.5],
    ];
    const lse = logits.map((z) => Math.log(rowSum(z.map(Math.exp))));
    const w = [1, 1, 4];
    const ce = (l3(logits[0], 0) * 1 + l3(logits[1], 2) * 4) / 5;
    expectClose(crossEntropyLoss(logits, [0, 2], { classWeights: w, zLoss: 0.01 }).loss, ce + (0.01 * (lse[0] ** 2 + lse[1] ** 2)) / 2);
  });

  it('softcap and temperature act on the logits, and the returned lse is of the effective logits', () => {
    const x = [[4, -7, 1.5]];
    const c = 5;
    const capped = x.map((r) => r.map((v) => c * Math.tanh(v / c)));
    const r1 = crossEntropyLoss(x, [1], { softcap: c, temperature: 0.7 });
    const z = capped.map((r) => r.map((v) => v / 0.7));
    expectClose(r1.loss, l3(z[0], 1));
    expectClose(r1.lse, [Math.log(rowSum(z[0].map(Math.exp)))]);
  });

  it('focal: (1 − p_t)^γ·ℓ_t; Poly-1: + ε(1 − p_t); squentropy: + Σ_{j≠t} z_j²/(V − 1)', () => {
    const z = [1, 2, 3];
    const pt = Math.exp(-l3(z, 0));
    expectClose(crossEntropyLoss([z], [0], { focalGamma: 2 }).loss, (1 - pt) ** 2 * l3(z, 0));
    expectClose(crossEntropyLoss([z], [0], { polyEpsilon: 1.5 }).loss, l3(z, 0) + 1.5 * (1 - pt));
    expectClose(crossEntropyLoss([z], [0], { squentropy: true }).loss, l3(z, 0) + (4 + 9) / 2);
    expectClose(crossEntropyLoss([[0.4]], [0], { squentropy: true }).loss, 0); // V = 1: no squentropy term
  });

  it('stablemax loss: log S − log s(z_t)', () => {
    expectClose(crossEntropyLoss([[1, -1]], [1], { normalizer: 'stablemax' }).loss, Math.log(5)); // S = 2.5, s = 0.5
  });

  it('sparsemax loss: 0 when the target is the only support, z_top − z_t otherwise', () => {
    expectClose(crossEntropyLoss([[0, 10]], [1], { normalizer: 'sparsemax' }).loss, 0);
    expectClose(crossEntropyLoss([[0, 10]], [0], { normalizer: 'sparsemax' }).loss, 10); // τ = 9, Ω = 10
  });

  it('rejects labels out of range', () => {
    expect(() => crossEntropyLoss([[1, 2]], [2])).toThrow();
    expect(() => crossEntropyLoss([[1, 2]], [-1])).toThrow();
  });
});

// ---------------------------------------------------------------------------------------
// Cross-entropy: gradients for every option
// ---------------------------------------------------------------------------------------

describe('crossEntropyGrad', () => {
  const [N, V] = [5, 7];
  const rng = mulberry32(11);
  const logits = randomRows(rng, N, V, 2);
  const baseLabels = [3, -100, 0, 6, 2];
  const labels = baseLabels;
  const w = Array.from({ length: V }, (_, j) => 0.25 + 0.5 * j);
  const everything = { labelSmoothing: 0.1, classWeights: w, zLoss: 0.05, softcap: 4, temperature: 1.3, focalGamma: 1.5, polyEpsilon: 0.7, squentropy: true };

  const cases: Array<[string, CeOptions]> = [
    ['defaults (mean)', {}],
    ['sum', { reduction: 'sum' }],
    ['none', { reduction: 'none' }],
    ['none + per-row gradScale', { reduction: 'none', gradScale: [0.5, 2, -1, 3, 0.25] }],
    ['mean + gradScale', { gradScale: 2.5 }],
    ['ignoreIndex = valid class', { ignoreIndex: 3 }],
    ['labelSmoothing', { labelSmoothing: 0.2 }],
    ['classWeights', { classWeights: w }],
    ['classWeights + labelSmoothing', { classWeights: w, labelSmoothing: 0.15 }],
    ['zLoss', { zLoss: 0.1 }],
    ['zLoss + classWeights', { zLoss: 0.1, classWeights: w }],
    ['softcap', { softcap: 2 }],
    ['temperature', { temperature: 0.6 }],
    ['focalGamma 2', { focalGamma: 2 }],
    ['focalGamma 0.5', { focalGamma: 0.5 }],
    ['polyEpsilon', { polyEpsilon: 1 }],
    ['squentropy', { squentropy: true }],
    ['stablemax', { normalizer: 'stablemax' }],
    ['stablemax + smoothing + weights', { normalizer: 'stablemax', labelSmoothing: 0.1, classWeights: w }],
    ['stablemax + focal + poly', { normalizer: 'stablemax', focalGamma: 2, polyEpsilon: 0.5 }],
    ['sparsemax', { normalizer: 'sparsemax' }],
    ['sparsemax + smoothing + weights', { normalizer: 'sparsemax', labelSmoothing: 0.1, classWeights: w }],
    ['sparsemax + focal 2 + poly', { normalizer: 'sparsemax', focalGamma: 2, polyEpsilon: 0.5 }],
    ['everything, softmax, mean', { ...everything }],
    ['everything, stablemax, sum', { ...everything, normalizer: 'stablemax', reduction: 'sum' }],
    ['everything, sparsemax, none', { ...everything, normalizer: 'sparsemax', reduction: 'none', gradScale: [1, 2, 3, 4, 5] }],
  ];

  it.each(cases)('%s: duals = central finite differences = README closed form', (_name, o) => {
    const labels = baseLabels.map((t) => (t === -100 ? (o.ignoreIndex ?? -100) : t));
    const grad = crossEntropyGrad(logits, labels, o);
    const fd = finiteDiff((v) => ceObjective(unflatten(v, N, V), labels, o), Float64Array.from(logits.flat()));
    expectClose(grad, unflatten(fd, N, V), { rtol: 1e-6, atol: 1e-8 });
    expectClose(grad, docCeGrad(logits, labels, o), { rtol: 1e-10, atol: 1e-13 });
    expect(grad[1].every((g) => g === 0)).toBe(true); // the ignored row
  });

  it('crossEntropy bundles loss, lse and dLogits', () => {
    const r = crossEntropy(logits, labels, { zLoss: 0.1 });
    expect(r.loss).toBe(crossEntropyLoss(logits, labels, { zLoss: 0.1 }).loss);
    expect(r.dLogits).toEqual(crossEntropyGrad(logits, labels, { zLoss: 0.1 }));
  });

  it('sparsemax + focal γ < 1 with p_t = 1: loss and gradient 0 (the closed form would give 0·inf)', () => {
    const o: CeOptions = { normalizer: 'sparsemax', focalGamma: 0.5 };
    expect(crossEntropyLoss([[3, 0, 0]], [0], o).loss).toBe(0);
    expect(crossEntropyGrad([[3, 0, 0]], [0], o)).toEqual([[0, 0, 0]]);
    expect(docCeGrad([[3, 0, 0]], [0], o)[0].some(Number.isNaN)).toBe(true);
  });

  it('softmax gradient of plain CE is (p − onehot)/n', () => {
    const z = [[1, 2, 3]];
    const p = softmax(z)[0];
    expectClose(crossEntropyGrad(z, [1]), [[p[0], p[1] - 1, p[2]]]);
  });

  it('rejects an array gradScale with a scalar reduction', () => {
    expect(() => crossEntropyGrad(logits, labels, { gradScale: [1, 1, 1, 1, 1] })).toThrow();
  });
});

// ---------------------------------------------------------------------------------------
// linearCrossEntropy
// ---------------------------------------------------------------------------------------

describe('linearCrossEntropy', () => {
  const [N, D, V] = [4, 3, 5];
  const rng = mulberry32(21);
  const E = randomRows(rng, N, D);
  const W = randomRows(rng, V, D);
  const bias = Array.from({ length: V }, () => randn(rng));
  const labels = [1, 4, -100, 0];

  it.each<[string, CeOptions]>([
    ['mean', {}],
    ['sum + softcap + smoothing + zLoss', { reduction: 'sum', softcap: 3, labelSmoothing: 0.1, zLoss: 0.1 }],
    ['none + gradScale, stablemax', { reduction: 'none', gradScale: [1, -2, 3, 0.5], normalizer: 'stablemax' }],
  ])('%s: dE, dW, dBias match finite differences', (_name, o) => {
    const r = linearCrossEntropy(E, W, labels, { ...o, bias });
    const withBias = crossEntropyLoss(r.logits, labels, o);
    expect(r.loss).toEqual(withBias.loss);
    expectClose(r.logits[0][2], rowSum(E[0].map((e, d) => e * W[2][d])) + bias[2], { rtol: 1e-15 });

    const obj = (e: number[][], w: number[][], b: number[]) => {
      const { logits } = linearCrossEntropy(e, w, labels, { ...o, bias: b });
      return ceObjective(logits, labels, o);
    };
    const FD = { rtol: 1e-6, atol: 1e-8 };
    expectClose(r.dE, unflatten(finiteDiff((v) => obj(unflatten(v, N, D), W, bias), Float64Array.from(E.flat())), N, D), FD);
    expectClose(r.dW, unflatten(finiteDiff((v) => obj(E, unflatten(v, V, D), bias), Float64Array.from(W.flat())), V, D), FD);
    expectClose(r.dBias, Array.from(finiteDiff((v) => obj(E, W, Array.from(v)), Float64Array.from(bias))), FD);
  });

  it('no bias: no dBias', () => {
    expect(linearCrossEntropy(E, W, labels).dBias).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------
// dtype helpers, random data, finite differences
// ---------------------------------------------------------------------------------------

/** The usual bit trick (add 0x7fff + lsb, truncate), to hold against the reference's method. */
function bf16ByBitTrick(x: number): number {
  const bits = new Uint32Array(Float32Array.of(x).buffer)[0];
  if (Number.isNaN(Math.fround(x))) return 0x7fc0;
  return Math.floor((bits + 0x7fff + ((bits >>> 16) & 1)) / 0x10000) & 0xffff;
}

describe('bf16', () => {
  it('known values', () => {
    expect(f32ToBf16(1)).toBe(0x3f80);
    expect(f32ToBf16(-1)).toBe(0xbf80);
    expect(f32ToBf16(0)).toBe(0x0000);
    expect(f32ToBf16(-0)).toBe(0x8000);
    expect(f32ToBf16(3.140625)).toBe(0x4049); // exactly representable
    expect(bf16ToF32(0x4049)).toBe(3.140625);
    expect(f32ToBf16(Infinity)).toBe(0x7f80);
    expect(f32ToBf16(-Infinity)).toBe(0xff80);
    expect(bf16ToF32(f32ToBf16(NaN))).toBeNaN();
  });
  it('rounds to nearest, ties to even', () => {
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80); // halfway between 0x3f80 (even) and 0x3f81
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82); // halfway between 0x3f81 and 0x3f82 (even)
    expect(f32ToBf16(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81); // just above half
    expect(f32ToBf16(-(1 + 3 * 2 ** -8))).toBe(0xbf82);
    expect(f32ToBf16(3.4028234663852886e38)).toBe(0x7f80); // f32 max is past bf16 max + half ulp
    expect(f32ToBf16(bf16ToF32(0x7f7f))).toBe(0x7f7f);
    expect(f32ToBf16(2 ** -133)).toBe(0x0001); // smallest bf16 subnormal
  });
  it('agrees with the bit trick on random float32 patterns', () => {
    const rng = mulberry32(5);
    const bits = new Uint32Array(1);
    const f = new Float32Array(bits.buffer);
    for (let i = 0; i < 20000; i++) {
      bits[0] = Math.floor(rng() * 2 ** 32);
      if (Number.isNaN(f[0])) continue;
      expect(f32ToBf16(f[0])).toBe(bf16ByBitTrick(f[0]));
    }
  });
  it('toF64Rows reads f32 and bf16 storage; rowsToF32 / rowsToBf16 write it', () => {
    const rows = [
      [1, 3.140625, -2],
      [0.5, 0, 1e-3],
    ];
    expect(toF64Rows(rowsToF32(rows), 2, 3)).toEqual(rows.map((r) => r.map(Math.fround)));
    expect(toF64Rows(rowsToBf16(rows), 2, 3)[0]).toEqual([1, 3.140625, -2]);
    expect(toF64Rows(Uint16Array.of(0x3f80, 0x4049), 1, 2)).toEqual([[1, 3.140625]]);
    expect(() => toF64Rows(new Float32Array(5), 2, 3)).toThrow();
  });
});

describe('random data and finiteDiff', () => {
  it('mulberry32 is deterministic and uniform-looking; randn is standard normal', () => {
    expect(Array.from({ length: 3 }, mulberry32(42))).toEqual(Array.from({ length: 3 }, mulberry32(42)));
    const rng = mulberry32(9);
    const u = Array.from({ length: 20000 }, rng);
    expect(u.every((v) => v >= 0 && v < 1)).toBe(true);
    expect(Math.abs(rowSum(u) / u.length - 0.5)).toBeLessThan(0.01);
    const g = Array.from({ length: 20000 }, () => randn(rng));
    const mean = rowSum(g) / g.length;
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(rowSum(g.map((v) => (v - mean) ** 2)) / g.length - 1)).toBeLessThan(0.05);
    expect(randomLabels(rng, 100, 7).every((t) => Number.isInteger(t) && t >= 0 && t < 7)).toBe(true);
  });
  it('finiteDiff: ∇ Σ x³ = 3x²', () => {
    const x = Float64Array.of(0.5, -2, 3);
    expectClose(finiteDiff((v) => rowSum(v.map((t) => t ** 3)), x), [0.75, 12, 27], { rtol: 1e-8 });
  });
});
