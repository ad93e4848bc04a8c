// bf16 linearCrossEntropy on the cpu backend, on each of its paths: the machine's best bf16 GEMM
// ('auto': oneDNN on AMX, cutloss's AVX512-BF16 kernel), oneDNN's forced ('onednn'), and the
// portable path (bf16 widened to fp32, forced by cpuSetBf16Gemm('off') as CUTLOSS_CPU_BF16=off
// does), against the float64 re-computation of the decoded inputs and the JS backend. The bf16
// GEMMs take the logits' gradient G rounded to bf16 (as the CUDA tensor-core backward does), or
// with 'split' (CUTLOSS_CPU_BF16=split) as two bf16 terms (hi + lo).
//
// Bounds per gradient entry (dE_ik = Σ_j g_ij·W_jk; dW likewise over i): the result's rounding
// into bf16 (2^-8 of the entry against the reference, twice that against another backend), fp32
// sums and logits (2^-16 of Σ_j|g_ij·W_jk|), and on the oneDNN path the rounding of G before the
// backward GEMMs: 2^-8 (bf16's unit roundoff) of Σ_j|g_ij·W_jk| as one bf16 term, 2^-16 as two.
// Losses and lse are fp32 on every path.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { cpuAddon, cpuLastGradientWork } from '../lib/cpuBackend.js';
import { native } from '../lib/native.js';
import { expectClose, lossList, repoRoot } from './helpers.js';
import * as ref from './reference64.js';

const cpuInfo = lib.backends().find((b) => b.name === 'cpu')!;
const addon = cpuInfo.available ? cpuAddon(native().addon) : null;
const bf16Here = addon !== null && addon.cpuSetBf16Gemm('auto');
const oneDnnHere = addon !== null && addon.cpuSetBf16Gemm('onednn');
addon?.cpuSetBf16Gemm('auto');

type Path = 'auto' | 'split' | 'oneDNN' | 'portable';
const SWITCH = { auto: 'auto', split: 'split', oneDNN: 'onednn', portable: 'off' } as const;
const usePath = (p: Path) => addon!.cpuSetBf16Gemm(SWITCH[p]);
const pathHere = (p: Path) => p === 'portable' || (p === 'oneDNN' ? oneDnnHere : bf16Here);
/** The rounding of G for the backward GEMMs, relative to Σ|g·w|: one bf16 term, two, or none (fp32). */
const G_ROUNDING: Record<Path, number> = { auto: 2 ** -8, split: 2 ** -16, oneDNN: 2 ** -8, portable: 0 };

const bf16 = (rows: number[][]) => ref.rowsToBf16(rows);
const decode = (t: { data: ArrayLike<number> }) => Array.from(t.data as Uint16Array, ref.bf16ToF32);

/** Σ_j|g_ij·W_jk| per dE entry and Σ_i|g_ij·E_ik| per dW entry: the scale of the backward sums. */
function magnitudes(g: number[][], E: number[][], W: number[][]) {
  const D = E[0]!.length;
  const magE = g.map((gi) => Array.from({ length: D }, (_, k) => gi.reduce((a, x, j) => a + Math.abs(x * W[j]![k]!), 0)));
  const magW = W.map((_, j) => Array.from({ length: D }, (_, k) => g.reduce((a, gi, i) => a + Math.abs(gi[j]! * E[i]![k]!), 0)));
  return { magE: magE.flat(), magW: magW.flat() };
}

/** |got − want| ≤ rel·|want| + abs·mag + extra per entry. */
function expectWithin(got: number[], want: number[], mag: number[], rel: number, abs: number, label: string, extra = 0) {
  expect(got.length, label).toBe(want.length);
  for (let i = 0; i < got.length; i++) {
    const tol = rel * Math.abs(want[i]!) + abs * mag[i]! + extra + 1e-30;
    if (!(Math.abs(got[i]! - want[i]!) <= tol)) {
      throw new Error(`${label}[${i}]: got ${got[i]}, expected ${want[i]} (|diff| ${Math.abs(got[i]! - want[i]!)} > tol ${tol})`);
    }
  }
}

function onJs<T>(fn: () => T): T {
  lib.setBackend('js');
  try {
    return fn();
  } finally {
    lib.setBackend('cpu');
  }
}

describe.skipIf(addon === null)('bf16 linearCrossEntropy on the cpu backend', () => {
  beforeAll(() => lib.setBackend('cpu'));
  afterAll(() => {
    addon?.cpuSetBf16Gemm('auto');
    lib.setBackend('auto');
  });

  it('backends() names the bf16 path in use, and the switch changes it', () => {
    const details = () => String(lib.backends().find((b) => b.name === 'cpu')!.details.bf16Gemm);
    usePath('portable');
    expect(details()).toMatch(/^portable/);
    const flags = readFileSync('/proc/cpuinfo', 'utf8');
    if (/\bavx512_bf16\b/.test(flags) && !/\bamx_bf16\b/.test(flags)) expect(bf16Here).toBe(true);
    if (bf16Here) {
      usePath('auto');
      expect(details()).toMatch(/^(cutloss AVX512-BF16 kernel on avx512_bf16|oneDNN \d+\.\d+\.\d+ \(loaded at run time\) on avx512_core_amx)/);
      expect(addon!.cpuInfo().bf16Gemm.note).toMatch(/rounded to bf16/);
      usePath('split');
      expect(addon!.cpuInfo().bf16Gemm.note).toMatch(/two bf16 terms/);
    }
    if (oneDnnHere) {
      usePath('oneDNN');
      expect(details()).toMatch(/^oneDNN \d+\.\d+\.\d+ \(loaded at run time\) on avx512_core_(bf16|amx)/);
    }
    expect(() => addon!.cpuSetBf16Gemm('sbgemm' as 'off')).toThrow(/must be 'auto', 'split', 'onednn' or 'off'/);
  });

  // 1100 columns: two slices of 512 and a short one; D 40 is no multiple of a SIMD width
  const [N, D, V] = [24, 40, 1100];
  const rng = ref.mulberry32(1515);
  const Erows = ref.toF64Rows(bf16(ref.randomRows(rng, N, D, 1)), N, D);
  const Wrows = ref.toF64Rows(bf16(ref.randomRows(rng, V, D, 0.6)), V, D);
  const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.3)[0]!);
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[5] = -100;
  const E = lib.tensor(bf16(Erows), [N, D], 'bf16');
  const W = lib.tensor(bf16(Wrows), [V, D], 'bf16');
  const want = ref.linearCrossEntropy(Erows, Wrows, labels, { bias: Array.from(bias), ignoreIndex: -100 });
  const { magE, magW } = magnitudes(want.dLogits, Erows, Wrows);
  const magB = Array.from({ length: V }, (_, j) => want.dLogits.reduce((a, g) => a + Math.abs(g[j]!), 0));

  for (const path of ['auto', 'split', 'oneDNN', 'portable'] as const) {
    const gRound = G_ROUNDING[path];
    const fp32 = 2 ** -16;
    for (const [what, workspaceBytes] of [['one chunk', undefined], ['chunks of 5 rows (dW accumulates)', 5 * V * 4]] as const) {
      it.skipIf(!pathHere(path))(`${path}: ${what}, with bias, an ignored row: the float64 re-computation and the JS backend`, () => {
        usePath(path);
        const o: lib.LinearCrossEntropyOptions = { bias, filterEps: 0, returnLse: true, ...(workspaceBytes ? { workspaceBytes } : {}) };
        const got = lib.linearCrossEntropy(E, W, labels, o);
        expect(got.dEmbeddings!.dtype).toBe('bf16');
        expectClose(lossList(got.loss), lossList(want.loss), { rtol: 1e-6, atol: 0, label: 'loss' });
        expectClose(got.lse!, want.lse, { rtol: 1e-6, atol: 0, label: 'lse' });
        expectWithin(decode(got.dEmbeddings!), want.dE.flat(), magE, 2 ** -8, gRound + fp32, 'dE vs reference');
        expectWithin(decode(got.dClassifier!), want.dW.flat(), magW, 2 ** -8, gRound + fp32, 'dW vs reference');
        expectWithin(Array.from(got.dBias!), want.dBias!, magB, 0, fp32, 'dBias vs reference'); // f32, from fp32 G
        const js = onJs(() => lib.linearCrossEntropy(E, W, labels, o));
        expectClose(lossList(got.loss), lossList(js.loss), { rtol: 1e-6, atol: 0, label: 'loss vs js' });
        expectWithin(decode(got.dEmbeddings!), decode(js.dEmbeddings!), magE, 2 * 2 ** -8, gRound + 2 * fp32, 'dE vs js');
        expectWithin(decode(got.dClassifier!), decode(js.dClassifier!), magW, 2 * 2 ** -8, gRound + 2 * fp32, 'dW vs js');
      });
    }

    it.skipIf(!pathHere(path))(`${path}: peaked rows, default filterEps: sparse and dense slices, as the JS backend`, () => {
      usePath(path);
      // logits of std ≈ 20 in half the rows (most of their G dropped: per-entry products), flat in the rest
      const r = ref.mulberry32(77);
      const [n, d, v] = [32, 16, 3000];
      const e = ref.toF64Rows(bf16(Array.from({ length: n }, (_, i) => Array.from({ length: d }, () => ref.randn(r) * (i < n / 2 ? 1 : 0.01)))), n, d);
      const w = ref.toF64Rows(bf16(Array.from({ length: v }, () => Array.from({ length: d }, () => 5 * ref.randn(r)))), v, d);
      const lab = Int32Array.from({ length: n }, () => Math.floor(r() * v));
      const Et = lib.tensor(bf16(e), [n, d], 'bf16');
      const Wt = lib.tensor(bf16(w), [v, d], 'bf16');
      const got = lib.linearCrossEntropy(Et, Wt, lab, { workspaceBytes: (n / 2) * v * 4 });
      const work = cpuLastGradientWork()!;
      expect(work.sparseSlices).toBeGreaterThan(0); // the peaked chunk
      expect(work.sparseSlices).toBeLessThan(work.slices); // the flat one
      const js = onJs(() => lib.linearCrossEntropy(Et, Wt, lab));
      // the float64 gradient of the logits (mean reduction), for the scale of the sums
      const g = e.map((ei, i) => {
        const z = w.map((wj) => wj.reduce((acc, x, k) => acc + x * ei[k]!, 0));
        const max = Math.max(...z);
        const ex = z.map((x) => Math.exp(x - max));
        const sum = ex.reduce((acc, x) => acc + x, 0);
        return ex.map((x, j) => (x / sum - (j === lab[i] ? 1 : 0)) / n);
      });
      const m = magnitudes(g, e, w);
      // both backends drop what filterEps 2^-12 allows: at most V·2^-12·(1/n)·max|W| per dE entry, n·2^-12/n·max|E| per dW
      const maxW = Math.max(...w.flat().map(Math.abs));
      const maxE = Math.max(...e.flat().map(Math.abs));
      expectClose(lossList(got.loss), lossList(js.loss), { rtol: 1e-6, atol: 0, label: 'loss vs js' });
      const dropE = (v * 2 ** -12 * maxW) / n;
      const dropW = 2 ** -12 * maxE;
      expectWithin(decode(got.dEmbeddings!), decode(js.dEmbeddings!), m.magE, 2 * 2 ** -8, gRound + 2 * fp32, 'dE vs js', dropE);
      expectWithin(decode(got.dClassifier!), decode(js.dClassifier!), m.magW, 2 * 2 ** -8, gRound + 2 * fp32, 'dW vs js', dropW);
    });
  }

  // Nearly equal W rows: dE_i = Σ_j g_ij·W_j cancels to Σ_j g_ij·(W_j − w), far below Σ_j|g_ij·W_j|.
  // Rounding G to bf16 moves dE by up to 2^-8 of those terms; 'split' keeps it within 2^-16.
  it.skipIf(!bf16Here)("cancelling gradients: G rounded to bf16 by default, within 2^-16 of the terms with 'split'", () => {
    const r = ref.mulberry32(4242);
    const [n, d, v] = [16, 24, 600];
    const base = Array.from({ length: d }, () => ref.randn(r));
    const e = ref.toF64Rows(bf16(Array.from({ length: n }, () => Array.from({ length: d }, () => ref.randn(r)))), n, d);
    const w = ref.toF64Rows(bf16(Array.from({ length: v }, () => base.map((x) => x + 0.02 * ref.randn(r)))), v, d);
    const lab = Int32Array.from({ length: n }, () => Math.floor(r() * v));
    const Et = lib.tensor(bf16(e), [n, d], 'bf16');
    const Wt = lib.tensor(bf16(w), [v, d], 'bf16');
    const want64 = ref.linearCrossEntropy(e, w, lab, {});
    const m = magnitudes(want64.dLogits, e, w);
    const wantE = want64.dE.flat();
    const maxError = (p: Path) => {
      usePath(p);
      const got = decode(lib.linearCrossEntropy(Et, Wt, lab, { filterEps: 0 }).dEmbeddings!);
      expectWithin(got, wantE, m.magE, 2 ** -8, G_ROUNDING[p] + 2 ** -16, `dE (${p}) vs reference`);
      // the error beyond the bf16 output's own rounding, in units of the terms' scale
      return Math.max(...got.map((x, i) => Math.max(0, Math.abs(x - wantE[i]!) - 2 ** -8 * Math.abs(wantE[i]!)) / m.magE[i]!));
    };
    const [rounded, split] = [maxError('auto'), maxError('split')];
    const total = (xs: number[]) => xs.reduce((acc, x) => acc + Math.abs(x), 0);
    expect(total(wantE) / total(m.magE)).toBeLessThan(0.05); // the sums do cancel
    expect(rounded).toBeGreaterThan(2 ** -14); // G's rounding shows where dE cancels ...
    expect(split).toBeLessThan(rounded / 16); // ... and 'split' removes it
  });

  // Where the CPU has AMX this forces oneDNN's AVX512-BF16 kernels; elsewhere it is the 'oneDNN' path above
  it.skipIf(!oneDnnHere)('oneDNN capped at AVX512-BF16 (CUTLOSS_CPU_BF16=onednn ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16), in a child: the float64 re-computation', () => {
    const program = `
      import * as lib from './lib/index.ts';
      import { cpuAddon } from './lib/cpuBackend.ts';
      import { native } from './lib/native.ts';
      import { readFileSync } from 'node:fs';
      const p = JSON.parse(readFileSync(0, 'utf8'));
      lib.setBackend('cpu');
      const E = lib.tensor(Uint16Array.from(p.E), [p.N, p.D], 'bf16');
      const W = lib.tensor(Uint16Array.from(p.W), [p.V, p.D], 'bf16');
      const r = lib.linearCrossEntropy(E, W, Int32Array.from(p.labels), { bias: Float32Array.from(p.bias), filterEps: 0 });
      console.log(JSON.stringify({ info: cpuAddon(native().addon).cpuInfo().bf16Gemm, loss: r.loss,
        dE: Array.from(r.dEmbeddings.data), dW: Array.from(r.dClassifier.data) }));`;
    const input = JSON.stringify({ N, D, V, E: Array.from(E.data), W: Array.from(W.data), labels: Array.from(labels), bias: Array.from(bias) });
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', program], {
      cwd: repoRoot, encoding: 'utf8', input, env: { ...process.env, ONEDNN_MAX_CPU_ISA: 'AVX512_CORE_BF16', CUTLOSS_CPU_BF16: 'onednn' },
    });
    const r = JSON.parse(out.trim().split('\n').pop()!) as { info: { isa: string }; loss: number; dE: number[]; dW: number[] };
    expect(r.info.isa).toBe('avx512_core_bf16');
    expectClose([r.loss], lossList(want.loss), { rtol: 1e-6, atol: 0, label: 'loss' });
    const dec = (bits: number[]) => bits.map(ref.bf16ToF32);
    expectWithin(dec(r.dE), want.dE.flat(), magE, 2 ** -8, G_ROUNDING.oneDNN + 2 ** -16, 'dE vs reference');
    expectWithin(dec(r.dW), want.dW.flat(), magW, 2 ** -8, G_ROUNDING.oneDNN + 2 ** -16, 'dW vs reference');
  }, 60_000);

  const childInfo = (env: Record<string, string>) => {
    const program = `
      import { cpuAddon } from './lib/cpuBackend.ts';
      import { native } from './lib/native.ts';
      console.log(JSON.stringify(cpuAddon(native().addon).cpuInfo().bf16Gemm));`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', program], {
      cwd: repoRoot, encoding: 'utf8', env: { ...process.env, ...env },
    });
    return JSON.parse(out.trim().split('\n').pop()!) as { path: string; isa: string; note: string };
  };

  it('oneDNN capped below bf16 instructions (CUTLOSS_CPU_BF16=onednn ONEDNN_MAX_CPU_ISA=AVX512_CORE): the portable path, saying why', () => {
    const info = childInfo({ ONEDNN_MAX_CPU_ISA: 'AVX512_CORE', CUTLOSS_CPU_BF16: 'onednn' });
    expect(info.path).toMatch(/^portable/);
    expect(info.isa).toBe('');
    if (oneDnnHere) expect(info.note).toMatch(/no bf16 instructions \(ISA avx512_core/);
  }, 60_000);

  it('CUTLOSS_CPU_BF16 picks the path at start-up: off, split', () => {
    const off = childInfo({ CUTLOSS_CPU_BF16: 'off' });
    expect(off.path).toMatch(/^portable/);
    expect(off.note).toMatch(/CUTLOSS_CPU_BF16=off/);
    if (bf16Here) expect(childInfo({ CUTLOSS_CPU_BF16: 'split' }).note).toMatch(/two bf16 terms \(split\)/);
  }, 60_000);
});

// The bf16 GEMM alone, as linearCrossEntropy calls it: each transpose, shapes off the AVX512-BF16
// kernel's 12-row blocks, 32-column panels and K-pairs, against the float64 product of the bits.
describe.skipIf(addon === null)('bf16 GEMM on the cpu backend (cpuBf16Gemm)', () => {
  afterAll(() => addon?.cpuSetBf16Gemm('auto'));
  const SHAPES: [number, number, number][] = [[13, 45, 37], [1, 1, 1], [25, 600, 2], [40, 33, 515], [12, 32, 64]];
  for (const path of ['auto', 'oneDNN', 'portable'] as const) {
    it.skipIf(!pathHere(path))(`${path}: products exact, sums within fp32 rounding`, () => {
      usePath(path);
      const rng = ref.mulberry32(31);
      for (const [M, N, K] of SHAPES) {
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            const A = bf16([ref.randomRows(rng, 1, M * K, 1)[0]!]);
            const B = bf16([ref.randomRows(rng, 1, K * N, 1)[0]!]);
            const a = (i: number, k: number) => ref.bf16ToF32(A[transA ? k * M + i : i * K + k]!);
            const b = (k: number, j: number) => ref.bf16ToF32(B[transB ? j * K + k : k * N + j]!);
            const C = addon!.cpuBf16Gemm(transA, transB, M, N, K, A, B);
            expect(C.length).toBe(M * N);
            for (let i = 0; i < M; i++) {
              for (let j = 0; j < N; j++) {
                let sum = 0, mag = 0;
                for (let k = 0; k < K; k++) {
                  sum += a(i, k) * b(k, j);
                  mag += Math.abs(a(i, k) * b(k, j));
                }
                const err = Math.abs(C[i * N + j]! - sum);
                if (!(err <= K * 2 ** -24 * mag + 1e-30)) {
                  throw new Error(`${path} ${M}×${N}×${K} transA ${transA} transB ${transB} [${i}, ${j}]: got ${C[i * N + j]}, want ${sum}`);
                }
              }
            }
          }
        }
      }
    });
  }
});

// Large bf16 results of every op are rounded by the addon (lib/tensor.ts fromF32): the same bits
// as the JS rounding, over random bit patterns (NaN, ±inf, subnormals, ties included).
describe.skipIf(addon === null)('bf16 rounding of results on the cpu addon (cpuRoundToBf16)', () => {
  it('gives the bits lib.f32ToBf16 gives, for every kind of float', () => {
    const n = 3 * 2 ** 16 + 7;
    const bits = new Uint32Array(n);
    const rng = ref.mulberry32(909);
    for (let i = 0; i < n; i++) bits[i] = Math.floor(rng() * 2 ** 32) >>> 0;
    // ties to even at both parities, NaNs whose payload sits below the kept bits, infinities, subnormals
    bits.set([0x3f808000, 0x3f818000, 0x7f800001, 0xff800000, 0x7f800000, 0x00008000, 0x80018000, 0x7f7fffff], 0);
    const values = new Float32Array(bits.buffer);
    const got = addon!.cpuRoundToBf16(values);
    expect(got).toBeInstanceOf(Uint16Array);
    expect(got.length).toBe(n);
    for (let i = 0; i < n; i++) {
      const want = lib.f32ToBf16(values[i]!);
      if (got[i] !== want) throw new Error(`[${i}] bits 0x${bits[i]!.toString(16)}: got 0x${got[i]!.toString(16)}, want 0x${want.toString(16)}`);
    }
    expect(Array.from(new Uint32Array(values.buffer, 0, 4))).toEqual([0x3f808000, 0x3f818000, 0x7f800001, 0xff800000]); // input untouched
  });
});

// The facade hands a bf16 call's f32 gradient back to the addon once rounded (lib/tensor.ts
// fromF32 with `consumed`): only a whole result of the addon is taken, and it is detached first.
describe.skipIf(addon === null)('recycling a consumed result (cpuRecycle)', () => {
  it('takes a whole pooled result once and detaches it; leaves callers\' arrays and views alone', () => {
    const [M, N] = [2048, 2048]; // 16 MiB: a pooled-size output
    const A = new Float32Array(M).fill(1);
    const B = new Float32Array(N).fill(2);
    const C = addon!.cpuSgemm(false, false, M, N, 1, A, B);
    expect(C.length).toBe(M * N);
    expect(addon!.cpuRecycle(C.subarray(1))).toBe(false); // part of a buffer
    expect(C[M * N - 1]).toBe(2); // still there
    expect(addon!.cpuRecycle(C)).toBe(true);
    expect(C.length).toBe(0); // detached: nothing reaches the memory now
    expect(addon!.cpuRecycle(C)).toBe(false);
    const mine = new Float32Array(M * N).fill(3);
    expect(addon!.cpuRecycle(mine)).toBe(false);
    expect(mine.length).toBe(M * N);
    expect(mine[17]).toBe(3);
    // the next result of that size is whole and correct (it may reuse the memory)
    const again = addon!.cpuSgemm(false, false, M, N, 1, A, B);
    expect(again.length).toBe(M * N);
    expect(again.every((x) => x === 2)).toBe(true);
  });

  it('bf16 linearCrossEntropy results stay whole when the f32 gradients go back to the pool', { timeout: 60_000 }, () => {
    lib.setBackend('cpu');
    try {
      const [n, d, v] = [8, 64, 40000]; // dW: 2.56 M entries, 10 MB of f32: below the pool's size
      const [n2, d2, v2] = [8, 128, 40000]; // dW: 20 MB of f32, recycled
      for (const [rows, dim, vocab] of [[n, d, v], [n2, d2, v2]] as const) {
        const rng = ref.mulberry32(rows * dim);
        const e = lib.tensor(bf16(ref.randomRows(rng, rows, dim, 1)), [rows, dim], 'bf16');
        const w = lib.tensor(bf16(ref.randomRows(rng, vocab, dim, 0.05)), [vocab, dim], 'bf16');
        const labels = Int32Array.from({ length: rows }, (_, i) => (i * 997) % vocab);
        const first = lib.linearCrossEntropy(e, w, labels, { filterEps: 0 });
        const second = lib.linearCrossEntropy(e, w, labels, { filterEps: 0 });
        expect(first.dClassifier!.data.length).toBe(vocab * dim);
        // dW: each slice summed by one thread in chunk order, the same bits every call; dE: the
        // threads' partial sums meet in the order they finish, so equal within its bf16 rounding
        const same = (x: ArrayLike<number>, y: ArrayLike<number>) => x.length === y.length && Array.prototype.every.call(x, (a: number, i: number) => a === y[i]);
        expect(same(second.dClassifier!.data, first.dClassifier!.data)).toBe(true);
        const [dE1, dE2] = [decode(first.dEmbeddings!), decode(second.dEmbeddings!)];
        const scale = Math.max(...dE1.map(Math.abs));
        expect(dE1.every((x, i) => Math.abs(x - dE2[i]!) <= 2 ** -7 * Math.abs(x) + 2 ** -16 * scale)).toBe(true);
        expect(Array.prototype.some.call(first.dClassifier!.data, (x: number) => x !== 0)).toBe(true);
      }
    } finally {
      lib.setBackend('auto');
    }
  });
});
