// sigmoidPairLoss (SigLIP) on every backend here: the loss and its four gradients against the
// float64 reference of test/reference64-extra.ts (forward-mode AD of the paper's formula), the
// gradients against central finite differences of the backend's own loss, bf16 inputs, the
// chunking of y, DeviceTensors, the async twin, and typed errors for bad input.
import { afterAll, describe, expect, it } from 'vitest';
import {
  backends, download, getBackend, setBackend, sigmoidPairLoss, sigmoidPairLossAsync, tensor, upload,
  type BackendName, type Tensor,
} from '../lib/index.js';
import { codeOf, expectClose, flat } from './helpers.js';
import { mulberry32 } from './reference64.js';
import { sigmoidPairLoss64, sigmoidPairLossValue64 } from './reference64-extra.js';

const available = backends().filter((b) => b.available && b.name !== 'cuda').map((b) => b.name) as BackendName[];
const initial = getBackend();
afterAll(() => setBackend(initial));

function rows(rng: () => number, n: number, d: number, scale: number): number[][] {
  return Array.from({ length: n }, () => Array.from({ length: d }, () => (rng() * 2 - 1) * scale));
}
const f32Rows = (r: number[][]) => r.map((row) => row.map(Math.fround));
const asTensor = (r: number[][]): Tensor => tensor(Float32Array.from(r.flat()), [r.length, r[0]!.length]);
const values = (t: Tensor | undefined): number[] => Array.from(t!.data as Float32Array);
const bf16Bits = (v: number) => new Uint16Array(new Float32Array([v]).buffer)[1]!; // truncation: exact in bf16
const bf16Value = (b: number) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]!;

// The option matrix: SigLIP's initialization (t = 10, b = −10), a plain one, a negative bias
// with an upstream gradient, and logits large enough to saturate σ.
const OPTIONS = [
  { temperature: 10, bias: -10 },
  { temperature: 1, bias: 0 },
  { temperature: 2.5, bias: -3, gradScale: 0.7 },
  { temperature: 40, bias: 5 },
];

// N = 37 crosses the CUDA kernel's 32-row tiles and the reference's 64-row chunks are tested below.
const [N, D] = [37, 19];

describe.each(available)('sigmoidPairLoss on %s', (name) => {
  it.each(OPTIONS)('equals the float64 reference: %o', (o) => {
    setBackend(name);
    const rng = mulberry32(11);
    const x = f32Rows(rows(rng, N, D, 0.5));
    const y = f32Rows(rows(rng, N, D, 0.5));
    const got = sigmoidPairLoss(asTensor(x), asTensor(y), o);
    const want = sigmoidPairLoss64(x, y, o.temperature, o.bias);
    const g = o.gradScale ?? 1;
    expect(Math.abs(got.loss - want.loss)).toBeLessThan(2e-6 * Math.max(1, Math.abs(want.loss)));
    expectClose(values(got.dX), flat(want.dX).map((v) => v * g), { rtol: 2e-5, atol: 2e-7 * o.temperature, label: 'dX' });
    expectClose(values(got.dY), flat(want.dY).map((v) => v * g), { rtol: 2e-5, atol: 2e-7 * o.temperature, label: 'dY' });
    expect(Math.abs(got.dTemperature! - g * want.dTemperature)).toBeLessThan(1e-5 * Math.max(1, Math.abs(want.dTemperature)));
    expect(Math.abs(got.dBias! - g * want.dBias)).toBeLessThan(1e-5 * Math.max(1, Math.abs(want.dBias)));
  });

  it('gradients equal central finite differences of its own loss', () => {
    setBackend(name);
    const rng = mulberry32(5);
    const [n, d] = [7, 5];
    const x = f32Rows(rows(rng, n, d, 1));
    const y = f32Rows(rows(rng, n, d, 1));
    const o = { temperature: 3, bias: -2 };
    const r = sigmoidPairLoss(asTensor(x), asTensor(y), o);
    const h = 1e-2;
    const lossAt = (xx: number[][], yy: number[][], t: number, b: number) =>
      sigmoidPairLoss(asTensor(xx), asTensor(yy), { temperature: t, bias: b, computeGrad: false }).loss;
    const fd = (f: (s: number) => number) => (f(h) - f(-h)) / (2 * h);
    const bump = (m: number[][], i: number, k: number, s: number) => m.map((row, a) => row.map((v, c) => (a === i && c === k ? v + s : v)));
    for (const [i, k] of [[0, 0], [3, 2], [6, 4]] as const) {
      const gx = fd((s) => lossAt(bump(x, i, k, s), y, o.temperature, o.bias));
      const gy = fd((s) => lossAt(x, bump(y, i, k, s), o.temperature, o.bias));
      expect(Math.abs(r.dX!.data[i * d + k]! - gx)).toBeLessThan(2e-3 * Math.max(1, Math.abs(gx)));
      expect(Math.abs(r.dY!.data[i * d + k]! - gy)).toBeLessThan(2e-3 * Math.max(1, Math.abs(gy)));
    }
    const gt = fd((s) => lossAt(x, y, o.temperature + s, o.bias));
    const gb = fd((s) => lossAt(x, y, o.temperature, o.bias + s));
    expect(Math.abs(r.dTemperature! - gt)).toBeLessThan(2e-3 * Math.max(1, Math.abs(gt)));
    expect(Math.abs(r.dBias! - gb)).toBeLessThan(2e-3 * Math.max(1, Math.abs(gb)));
    // and the reference's own loss agrees with the finite-difference slope (the yardstick is sound)
    const gt64 = (sigmoidPairLossValue64(x, y, 3 + 1e-5, -2) - sigmoidPairLossValue64(x, y, 3 - 1e-5, -2)) / 2e-5;
    expect(Math.abs(gt64 - sigmoidPairLoss64(x, y, 3, -2).dTemperature)).toBeLessThan(1e-6);
  });

  it('bf16 inputs: results in bf16 within bf16 rounding of the reference', () => {
    setBackend(name);
    const rng = mulberry32(3);
    const xs = rows(rng, N, D, 0.5).map((r) => r.map((v) => bf16Value(bf16Bits(v))));
    const ys = rows(rng, N, D, 0.5).map((r) => r.map((v) => bf16Value(bf16Bits(v))));
    const bits = (m: number[][]) => tensor(Uint16Array.from(m.flat().map(bf16Bits)), [m.length, D], 'bf16');
    const got = sigmoidPairLoss(bits(xs), bits(ys), { temperature: 10, bias: -10 });
    const want = sigmoidPairLoss64(xs, ys, 10, -10);
    expect(got.dX!.dtype).toBe('bf16');
    expect(Math.abs(got.loss - want.loss)).toBeLessThan(1e-5 * Math.abs(want.loss));
    const asNumbers = (t: Tensor) => Array.from(t.data as Uint16Array, bf16Value);
    expectClose(asNumbers(got.dX!), flat(want.dX), { rtol: 1e-2, atol: 1e-4, label: 'dX' });
    expectClose(asNumbers(got.dY!), flat(want.dY), { rtol: 1e-2, atol: 1e-4, label: 'dY' });
  });

  it('many chunks of y (N = 150, small workspace) equal one chunk', () => {
    setBackend(name);
    const rng = mulberry32(8);
    const x = asTensor(rows(rng, 150, 6, 1));
    const y = asTensor(rows(rng, 150, 6, 1));
    const whole = sigmoidPairLoss(x, y, { temperature: 4, bias: -1 });
    const chunked = sigmoidPairLoss(x, y, { temperature: 4, bias: -1, workspaceBytes: 150 * 4 * 20 });
    expect(Math.abs(whole.loss - chunked.loss)).toBeLessThan(1e-6 * Math.abs(whole.loss));
    expectClose(values(chunked.dX), values(whole.dX), { rtol: 1e-5, atol: 1e-7 });
    expectClose(values(chunked.dY), values(whole.dY), { rtol: 1e-5, atol: 1e-7 });
  });

  it('the async twin equals the sync call', async () => {
    setBackend(name);
    const rng = mulberry32(4);
    const x = asTensor(rows(rng, 9, 4, 1));
    const y = asTensor(rows(rng, 9, 4, 1));
    const a = sigmoidPairLoss(x, y, { temperature: 2, bias: -1 });
    const b = await sigmoidPairLossAsync(x, y, { temperature: 2, bias: -1 });
    expect(b.loss).toBe(a.loss);
    expect(values(b.dX)).toEqual(values(a.dX));
    expect(b.dBias).toBe(a.dBias);
  });

  it('bad input: typed errors naming the argument', () => {
    setBackend(name);
    const x = asTensor([[1, 2], [3, 4]]);
    expect(codeOf(() => sigmoidPairLoss(x, asTensor([[1, 2, 3], [4, 5, 6]])))).toBe('E_SHAPE'); // D differs
    expect(codeOf(() => sigmoidPairLoss(x, asTensor([[1, 2]])))).toBe('E_SHAPE'); // N differs
    expect(codeOf(() => sigmoidPairLoss(x, x, { temperature: NaN }))).toBe('E_OPTION');
    expect(codeOf(() => sigmoidPairLoss(x, x, { bias: '1' as never }))).toBe('E_OPTION');
    expect(codeOf(() => sigmoidPairLoss(x, x, { reduction: 'sum' } as never))).toBe('E_OPTION');
    expect(codeOf(() => sigmoidPairLoss(x, { data: [1, 2], shape: [1, 2] } as never))).toBe('E_DTYPE');
    expect(codeOf(() => sigmoidPairLoss(x, x, { yParallel: { communicator: {}, yStart: 0 } } as never))).toBe('E_OPTION');
  });
});

const emu = backends().find((b) => b.name === 'cuda-emu')!;
describe.skipIf(!emu.available)('sigmoidPairLoss on cuda-emu DeviceTensors', () => {
  it('device inputs give device gradients equal to the host call', () => {
    setBackend('js');
    const rng = mulberry32(21);
    const x = asTensor(rows(rng, 33, 8, 1));
    const y = asTensor(rows(rng, 33, 8, 1));
    const host = sigmoidPairLoss(x, y, { temperature: 5, bias: -4 });
    const xd = upload(x, { backend: 'cuda-emu' });
    const yd = upload(y, { backend: 'cuda-emu' });
    const dev = sigmoidPairLoss(xd, yd, { temperature: 5, bias: -4 });
    expect(Math.abs(dev.loss - host.loss)).toBeLessThan(1e-6 * Math.abs(host.loss));
    expectClose(values(download(dev.dX!)), values(host.dX), { rtol: 1e-5, atol: 1e-7 });
    expectClose(values(download(dev.dY!)), values(host.dY), { rtol: 1e-5, atol: 1e-7 });
    for (const t of [xd, yd, dev.dX!, dev.dY!]) t.dispose();
    expect(codeOf(() => sigmoidPairLoss(xd, yd))).toBe('E_DISPOSED');
  });
});
