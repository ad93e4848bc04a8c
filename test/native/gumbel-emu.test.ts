// normalizer 'gumbel' through every forward and backward kernel of cuda/linear_cross_entropy.cu
// under the emulator (the public API on cuda-emu takes the FloatTile path for the small f32 shapes
// of test/gumbel-loss.test.ts): the bf16 tensor-core forward and backward (cp.async, ldmatrix,
// mma.sync), the tf32 forward, deterministic mode, and several vocabulary splits, each in the three
// fiber orders (bit-identical), against the float64 reference of test/reference64-gumbel.ts.
import { describe, expect, it } from 'vitest';
import { gradientScales, reduceLoss } from '../../lib/nativeBackend.js';
import { resolveLossOptions, type LinearCrossEntropyOptions } from '../../lib/options.js';
import type { Matrix } from '../../lib/tensor.js';
import { expectClose, flat, lossList } from '../helpers.js';
import * as ref from '../reference64.js';
import { gumbelLinearCrossEntropy64 } from '../reference64-gumbel.js';
import { asRows, blobValues, buildRunner, matrix, runInAllOrders, type KernelRequest } from './kernel-runner.js';

const SLOW = 120_000;

interface Setting {
  label: string;
  dtype: 'f32' | 'bf16';
  tf32?: boolean;
  deterministic?: boolean;
  vocabSplits?: number;
  /** the tensor-core forward must have run */
  mma: boolean;
  options: LinearCrossEntropyOptions;
}

const SETTINGS: Setting[] = [
  { label: 'bf16 tensor cores, class weights, ignored rows', dtype: 'bf16', mma: true, options: { normalizer: 'gumbel' } },
  { label: 'tf32 forward, softcap, temperature, zLoss, squentropy', dtype: 'f32', tf32: true, mma: true, options: { normalizer: 'gumbel', softcap: 6, temperature: 1.3, zLoss: 0.01, squentropy: true } },
  { label: 'f32 FMA, deterministic, four vocabulary splits', dtype: 'f32', deterministic: true, vocabSplits: 4, mma: false, options: { normalizer: 'gumbel', reduction: 'sum' } },
  { label: 'bf16 deterministic (tensor-core owner kernels)', dtype: 'bf16', deterministic: true, mma: true, options: { normalizer: 'gumbel', reduction: 'none' } },
];

function problem(seed: number, N: number, D: number, V: number, dtype: 'f32' | 'bf16') {
  const rng = ref.mulberry32(seed);
  const E = matrix(ref.randomRows(rng, N, D, 1), dtype);
  const W = matrix(ref.randomRows(rng, V, D, 1), dtype);
  const labels = Int32Array.from(ref.randomLabels(rng, N, V));
  labels[3] = -100;
  const bias = Float32Array.from(ref.randomRows(rng, 1, V, 0.5)[0]!);
  const classWeights = Float32Array.from({ length: V }, () => Math.fround(0.5 + rng()));
  return { E, W, labels, bias, classWeights };
}

function request(E: Matrix, W: Matrix, labels: Int32Array, bias: Float32Array, options: LinearCrossEntropyOptions, s: Setting) {
  const [N, D, V] = [E.rows, E.cols, W.rows];
  const o = resolveLossOptions({ ...options, bias }, N, V, E.dtype, true);
  const sumWeights = o.classWeights === null ? V : o.classWeights.reduce((a, w) => a + w, 0);
  const keys = {
    rows: N, cols: V, dim: D, eDtype: E.dtype, wDtype: W.dtype, normalizer: o.normalizer, smoothing: o.smoothing,
    focalGamma: o.focalGamma, polyEpsilon: o.polyEpsilon, zLoss: o.zLoss, squentropy: o.squentropy, softcap: o.softcap,
    invTemperature: o.invTemperature, ignoreIndex: o.ignoreIndex, sumWeights, gemm: 0, tf32: s.tf32 ?? false,
    deterministic: s.deterministic ?? false, filterEps: 0, vocabSplits: s.vocabSplits ?? 0,
  };
  const sc = gradientScales(labels, o);
  const blobs: KernelRequest['blobs'] = { E: E.data, W: W.data, labels, bias, scaleWeighted: sc.scaleWeighted, scaleUnweighted: sc.scaleUnweighted };
  if (o.classWeights !== null) blobs.classWeights = o.classWeights;
  return { req: { op: 'linearCrossEntropy', keys, blobs } as Omit<KernelRequest, 'order'>, o };
}

describe("normalizer 'gumbel' in the linearCrossEntropy kernels under the emulator", () => {
  it('every kernel path equals the float64 reference, in three fiber orders', { timeout: SLOW }, () => {
    const exe = buildRunner();
    const [N, D, V] = [37, 16, 300];
    const cases = SETTINGS.map((s, i) => {
      const p = problem(100 + i, N, D, V, s.dtype);
      const options = i === 0 ? { ...s.options, classWeights: p.classWeights } : s.options;
      return { s, p, options, ...request(p.E, p.W, p.labels, p.bias, options, s) };
    });
    const responses = runInAllOrders(exe, cases.map((c) => c.req));
    cases.forEach(({ s, p, options, o }, i) => {
      const r = responses[i]!;
      const info = new Uint32Array(blobValues(r, 'info').buffer.slice(0));
      expect(info[8]! > 0, `${s.label}: tensor-core forward`).toBe(s.mma);
      const loss = reduceLoss(p.labels, blobValues(r, 'weighted'), blobValues(r, 'unweighted'), o).loss;
      const want = gumbelLinearCrossEntropy64(asRows(p.E), asRows(p.W), p.labels, { ...(options as object), bias: p.bias });
      // tf32 rounds the operands of every logit (10-bit mantissas); bf16 gradients are stored as bf16
      const low = s.tf32 === true || s.dtype === 'bf16';
      const lossTol = s.tf32 === true ? { rtol: 1e-2, atol: 1e-3 } : { rtol: 1e-5, atol: 1e-5 };
      expectClose(lossList(loss), lossList(want.loss as number | number[]), { ...lossTol, label: `${s.label} loss` });
      expectClose(blobValues(r, 'lse'), want.lse, { ...lossTol, label: `${s.label} lse` });
      const tol = low ? { rtol: 2e-2, atol: 1e-3 } : { rtol: 1e-5, atol: 1e-6 };
      expectClose(blobValues(r, 'dE', p.E.dtype), flat(want.dE), { ...tol, label: `${s.label} dE` });
      expectClose(blobValues(r, 'dW', p.W.dtype), flat(want.dW), { ...tol, label: `${s.label} dW` });
      expectClose(blobValues(r, 'dBias'), want.dBias, { ...tol, label: `${s.label} dBias` });
    });
  });
});
