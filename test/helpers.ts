// Helpers shared by the suites: flatten nested rows, assert closeness with a tolerance
// relative to the magnitude of the expected values, read a CutlossError's code, and run a
// program against the built package in another process.
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'vitest';
import { CutlossError } from '../lib/index.js';

export function flat(x: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>): number[] {
  const out: number[] = [];
  for (let i = 0; i < x.length; i++) {
    const v = (x as ArrayLike<unknown>)[i];
    if (typeof v === 'number') out.push(v);
    else out.push(...Array.from(v as ArrayLike<number>));
  }
  return out;
}

/**
 * |a − e| ≤ atol + rtol·max(|e|, scale) element-wise, where scale is the largest finite |e|
 * (gradients are compared relative to their own size); NaN and ±inf must match exactly.
 */
export function expectClose(
  actual: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>,
  expected: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>,
  { rtol = 1e-5, atol = 1e-7, label = '', storedAsF32 = false } = {},
): void {
  const a = flat(actual);
  // results stored in f32 overflow to ±inf where float64 does not
  const e = storedAsF32 ? flat(expected).map(Math.fround) : flat(expected);
  expect(a.length, `${label}: length`).toBe(e.length);
  let scale = 0;
  for (const v of e) if (Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
  for (let i = 0; i < e.length; i++) {
    const [ai, ei] = [a[i]!, e[i]!];
    if (!Number.isFinite(ei)) {
      expect(ai, `${label}[${i}]`).toBe(ei);
      continue;
    }
    const tol = atol + rtol * Math.max(Math.abs(ei), scale);
    if (!(Math.abs(ai - ei) <= tol)) {
      throw new Error(`${label}[${i}]: got ${ai}, expected ${ei} (|diff| ${Math.abs(ai - ei)} > tol ${tol})`);
    }
  }
}

/** Rows of n values drawn as multiples of 2^-12 in (−range, range): exact in f32 and bf16-free. */
export function gridRows(rng: () => number, rows: number, cols: number, range = 4): number[][] {
  return Array.from({ length: rows }, () =>
    Array.from({ length: cols }, () => Math.round((rng() * 2 - 1) * range * 4096) / 4096),
  );
}

/** A loss as a list: one number for a reduced loss, one per row otherwise. */
export const lossList = (l: number | ArrayLike<number>): number[] => (typeof l === 'number' ? [l] : Array.from(l));

interface LinearCeGot {
  loss: number | ArrayLike<number>;
  lse?: ArrayLike<number>;
  dEmbeddings?: { data: ArrayLike<number> };
  dClassifier?: { data: ArrayLike<number> };
  dBias?: ArrayLike<number>;
}
interface LinearCeWant {
  loss: number | ArrayLike<number>;
  lse: ArrayLike<number>;
  dE: ReadonlyArray<ArrayLike<number>>;
  dW: ReadonlyArray<ArrayLike<number>>;
  dBias?: ArrayLike<number>;
}

/**
 * linearCrossEntropy's result against the float64 reference's: loss and lse to 1e-6, the
 * gradients to 1e-5 (relative to their size), and a dBias exactly when a bias was given.
 */
export function expectLinearCeClose(got: LinearCeGot, want: LinearCeWant, withBias: boolean, label = ''): void {
  const at = (what: string) => (label ? `${label} ${what}` : what);
  expectClose(lossList(got.loss), lossList(want.loss), { rtol: 1e-6, label: at('loss') });
  expectClose(got.lse!, want.lse, { rtol: 1e-6, label: at('lse') });
  expectClose(got.dEmbeddings!.data, want.dE, { rtol: 1e-5, label: at('dE') });
  expectClose(got.dClassifier!.data, want.dW, { rtol: 1e-5, label: at('dW') });
  if (withBias) expectClose(got.dBias!, want.dBias!, { rtol: 1e-5, label: at('dBias') });
  else expect(got.dBias, at('dBias')).toBeUndefined();
}

/** The code of the CutlossError that fn throws (anything else fails the test). */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CutlossError);
    return (e as CutlossError).code;
  }
  throw new Error('expected a CutlossError, nothing was thrown');
}

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));
/** The built package's ESM entry (npm test builds it), for code run in other processes. */
export const distEntry = pathToFileURL(`${repoRoot}/dist/esm/index.js`).href;

/**
 * Runs a module program against the built package in a fresh process, with the package as `m`,
 * `handle` parsed from JSON and `code(fn)` giving what fn throws; returns the JSON it prints.
 */
export function inPackageChild(program: string, handle: unknown): Record<string, unknown> {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
    import * as m from ${JSON.stringify(distEntry)};
    const handle = JSON.parse(process.env.CUTLOSS_TEST_HANDLE);
    const code = (fn) => { try { fn(); return 'none'; } catch (e) { return e.code ?? String(e); } };
    ${program}`], { cwd: repoRoot, encoding: 'utf8', env: { ...process.env, CUTLOSS_TEST_HANDLE: JSON.stringify(handle) } });
  return JSON.parse(out.trim()) as Record<string, unknown>;
}
