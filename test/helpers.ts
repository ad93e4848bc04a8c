// Helpers shared by the suites: flatten nested rows, assert closeness with per-element
// tolerances (the dtype's rounding and the row's scale), read a CutlossError's code, and run a
// program against the built package in another process.
import { execFileSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'vitest';
import { CutlossError, tensor, type Tensor } from '../lib/index.js';

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
 * How far a result may sit from its expected value, per element i:
 *   |a_i − e_i| ≤ atol + rtol·|e_i| + rowTol·rowScale_i
 * where rowScale_i is the largest finite |e| in element i's row (rows come from `cols`, or
 * from the nesting of `expected`; a flat list without `cols` is one row). rtol covers the
 * rounding of the element itself, rowTol the fp32 error of the row's sums that the element
 * inherits (cancellation in a gradient), atol the denormal floor. Without rowTol, rtol serves for
 * both and the whole tensor is one row (the looser judgement of older call sites); the presets
 * below set each from the dtype.
 */
export interface Tolerance {
  rtol?: number;
  rowTol?: number;
  atol?: number;
}

/** Unit roundoff: the largest relative error of one rounding into the dtype. */
export const UNIT_ROUNDOFF = { f32: 2 ** -24, bf16: 2 ** -8 } as const;

/**
 * The tolerance of a row-wise result or gradient stored in `dtype`, per element: its rounding
 * into the dtype (once against the float64 reference; twice against another backend's result,
 * which may round the other way) on top of fp32 error, which is relative to the element
 * (exp, log) and to the row's scale (its sums); for gradients an absolute floor of a few fp32
 * ulps of the upstream gradient (`dyScale`), as dy_k − Σ dy·y cancels far below its inputs.
 */
export function tolerance(dtype: 'f32' | 'bf16', kind: 'value' | 'grad' = 'value',
  { against = 'reference', dyScale = 1 }: { against?: 'reference' | 'rounded'; dyScale?: number } = {}): Required<Tolerance> {
  const fp32 = 64 * UNIT_ROUNDOFF.f32;
  const rtol = dtype === 'f32' ? fp32 : (against === 'reference' ? 1 : 2) * UNIT_ROUNDOFF.bf16 + fp32;
  if (kind === 'value') return { rtol, rowTol: 16 * UNIT_ROUNDOFF.f32, atol: 1e-30 };
  return { rtol, rowTol: 64 * UNIT_ROUNDOFF.f32, atol: 16 * UNIT_ROUNDOFF.f32 * dyScale };
}

/**
 * One tolerance for losses and lse on every backend: they are fp32 whatever the input dtype;
 * relative to the value, plus |lse|·ε-type error through `atol` where logits are huge.
 */
export const LOSS_TOL: Required<Tolerance> = { rtol: 1e-6, rowTol: 0, atol: 1e-7 };

/**
 * Sums of products (GEMMs, dEmbeddings, dClassifier): fp32 error grows with Σ|a·b|, not with the
 * result, so beside 1e-5 of the element it is bounded by a few ulps of the row's scale. Different
 * BLAS kernels (AVX-512 or not) sum in different orders, which this covers.
 */
export const PRODUCT_TOL: Required<Tolerance> = { rtol: 1e-5, rowTol: 2e-6, atol: 1e-7 };

/** NaN and ±inf must match exactly; finite values within the Tolerance above. */
export function expectClose(
  actual: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>,
  expected: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>,
  options: Tolerance & { cols?: number; label?: string; storedAsF32?: boolean } = {},
): void {
  const { rtol = 1e-5, atol = 1e-7, cols = 0, label = '', storedAsF32 = false } = options;
  // without a rowTol of its own the scale is the whole tensor's, as callers written for that expect
  const perRow = options.rowTol !== undefined;
  const rowTol = options.rowTol ?? rtol;
  const a = flat(actual);
  // results stored in f32 overflow to ±inf where float64 does not
  const e = storedAsF32 ? flat(expected).map(Math.fround) : flat(expected);
  expect(a.length, `${label}: length`).toBe(e.length);
  const rowStarts = perRow ? rowBounds(expected, e.length, cols) : [0, e.length];
  for (let r = 0; r + 1 < rowStarts.length; r++) {
    const [start, end] = [rowStarts[r]!, rowStarts[r + 1]!];
    let rowScale = 0;
    for (let i = start; i < end; i++) if (Number.isFinite(e[i]!)) rowScale = Math.max(rowScale, Math.abs(e[i]!));
    for (let i = start; i < end; i++) {
      const [ai, ei] = [a[i]!, e[i]!];
      if (!Number.isFinite(ei)) {
        expect(ai, `${label}[${i}]`).toBe(ei);
        continue;
      }
      const tol = atol + rtol * Math.abs(ei) + rowTol * rowScale;
      if (!(Math.abs(ai - ei) <= tol)) {
        throw new Error(`${label}[${i}]: got ${ai}, expected ${ei} (|diff| ${Math.abs(ai - ei)} > tol ${tol}; row scale ${rowScale})`);
      }
    }
  }
}

/** Flat start offsets of the rows of `expected`, plus its length. */
function rowBounds(expected: ArrayLike<number> | ReadonlyArray<ArrayLike<number>>, length: number, cols: number): number[] {
  if (cols > 0) return Array.from({ length: Math.ceil(length / cols) + 1 }, (_, r) => Math.min(r * cols, length));
  const starts = [0];
  if (expected.length > 0 && typeof (expected as ArrayLike<unknown>)[0] !== 'number') {
    for (let r = 0; r < expected.length; r++) starts.push(starts[r]! + ((expected as ArrayLike<ArrayLike<number>>)[r]!).length);
    return starts;
  }
  return [0, length];
}

/** Rows of n values drawn as multiples of 2^-12 in (−range, range): exact in f32 and bf16-free. */
export function gridRows(rng: () => number, rows: number, cols: number, range = 4): number[][] {
  return Array.from({ length: rows }, () =>
    Array.from({ length: cols }, () => Math.round((rng() * 2 - 1) * range * 4096) / 4096),
  );
}

/** Rows of uniform values in (−scale, scale), each rounded to f32. */
export function f32Rows(rng: () => number, n: number, d: number, scale: number): number[][] {
  return Array.from({ length: n }, () => Array.from({ length: d }, () => Math.fround((rng() * 2 - 1) * scale)));
}

/** A host f32 tensor [rows, cols] of those rows. */
export const rowsTensor = (r: number[][]): Tensor => tensor(Float32Array.from(r.flat()), [r.length, r[0]!.length]);

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
  expectClose(got.dEmbeddings!.data, want.dE, { ...PRODUCT_TOL, label: at('dE') });
  expectClose(got.dClassifier!.data, want.dW, { ...PRODUCT_TOL, label: at('dW') });
  if (withBias) expectClose(got.dBias!, want.dBias!, { ...PRODUCT_TOL, label: at('dBias') });
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
