// Row-wise ops and their vector-Jacobian products against the float64 re-computation
// (test/reference64.ts) and finite differences, on odd shapes and edge values, f32 and bf16.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { setBackend, tensor, type Tensor } from '../lib/index.js';
import { expectClose, gridRows } from './helpers.js';
import * as ref from './reference64.js';
import { OPS, SHAPES } from './cases.js';

// The reference backend's suite (float64 inside, which the finite differences need); the cpu
// backend runs the same matrix in test/native/cpu.test.ts.
beforeAll(() => setBackend('js'));
afterAll(() => setBackend('auto'));

const asRows = (t: Tensor, rows: number, cols: number) => ref.toF64Rows(t.data, rows, cols);

describe('forward and backward match the float64 re-computation', () => {
  for (const [name, fwd, bwd, refFwd, refBwd] of OPS) {
    for (const [rows, cols] of SHAPES) {
      it(`${name} [${rows}, ${cols}]`, () => {
        const rng = ref.mulberry32(rows * 1000 + cols);
        const x = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 3)), [rows, cols]);
        const dy = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 1)), [rows, cols]);
        const X = asRows(x, rows, cols);
        const y = fwd(x);
        expect(y.shape).toEqual([rows, cols]);
        expectClose(y.data, refFwd(X), { rtol: 1e-6, atol: 1e-7, label: 'y' });
        expectClose(bwd(x, dy).data, refBwd(X, asRows(dy, rows, cols)), { rtol: 1e-5, atol: 1e-7, label: 'dx' });
      });
    }
  }
  it('logSumExp, and 1-D tensors as one row', () => {
    const rng = ref.mulberry32(4);
    const X = ref.randomRows(rng, 4, 19, 5);
    const x = tensor(ref.rowsToF32(X), [4, 19]);
    expectClose(lib.logSumExp(x), ref.logSumExp(asRows(x, 4, 19)), { rtol: 1e-6 });
    const one = tensor(ref.rowsToF32([X[0]!]), [19]);
    expect(lib.softmax(one).shape).toEqual([19]);
    expectClose(lib.logSumExp(one), ref.logSumExp(asRows(one, 1, 19)), { rtol: 1e-6 });
  });
});

describe('temperature and masks', () => {
  const rng = ref.mulberry32(77);
  const [rows, cols] = [4, 11];
  const x = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 2)), [rows, cols]);
  const dy = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 1)), [rows, cols]);
  const X = asRows(x, rows, cols);
  const DY = asRows(dy, rows, cols);
  const perRow = Uint8Array.from({ length: rows * cols }, (_, i) => ((i * 5) % 7 === 0 ? 0 : 1));
  perRow.fill(0, 2 * cols, 3 * cols); // row 2 fully masked
  const shared = Uint8Array.from({ length: cols }, (_, j) => (j % 3 === 1 ? 0 : 1));
  const cases: [string, lib.SoftmaxOptions][] = [
    ['temperature 0.5', { temperature: 0.5 }],
    ['temperature 3', { temperature: 3 }],
    ['per-row mask with a fully masked row', { mask: perRow }],
    ['shared mask + temperature', { mask: shared, temperature: 1.7 }],
  ];
  for (const [name, o] of cases) {
    it(name, () => {
      const r = { temperature: o.temperature, mask: o.mask };
      expectClose(lib.logSumExp(x, o), ref.logSumExp(X, r), { rtol: 1e-6, label: 'lse' });
      expectClose(lib.softmax(x, o).data, ref.softmax(X, r), { rtol: 1e-6, label: 'softmax' });
      expectClose(lib.logSoftmax(x, o).data, ref.logSoftmax(X, r), { rtol: 1e-6, label: 'logSoftmax' });
      expectClose(lib.softmaxBackward(x, dy, o).data, ref.softmaxBackward(X, DY, r), { rtol: 1e-5, label: 'softmax dx' });
      expectClose(lib.logSoftmaxBackward(x, dy, o).data, ref.logSoftmaxBackward(X, DY, r), { rtol: 1e-5, label: 'logSoftmax dx' });
    });
  }
  it('a fully masked row: lse −inf, softmax NaN (as PyTorch)', () => {
    const t = tensor(new Float32Array([1, 2, 3]), [1, 3]);
    const mask = new Uint8Array(3);
    expect(lib.logSumExp(t, { mask })[0]).toBe(-Infinity);
    expect(Array.from(lib.softmax(t, { mask }).data).every(Number.isNaN)).toBe(true);
    expect(Array.from(lib.logSoftmax(t, { mask }).data).every(Number.isNaN)).toBe(true);
  });
  it('-inf entries behave like masked ones', () => {
    const a = lib.softmax(tensor(new Float32Array([1, -Infinity, 3]), [3])).data;
    const b = lib.softmax(tensor(new Float32Array([1, 0, 3]), [3]), { mask: new Uint8Array([1, 0, 1]) }).data;
    expect(Array.from(a)).toEqual(Array.from(b));
  });
});

describe('VJPs match central finite differences (float64 probes)', () => {
  // f(x) = Σ dy ⊙ op(x); inputs on a 2^-12 grid, step 2^-9 (exact in f32). Outputs are f32,
  // so the quotient carries ~2^-24·|f|/h of rounding: the tolerance allows for it.
  const h = 2 ** -9;
  for (const [name, fwd, bwd] of OPS) {
    it(name, () => {
      const rng = ref.mulberry32(name.length);
      const [rows, cols] = [2, 9];
      const data = ref.rowsToF32(gridRows(rng, rows, cols, 2));
      const dyData = ref.rowsToF32(gridRows(rng, rows, cols, 1));
      const dy = tensor(dyData, [rows, cols]);
      const f = (d: Float32Array) => {
        const y = fwd(tensor(d, [rows, cols])).data;
        let s = 0;
        for (let i = 0; i < y.length; i++) s += dyData[i]! * y[i]!;
        return s;
      };
      const dx = bwd(tensor(data, [rows, cols]), dy).data;
      for (let i = 0; i < data.length; i++) {
        const p = data.slice();
        const m = data.slice();
        p[i] += h;
        m[i] -= h;
        const fd = (f(p) - f(m)) / (2 * h);
        expect(Math.abs(fd - dx[i]!), `${name} element ${i}: fd ${fd}, vjp ${dx[i]}`).toBeLessThan(2e-3 + 1e-2 * Math.abs(fd));
      }
    });
  }
});

describe('edge values', () => {
  const rows: [string, number[]][] = [
    ['±1e4', [1e4, -1e4, 0, 1e4 - 2]],
    ['±3e38', [3e38, -3e38, 0, 1]],
    ['equal entries', [0.5, 0.5, 0.5, 0.5]],
  ];
  for (const [name, r] of rows) {
    it(name, () => {
      const x = tensor(Float32Array.from(r), [1, 4]);
      const X = asRows(x, 1, 4);
      const dy = tensor(Float32Array.from([0.3, -1, 2, 0.5]), [1, 4]);
      for (const [op, fwd, bwd, refFwd, refBwd] of OPS) {
        expectClose(fwd(x).data, refFwd(X), { rtol: 1e-6, label: `${name} ${op}`, storedAsF32: true });
        expectClose(bwd(x, dy).data, refBwd(X, asRows(dy, 1, 4)), { rtol: 1e-5, label: `${name} ${op} dx` });
      }
      expectClose(lib.logSumExp(x), ref.logSumExp(X), { rtol: 1e-6 });
    });
  }
  it('NaN propagates to its row only, and never throws', () => {
    const x = tensor(Float32Array.from([NaN, 1, 2, 0, 1, 2]), [2, 3]);
    for (const [, fwd] of OPS) {
      const y = fwd(x).data;
      expect(Array.from(y.subarray(0, 3)).some(Number.isNaN)).toBe(true);
      expect(Array.from(y.subarray(3)).every(Number.isFinite)).toBe(true);
    }
    expect(lib.logSumExp(x)[0]).toBeNaN();
    for (const hard of [false, true]) {
      const g = lib.gumbelSoftmax(x, { seed: 3, hard }).data;
      expect(Array.from(g.subarray(0, 3)).every(Number.isNaN)).toBe(true);
      expect(Array.from(g.subarray(3)).every(Number.isFinite)).toBe(true);
    }
  });
});

describe('gumbelSoftmax', () => {
  const rng = ref.mulberry32(9);
  const [rows, cols] = [6, 13];
  const x = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 1)), [rows, cols]);
  const X = asRows(x, rows, cols);
  it('matches the reference sampler (Philox noise) for the same seed', () => {
    for (const seed of [0, 1, 2 ** 32 + 5, 2 ** 53 - 1]) {
      for (const tau of [0.5, 1, 2]) {
        expectClose(lib.gumbelSoftmax(x, { seed, tau }).data, ref.gumbelSoftmax(X, { seed, tau }), { rtol: 1e-6, atol: 1e-7 });
      }
    }
  });
  it('hard samples are the one-hot argmax of the soft ones', () => {
    const soft = lib.gumbelSoftmax(x, { seed: 42, tau: 0.7 }).data;
    const hard = lib.gumbelSoftmax(x, { seed: 42, tau: 0.7, hard: true }).data;
    for (let r = 0; r < rows; r++) {
      const row = Array.from(soft.subarray(r * cols, (r + 1) * cols));
      const arg = row.indexOf(Math.max(...row));
      expect(Array.from(hard.subarray(r * cols, (r + 1) * cols))).toEqual(row.map((_, j) => (j === arg ? 1 : 0)));
    }
  });
  it('different seeds differ; a missing seed draws a fresh one', () => {
    const a = lib.gumbelSoftmax(x, { seed: 1 }).data;
    const b = lib.gumbelSoftmax(x, { seed: 2 }).data;
    expect(Array.from(a)).not.toEqual(Array.from(b));
    expect(Array.from(lib.gumbelSoftmax(x).data)).not.toEqual(Array.from(lib.gumbelSoftmax(x).data));
  });
  it('backward is the soft sample VJP, for hard samples too (straight-through)', () => {
    const dy = tensor(ref.rowsToF32(ref.randomRows(rng, rows, cols, 1)), [rows, cols]);
    const want = ref.gumbelSoftmaxBackward(X, asRows(dy, rows, cols), { seed: 7, tau: 0.8 });
    expectClose(lib.gumbelSoftmaxBackward(x, dy, { seed: 7, tau: 0.8 }).data, want, { rtol: 1e-5 });
    expectClose(lib.gumbelSoftmaxBackward(x, dy, { seed: 7, tau: 0.8, hard: true }).data, want, { rtol: 1e-5 });
  });
  it('samples categories with the softmax probabilities (Gumbel-max)', () => {
    const logits = [1, 0, -1, 0.5];
    const p = ref.softmax([logits])[0]!;
    const reps = 4000;
    const big = tensor(Float32Array.from({ length: reps * 4 }, (_, i) => logits[i % 4]!), [reps, 4]);
    const hard = lib.gumbelSoftmax(big, { seed: 123, hard: true }).data;
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < hard.length; i++) counts[i % 4] += hard[i]!;
    counts.forEach((c, j) => expect(Math.abs(c / reps - p[j]!)).toBeLessThan(4 * Math.sqrt((p[j]! * (1 - p[j]!)) / reps)));
  });
});

describe('bf16 in, bf16 out', () => {
  it('every op returns bf16 bits within bf16 rounding of the reference', () => {
    const rng = ref.mulberry32(12);
    const [rows, cols] = [3, 17];
    const bits = ref.rowsToBf16(ref.randomRows(rng, rows, cols, 2));
    const x = tensor(bits, [rows, cols], 'bf16');
    const X = ref.toF64Rows(bits, rows, cols);
    const dy = tensor(ref.rowsToBf16(ref.randomRows(rng, rows, cols, 1)), [rows, cols], 'bf16');
    for (const [name, fwd, bwd, refFwd, refBwd] of OPS) {
      const y = fwd(x);
      expect(y.dtype).toBe('bf16');
      expect(y.data).toBeInstanceOf(Uint16Array);
      const decoded = Array.from(y.data as Uint16Array, ref.bf16ToF32);
      expectClose(decoded, refFwd(X), { rtol: 2 ** -8, atol: 1e-30, label: name });
      const dx = Array.from(bwd(x, dy).data as Uint16Array, ref.bf16ToF32);
      expectClose(dx, refBwd(X, ref.toF64Rows(dy.data, rows, cols)), { rtol: 1e-2, atol: 1e-6, label: `${name} dx` });
    }
    expectClose(lib.logSumExp(x), ref.logSumExp(X), { rtol: 1e-6 });
  });
});
