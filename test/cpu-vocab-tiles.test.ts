// The cpu backend's vocabulary tiles: where the workspace budget holds few whole rows of logits
// and W streams from memory, blocks of rows meet the vocabulary 512 columns at a time (each
// row's sums merged across the slices, cuda/math/row_sums.cuh, as the GPU's forward does) and
// the backward forms each tile's logits again. Every loss the tiles take is held to the float64
// reference (its loss), to the JS backend (an independent implementation: its gradients) and to
// the whole-row path on the same data; the workspace stays within the budget; the choice between
// the two layouts is the documented one.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { cpuLastGradientWork } from '../lib/cpuBackend.js';
import * as ref from './reference64.js';

const cpuAvailable = lib.backends().some((b) => b.name === 'cpu' && b.available);
const ENV = 'CUTLOSS_CPU_VOCAB_TILES';
const envBefore = process.env[ENV];
afterAll(() => {
  if (envBefore === undefined) delete process.env[ENV];
  else process.env[ENV] = envBefore;
  lib.setBackend('auto');
});

// four slices of 512 and a short one; a budget of a few rows per block: several blocks
const [N, D, V] = [22, 12, 2100];

function data(seed: number) {
  const rng = ref.mulberry32(seed);
  const E = Float32Array.from({ length: N * D }, () => ref.randn(rng));
  const W = Float32Array.from({ length: V * D }, () => 0.6 * ref.randn(rng));
  const labels = Int32Array.from({ length: N }, () => Math.floor(rng() * V));
  labels[5] = 2049; // in the short last slice
  labels[9] = 511; // a slice's last column
  const bias = Float32Array.from({ length: V }, () => 0.3 * ref.randn(rng));
  const classWeights = Float32Array.from({ length: V }, () => 0.5 + rng());
  return { E, W, labels, bias, classWeights };
}

type Data = ReturnType<typeof data>;
const rowsOf = (a: Float32Array, cols: number) => ref.toF64Rows(a, a.length / cols, cols);

function runCpu(d: Data, tiles: 'on' | 'off', o: lib.LinearCrossEntropyOptions) {
  process.env[ENV] = tiles;
  lib.setBackend('cpu');
  const r = lib.linearCrossEntropy(lib.tensor(d.E, [N, D]), lib.tensor(d.W, [V, D]), d.labels, o);
  const work = cpuLastGradientWork()!;
  return { r, work };
}

function runJs(d: Data, o: lib.LinearCrossEntropyOptions) {
  lib.setBackend('js');
  return lib.linearCrossEntropy(lib.tensor(d.E, [N, D]), lib.tensor(d.W, [V, D]), d.labels, o);
}

/** The float64 loss of E·Wᵀ + b (the reference's gradient, by duals, costs V² a row: the JS backend stands in for it). */
function loss64(d: Data, o: ref.LinearCeOptions) {
  const W = rowsOf(d.W, D);
  const logits = rowsOf(d.E, D).map((e) => W.map((w, v) => e.reduce((acc, x, k) => acc + x * w[k]!, o.bias ? o.bias[v]! : 0)));
  return ref.crossEntropyLoss(logits, d.labels, o).loss;
}

/** max |got − want| over max |want| (0 where want is all zeros and got matches). */
function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let err = 0;
  let scale = 0;
  for (let k = 0; k < want.length; k++) {
    err = Math.max(err, Math.abs(got[k]! - want[k]!));
    scale = Math.max(scale, Math.abs(want[k]!));
  }
  return scale === 0 ? err : err / scale;
}

const lossArray = (l: number | number[] | Float32Array) => (typeof l === 'number' ? [l] : Array.from(l));

// options of the library; those the float64 reference takes too are passed to it as they are
const CASES: [string, Record<string, unknown>][] = [
  ['plain mean', {}],
  ['bias, ignored rows, sum', { bias: true, ignore: [3, 14], reduction: 'sum' }],
  ['label smoothing and class weights', { labelSmoothing: 0.1, classWeights: true }],
  ['softcap and temperature', { softcap: 4, temperature: 1.7, bias: true }],
  ['z-loss, focal, Poly-1', { zLoss: 1e-3, focalGamma: 2, polyEpsilon: 1 }],
  ['squentropy', { squentropy: true }],
  ['StableMax with smoothing', { normalizer: 'stablemax', labelSmoothing: 0.05 }],
  ['none with per-row gradScale', { reduction: 'none', gradScale: 'rows' }],
];

describe.runIf(cpuAvailable)('cpu vocabulary tiles', { timeout: 60_000 }, () => {
  const budget = 3 * 1024 * 16; // ~48 KiB: blocks of several rows, at most 3 whole rows' worth at V = 2100 (25 KiB)

  it.each(CASES)('%s: within f32 rounding of float64, and of the whole-row path', (_name, c) => {
    const d = data(7);
    const labels = Int32Array.from(d.labels);
    for (const i of (c.ignore as number[] | undefined) ?? []) labels[i] = -100;
    const dd = { ...d, labels };
    const gradScale = c.gradScale === 'rows' ? Array.from({ length: N }, (_, i) => 0.5 + (i % 3)) : undefined;
    const o: Record<string, unknown> = { ...c, workspaceBytes: budget };
    delete o.ignore;
    if (c.bias) o.bias = d.bias;
    else delete o.bias;
    if (c.classWeights) o.classWeights = d.classWeights;
    if (gradScale) o.gradScale = Float32Array.from(gradScale);
    const tiled = runCpu(dd, 'on', o as lib.LinearCrossEntropyOptions);
    const rows = runCpu(dd, 'off', o as lib.LinearCrossEntropyOptions);
    expect(tiled.work.tileCols).toBe(512);
    expect(tiled.work.chunkRows).toBeGreaterThan(1);
    expect(tiled.work.chunkRows).toBeLessThan(N); // several blocks
    expect(tiled.work.workspaceBytes).toBeLessThanOrEqual(budget);
    expect(rows.work.tileCols).toBe(0);

    const refOptions = { ...c, classWeights: c.classWeights ? d.classWeights : undefined, gradScale } as ref.LinearCeOptions;
    delete (refOptions as Record<string, unknown>).ignore;
    if (c.bias) refOptions.bias = d.bias;
    else delete refOptions.bias;
    const got = tiled.r;
    expect(relErr(lossArray(got.loss as number | Float32Array), lossArray(loss64(dd, refOptions)))).toBeLessThan(2e-5);
    const js = runJs(dd, o as lib.LinearCrossEntropyOptions);
    expect(relErr(got.dEmbeddings!.data, js.dEmbeddings!.data)).toBeLessThan(2e-5);
    expect(relErr(got.dClassifier!.data, js.dClassifier!.data)).toBeLessThan(2e-5);
    if (c.bias) expect(relErr(got.dBias!, js.dBias!)).toBeLessThan(2e-5);
    // the two cpu paths: the same f32 sums in other orders
    expect(relErr(got.dEmbeddings!.data, rows.r.dEmbeddings!.data)).toBeLessThan(1e-5);
    expect(relErr(got.dClassifier!.data, rows.r.dClassifier!.data)).toBeLessThan(1e-5);
    expect(relErr(lossArray(got.loss as number | Float32Array), lossArray(rows.r.loss as number | Float32Array))).toBeLessThan(1e-6);
  });

  it('the Gumbel loss and cosine logits with margins: as the whole-row path', () => {
    const d = data(21);
    for (const o of [
      { normalizer: 'gumbel', temperature: 0.8 },
      { logits: { kind: 'cosine', scale: 16, margin: 0.2, angularMargin: 0.3 }, labelSmoothing: 0.1 },
    ] as lib.LinearCrossEntropyOptions[]) {
      const tiled = runCpu(d, 'on', { ...o, workspaceBytes: budget });
      const rows = runCpu(d, 'off', { ...o, workspaceBytes: budget });
      expect(tiled.work.tileCols).toBe(512);
      expect(relErr([tiled.r.loss as number], [rows.r.loss as number])).toBeLessThan(1e-6);
      expect(relErr(tiled.r.dEmbeddings!.data, rows.r.dEmbeddings!.data)).toBeLessThan(1e-5);
      expect(relErr(tiled.r.dClassifier!.data, rows.r.dClassifier!.data)).toBeLessThan(1e-5);
    }
    // and the cosine case against the JS backend
    const o = { logits: { kind: 'cosine', scale: 16, margin: 0.2, angularMargin: 0.3 }, labelSmoothing: 0.1 } as lib.LinearCrossEntropyOptions;
    const got = runCpu(d, 'on', { ...o, workspaceBytes: budget }).r;
    const js = runJs(d, o);
    expect(relErr([got.loss as number], [js.loss as number])).toBeLessThan(2e-5);
    expect(relErr(got.dEmbeddings!.data, js.dEmbeddings!.data)).toBeLessThan(5e-5);
    expect(relErr(got.dClassifier!.data, js.dClassifier!.data)).toBeLessThan(5e-5);
  });

  it('peaked rows with the default filterEps: sparse tiles, the same kept entries as whole rows', () => {
    const d = data(33);
    for (let k = 0; k < d.W.length; k++) d.W[k] = 8 * d.W[k]!; // logits of std ≈ 17
    const tiled = runCpu(d, 'on', { workspaceBytes: budget });
    const rows = runCpu(d, 'off', { workspaceBytes: budget });
    expect(tiled.work.sparseSlices).toBeGreaterThan(0);
    expect(tiled.work.skippedFraction).toBeGreaterThan(0.5);
    const js = runJs(d, {});
    expect(relErr(tiled.r.dEmbeddings!.data, js.dEmbeddings!.data)).toBeLessThan(2e-5);
    expect(relErr(tiled.r.dClassifier!.data, js.dClassifier!.data)).toBeLessThan(2e-5);
    expect(relErr(tiled.r.dClassifier!.data, rows.r.dClassifier!.data)).toBeLessThan(1e-5);
  });

  it('bf16 inputs on the tiles: as the whole-row path', () => {
    const d = data(45);
    const E = lib.tensor(Uint16Array.from(d.E, ref.f32ToBf16), [N, D], 'bf16');
    const W = lib.tensor(Uint16Array.from(d.W, ref.f32ToBf16), [V, D], 'bf16');
    const run = (tiles: 'on' | 'off') => {
      process.env[ENV] = tiles;
      lib.setBackend('cpu');
      const r = lib.linearCrossEntropy(E, W, d.labels, { workspaceBytes: budget, labelSmoothing: 0.1 });
      return { r, work: cpuLastGradientWork()! };
    };
    const tiled = run('on');
    const rows = run('off');
    expect(tiled.work.tileCols).toBe(512);
    expect(relErr([tiled.r.loss as number], [rows.r.loss as number])).toBeLessThan(1e-6);
    // the gradients are bf16: equal within their rounding (2^-8), G rounded alike on both paths
    const toF32 = (x: Uint16Array | Float32Array) => (x instanceof Uint16Array ? Array.from(x, ref.bf16ToF32) : Array.from(x));
    expect(relErr(toF32(tiled.r.dEmbeddings!.data), toF32(rows.r.dEmbeddings!.data))).toBeLessThan(2 ** -7);
    expect(relErr(toF32(tiled.r.dClassifier!.data), toF32(rows.r.dClassifier!.data))).toBeLessThan(2 ** -7);
  });

  it('auto: tiles where the budget holds few whole rows and W streams from memory, whole rows otherwise', () => {
    delete process.env[ENV];
    lib.setBackend('cpu');
    const [n, d, v] = [40, 64, 40000]; // W and dW 20 MB: past the cached size
    const rng = ref.mulberry32(5);
    const E = lib.tensor(Float32Array.from({ length: n * d }, () => ref.randn(rng)), [n, d]);
    const W = lib.tensor(Float32Array.from({ length: v * d }, () => 0.1 * ref.randn(rng)), [v, d]);
    const labels = Int32Array.from({ length: n }, (_, i) => (i * 997) % v);
    const few = lib.linearCrossEntropy(E, W, labels, { workspaceBytes: 8 * v * 4 }); // 8 whole rows
    const fewWork = cpuLastGradientWork()!;
    expect(fewWork.tileCols).toBe(512);
    expect(fewWork.chunkRows).toBeGreaterThan(8);
    expect(fewWork.workspaceBytes).toBeLessThanOrEqual(8 * v * 4);
    const all = lib.linearCrossEntropy(E, W, labels, { workspaceBytes: n * v * 4 }); // every row at once
    expect(cpuLastGradientWork()!.tileCols).toBe(0);
    expect(relErr([few.loss as number], [all.loss as number])).toBeLessThan(1e-6);
    expect(relErr(few.dEmbeddings!.data, all.dEmbeddings!.data)).toBeLessThan(1e-5);
    expect(relErr(few.dClassifier!.data, all.dClassifier!.data)).toBeLessThan(1e-5);
    // a small W (in cache) keeps whole rows at any budget
    const small = data(3);
    lib.linearCrossEntropy(lib.tensor(small.E, [N, D]), lib.tensor(small.W, [V, D]), small.labels, { workspaceBytes: budget });
    expect(cpuLastGradientWork()!.tileCols).toBe(0);
  });
});
