// Properties that hold for any input (fast-check): normalizers land in the simplex,
// softmax is shift-invariant, StableMax is monotone, log-sum-exp merges are associative.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { entmax15, logSumExp, softmax, sparsemax, stablemax, tensor } from '../lib/index.js';
import { lseOfBlock, lseValue, mergeLse, stablemaxS } from '../lib/js/math.js';

const row = (min = -50, max = 50) =>
  fc.array(fc.float({ min, max, noNaN: true, noDefaultInfinity: true }), { minLength: 1, maxLength: 40 });
const f32 = (xs: number[]) => tensor(Float32Array.from(xs), [xs.length]);
const sum = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0);

describe('simplex properties', () => {
  it('softmax sums to 1 and is non-negative', () => {
    fc.assert(fc.property(row(-1e4, 1e4), (xs) => {
      const y = softmax(f32(xs)).data as Float32Array;
      expect(Math.abs(sum(y) - 1)).toBeLessThan(1e-5 * xs.length);
      expect(Math.min(...y)).toBeGreaterThanOrEqual(0);
    }));
  });
  it('softmax is invariant to adding a constant', () => {
    fc.assert(fc.property(row(), fc.float({ min: -100, max: 100, noNaN: true }), (xs, c) => {
      const a = softmax(f32(xs)).data;
      const b = softmax(f32(xs.map((v) => v + c))).data;
      // the shifted input is rounded to f32, which moves each logit by up to |x + c|·2^-24
      const slack = (Math.max(...xs.map(Math.abs)) + Math.abs(c)) * 2 ** -23 + 1e-6;
      for (let i = 0; i < xs.length; i++) expect(Math.abs(a[i]! - b[i]!)).toBeLessThanOrEqual(slack * 2);
    }));
  });
  for (const [name, op] of [['sparsemax', sparsemax], ['entmax15', entmax15], ['stablemax', stablemax]] as const) {
    it(`${name} lands in the simplex`, () => {
      fc.assert(fc.property(row(-1e3, 1e3), (xs) => {
        const y = op(f32(xs)).data as Float32Array;
        expect(Math.abs(sum(y) - 1)).toBeLessThan(1e-5 * Math.max(1, xs.length));
        for (const v of y) expect(v).toBeGreaterThanOrEqual(0);
      }));
    });
  }
  it('sparsemax and entmax15 keep the order of the inputs', () => {
    fc.assert(fc.property(row(), (xs) => {
      for (const op of [sparsemax, entmax15]) {
        const y = op(f32(xs)).data;
        const x = Float32Array.from(xs);
        for (let i = 0; i < xs.length; i++) {
          for (let j = 0; j < xs.length; j++) if (x[i]! > x[j]!) expect(y[i]!).toBeGreaterThanOrEqual(y[j]!);
        }
      }
    }));
  });
});

describe('StableMax', () => {
  it('s(x) is positive and strictly increasing', () => {
    fc.assert(fc.property(fc.double({ min: -1e6, max: 1e6, noNaN: true }), fc.double({ min: 1e-6, max: 10, noNaN: true }), (x, d) => {
      expect(stablemaxS(x)).toBeGreaterThan(0);
      expect(stablemaxS(x + d)).toBeGreaterThan(stablemaxS(x));
    }));
  });
  it('stablemax preserves the order of a row', () => {
    fc.assert(fc.property(row(), (xs) => {
      const y = stablemax(f32(xs)).data;
      const x = Float32Array.from(xs);
      for (let i = 1; i < xs.length; i++) if (x[i]! > x[0]!) expect(y[i]!).toBeGreaterThanOrEqual(y[0]!);
    }));
  });
});

describe('log-sum-exp merges', () => {
  const part = fc.array(fc.double({ min: -1e3, max: 1e3, noNaN: true }), { minLength: 0, maxLength: 12 });
  it('are associative and commutative, and equal the whole-row value', () => {
    fc.assert(fc.property(part, part, part, (a, b, c) => {
      const [A, B, C] = [a, b, c].map((p) => lseOfBlock(p));
      const left = lseValue(mergeLse(mergeLse(A!, B!), C!));
      const right = lseValue(mergeLse(A!, mergeLse(B!, C!)));
      const swapped = lseValue(mergeLse(C!, mergeLse(B!, A!)));
      const whole = lseValue(lseOfBlock([...a, ...b, ...c]));
      if (whole === -Infinity) {
        expect([left, right, swapped]).toEqual([-Infinity, -Infinity, -Infinity]);
        return;
      }
      const tol = 1e-12 * Math.max(1, Math.abs(whole));
      for (const v of [left, right, swapped]) expect(Math.abs(v - whole)).toBeLessThanOrEqual(tol);
    }));
  });
  it('logSumExp of a row split anywhere matches a float64 sum', () => {
    fc.assert(fc.property(row(-80, 80), (xs) => {
      const x = Float32Array.from(xs);
      const exact = Math.log(sum(Array.from(x, Math.exp)));
      expect(Math.abs(logSumExp(tensor(x, [x.length]))[0]! - exact)).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(exact)));
    }));
  });
});
