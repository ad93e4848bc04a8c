// The unit rows of margin softmax in native code (src/cpu/unit_rows.cc) against a float64
// re-computation from F.normalize's definition and against lib/cosine.ts's TypeScript: the
// normalization and the way back, f32 and bf16, zero and sub-eps rows (the eps branch), rows of
// 1e19 (squares past f32's range), more rows than one thread's share, dx written over g, and bad
// lengths.
import { afterAll, describe, expect, it } from 'vitest';
import * as lib from '../lib/index.js';
import { backThroughUnitRows, nativeBackThroughUnitRows, nativeUnitRows, unitRows } from '../lib/cosine.js';
import { fromF32, toF32, type Matrix } from '../lib/tensor.js';
import { codeOf } from './helpers.js';
import { mulberry32 } from './reference64.js';

const EPS = 1e-12;
const hasCpu = lib.backends().some((b) => b.name === 'cpu' && b.available);
const initial = lib.getBackend();
afterAll(() => lib.setBackend(initial));

function matrix(values: Float32Array, rows: number, cols: number, dtype: 'f32' | 'bf16'): Matrix {
  return { data: fromF32(values, dtype), rows, cols, dtype, shape: [rows, cols] };
}

/** Rows of random values, then a zero row, a row below eps, and a row of ±1e19. */
function inputs(seed: number, rows: number, cols: number): Float32Array {
  const rng = mulberry32(seed);
  const x = Float32Array.from({ length: rows * cols }, () => (rng() * 2 - 1) * 3);
  const last = (k: number) => x.subarray((rows - k) * cols, (rows - k + 1) * cols);
  last(3).fill(0);
  last(2).forEach((_, j, r) => (r[j] = (j % 2 ? -1 : 1) * 1e-14));
  last(1).forEach((_, j, r) => (r[j] = (j % 3 ? 1 : -1) * 1e19));
  return x;
}

/** F.normalize(x)·scale and ‖x‖ in float64, from x's values as stored. */
function reference(m: Matrix, scale: number): { y: number[]; norms: number[] } {
  const x = toF32(m);
  const y: number[] = [];
  const norms: number[] = [];
  for (let i = 0; i < m.rows; i++) {
    const row = Array.from(x.subarray(i * m.cols, (i + 1) * m.cols));
    const norm = Math.sqrt(row.reduce((s, v) => s + v * v, 0));
    norms.push(norm);
    for (const v of row) y.push((scale * v) / Math.max(norm, EPS));
  }
  return { y, norms };
}

/** dL/dx for y = scale·x/max(‖x‖, eps) in float64: scale·(g − ŷ(ŷ·g))/‖x‖, or scale·g/eps. */
function referenceBack(m: Matrix, scale: number, g: Float32Array): number[] {
  const x = toF32(m);
  const out: number[] = [];
  for (let i = 0; i < m.rows; i++) {
    const row = Array.from(x.subarray(i * m.cols, (i + 1) * m.cols));
    const gr = Array.from(g.subarray(i * m.cols, (i + 1) * m.cols));
    const norm = Math.sqrt(row.reduce((s, v) => s + v * v, 0));
    if (norm < EPS) {
      for (const v of gr) out.push((scale * v) / EPS);
      continue;
    }
    const dot = row.reduce((s, v, k) => s + (v / norm) * gr[k]!, 0);
    for (let k = 0; k < row.length; k++) out.push((scale * (gr[k]! - (row[k]! / norm) * dot)) / norm);
  }
  return out;
}

/** Each element within f32 rounding of the float64 value (plus its row's scale times 1e-12 for cancellation). */
function expectF32Close(actual: ArrayLike<number>, expected: ArrayLike<number>, cols: number, label: string): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i += cols) {
    let rowMax = 0;
    for (let k = i; k < i + cols; k++) rowMax = Math.max(rowMax, Math.abs(expected[k]!));
    for (let k = i; k < i + cols; k++) {
      const err = Math.abs(actual[k]! - expected[k]!);
      if (!(err <= 2 ** -23 * Math.abs(expected[k]!) + 1e-12 * rowMax)) {
        expect.fail(`${label}[${k}] = ${actual[k]}, float64 gives ${expected[k]}`);
      }
    }
  }
}

describe.skipIf(!hasCpu)('unit rows in native code (src/cpu/unit_rows.cc)', () => {
  const cases: [rows: number, cols: number, dtype: 'f32' | 'bf16', gDtype: 'f32' | 'bf16'][] = [
    [9, 37, 'f32', 'f32'],
    [9, 37, 'bf16', 'bf16'],
    [8, 64, 'bf16', 'f32'],
    [300, 512, 'f32', 'f32'], // more rows than one piece of the thread pool
  ];
  for (const [rows, cols, dtype, gDtype] of cases) {
    it(`[${rows}, ${cols}] ${dtype}, gradient ${gDtype}: equal to float64 and to the TypeScript`, () => {
      lib.setBackend('cpu');
      const scale = 16;
      const m = matrix(inputs(rows * cols, rows, cols), rows, cols, dtype);
      const native = nativeUnitRows(m, scale)!;
      expect(native).not.toBeNull();
      const ts = unitRows(m, scale);
      const r = reference(m, scale);
      expectF32Close(native.rows, r.y, cols, 'native rows');
      expectF32Close(ts.rows, r.y, cols, 'TypeScript rows');
      for (let i = 0; i < rows; i++) expect(native.norms[i]).toBeCloseTo(r.norms[i]!, 12 - Math.log10(Math.max(r.norms[i]!, 1)));
      expect(native.norms[rows - 1]).toBeGreaterThan(1e19); // f32 squares would have overflowed
      expect(Array.from(native.rows.subarray((rows - 3) * cols, (rows - 2) * cols))).toEqual(new Array(cols).fill(0));

      const rng = mulberry32(7);
      const g = matrix(Float32Array.from({ length: rows * cols }, () => rng() * 2 - 1), rows, cols, gDtype);
      const gValues = toF32(g);
      const back = referenceBack(m, scale, gValues);
      expectF32Close(nativeBackThroughUnitRows(m, native.norms, scale, g)!, back, cols, 'native dx');
      expectF32Close(backThroughUnitRows(m, ts.norms, scale, gValues), back, cols, 'TypeScript dx');
      if (gDtype === 'f32') { // in place: dx overwrites g's array
        const own = { ...g, data: Float32Array.from(gValues) };
        const dx = nativeBackThroughUnitRows(m, native.norms, scale, own, true)!;
        expect(dx).toBe(own.data);
        expectF32Close(dx, back, cols, 'native dx in place');
      }
    });
  }

  it('checks lengths (E_SHAPE, no crash), and stays out of the js backend', () => {
    lib.setBackend('cpu');
    const m = matrix(inputs(1, 4, 8), 4, 8, 'f32');
    const { norms } = nativeUnitRows(m, 1)!;
    const g = matrix(new Float32Array(32), 4, 8, 'f32');
    expect(codeOf(() => nativeBackThroughUnitRows(m, norms.subarray(0, 3), 1, g))).toBe('E_SHAPE');
    expect(codeOf(() => nativeBackThroughUnitRows(m, norms, 1, { ...g, data: new Float32Array(31) }))).toBe('E_SHAPE');
    expect(codeOf(() => nativeUnitRows({ ...m, data: new Float32Array(31) }, 1))).toBe('E_SHAPE');
    lib.setBackend('js');
    expect(nativeUnitRows(m, 1)).toBeNull();
  });
});
