// Gradient filtering (filterEps, 'auto' for bf16) on every backend, through the public API, on
// a problem of many vocabulary tiles: the filtered gradient is held to the unfiltered one within
// the gradient mass that the threshold allows to drop (computed per element from the float64
// reference), and the unfiltered one to the float64 gradient within bf16 rounding. A threshold
// set too high drops mass above that bound and fails here.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { UNIT_ROUNDOFF } from './helpers.js';
import * as ref from './reference64.js';

/** The cpu backend's bf16 GEMMs round G to bf16 (its portable path multiplies fp32 G). */
const cpuRoundsG = () => !String(lib.backends().find((b) => b.name === 'cpu')?.details.bf16Gemm).startsWith('portable');
const BACKENDS = lib.backends().filter((b) => b.available && ['js', 'cpu', 'cuda-emu'].includes(b.name)).map((b) => b.name);
afterAll(() => lib.setBackend('auto'));

// [N, D, V]: few rows and 4096 columns, so most vocabulary tiles hold no label on every backend
// (js tiles of 64×256, cpu blocks of 512 columns, the kernels' tiles) and can be filtered
const [N, D, V] = [6, 16, 4096];
const AUTO_BF16 = 2 ** -12; // the documented 'auto' for bf16: bf16's ε / 32

const rng = ref.mulberry32(2026);
// logits with σ ≈ 10: a few classes per row hold most of the softmax, some tiles lie wholly below
// 2^-12, and many hold coefficients between 2^-12 and 2^-2 (what a too-high threshold drops)
const E = ref.rowsToBf16(ref.randomRows(rng, N, D, 1));
const W = ref.rowsToBf16(ref.randomRows(rng, V, D, 2.5));
const labels = Int32Array.from(ref.randomLabels(rng, N, V));
const E64 = ref.toF64Rows(E, N, D);
const W64 = ref.toF64Rows(W, V, D);
// float64 by the closed form (reference64's dual numbers cost O(V²) a row): for the mean of plain
// CE, ∂loss/∂z_ij = (p_ij − [j = t_i]) / N, dE = G·W, dW = Gᵀ·E
const g = E64.map((e, i) => {
  const z = W64.map((w) => e.reduce((acc, v, d) => acc + v * w[d]!, 0));
  const max = Math.max(...z);
  const lse = max + Math.log(z.reduce((acc, v) => acc + Math.exp(v - max), 0));
  return z.map((v, j) => (Math.exp(v - lse) - (j === labels[i] ? 1 : 0)) / N);
});
const want = { dE: Array.from({ length: N * D }, () => 0), dW: Array.from({ length: V * D }, () => 0) };
for (let i = 0; i < N; i++) {
  for (let j = 0; j < V; j++) {
    for (let d = 0; d < D; d++) {
      want.dE[i * D + d]! += g[i]![j]! * W64[j]![d]!;
      want.dW[j * D + d]! += g[i]![j]! * E64[i]![d]!;
    }
  }
}

/** Per element, the most a filter at `eps` may drop: Σ over coefficients below it of |g|·|the other factor|. */
function droppable(eps: number): { dE: number[]; dW: number[] } {
  const below = (i: number, j: number) => N * Math.abs(g[i]![j]!) < eps * (1 + 1e-3); // f32 rounding of p at the edge
  const dE = Array.from({ length: N * D }, () => 0);
  const dW = Array.from({ length: V * D }, () => 0);
  for (let i = 0; i < N; i++) {
    for (let j = 0; j < V; j++) {
      if (!below(i, j)) continue;
      const a = Math.abs(g[i]![j]!);
      for (let d = 0; d < D; d++) {
        dE[i * D + d]! += a * Math.abs(W64[j]![d]!);
        dW[j * D + d]! += a * Math.abs(E64[i]![d]!);
      }
    }
  }
  return { dE, dW };
}
const bound = droppable(AUTO_BF16);
// Σ|g|·|other factor| per element: the scale of a product whose operands are rounded (to bf16 on
// the emulated tensor-core path, where G is a bf16 operand)
const magnitude = droppable(Infinity);
const bf16Values = (t: lib.Tensor) => Array.from(t.data as Uint16Array, ref.bf16ToF32);

describe.each(BACKENDS)('bf16 gradient filtering on %s', (backend) => {
  it(`'auto' drops no more than the mass below 2^-12; unfiltered matches float64 within bf16 rounding`, () => {
    lib.setBackend(backend as never);
    const e = lib.tensor(E, [N, D], 'bf16');
    const w = lib.tensor(W, [V, D], 'bf16');
    const exact = lib.linearCrossEntropy(e, w, labels, { filterEps: 0 });
    const auto = lib.linearCrossEntropy(e, w, labels); // bf16 default: 'auto'
    expect(auto.loss).toBe(exact.loss); // the forward is never filtered
    const [exactE, exactW] = [bf16Values(exact.dEmbeddings!), bf16Values(exact.dClassifier!)];
    // one bf16 rounding of the element, and of each product's operand where the backend rounds G
    const operand = backend === 'cuda-emu' || (backend === 'cpu' && cpuRoundsG()) ? UNIT_ROUNDOFF.bf16 : 64 * UNIT_ROUNDOFF.f32;
    for (const [got, exp, mag, what] of [[exactE, want.dE, magnitude.dE, 'dE'], [exactW, want.dW, magnitude.dW, 'dW']] as const) {
      for (let k = 0; k < got.length; k++) {
        const tol = UNIT_ROUNDOFF.bf16 * Math.abs(exp[k]!) + operand * mag[k]! + 1e-12;
        if (!(Math.abs(got[k]! - exp[k]!) <= tol)) throw new Error(`unfiltered ${what}[${k}]: got ${got[k]}, float64 ${exp[k]} (tol ${tol})`);
      }
    }
    // filtered vs unfiltered: both rounded to bf16 (one step: 2u of the larger), fp32 sums in another
    // order (64 ulps of the product's magnitude), plus the droppable mass; on cpu's bf16 GEMMs the
    // filtered call's sparse slices multiply fp32 G where the unfiltered one's GEMMs took G in bf16
    const sums = backend === 'cpu' && cpuRoundsG() ? UNIT_ROUNDOFF.bf16 : 64 * UNIT_ROUNDOFF.f32;
    let worst = 0;
    for (const [got, base, mass, mag, what] of [
      [bf16Values(auto.dEmbeddings!), exactE, bound.dE, magnitude.dE, 'dE'],
      [bf16Values(auto.dClassifier!), exactW, bound.dW, magnitude.dW, 'dW'],
    ] as const) {
      for (let k = 0; k < got.length; k++) {
        const rounding = 2 * UNIT_ROUNDOFF.bf16 * Math.max(Math.abs(got[k]!), Math.abs(base[k]!)) + sums * mag[k]! + 1e-12;
        const diff = Math.abs(got[k]! - base[k]!);
        if (diff > mass[k]! + rounding) throw new Error(`${what}[${k}]: filtered ${got[k]} vs ${base[k]}: |diff| ${diff} > ${mass[k]} + ${rounding}`);
        worst = Math.max(worst, diff / (mass[k]! + rounding));
      }
    }
    console.log(`${backend}: bf16 'auto' filtering, largest |filtered − unfiltered| / bound: ${worst.toFixed(2)}`);
  }, 60_000);
});
