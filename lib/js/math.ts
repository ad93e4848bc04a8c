// The executable specification of cutloss's math: online log-sum-exp, StableMax's s(x),
// softcap, Philox noise, and the per-row loss and gradient epilogues. Every backend
// implements exactly these scalar functions (cuda/math/ mirrors this file one to one),
// and every kernel composes them; README "Semantics" states the same formulas.

// ---------------------------------------------------------------- online log-sum-exp
// A partial reduction is (max, sum of exp(x - max)). Merging rescales both sums to the
// larger max, so tiles can be reduced in any order (Milakov & Gimelshein 2018).

export interface LseState {
  max: number;
  sum: number;
}

export const LSE_EMPTY: Readonly<LseState> = { max: -Infinity, sum: 0 };

/** sum·exp(from − to), with an empty partial (sum 0, max −inf) staying 0 instead of NaN. */
export function lseRescale(sum: number, from: number, to: number): number {
  return sum === 0 ? 0 : sum * Math.exp(from - to);
}

/** exp(x − max), defined for the infinite maxima a row of ±inf produces. */
export function expShifted(x: number, max: number): number {
  if (max === Infinity || max === -Infinity) return x === max ? 1 : 0;
  return Math.exp(x - max);
}

export function mergeLse(a: LseState, b: LseState): LseState {
  const max = Math.max(a.max, b.max); // NaN propagates through Math.max
  if (max === -Infinity) return { max, sum: 0 };
  return { max, sum: lseRescale(a.sum, a.max, max) + lseRescale(b.sum, b.max, max) };
}

/** Partial state of a block of values (two passes over the block: max, then sum). */
export function lseOfBlock(x: ArrayLike<number>, start = 0, end = x.length): LseState {
  let max = -Infinity;
  for (let i = start; i < end; i++) max = Math.max(max, x[i]!);
  let sum = 0;
  for (let i = start; i < end; i++) sum += expShifted(x[i]!, max);
  return { max, sum };
}

/** log-sum-exp of a finished state: −inf for an empty row, ±inf passes through. */
export function lseValue(s: LseState): number {
  if (s.max === Infinity || s.max === -Infinity) return s.max;
  return s.max + Math.log(s.sum);
}

// x − lse and exp(x − lse) for a row's lse = max + log(sum), with the max cancelled first:
// (x − max) − log(sum). Rounding lse itself would cost |lse|·ε: at a max of 3e38 even
// float64's lse loses log(sum) entirely. logSum = log(sum) is the row's constant.
// A row whose max is +inf (an infinite logit) or −inf (every entry −inf or masked) has no
// finite distribution: both give NaN for the whole row, as PyTorch (inf − inf, 0/0).

/** x − lseValue(s), given logSum = log(s.sum). */
export function minusLse(x: number, max: number, logSum: number): number {
  if (max === Infinity || max === -Infinity) return NaN;
  return x - max - logSum;
}

/** expShifted(x, lseValue(s)), given logSum = log(s.sum). */
export function expMinusLse(x: number, max: number, logSum: number): number {
  if (max === Infinity || max === -Infinity) return NaN;
  return Math.exp(x - max - logSum);
}

// ---------------------------------------------------------------- StableMax
// s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0 (Prieto et al. 2025): positive,
// monotone, C1 at 0, and it grows linearly, so large logits never overflow.

export function stablemaxS(x: number): number {
  return x >= 0 ? x + 1 : 1 / (1 - x);
}

/** log s(x) without forming s(x) (keeps precision near 0 and for huge |x|). */
export function stablemaxLogS(x: number): number {
  return x >= 0 ? Math.log1p(x) : -Math.log1p(-x);
}

/** s'(x): 1 for x >= 0, s(x)² for x < 0. */
export function stablemaxDs(x: number): number {
  if (x >= 0) return 1;
  const s = 1 / (1 - x);
  return s * s;
}

/** s'(x) / s(x), the derivative of log s(x). */
export function stablemaxDlogS(x: number): number {
  return x >= 0 ? 1 / (x + 1) : 1 / (1 - x);
}

/**
 * S = Σ s(z) of a row whose max is zMax, or NaN where the row has no finite distribution: a
 * +inf logit (S = inf) or every logit −inf (S = 0), as softmax (minusLse).
 */
export function stablemaxRowSum(sum: number, zMax: number): number {
  return zMax > -Infinity && zMax < Infinity ? sum : NaN;
}

// ---------------------------------------------------------------- softcap
// c·tanh(x / c) bounds logits to (−c, c); its slope is 1 − tanh².

export function softcap(x: number, cap: number): number {
  return cap * Math.tanh(x / cap);
}

export function softcapSlope(x: number, cap: number): number {
  const t = Math.tanh(x / cap);
  return 1 - t * t;
}

/** Raw logit → effective logit: softcap (cap 0 = off), then ÷ temperature. */
export function effectiveLogit(x: number, cap: number, invTemperature: number): number {
  return (cap > 0 ? cap * Math.tanh(x / cap) : x) * invTemperature;
}

/** dz/dx of effectiveLogit. */
export function effectiveSlope(x: number, cap: number, invTemperature: number): number {
  if (cap > 0) {
    const t = Math.tanh(x / cap);
    return (1 - t * t) * invTemperature;
  }
  return invTemperature;
}

// ---------------------------------------------------------------- margin softmax at the label
// CosFace / ArcFace (cuda/math/margin.cuh, README "Margin softmax"): raw logits are x = s·c of
// unit rows; at the label only, x → s·φ(x/s) with φ(c) = cos(θ + m2) − m = c·cos m2 − sin θ·sin m2 − m,
// θ = acos(clamp(c, −1, 1)); where θ + m2 > π (c < −cos m2) insightface's monotone continuation
// c − m2·sin m2 − m. φ'(c) = cos m2 + c·sin m2 / sin θ, sin θ floored at its value for the
// float32 just below 1 so the slope is finite at |c| = 1.

/** The map's constants; the native kernels take the same fields (LossParams.labelMargin). */
export interface LabelMargin {
  scale: number; // s
  margin: number; // m
  cosAngular: number; // cos m2
  sinAngular: number; // sin m2
  continuation: number; // m2·sin m2
}

/** sqrt(1 − c²) at c = 1 − 2^-24 (float32), the floor of sin θ in φ'. */
export const MARGIN_SIN_FLOOR = Math.fround(3.4526698e-4);

export function labelMargin(scale: number, margin: number, angularMargin: number): LabelMargin {
  const f = Math.fround;
  const sinAngular = f(Math.sin(angularMargin));
  return {
    scale: f(scale), margin: f(margin), cosAngular: f(Math.cos(angularMargin)), sinAngular,
    continuation: f(angularMargin * Math.sin(angularMargin)),
  };
}

function clampCosine(c: number): number {
  return c < -1 ? -1 : c > 1 ? 1 : c; // NaN stays NaN
}

/** φ(c). */
export function marginPhi(lm: LabelMargin, c: number): number {
  const cc = clampCosine(c);
  if (lm.sinAngular === 0) return cc - lm.margin;
  if (cc < -lm.cosAngular) return cc - lm.continuation - lm.margin;
  const sinTheta = Math.sqrt(Math.max((1 - cc) * (1 + cc), 0));
  return cc * lm.cosAngular - sinTheta * lm.sinAngular - lm.margin;
}

/** φ'(c). */
export function marginPhiSlope(lm: LabelMargin, c: number): number {
  const cc = clampCosine(c);
  if (lm.sinAngular === 0 || cc < -lm.cosAngular) return 1;
  const sinTheta = Math.max(Math.sqrt(Math.max((1 - cc) * (1 + cc), 0)), MARGIN_SIN_FLOOR);
  return lm.cosAngular + (cc * lm.sinAngular) / sinTheta;
}

/** The label's raw logit x = s·c → s·φ(c). */
export function marginLabelLogit(lm: LabelMargin, x: number): number {
  return lm.scale * marginPhi(lm, x / lm.scale);
}

/** d(marginLabelLogit)/dx = φ'(x/s). */
export function marginLabelSlope(lm: LabelMargin, x: number): number {
  return marginPhiSlope(lm, x / lm.scale);
}

// ---------------------------------------------------------------- harmonic logits
// Baek et al. 2025 (cuda/math/harmonic.cuh): raw logit −(n/2)·log d², d² = ‖e − w‖² from
// r + c − 2e·w; d² floored at FLT_MIN so a distance of 0 gives a finite logit, never NaN.

/** FLT_MIN = 2^-126: the smallest d² the logit resolves. */
export const HARMONIC_FLOOR = 2 ** -126;

/** d² = max(r + c − 2·dot, 0); NaN stays NaN. */
export function harmonicSqDistance(rowSq: number, colSq: number, dot: number): number {
  const d = rowSq + colSq - 2 * dot;
  return d > 0 || Number.isNaN(d) ? d : 0;
}

/** The raw logit −(n/2)·log max(d², FLT_MIN). */
export function harmonicLogit(sqDistance: number, exponent: number): number {
  return -0.5 * exponent * Math.log(Math.max(sqDistance, HARMONIC_FLOOR));
}

/** H = n·g/d² (0 below the floor, where the logit is constant); dE_i = Σ_j H_ij·(w_j − e_i), dW_j = Σ_i H_ij·(e_i − w_j). */
export function harmonicGrad(g: number, sqDistance: number, exponent: number): number {
  return sqDistance < HARMONIC_FLOOR ? 0 : (exponent * g) / sqDistance;
}

// ---------------------------------------------------------------- Philox-4x32-10
// Counter-based noise: element e of a tensor draws word (e mod 4) of Philox(counter
// floor(e / 4), key seed), so any backend reproduces it from the index alone.

const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two uint32 (exact: 16-bit limbs). */
function mulhi32(a: number, b: number): number {
  const aLo = a & 0xffff;
  const aHi = a >>> 16;
  const bLo = b & 0xffff;
  const bHi = b >>> 16;
  const lolo = aLo * bLo;
  const mid1 = aHi * bLo;
  const mid2 = aLo * bHi;
  const carry = ((lolo >>> 16) + (mid1 & 0xffff) + (mid2 & 0xffff)) >>> 16;
  return (aHi * bHi + (mid1 >>> 16) + (mid2 >>> 16) + carry) >>> 0;
}

/** Philox-4x32 with 10 rounds; writes 4 uint32 words into `out`. */
export function philox4x32(
  c0: number, c1: number, c2: number, c3: number, k0: number, k1: number, out: Uint32Array,
): void {
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi32(PHILOX_M0, c0);
    const lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulhi32(PHILOX_M1, c2);
    const lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + PHILOX_W0) >>> 0;
    k1 = (k1 + PHILOX_W1) >>> 0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/** A uint32 word → u in (0, 1), exact in fp32 (so never rounded to 1): 23 high bits plus half a step. */
export function uniformFromWord(word: number): number {
  return ((word >>> 9) + 0.5) * 1.1920928955078125e-7; // 2^-23; 23 bits + ½ fit a 24-bit significand
}

/** Standard Gumbel noise −log(−log u). */
export function gumbelFromUniform(u: number): number {
  return -Math.log(-Math.log(u));
}

// ---------------------------------------------------------------- loss epilogues
// A row's loss from its reduced statistics (README "Losses"):
//   a_j = (1 − α)·w_t·[j = t] + (α/V)·w_j,  C = Σ_j a_j·ℓ_j,  F = (1 − p_t)^γ,
//   U = ε·(1 − p_t) + λ·lse² + σ·Σ_{j≠t} z_j² / (V − 1),  loss = F·C + U.
// Generalized CE (q > 0; Zhang & Sabuncu 2018) replaces C by w_t·(1 − p_t^q)/q, whose gradient is
// CE's scaled by p_t^q (∂p_t^q = q·p_t^q·∂log p_t): only softmax and stablemax, no α, no focal.

/** Gradient filtering's f32 default is FILTER_ROW_MASS / V (cuda/math/filter.cuh kFilterRowMass). */
export const FILTER_ROW_MASS = 2 ** -24;

/** The row's gradient scale, max(|s_W|, |s_U|): what filterEps is relative to (as fmaxf: a NaN gives way to the other). */
export function rowGradScale(scaleWeighted: number, scaleUnweighted: number): number {
  const a = Math.abs(scaleWeighted);
  const b = Math.abs(scaleUnweighted);
  if (Number.isNaN(a)) return b;
  return Number.isNaN(b) ? a : Math.max(a, b);
}

/** eps·scale; ∞ where the scale is 0 (the row has no gradient to keep). eps 0 keeps everything. */
export function filterThreshold(eps: number, scale: number): number {
  return scale === 0 ? Infinity : eps * scale;
}

export const NORMALIZER_SOFTMAX = 0;
export const NORMALIZER_STABLEMAX = 1;
export const NORMALIZER_SPARSEMAX = 2;
export const NORMALIZER_GUMBEL = 3;

// Gumbel optimized loss (Alexandridis et al. 2022): p_j = exp(−exp(−z_j)) per class, unnormalized,
// and the binary cross-entropy of the one-hot target: ℓ = u_t + Σ_{j≠t} ψ(z_j), u = exp(−z).

/**
 * ψ(z) = −log(1 − exp(−u)), u = exp(−z), the loss of a non-target class: log1mexp's two branches,
 * and z + u/2 − u²/24 where u is tiny (exp(−z) underflows while ψ ≈ z stays finite).
 */
export function gumbelPsi(z: number): number {
  const u = Math.exp(-z);
  if (u < 2 ** -10) return z + u * (0.5 - u / 24);
  return u <= Math.LN2 ? -Math.log(-Math.expm1(-u)) : -Math.log1p(-Math.exp(-u));
}

/** ψ'(z) = p·u/(1 − p) = u/expm1(u): 1 as u → 0, 0 once expm1(u) overflows. */
export function gumbelPsiSlope(z: number): number {
  const u = Math.exp(-z);
  if (u === 0) return 1;
  if (u === Infinity) return 0;
  return u / Math.expm1(u);
}

export interface LossConstants {
  vocab: number;
  normalizer: number; // NORMALIZER_*
  smoothing: number; // α
  focalGamma: number; // γ
  polyEpsilon: number; // ε
  zLoss: number; // λ
  squentropy: number; // σ: 1 or 0
  generalizedCE?: number; // q of generalized CE in (0, 1]; 0 or absent = off (plain C)
}

/** What the forward pass reduces for each row (only the fields its options need). */
export interface RowStats {
  lse: number; // log Σ exp(z)
  logSum: number; // log Σ exp(z − zMax): z − lse is formed as (z − zMax) − logSum (see minusLse)
  zLabel: number; // z_t
  spreadGap: number; // (α/V)·Σ_j w_j (zMax − z_j) (smoothing): terms ≥ 0, so Σ_j w_j ℓ_j never cancels at |z| ≫ 1
  sumSqOthers: number; // Σ_{j≠t} z_j² (squentropy)
  stableSum: number; // the normalizer's own row sum: S = Σ s(z_j) (stablemax); Σ_{j≠t} ψ(z_j) (gumbel)
  sumWeightedLogS: number; // Σ_j w_j log s(z_j)
  // Sparsemax values are kept relative to the row max m, so huge logits lose no precision.
  zMax: number; // m
  tau: number; // τ − m
  omega: number; // Ω − m = (τ − m) + ½(1 + Σ_supp (z − τ)²), the stable form of ½ Σ_supp (z² − τ²) + ½
  support: number; // |supp|
}

export interface RowLoss {
  loss: number;
  weighted: number; // F·C, the part reduced by the summed target weights
  unweighted: number; // U
  pLabel: number; // p_t under the normalizer
  oneMinusPLabel: number;
  focal: number; // F
  ce: number; // C
  targetMass: number; // Σ_j a_j
  gceScale: number; // p_t^q under generalized CE (what scales C's gradient), else 1
}

export function rowLoss(k: LossConstants, st: RowStats, wLabel: number, sumWeights: number): RowLoss {
  const alpha = k.smoothing;
  const keep = (1 - alpha) * wLabel;
  const spread = alpha / k.vocab;
  const targetMass = keep + spread * sumWeights;
  // ℓ_t and Σ_j w_j ℓ_j are formed as differences first (lse − z_t, not lse·a − z_t·a) so a row
  // of huge logits keeps the precision of its gap.
  let labelLoss: number;
  let spreadLoss = 0; // (α/V)·Σ_j w_j ℓ_j
  let pLabel: number;
  let oneMinusPLabel: number;
  if (k.normalizer === NORMALIZER_STABLEMAX) {
    const S = stablemaxRowSum(st.stableSum, st.zMax);
    const logS = Math.log(S);
    labelLoss = logS - stablemaxLogS(st.zLabel);
    if (alpha > 0) spreadLoss = spread * (sumWeights * logS - st.sumWeightedLogS);
    const sLabel = stablemaxS(st.zLabel);
    pLabel = sLabel / S;
    oneMinusPLabel = (S - sLabel) / S;
  } else if (k.normalizer === NORMALIZER_GUMBEL) {
    // no label smoothing (options.ts rejects it): u_t + Σ_{j≠t} ψ(z_j)
    const uLabel = Math.exp(-st.zLabel);
    labelLoss = uLabel + st.stableSum;
    pLabel = Math.exp(-uLabel);
    oneMinusPLabel = -Math.expm1(-uLabel);
  } else if (k.normalizer === NORMALIZER_SPARSEMAX) {
    labelLoss = st.omega - (st.zLabel - st.zMax);
    if (alpha > 0) spreadLoss = spread * (sumWeights * st.omega) + st.spreadGap; // ℓ_j = Ω − z_j
    pLabel = Math.max(st.zLabel - st.zMax - st.tau, 0);
    oneMinusPLabel = 1 - pLabel;
  } else {
    const logP = minusLse(st.zLabel, st.zMax, st.logSum); // z_t − lse without rounding lse
    labelLoss = -logP;
    if (alpha > 0) spreadLoss = spread * (sumWeights * st.logSum) + st.spreadGap; // ℓ_j = lse − z_j
    pLabel = Math.exp(logP);
    oneMinusPLabel = -Math.expm1(logP); // accurate when p_t ≈ 1
  }
  let ce = keep * labelLoss + spreadLoss;
  let gceScale = 1;
  const q = k.generalizedCE ?? 0;
  if (q > 0) {
    // (1 − p_t^q)/q as −expm1(−q·ℓ_t)/q: no cancellation as q → 0 (→ ℓ_t, CE) or p_t → 1.
    const qLoss = q * labelLoss;
    ce = keep * (-Math.expm1(-qLoss) / q);
    gceScale = Math.exp(-qLoss);
  }
  const focal = k.focalGamma === 0 ? 1 : Math.pow(oneMinusPLabel, k.focalGamma);
  let unweighted = 0;
  if (k.polyEpsilon !== 0) unweighted += k.polyEpsilon * oneMinusPLabel;
  if (k.zLoss !== 0) unweighted += k.zLoss * st.lse * st.lse;
  if (k.squentropy !== 0 && k.vocab > 1) unweighted += (k.squentropy * st.sumSqOthers) / (k.vocab - 1);
  const weighted = focal * ce;
  return { loss: weighted + unweighted, weighted, unweighted, pLabel, oneMinusPLabel, focal, ce, targetMass, gceScale };
}

/**
 * Per-row constants of the gradient dloss/dz_k, given the row's reduction scales
 * (sWeighted for F·C, sUnweighted for U). See gradCoefficient for their use.
 */
export interface RowGrad {
  normalizer: number;
  lse: number;
  logSum: number;
  pLabel: number;
  mass: number; // s_W·F·G·Σa_j  (G: p_t^q under generalized CE, else 1)
  keep: number; // s_W·F·G·(1 − α)·w_t   (a_t's label part)
  spread: number; // s_W·F·G·α/V         (times w_k)
  kappa: number; // s_W·C·F' − s_U·ε    (times ∂p_t/∂z_k)
  zCoef: number; // s_U·2λ·lse          (times softmax_k)
  sqCoef: number; // s_U·2σ/(V − 1)     (times z_k, k ≠ t)
  stableSum: number;
  dlogSLabel: number; // s'(z_t)/s(z_t)
  zMax: number;
  tau: number; // relative to zMax
  labelInSupport: boolean;
  invSupport: number;
}

export function rowGrad(
  k: LossConstants, st: RowStats, r: RowLoss, wLabel: number, sWeighted: number, sUnweighted: number,
): RowGrad {
  const g = k.focalGamma;
  const omp = r.oneMinusPLabel;
  // F' = −γ(1 − p_t)^(γ−1); at p_t = 1 its product with ∂p_t/∂z (also 0 there) has limit 0 unless γ = 1.
  const dFocal = g === 0 ? 0 : omp > 0 ? -g * Math.pow(omp, g - 1) : g === 1 ? -1 : 0;
  // C·F' multiplies ∂p_t/∂z, which carries a factor p_t, and C·p_t → 0 as p_t → 0 (ℓ·e^−ℓ): at
  // p_t = 0 (a −inf label logit, C = +inf) the term takes that limit, 0, instead of ∞·0 = NaN.
  const focalTerm = dFocal === 0 || r.pLabel === 0 ? 0 : sWeighted * r.ce * dFocal;
  const sWF = sWeighted * r.focal * r.gceScale;
  return {
    normalizer: k.normalizer,
    lse: st.lse,
    logSum: st.logSum,
    pLabel: r.pLabel,
    mass: sWF * r.targetMass,
    keep: sWF * (1 - k.smoothing) * wLabel,
    spread: (sWF * k.smoothing) / k.vocab,
    kappa: focalTerm - sUnweighted * k.polyEpsilon,
    zCoef: sUnweighted * 2 * k.zLoss * st.lse,
    sqCoef: k.vocab > 1 ? (sUnweighted * 2 * k.squentropy) / (k.vocab - 1) : 0,
    stableSum: stablemaxRowSum(st.stableSum, st.zMax),
    dlogSLabel: stablemaxDlogS(st.zLabel),
    zMax: st.zMax,
    tau: st.tau,
    labelInSupport: st.zLabel - st.zMax > st.tau,
    invSupport: st.support > 0 ? 1 / st.support : 0,
  };
}

/**
 * dloss/dz_k for one element of a row (isLabel: k = t; wK: class weight of k), given its
 * softmax_k = exp(z − lse): a kernel that kept e^(z − max) from its forward pass passes that
 * times 1/Σ instead of paying a second exponential.
 */
export function gradCoefficientGivenSoftmax(rg: RowGrad, z: number, softmaxK: number, isLabel: boolean, wK: number): number {
  let d = rg.zCoef * softmaxK;
  if (!isLabel && rg.sqCoef !== 0) d += rg.sqCoef * z; // guarded: 0·(−inf) would be NaN
  const target = rg.spread * wK + (isLabel ? rg.keep : 0); // a_k
  if (rg.normalizer === NORMALIZER_GUMBEL) {
    // ∂u_t/∂z_t = −u_t; ∂ψ(z_k)/∂z_k = ψ'(z_k); keep = s_W·w_t
    d += isLabel ? -rg.keep * Math.exp(-z) : rg.keep * gumbelPsiSlope(z);
  } else if (rg.normalizer === NORMALIZER_SOFTMAX) {
    // ∂C = Σa·p_k − a_k; ∂p_t = p_t(δ_tk − p_k)
    d += rg.mass * softmaxK - target + rg.kappa * rg.pLabel * ((isLabel ? 1 : 0) - softmaxK);
  } else if (rg.normalizer === NORMALIZER_STABLEMAX) {
    // ∂C = Σa·s'_k/S − a_k·s'_k/s_k; ∂p_t = p_t(δ_tk·s'_t/s_t − s'_k/S). a_k is multiplied by
    // s'/s itself, not by (1 − s'/s) after subtracting a_k: that difference of two near-equal
    // terms cost 2^-24/(s'/s) relative in fp32, 2e-4 at logits of 1e4.
    const dsOverS = stablemaxDs(z) / rg.stableSum;
    const dlogS = stablemaxDlogS(z);
    d += rg.mass * dsOverS - target * dlogS;
    d += rg.kappa * rg.pLabel * ((isLabel ? rg.dlogSLabel : 0) - dsOverS);
  } else {
    // sparsemax: ∂C = Σa·p_k − a_k; ∂p_t = [t, k ∈ supp](δ_tk − 1/|supp|)
    const u = z - rg.zMax - rg.tau; // z − τ, formed relative to the max
    const inSupport = u > 0;
    d += rg.mass * (inSupport ? u : 0) - target;
    if (rg.labelInSupport && inSupport) d += rg.kappa * ((isLabel ? 1 : 0) - rg.invSupport);
  }
  return d;
}

/** dloss/dz_k for one element of a row (isLabel: k = t; wK: class weight of k). */
export function gradCoefficient(rg: RowGrad, z: number, isLabel: boolean, wK: number): number {
  // Gumbel's own terms need no softmax_k (only zLoss's does): one exponential less per element
  const softmaxUsed = rg.normalizer !== NORMALIZER_GUMBEL || rg.zCoef !== 0;
  return gradCoefficientGivenSoftmax(rg, z, softmaxUsed ? expMinusLse(z, rg.zMax, rg.logSum) : 0, isLabel, wK);
}

// The sparsemax threshold search of rows whose logits are never stored, over passes at trial
// thresholds x (cuda/math/michelot.cuh says why it is exact and why 37 passes suffice for any
// V): Michelot passes first, then bisection of the bracket in float32 order, then one pass
// where {z > x} is the support. Values are relative to the row max, and float32 (as the kernels
// hold them) for the bracket argument; JS keeps τ and the sums in float64.
export const SPARSEMAX_MICHELOT_PASSES = 8;
export const SPARSEMAX_PASS_LIMIT = SPARSEMAX_MICHELOT_PASSES + 28 + 1;
export const SEARCH_DONE = 0;
export const SEARCH_RUNNING = 1;
export const SEARCH_FINAL = 2;

export interface SparsemaxSearch {
  /** A lower bound of τ; τ itself once done. */
  tau: number;
  /** A strict upper bound of τ (a float32). */
  hi: number;
  /** Where the next pass evaluates. */
  x: number;
  /** Once done: Σ_{supp} (z − τ)². */
  sumSqP: number;
  /** |{z > x}| of the pass whose Michelot step gave tau (−1: none); once done, |supp|. */
  gen: number;
  /** |{z > hi}|, or −1 while hi is the bound −1/c₀ no pass evaluated. */
  countHi: number;
  passes: number;
  phase: number;
}

const orderF32 = new Float32Array(1);
const orderI32 = new Int32Array(orderF32.buffer);

/** A float32's position in the order of floats (−0 and +0 share 0). */
export function floatOrder(x: number): number {
  orderF32[0] = x;
  const b = orderI32[0]!;
  return b < 0 ? -(b & 0x7fffffff) : b;
}

export function orderedFloat(o: number): number {
  orderI32[0] = o >= 0 ? o : -o;
  return o >= 0 ? orderF32[0]! : -orderF32[0]!;
}

/** The largest float32 ≤ x. */
function float32Below(x: number): number {
  const f = Math.fround(x);
  return f > x ? orderedFloat(floatOrder(f) - 1) : f;
}

export function sparsemaxSearchStart(): SparsemaxSearch {
  return { tau: -1, hi: 0, x: -1, sumSqP: 0, gen: -1, countHi: 0, passes: 0, phase: SEARCH_RUNNING };
}

/** Takes the sums of the pass at st.x (c = |{z > x}| ≥ 1, s = Σ z, q = Σ (z − x)²) and picks the next x. */
export function sparsemaxSearchStep(st: SparsemaxSearch, c: number, s: number, q: number): void {
  st.passes += 1;
  const x = st.x;
  const t = (s - 1) / c;
  const fixedPoint = x === st.tau && c === st.gen; // Michelot: the same set again, τ = x
  if (st.phase === SEARCH_FINAL || fixedPoint) {
    // kept in [x, hi), where {z > τ} is the set counted (rounding could leave it)
    const below = orderedFloat(floatOrder(st.hi) - 1);
    st.tau = fixedPoint ? x : (t >= st.hi ? below : (t < x ? x : t));
    const d = st.tau - x; // under one float32 step: no cancellation
    st.sumSqP = q - 2 * d * (s - c * x) + c * d * d;
    st.gen = c;
    st.phase = SEARCH_DONE;
    return;
  }
  if (st.passes === 1) { // x = −1: τ ≤ −1/|supp| ≤ −1/c, one float32 step up keeps it strict
    st.hi = orderedFloat(floatOrder(-1 / c) + 1);
    st.countHi = -1;
  }
  if (t < x && x < st.hi) { // x lies above τ
    st.hi = x;
    st.countHi = c;
  }
  if (x === st.tau) { // a Michelot pass; τ never falls back
    st.gen = c;
    st.tau = Math.max(st.tau, t);
  } else if (t > st.tau) {
    st.tau = t;
    st.gen = t >= x ? c : -1; // only a set from below the new tau can show it is the support
  }
  const below = orderedFloat(floatOrder(st.hi) - 1);
  const lo = Math.min(float32Below(st.tau), below);
  const gap = floatOrder(st.hi) - floatOrder(lo);
  if ((st.countHi > 0 && st.gen === st.countHi) || gap <= 1) { // {z > lo} is the support (see michelot.cuh)
    st.phase = SEARCH_FINAL;
    st.x = lo;
  } else if (st.passes < SPARSEMAX_MICHELOT_PASSES) {
    st.x = st.tau;
  } else {
    st.x = orderedFloat(floatOrder(lo) + Math.floor(gap / 2));
  }
}
