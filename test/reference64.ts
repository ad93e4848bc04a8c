/**
 * Independent float64 reference for the cutloss test suite.
 *
 * Everything is materialized straight from README "Semantics", one row at a time, in float64,
 * with no blocking and no online tricks. Gradients and VJPs never use the hand-derived
 * formulas of README "Semantics": they come from forward-mode automatic differentiation (dual
 * numbers) of the very same forward code, one pass per input element. That is slow
 * (O(V²) per row) but exact up to rounding; keep V in the hundreds.
 *
 * This file must not import anything from lib/: it is the yardstick for the code under test.
 */

export type Rows = ReadonlyArray<ArrayLike<number>>;
/** Library convention: 0 / false = masked (excluded), anything else = kept. Either one row
 * per input row, a flat array of rows·cols, or a flat array of cols shared by every row. */
export type MaskLike = ArrayLike<number | boolean> | ReadonlyArray<ArrayLike<number | boolean>>;

// ---------------------------------------------------------------------------------------
// Dual numbers: value + derivative along one input direction.
// ---------------------------------------------------------------------------------------

/** A zero tangent is a hard zero (as in JAX): constants never turn an inf into a NaN. */
const scaleTangent = (d: number, s: number): number => (d === 0 ? 0 : d * s);

export class Dual {
  constructor(
    readonly v: number,
    readonly d: number = 0,
  ) {}
  static of(x: Dual | number): Dual {
    return typeof x === 'number' ? new Dual(x) : x;
  }
  add(b: Dual | number): Dual {
    const o = Dual.of(b);
    return new Dual(this.v + o.v, this.d + o.d);
  }
  sub(b: Dual | number): Dual {
    const o = Dual.of(b);
    return new Dual(this.v - o.v, this.d - o.d);
  }
  neg(): Dual {
    return new Dual(-this.v, -this.d);
  }
  mul(b: Dual | number): Dual {
    const o = Dual.of(b);
    return new Dual(this.v * o.v, scaleTangent(this.d, o.v) + scaleTangent(o.d, this.v));
  }
  div(b: Dual | number): Dual {
    const o = Dual.of(b);
    const v = this.v / o.v;
    if (this.d === 0 && o.d === 0) return new Dual(v);
    return new Dual(v, (this.d - scaleTangent(o.d, v)) / o.v);
  }
  square(): Dual {
    return this.mul(this);
  }
  exp(): Dual {
    const e = Math.exp(this.v);
    return new Dual(e, scaleTangent(this.d, e));
  }
  log(): Dual {
    return new Dual(Math.log(this.v), this.d === 0 ? 0 : this.d / this.v);
  }
  sqrt(): Dual {
    const s = Math.sqrt(this.v);
    return new Dual(s, this.d === 0 ? 0 : this.d / (2 * s));
  }
  tanh(): Dual {
    const t = Math.tanh(this.v);
    return new Dual(t, scaleTangent(this.d, 1 - t * t));
  }
  /** x^p for a constant p; x^0 = 1 everywhere (so focalGamma = 0 is exactly F = 1). */
  pow(p: number): Dual {
    if (p === 0) return new Dual(1);
    return new Dual(this.v ** p, this.d === 0 ? 0 : this.d * p * this.v ** (p - 1));
  }
  /** max(x, 0); the kink at 0 takes derivative 0. */
  relu(): Dual {
    return this.v > 0 ? this : new Dual(0);
  }
}

export const dualSum = (xs: readonly Dual[]): Dual => xs.reduce((acc, x) => acc.add(x), new Dual(0));

const constRow = (row: ArrayLike<number>): Dual[] => Array.from(row, (v) => new Dual(v));
/** Row with tangent 1 on element k: one forward-mode pass gives ∂(everything)/∂x_k. */
const seededRow = (row: ArrayLike<number>, k: number): Dual[] =>
  Array.from(row, (v, j) => new Dual(v, j === k ? 1 : 0));
const values = (ds: readonly Dual[]): number[] => ds.map((d) => d.v);

// ---------------------------------------------------------------------------------------
// Per-row math in dual arithmetic (the single definition used for values and gradients).
// ---------------------------------------------------------------------------------------

/** log Σ_{kept j} exp(z_j); -inf when nothing is kept. The max shift m is a constant:
 * the identity lse = m + log Σ exp(z − m) holds for any m, so the derivative stays exact. */
function lseRow(z: readonly Dual[], keep?: readonly boolean[]): Dual {
  const live = z.filter((_, j) => !keep || keep[j]);
  if (live.length === 0) return new Dual(-Infinity);
  const m = Math.max(...live.map((zj) => zj.v));
  if (m === -Infinity) return new Dual(-Infinity);
  return dualSum(live.map((zj) => zj.sub(m).exp()))
    .log()
    .add(m);
}

/** z_j − lse for every j, formed as (z_j − m) − log Σ exp(z − m): at |m| ≈ 3e38 even float64
 * would round log Σ away in m + log Σ. A row whose max is ±inf (or that keeps nothing) has no
 * finite distribution and gives NaN throughout, as PyTorch's softmax. */
function logProbsRow(z: readonly Dual[], keep?: readonly boolean[]): Dual[] {
  const live = z.filter((_, j) => !keep || keep[j]);
  const m = live.length === 0 ? -Infinity : Math.max(...live.map((zj) => zj.v));
  if (!Number.isFinite(m) && !Number.isNaN(m)) return z.map(() => new Dual(NaN, NaN));
  const logSum = dualSum(live.map((zj) => zj.sub(m).exp())).log();
  return z.map((zj, j) => (!keep || keep[j] ? zj.sub(m).sub(logSum) : new Dual(-Infinity)));
}

function softmaxRowD(x: readonly Dual[], temperature: number, keep?: readonly boolean[]): Dual[] {
  const z = x.map((xj) => xj.div(temperature));
  return logProbsRow(z, keep).map((l) => l.exp());
}

function logSoftmaxRowD(x: readonly Dual[], temperature: number, keep?: readonly boolean[]): Dual[] {
  const z = x.map((xj) => xj.div(temperature));
  return logProbsRow(z, keep);
}

/** StableMax's s(x): x + 1 for x ≥ 0, 1/(1 − x) for x < 0 (Prieto et al. 2025). */
function stablemaxS(x: Dual): Dual {
  return x.v >= 0 ? x.add(1) : new Dual(1).div(new Dual(1).sub(x));
}

/** A row with +inf or only −inf has no finite distribution: NaN, as softmax. */
const noFiniteMax = (x: readonly Dual[]) => !Number.isFinite(Math.max(...x.map((xj) => xj.v)));

function stablemaxRowD(x: readonly Dual[]): Dual[] {
  if (noFiniteMax(x)) return x.map(() => new Dual(NaN, NaN));
  const s = x.map(stablemaxS);
  const S = dualSum(s);
  return s.map((sj) => sj.div(S));
}

function logStablemaxRowD(x: readonly Dual[]): Dual[] {
  if (noFiniteMax(x)) return x.map(() => new Dual(NaN, NaN));
  const s = x.map(stablemaxS);
  const logS = dualSum(s).log();
  return s.map((sj) => sj.log().sub(logS));
}

/** Sparsemax with the exact threshold (Martins & Astudillo 2016, by sorting):
 * k = max{k : 1 + k·z_(k) > Σ_{j≤k} z_(j)}, τ = (Σ_{j≤k} z_(j) − 1)/k. The support is chosen
 * on values; τ is then a smooth function of the top-k logits, so duals differentiate it. */
function sparsemaxRowD(zIn: readonly Dual[]): { p: Dual[]; tau: Dual; shift: number; support: boolean[] } {
  // +inf, NaN or only −inf: no finite distribution, NaN as softmax. Unguarded, the shift below
  // turns such a row into NaN gaps, k stays 0, τ = −inf and relu(NaN) gives p = 0.
  if (noFiniteMax(zIn)) {
    const nan = new Dual(NaN, NaN);
    return { p: zIn.map(() => nan), tau: nan, shift: NaN, support: zIn.map(() => false) };
  }
  // Shift by the max value (a constant: sparsemax is shift-invariant) so huge logits keep
  // their gaps in float64; τ is returned relative to `shift`.
  const shift = Math.max(...zIn.map((zj) => zj.v));
  const z = zIn.map((zj) => zj.sub(shift));
  const order = z.map((_, j) => j).sort((a, b) => z[b].v - z[a].v);
  let cumsum = 0;
  let k = 0;
  order.forEach((j, r) => {
    cumsum += z[j].v;
    if (1 + (r + 1) * z[j].v > cumsum) k = r + 1;
  });
  const tau = dualSum(order.slice(0, k).map((j) => z[j]))
    .sub(1)
    .div(k);
  const p = z.map((zj) => zj.sub(tau).relu());
  return { p, tau, shift, support: p.map((pj) => pj.v > 0) };
}

/** 1.5-entmax (Peters et al. 2019): p_j = max(x_j/2 − τ, 0)² with Σ p = 1. Deliberately NOT
 * the sort-based closed form: τ is found by bisection on f(τ) = Σ max(x_j/2 − τ, 0)² − 1,
 * which is decreasing, with f(max/2 − 1) ≥ 0 and f(max/2) = −1. */
function entmax15RowD(x: readonly Dual[]): Dual[] {
  const top0 = Math.max(...x.map((xj) => xj.v)); // a constant shift, for huge logits
  const h = x.map((xj) => xj.sub(top0).mul(0.5));
  const hv = values(h);
  const f = (t: number) => hv.reduce((acc, v) => acc + Math.max(v - t, 0) ** 2, 0) - 1;
  const top = Math.max(...hv);
  let lo = top - 1;
  let hi = top;
  for (;;) {
    const mid = 0.5 * (lo + hi);
    if (!(mid > lo && mid < hi)) break; // lo and hi are adjacent floats (or NaN input)
    if (f(mid) >= 0) lo = mid;
    else hi = mid;
  }
  const t0 = Math.abs(f(lo)) <= Math.abs(f(hi)) ? lo : hi;
  // One Newton step in dual arithmetic with τ0 held constant: since f(τ0) ≈ 0 this gives
  // dτ = −(∂f/∂x·dx)/(∂f/∂τ), the implicit-function derivative, and polishes the value.
  const fx = dualSum(h.map((hj) => hj.sub(t0).relu().square())).sub(1);
  const ft = dualSum(h.map((hj) => hj.sub(t0).relu())).mul(-2);
  const tau = new Dual(t0).sub(fx.div(ft));
  return h.map((hj) => hj.sub(tau).relu().square());
}

// ---------------------------------------------------------------------------------------
// Row-wise ops: forwards and VJPs.
// ---------------------------------------------------------------------------------------

export interface RowOpOptions {
  temperature?: number;
  mask?: MaskLike;
}

function checkTemperature(t: number): number {
  if (!(Number.isFinite(t) && t > 0)) throw new RangeError(`temperature must be finite and > 0, got ${t}`);
  return t;
}

function keepOfRow(mask: MaskLike | undefined, i: number, rows: number, cols: number): boolean[] | undefined {
  if (mask === undefined) return undefined;
  const isNested = mask.length > 0 && typeof mask[0] === 'object';
  let m: ArrayLike<number | boolean>;
  if (isNested) m = (mask as ReadonlyArray<ArrayLike<number | boolean>>)[i];
  else {
    const flat = mask as ArrayLike<number | boolean>;
    if (flat.length === rows * cols) m = Array.from(flat).slice(i * cols, (i + 1) * cols);
    else if (flat.length === cols) m = flat;
    else throw new RangeError(`mask length ${flat.length} is neither rows·cols nor cols`);
  }
  if (m.length !== cols) throw new RangeError(`mask row ${i} has length ${m.length}, expected ${cols}`);
  return Array.from(m, (b) => Boolean(b));
}

/** Applies a dual row function to constant rows and returns the values. */
function forwardRows(rows: Rows, fn: (x: Dual[], i: number) => Dual[]): number[][] {
  return rows.map((row, i) => values(fn(constRow(row), i)));
}

/** dx = Jᵀ·dy, column by column: pass k seeds x_k and gives J·e_k, so dx_k = dy·(J·e_k).
 * Outputs whose tangent is exactly 0 (masked, constant) contribute nothing, even if dy is not finite. */
function vjpRows(x: Rows, dy: Rows, fn: (x: Dual[], i: number) => Dual[]): number[][] {
  if (dy.length !== x.length) throw new RangeError('dy must have as many rows as x');
  return x.map((row, i) =>
    Array.from(row, (_, k) => {
      const y = fn(seededRow(row, k), i);
      let acc = 0;
      y.forEach((yj, j) => {
        if (yj.d !== 0) acc += dy[i][j] * yj.d;
      });
      return acc;
    }),
  );
}

export function logSumExp(rows: Rows, opts: RowOpOptions = {}): number[] {
  const T = checkTemperature(opts.temperature ?? 1);
  return rows.map((row, i) => {
    const z = constRow(row).map((xj) => xj.div(T));
    return lseRow(z, keepOfRow(opts.mask, i, rows.length, row.length)).v;
  });
}

const softmaxFn = (rows: Rows, opts: RowOpOptions) => {
  const T = checkTemperature(opts.temperature ?? 1);
  return (x: Dual[], i: number) => softmaxRowD(x, T, keepOfRow(opts.mask, i, rows.length, x.length));
};
const logSoftmaxFn = (rows: Rows, opts: RowOpOptions) => {
  const T = checkTemperature(opts.temperature ?? 1);
  return (x: Dual[], i: number) => logSoftmaxRowD(x, T, keepOfRow(opts.mask, i, rows.length, x.length));
};

export const softmax = (rows: Rows, opts: RowOpOptions = {}): number[][] => forwardRows(rows, softmaxFn(rows, opts));
export const logSoftmax = (rows: Rows, opts: RowOpOptions = {}): number[][] =>
  forwardRows(rows, logSoftmaxFn(rows, opts));
export const stablemax = (rows: Rows): number[][] => forwardRows(rows, stablemaxRowD);
export const logStablemax = (rows: Rows): number[][] => forwardRows(rows, logStablemaxRowD);
export const sparsemax = (rows: Rows): number[][] => forwardRows(rows, (x) => sparsemaxRowD(x).p);
export const entmax15 = (rows: Rows): number[][] => forwardRows(rows, entmax15RowD);

export const softmaxBackward = (x: Rows, dy: Rows, opts: RowOpOptions = {}): number[][] =>
  vjpRows(x, dy, softmaxFn(x, opts));
export const logSoftmaxBackward = (x: Rows, dy: Rows, opts: RowOpOptions = {}): number[][] =>
  vjpRows(x, dy, logSoftmaxFn(x, opts));
export const stablemaxBackward = (x: Rows, dy: Rows): number[][] => vjpRows(x, dy, stablemaxRowD);
export const logStablemaxBackward = (x: Rows, dy: Rows): number[][] => vjpRows(x, dy, logStablemaxRowD);
export const sparsemaxBackward = (x: Rows, dy: Rows): number[][] => vjpRows(x, dy, (r) => sparsemaxRowD(r).p);
export const entmax15Backward = (x: Rows, dy: Rows): number[][] => vjpRows(x, dy, entmax15RowD);

// ---------------------------------------------------------------------------------------
// Philox-4x32-10 and Gumbel noise. BigInt products keep this independent of Math.imul tricks.
// ---------------------------------------------------------------------------------------

const MASK32 = 0xffffffffn;
const PHILOX_M0 = 0xd2511f53n;
const PHILOX_M1 = 0xcd9e8d57n;
const PHILOX_W0 = 0x9e3779b9n; // golden ratio
const PHILOX_W1 = 0xbb67ae85n; // sqrt(3) − 1

function toU32BigInt(v: number): bigint {
  if (!(Number.isInteger(v) && v >= 0 && v <= 0xffffffff)) throw new RangeError(`not a uint32: ${v}`);
  return BigInt(v);
}

/** Philox-4x32-10 (Salmon et al. 2011, Random123): 10 rounds, key bumped between rounds. */
export function philox4x32_10(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map(toU32BigInt);
  let [k0, k1] = key.map(toU32BigInt);
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + PHILOX_W0) & MASK32;
      k1 = (k1 + PHILOX_W1) & MASK32;
    }
    const p0 = PHILOX_M0 * c0; // exact 64-bit products: (hi, lo) = (p >> 32, p & mask)
    const p1 = PHILOX_M1 * c2;
    [c0, c1, c2, c3] = [(p1 >> 32n) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32n) ^ c3 ^ k1, p0 & MASK32];
  }
  return [Number(c0), Number(c1), Number(c2), Number(c3)];
}

function checkSeed(seed: number): void {
  if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 53)) throw new RangeError(`seed must be an integer in [0, 2^53), got ${seed}`);
}

/** The uniforms u of README "Semantics": element e = row·cols + col takes word e mod 4 of
 * Philox(counter [q mod 2^32, floor(q/2^32), 0, 0], key [seed mod 2^32, floor(seed/2^32)]),
 * q = floor(e/4); u = ((word >>> 9) + 0.5)·2^-23, exact in fp32 and float64. */
export function gumbelUniforms(seed: number, rows: number, cols: number): number[][] {
  checkSeed(seed);
  const key: [number, number] = [seed % 2 ** 32, Math.floor(seed / 2 ** 32)];
  const out: number[][] = [];
  let block: number[] = [];
  let blockQ = -1;
  for (let r = 0; r < rows; r++) {
    const row: number[] = [];
    for (let c = 0; c < cols; c++) {
      const e = r * cols + c;
      const q = Math.floor(e / 4);
      if (q !== blockQ) {
        block = philox4x32_10([q % 2 ** 32, Math.floor(q / 2 ** 32), 0, 0], key);
        blockQ = q;
      }
      row.push(((block[e % 4] >>> 9) + 0.5) * 2 ** -23);
    }
    out.push(row);
  }
  return out;
}

/** g = −log(−log u), in float64. */
export function gumbelNoise(seed: number, rows: number, cols: number): number[][] {
  return gumbelUniforms(seed, rows, cols).map((row) => row.map((u) => -Math.log(-Math.log(u))));
}

export interface GumbelOptions {
  tau: number;
  hard?: boolean;
  seed: number;
}

// softmax((x + g)/τ) = softmax(((x − max) + g)/τ) for the row's largest finite x: formed so, the
// noise still decides ties at |x| ≳ 1e16, which x + g rounds away even in float64
const gumbelFn = (rows: Rows, opts: GumbelOptions) => {
  const tau = checkTemperature(opts.tau);
  const g = gumbelNoise(opts.seed, rows.length, rows.length ? rows[0].length : 0);
  return (x: Dual[], i: number) => {
    const row = Array.from(rows[i]);
    const finite = row.filter(Number.isFinite);
    const shift = finite.length > 0 && !row.some(Number.isNaN) ? Math.max(...finite) : 0;
    return softmaxRowD(x.map((xj, j) => xj.add(-shift).add(g[i][j])), tau);
  };
};

/** softmax((x + g)/tau); hard: one-hot of the first argmax. */
export function gumbelSoftmax(rows: Rows, opts: GumbelOptions): number[][] {
  const soft = forwardRows(rows, gumbelFn(rows, opts));
  if (!opts.hard) return soft;
  return soft.map((y) => {
    const arg = y.indexOf(Math.max(...y));
    return y.map((_, j) => (j === arg ? 1 : 0));
  });
}

/** Straight-through: hard or not, the backward is the soft one. */
export const gumbelSoftmaxBackward = (x: Rows, dy: Rows, opts: GumbelOptions): number[][] =>
  vjpRows(x, dy, gumbelFn(x, opts));

// ---------------------------------------------------------------------------------------
// Cross-entropy family.
// ---------------------------------------------------------------------------------------

/** 'gumbel' has its own reference, test/reference64-gumbel.ts; this one rejects it. */
export type Normalizer = 'softmax' | 'stablemax' | 'sparsemax' | 'gumbel';

export interface CeOptions {
  reduction?: 'mean' | 'sum' | 'none';
  ignoreIndex?: number;
  labelSmoothing?: number;
  classWeights?: ArrayLike<number>;
  zLoss?: number;
  /** 0 or absent: no softcap. */
  softcap?: number;
  temperature?: number;
  normalizer?: Normalizer;
  focalGamma?: number;
  polyEpsilon?: number;
  squentropy?: boolean;
  /** q > 0: C = w_t·(1 − p_t^q)/q (generalized cross-entropy), straight from its definition. */
  generalizedCE?: number;
  /** Only affects gradients: a number, or one per row for reduction 'none'. */
  gradScale?: number | ArrayLike<number>;
  // Accepted so one options object can be shared with the library; the reference ignores them.
  computeGrad?: boolean;
  returnLse?: boolean;
  filterEps?: number | 'auto';
}

interface CeResolved {
  reduction: 'mean' | 'sum' | 'none';
  ignoreIndex: number;
  alpha: number;
  weights: number[] | undefined;
  zLoss: number;
  softcap: number;
  temperature: number;
  normalizer: Normalizer;
  gamma: number;
  eps: number;
  sigma: number;
  q: number;
}

function resolveCe(o: CeOptions, V: number): CeResolved {
  const r: CeResolved = {
    reduction: o.reduction ?? 'mean',
    ignoreIndex: o.ignoreIndex ?? -100,
    alpha: o.labelSmoothing ?? 0,
    weights: o.classWeights ? Array.from(o.classWeights) : undefined,
    zLoss: o.zLoss ?? 0,
    softcap: o.softcap ?? 0,
    temperature: checkTemperature(o.temperature ?? 1),
    normalizer: o.normalizer ?? 'softmax',
    gamma: o.focalGamma ?? 0,
    eps: o.polyEpsilon ?? 0,
    sigma: o.squentropy ? 1 : 0,
    q: o.generalizedCE ?? 0,
  };
  if (!['mean', 'sum', 'none'].includes(r.reduction)) throw new RangeError(`bad reduction ${r.reduction}`);
  if (!['softmax', 'stablemax', 'sparsemax'].includes(r.normalizer)) throw new RangeError(`bad normalizer ${r.normalizer}`);
  if (!(r.alpha >= 0 && r.alpha <= 1)) throw new RangeError(`labelSmoothing must be in [0, 1]`);
  if (r.weights && r.weights.length !== V) throw new RangeError(`classWeights must have length ${V}`);
  if (!(r.softcap >= 0 && Number.isFinite(r.softcap))) throw new RangeError(`softcap must be finite and >= 0`);
  if (!(r.gamma >= 0)) throw new RangeError(`focalGamma must be >= 0`);
  return r;
}

interface RowTerms {
  /** F·C: the (focal-weighted) cross-entropy term, reduced with the class-weight scale. */
  FC: Dual;
  /** ε(1 − p_t) + λ·lse² + σ·Σ_{j≠t} z_j²/(V − 1): reduced like unweighted CE. */
  U: Dual;
  lse: Dual;
}

/** Effective logits of a row: softcap c·tanh(x/c), then ÷ temperature. */
function effectiveLogits(x: readonly Dual[], o: CeResolved): Dual[] {
  const y = o.softcap > 0 ? x.map((xj) => xj.div(o.softcap).tanh().mul(o.softcap)) : x;
  return y.map((yj) => yj.div(o.temperature));
}

/** All of one row's loss, materialized from the tables of README "Semantics". */
function ceRowTerms(x: readonly Dual[], t: number, o: CeResolved): RowTerms {
  const V = x.length;
  const z = effectiveLogits(x, o);
  const lse = lseRow(z);

  let p: Dual[];
  let ell: Dual[]; // ℓ_j: the loss if the target were class j
  if (o.normalizer === 'softmax') {
    const logP = logProbsRow(z);
    p = logP.map((l) => l.exp());
    ell = logP.map((l) => l.neg());
  } else if (o.normalizer === 'stablemax') {
    const s = z.map(stablemaxS);
    const S = noFiniteMax(z) ? new Dual(NaN, NaN) : dualSum(s);
    p = s.map((sj) => sj.div(S));
    ell = s.map((sj) => S.log().sub(sj.log()));
  } else {
    const sm = sparsemaxRowD(z);
    p = sm.p;
    // Ω = ½Σ_supp(z² − τ²) + ½ = τ + ½(1 + Σ p²) since Σ p = 1; the second form does not
    // cancel catastrophically when |z| is huge.
    const omega = sm.tau.add(dualSum(p.map((pk) => pk.square())).add(1).mul(0.5)); // Ω − shift
    ell = z.map((zj) => omega.sub(zj.sub(sm.shift)));
  }

  // a_j = (1 − α)·w_t·[j = t] + (α/V)·w_j; terms with a_j = 0 are skipped (never 0·inf).
  const w = (j: number) => (o.weights ? o.weights[j] : 1);
  const a = z.map((_, j) => (1 - o.alpha) * w(t) * (j === t ? 1 : 0) + (o.alpha / V) * w(j));
  let C = new Dual(0);
  ell.forEach((lj, j) => {
    if (a[j] !== 0) C = C.add(lj.mul(a[j]));
  });
  if (o.q > 0) C = new Dual(1).sub(p[t].pow(o.q)).div(o.q).mul(w(t));

  const oneMinusPt = new Dual(1).sub(p[t]);
  const F = oneMinusPt.pow(o.gamma); // γ = 0 → exactly 1

  let U = new Dual(0);
  if (o.eps !== 0) U = U.add(oneMinusPt.mul(o.eps));
  if (o.zLoss !== 0) U = U.add(lse.square().mul(o.zLoss));
  if (o.sigma !== 0 && V > 1) U = U.add(dualSum(z.filter((_, j) => j !== t).map((zj) => zj.square())).mul(o.sigma / (V - 1)));

  return { FC: F.mul(C), U, lse };
}

function isIgnored(label: number, o: CeResolved, V: number): boolean {
  if (label === o.ignoreIndex) return true;
  if (!(Number.isInteger(label) && label >= 0 && label < V)) throw new RangeError(`label ${label} out of range [0, ${V})`);
  return false;
}

/** Per-row multipliers of FC and U in the differentiated objective, from the reduction and
 * gradScale: 'none' → g_i; 'sum' → g; 'mean' → g/Σw_t and g/n (0 when the mean is NaN). */
function reductionScales(labels: ArrayLike<number>, o: CeResolved, V: number, gradScale: CeOptions['gradScale']) {
  const N = labels.length;
  const ignored = Array.from(labels, (t) => isIgnored(t, o, V));
  const n = ignored.filter((ig) => !ig).length;
  const weightSum = Array.from(labels).reduce((acc, t, i) => acc + (ignored[i] ? 0 : o.weights ? o.weights[t] : 1), 0);
  const nanMean = o.reduction === 'mean' && (n === 0 || weightSum === 0);

  let g: number[];
  if (gradScale === undefined || typeof gradScale === 'number') g = new Array(N).fill(gradScale ?? 1);
  else {
    if (o.reduction !== 'none') throw new RangeError(`an array gradScale needs reduction 'none'`);
    if (gradScale.length !== N) throw new RangeError(`gradScale must have length ${N}`);
    g = Array.from(gradScale);
  }
  const sW = g.map((gi, i) => (ignored[i] || nanMean ? 0 : o.reduction === 'mean' ? gi / weightSum : gi));
  const sU = g.map((gi, i) => (ignored[i] || nanMean ? 0 : o.reduction === 'mean' ? gi / n : gi));
  return { ignored, n, weightSum, nanMean, sW, sU };
}

function checkLogits(logits: Rows, labels: ArrayLike<number>): number {
  if (logits.length !== labels.length) throw new RangeError(`${logits.length} rows of logits but ${labels.length} labels`);
  const V = logits.length ? logits[0].length : 0;
  if (logits.some((r) => r.length !== V)) throw new RangeError('ragged logits');
  return V;
}

export interface CeLossResult {
  /** A number for 'mean'/'sum', one per row for 'none'. */
  loss: number | number[];
  /** log Σ exp(z) of the effective logits, for every row (ignored ones included). */
  lse: number[];
}

export function crossEntropyLoss(logits: Rows, labels: ArrayLike<number>, options: CeOptions = {}): CeLossResult {
  const V = checkLogits(logits, labels);
  const o = resolveCe(options, V);
  const { ignored, n, weightSum, nanMean } = reductionScales(labels, o, V, options.gradScale);

  const lse = logits.map((row) => lseRow(effectiveLogits(constRow(row), o)).v);
  const terms = logits.map((row, i) => (ignored[i] ? undefined : ceRowTerms(constRow(row), labels[i], o)));
  const FC = terms.map((t) => (t ? t.FC.v : 0)); // ignored rows: loss 0
  const U = terms.map((t) => (t ? t.U.v : 0));

  const sum = (xs: number[]) => xs.reduce((acc, v) => acc + v, 0);
  let loss: number | number[];
  if (o.reduction === 'none') loss = FC.map((f, i) => f + U[i]);
  else if (o.reduction === 'sum') loss = sum(FC) + sum(U);
  else loss = nanMean ? NaN : sum(FC) / weightSum + sum(U) / n;
  return { loss, lse };
}

/** ∂/∂logits of Σ_i g_i·loss_i ('none') or g·loss ('mean'/'sum'), by forward-mode duals:
 * a row's loss depends only on that row, so each row takes V passes over V elements. */
export function crossEntropyGrad(logits: Rows, labels: ArrayLike<number>, options: CeOptions = {}): number[][] {
  const V = checkLogits(logits, labels);
  const o = resolveCe(options, V);
  const { ignored, sW, sU } = reductionScales(labels, o, V, options.gradScale);
  return logits.map((row, i) =>
    Array.from(row, (_, k) => {
      if (ignored[i] || (sW[i] === 0 && sU[i] === 0)) return 0;
      const { FC, U } = ceRowTerms(seededRow(row, k), labels[i], o);
      return scaleTangent(FC.d, sW[i]) + scaleTangent(U.d, sU[i]);
    }),
  );
}

export function crossEntropy(logits: Rows, labels: ArrayLike<number>, options: CeOptions = {}) {
  return { ...crossEntropyLoss(logits, labels, options), dLogits: crossEntropyGrad(logits, labels, options) };
}

export interface LinearCeOptions extends CeOptions {
  bias?: ArrayLike<number>;
}

export interface LinearCeResult extends CeLossResult {
  logits: number[][];
  dLogits: number[][];
  /** dX·W, [N, D] */
  dE: number[][];
  /** dXᵀ·E, [V, D] */
  dW: number[][];
  /** Σ_i dX_i, [V]; only when a bias is given. */
  dBias?: number[];
}

/** Materializes X = E·Wᵀ + b in float64, then the chain rule on crossEntropyGrad's dX. */
export function linearCrossEntropy(E: Rows, W: Rows, labels: ArrayLike<number>, options: LinearCeOptions = {}): LinearCeResult {
  const N = E.length;
  const V = W.length;
  const D = N ? E[0].length : V ? W[0].length : 0;
  if (E.some((r) => r.length !== D) || W.some((r) => r.length !== D)) throw new RangeError('E and W must share D');
  const b = options.bias;
  if (b && b.length !== V) throw new RangeError(`bias must have length ${V}`);

  const logits = E.map((e) =>
    W.map((w, v) => {
      let acc = b ? b[v] : 0;
      for (let d = 0; d < D; d++) acc += e[d] * w[d];
      return acc;
    }),
  );
  const { loss, lse } = crossEntropyLoss(logits, labels, options);
  const dLogits = crossEntropyGrad(logits, labels, options);
  const dE = dLogits.map((dx) =>
    Array.from({ length: D }, (_, d) => dx.reduce((acc, g, v) => acc + g * W[v][d], 0)),
  );
  const dW = W.map((_, v) => Array.from({ length: D }, (_, d) => dLogits.reduce((acc, dx, i) => acc + dx[v] * E[i][d], 0)));
  const result: LinearCeResult = { loss, lse, logits, dLogits, dE, dW };
  if (b) result.dBias = W.map((_, v) => dLogits.reduce((acc, dx) => acc + dx[v], 0));
  return result;
}

// ---------------------------------------------------------------------------------------
// Helpers: dtypes, random data, finite differences.
// ---------------------------------------------------------------------------------------

const f32Scratch = new DataView(new ArrayBuffer(4));

/** The float32 whose top 16 bits are `bits` (bf16 is exactly that). */
export function bf16ToF32(bits: number): number {
  f32Scratch.setUint32(0, (bits & 0xffff) * 0x10000);
  return f32Scratch.getFloat32(0);
}

/** float32 → bf16 bits, round to nearest, ties to even; x is first taken as a float32.
 * Done by comparing the distances to the two neighbouring bf16 values (not the usual
 * add-0x7fff bit trick), so tests can hold the two against each other. */
export function f32ToBf16(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  f32Scratch.setFloat32(0, x);
  const bits = f32Scratch.getUint32(0);
  const xf = Math.abs(f32Scratch.getFloat32(0));
  const down = bits >>> 16; // truncation: the neighbour toward zero
  if ((bits & 0xffff) === 0) return down;
  const up = down + 1; // the neighbour away from zero (never crosses the sign bit)
  const mag = (b: number) => ((b & 0x7fff) === 0x7f80 ? 2 ** 128 : Math.abs(bf16ToF32(b))); // inf rounds like 2^128 (IEEE)
  const dDown = xf - mag(down); // exact in float64
  const dUp = mag(up) - xf;
  if (dDown < dUp) return down;
  if (dUp < dDown) return up;
  return down % 2 === 0 ? down : up;
}

/** Flat f32 data, or bf16 bits in a Uint16Array, to float64 rows. */
export function toF64Rows(data: Float32Array | Float64Array | Uint16Array, rows: number, cols: number): number[][] {
  if (data.length !== rows * cols) throw new RangeError(`data has ${data.length} elements, expected ${rows}·${cols}`);
  const at = data instanceof Uint16Array ? (i: number) => bf16ToF32(data[i]) : (i: number) => data[i];
  return Array.from({ length: rows }, (_, r) => Array.from({ length: cols }, (_, c) => at(r * cols + c)));
}

export const rowsToF32 = (rows: Rows): Float32Array => Float32Array.from(rows.flatMap((r) => Array.from(r)));
export const rowsToBf16 = (rows: Rows): Uint16Array => Uint16Array.from(rows.flatMap((r) => Array.from(r, f32ToBf16)));

/** mulberry32: a tiny seeded generator of uniforms in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Standard normal by Box–Muller. */
export function randn(rng: () => number): number {
  const u = 1 - rng(); // (0, 1]: log stays finite
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

export const randomRows = (rng: () => number, rows: number, cols: number, std = 1): number[][] =>
  Array.from({ length: rows }, () => Array.from({ length: cols }, () => std * randn(rng)));

export const randomLabels = (rng: () => number, n: number, V: number): number[] =>
  Array.from({ length: n }, () => Math.floor(rng() * V));

/** Central differences; the step actually taken, (x + h) − (x − h), is used as denominator. */
export function finiteDiff(f: (x: Float64Array) => number, x: Float64Array, h = 1e-6): Float64Array {
  const grad = new Float64Array(x.length);
  const xx = Float64Array.from(x);
  for (let i = 0; i < x.length; i++) {
    const xp = x[i] + h;
    const xm = x[i] - h;
    xx[i] = xp;
    const fp = f(xx);
    xx[i] = xm;
    const fm = f(xx);
    xx[i] = x[i];
    grad[i] = (fp - fm) / (xp - xm);
  }
  return grad;
}

export const ref = {
  logSumExp,
  softmax,
  logSoftmax,
  stablemax,
  logStablemax,
  sparsemax,
  entmax15,
  gumbelUniforms,
  gumbelNoise,
  gumbelSoftmax,
  softmaxBackward,
  logSoftmaxBackward,
  stablemaxBackward,
  logStablemaxBackward,
  sparsemaxBackward,
  entmax15Backward,
  gumbelSoftmaxBackward,
  philox4x32_10,
  crossEntropyLoss,
  crossEntropyGrad,
  crossEntropy,
  linearCrossEntropy,
  toF64Rows,
  rowsToF32,
  rowsToBf16,
  bf16ToF32,
  f32ToBf16,
  mulberry32,
  randn,
  randomRows,
  randomLabels,
  finiteDiff,
};
