// Holds cuda/math/ (fp32, C++, also compiled by nvcc) equal to lib/js/math.ts (float64), the
// executable specification: test/fixtures/math_probe.cc evaluates every shared function on a
// grid of inputs with edge values (0, ±1e-30, ±1, ±1e4, ±3e38, ±inf, NaN) and prints the fp32
// bits; each line is recomputed here from the same fp32 inputs. Philox words, uniforms and
// bf16 bits must match exactly; everything else within fp32 rounding of the float64 answer.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { gumbelNoise } from '../lib/js/gumbel.js';
import * as m from '../lib/js/math.js';
import { bf16ToF32, f32ToBf16 } from '../lib/tensor.js';

const root = fileURLToPath(new URL('..', import.meta.url));

interface ProbeLine {
  f: string;
  a: number[];
  r: number[];
}

function runProbe(): ProbeLine[] {
  const exe = path.join(mkdtempSync(path.join(tmpdir(), 'cutloss-math-')), 'math_probe');
  execFileSync('g++', ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', '-I', 'cuda', 'test/fixtures/math_probe.cc', '-o', exe],
    { cwd: root, stdio: 'pipe' });
  const out = execFileSync(exe, { encoding: 'utf8', maxBuffer: 1 << 28 });
  return out.trim().split('\n').map((l) => JSON.parse(l) as ProbeLine);
}

const bits = new Uint32Array(1);
const asF32 = new Float32Array(bits.buffer);
/** The fp32 value of IEEE bits. */
const f = (u: number): number => {
  bits[0] = u;
  return asF32[0]!;
};

interface Tolerance {
  rtol: number;
  atol: number;
}

/** fp32 result `got` against the float64 answer `want` computed from the same fp32 inputs. */
function close(got: number, want: number, tol: Tolerance): boolean {
  if (Number.isNaN(want)) return Number.isNaN(got);
  const w32 = Math.fround(want); // where float64 stays finite but fp32 overflows, fp32 must overflow too
  if (!Number.isFinite(w32)) return got === w32;
  if (!Number.isFinite(got)) return false;
  return Math.abs(got - want) <= tol.atol + tol.rtol * Math.abs(want);
}

/** Largest finite magnitude among the float arguments: the scale of the inputs' rounding. */
function inputScale(values: number[]): number {
  let s = 0;
  for (const v of values) if (Number.isFinite(v)) s = Math.max(s, Math.abs(v));
  return s;
}

const EPS32 = 2 ** -24;
const lines = runProbe();
const byName = new Map<string, ProbeLine[]>();
for (const l of lines) {
  if (!byName.has(l.f)) byName.set(l.f, []);
  byName.get(l.f)!.push(l);
}

function linesOf(name: string): ProbeLine[] {
  const ls = byName.get(name) ?? [];
  expect(ls.length, `probe lines for ${name}`).toBeGreaterThan(0);
  return ls;
}

/** Each line: `want` from JS on the decoded arguments; one tolerance per line. */
function checkFloats(name: string, want: (a: number[]) => number[], tol: (a: number[], w: number[]) => Tolerance): void {
  let checked = 0;
  for (const l of linesOf(name)) {
    const a = l.a.map(f);
    const w = want(a);
    const got = l.r.map(f);
    expect(got.length).toBe(w.length);
    const t = tol(a, w);
    for (let i = 0; i < w.length; i++) {
      if (!close(got[i]!, w[i]!, t)) {
        throw new Error(`${name}(${a.join(', ')})[${i}]: C++ ${got[i]}, JS ${w[i]} (tolerance ${t.atol} + ${t.rtol}·|want|)`);
      }
      checked++;
    }
  }
  expect(checked).toBeGreaterThan(0);
}

const plain: Tolerance = { rtol: 4 * EPS32, atol: 1e-44 };
/**
 * factor·exp(x − y): the argument's rounding, |x − y|·2^-24, becomes relative error, and an
 * exp below fp32's smallest normal (2^-126) keeps only absolute precision.
 */
const expOfDifference = (x: number, y: number, factor = 1): Tolerance => ({
  rtol: 4 * EPS32 + (Number.isFinite(x - y) ? Math.abs(x - y) * EPS32 * 2 : 0),
  atol: 1e-44 + (Number.isFinite(factor) ? Math.abs(factor) * 2 ** -126 : 0),
});

describe('cuda/math matches lib/js/math.ts', () => {
  it('StableMax s(x), log s(x), s\'(x), s\'/s', () => {
    checkFloats('stablemaxS', ([x]) => [m.stablemaxS(x!)], () => plain);
    checkFloats('stablemaxLogS', ([x]) => [m.stablemaxLogS(x!)], () => plain);
    checkFloats('stablemaxDs', ([x]) => [m.stablemaxDs(x!)], () => plain);
    checkFloats('stablemaxDlogS', ([x]) => [m.stablemaxDlogS(x!)], () => plain);
    // fp32 only: the scale that keeps a row's Σ s(z) finite is a power of two with s(max)·scale in [1/4, 4)
    for (const l of linesOf('stablemaxSumScale')) {
      const [x, scale] = [f(l.a[0]!), f(l.r[0]!)];
      expect(Number.isInteger(Math.log2(scale)), `scale(${x}) = ${scale}`).toBe(true);
      if (Number.isFinite(x)) {
        const scaled = m.stablemaxS(x) * scale;
        expect(scaled >= 0.25 && scaled < 4, `s(${x})·scale = ${scaled}`).toBe(true);
      } else {
        expect(scale).toBe(1);
      }
    }
    // s'(x)/S given S·scale: the float64 s'(x)/S
    checkFloats('stablemaxDsOverSum', ([x, sum, scale]) => [m.stablemaxDs(x!) / (sum! / scale!)],
      () => ({ rtol: 4 * EPS32, atol: 1e-44 }));
  });

  it("Gumbel's ψ(z) and ψ'(z)", () => {
    // u = e^{−z} carries expf's rounding, which e^{−u} turns into relative error u·2^-24
    const gumbelTol = ([x]: number[]): Tolerance => ({ rtol: 4 * EPS32 * (1 + Math.min(Math.exp(-x!), 1e30)), atol: 1e-44 });
    checkFloats('gumbelPsi', ([x]) => [m.gumbelPsi(x!)], gumbelTol);
    checkFloats('gumbelPsiSlope', ([x]) => [m.gumbelPsiSlope(x!)], gumbelTol);
  });

  it("gradient filtering: a row's scale and its thresholds", () => {
    checkFloats('rowGradScale', ([sW, sU]) => [m.rowGradScale(sW!, sU!)], () => ({ rtol: 0, atol: 0 }));
    checkFloats('filterThreshold', ([eps, scale]) => [m.filterThreshold(eps!, scale!)], () => plain);
  });

  it('harmonic logits: d², the floored log, H = n·g/d²', () => {
    // d²: r + c − 2·dot rounds at the inputs' scale; the log's argument is exact, logf within ulps
    checkFloats('harmonicSqDistance', ([r, c, dot]) => [m.harmonicSqDistance(r!, c!, dot!)],
      (a) => ({ rtol: 4 * EPS32, atol: 4 * EPS32 * 2 * inputScale(a) }));
    checkFloats('harmonicLogit', ([sq, n]) => [m.harmonicLogit(sq!, n!)], ([, n]) => ({ rtol: 4 * EPS32, atol: 4 * EPS32 * n! }));
    checkFloats('harmonicGrad', ([g, sq, n]) => [m.harmonicGrad(g!, sq!, n!)], () => plain);
  });

  it('softcap and the effective logit pipeline', () => {
    // tanh(x/c) with x/c rounded: relative error up to |x/c|·slope·2^-24 on top of tanhf's own
    const tanhTol = (x: number, cap: number): Tolerance => ({ rtol: 8 * EPS32, atol: 4 * EPS32 * Math.abs(cap) });
    checkFloats('softcap', ([x, cap]) => [m.softcap(x!, cap!)], ([x, cap]) => tanhTol(x!, cap!));
    checkFloats('softcapSlope', ([x, cap]) => [m.softcapSlope(x!, cap!)], () => ({ rtol: 8 * EPS32, atol: 4 * EPS32 }));
    checkFloats('effectiveLogit', ([x, cap, invT]) => [m.effectiveLogit(x!, cap!, invT!)],
      ([, cap, invT]) => ({ rtol: 8 * EPS32, atol: 4 * EPS32 * Math.abs(cap! * invT!) }));
    checkFloats('effectiveSlope', ([x, cap, invT]) => [m.effectiveSlope(x!, cap!, invT!)],
      ([, , invT]) => ({ rtol: 8 * EPS32, atol: 4 * EPS32 * invT! }));
    // (softcap(x) − shift)/T: the gap rounds once (relative), then ÷T; softcap's own rounding as above
    checkFloats('shiftedEffectiveLogit', ([x, cap, invT, shift]) => [((cap! > 0 ? m.softcap(x!, cap!) : x!) - shift!) * invT!],
      ([, cap, invT]) => ({ rtol: 8 * EPS32, atol: 4 * EPS32 * Math.abs(cap! * invT!) }));
  });

  it('online log-sum-exp: lseRescale, expShifted, mergeLse, lseValue, and lsePush folds', () => {
    checkFloats('lseRescale', ([sum, from, to]) => [m.lseRescale(sum!, from!, to!)], ([sum, from, to]) => expOfDifference(from!, to!, sum!));
    checkFloats('expShifted', ([x, max]) => [m.expShifted(x!, max!)], ([x, max]) => expOfDifference(x!, max!));
    checkFloats('mergeLse', ([am, as, bm, bs]) => {
      const r = m.mergeLse({ max: am!, sum: as! }, { max: bm!, sum: bs! });
      return [r.max, r.sum];
    }, ([am, as, bm, bs]) => expOfDifference(am!, bm!, Math.max(Math.abs(as!), Math.abs(bs!))));
    checkFloats('lseValue', ([max, sum]) => [m.lseValue({ max: max!, sum: sum! })],
      ([max]) => ({ rtol: 4 * EPS32, atol: 4 * EPS32 * (Number.isFinite(max!) ? Math.abs(max!) : 0) }));
    // lsePush folded over a row is the row's lseOfBlock; the sums may differ only where lseValue ignores them
    checkFloats('lsePush', (row) => [m.lseValue(m.lseOfBlock(row))],
      (row) => ({ rtol: 4 * EPS32, atol: 8 * EPS32 * (inputScale(row) + 1) }));
    // x − lse and exp(x − lse) to full fp32 precision, even where lse itself is 1e4 or 3e38
    const state = (row: number[]) => m.lseOfBlock(row);
    checkFloats('minusLse', (row) => row.map((x) => m.minusLse(x, state(row).max, Math.log(state(row).sum))),
      (row) => ({ rtol: 4 * EPS32, atol: 8 * EPS32 }));
    checkFloats('expMinusLse', (row) => row.map((x) => m.expMinusLse(x, state(row).max, Math.log(state(row).sum))),
      () => ({ rtol: 8 * EPS32, atol: 1e-44 }));
  });

  it('Philox-4x32-10 words and the uniform map are bit-exact', () => {
    const out = new Uint32Array(4);
    for (const l of linesOf('philox4x32')) {
      const [c0, c1, c2, c3, k0, k1] = l.a;
      m.philox4x32(c0!, c1!, c2!, c3!, k0!, k1!, out);
      expect(l.r, `philox(${l.a.map((v) => v.toString(16)).join(', ')})`).toEqual(Array.from(out));
    }
    // Random123's known-answer vectors are among them
    expect(linesOf('philox4x32')[0]!.r).toEqual([0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    for (const l of linesOf('uniformFromWord')) {
      const u = f(l.r[0]!);
      expect(u).toBe(m.uniformFromWord(l.a[0]!));
      expect(u > 0 && u < 1).toBe(true);
    }
    checkFloats('gumbelFromUniform', ([u]) => [m.gumbelFromUniform(u!)], () => ({ rtol: 4 * EPS32, atol: 4 * EPS32 }));
  });

  it('Gumbel noise of element e: word e mod 4 of counter ⌊e/4⌋, 64-bit seeds and element indices', () => {
    const words = new Uint32Array(4);
    const TWO32 = 2 ** 32;
    for (const l of linesOf('gumbelNoiseAt')) {
      const [sLo, sHi, eLo, eHi] = l.a;
      const seed = sHi! * TWO32 + sLo!;
      const e = eHi! * TWO32 + eLo!;
      let want: number;
      if (e < 16) {
        want = gumbelNoise(seed, 16)[e]!; // the reference sampler itself
      } else {
        const q = Math.floor(e / 4);
        m.philox4x32(q % TWO32, Math.floor(q / TWO32), 0, 0, sLo!, sHi!, words);
        want = m.gumbelFromUniform(m.uniformFromWord(words[e % 4]!));
      }
      const got = f(l.r[0]!);
      expect(close(got, want, { rtol: 4 * EPS32, atol: 4 * EPS32 }), `seed ${seed}, e ${e}: ${got} vs ${want}`).toBe(true);
    }
  });

  it('bf16 conversions are bit-exact with lib/tensor.ts', () => {
    for (const l of linesOf('bf16')) {
      const x = f(l.a[0]!);
      expect(l.r[0], `f32ToBf16(${x})`).toBe(f32ToBf16(x));
      const back = f(l.r[1]!);
      const want = bf16ToF32(f32ToBf16(x));
      if (Number.isNaN(want)) expect(back).toBeNaN();
      else expect(back).toBe(want);
    }
  });

  describe('loss epilogues on every option combination and normalizer', () => {
    // a: [vocab, normalizer, α, γ, ε, λ, σ, 11 RowStats fields, wLabel, sumWeights, sW, sU, ...]
    const decode = (l: ProbeLine) => {
      const a = l.a;
      const k: m.LossConstants = {
        vocab: a[0]!, normalizer: a[1]!, smoothing: f(a[2]!), focalGamma: f(a[3]!), polyEpsilon: f(a[4]!),
        zLoss: f(a[5]!), squentropy: f(a[6]!),
      };
      const s = a.slice(7, 18).map(f);
      const st: m.RowStats = {
        lse: s[0]!, zLabel: s[1]!, spreadGap: s[2]!, sumSqOthers: s[3]!, stableSum: s[4]!, sumWeightedLogS: s[5]!,
        zMax: s[6]!, tau: s[7]!, omega: s[8]!, support: s[9]!, logSum: s[10]!,
      };
      const [wLabel, sumWeights, sW, sU] = a.slice(18, 22).map(f) as [number, number, number, number];
      const rl = m.rowLoss(k, st, wLabel, sumWeights);
      const rg = m.rowGrad(k, st, rl, wLabel, sW, sU);
      // fp32 rounding of terms of the statistics' magnitude, times the scales and weights they meet
      const scale = inputScale(s) * Math.max(1, Math.abs(sW), Math.abs(sU)) * sumWeights;
      return { k, st, rl, rg, tol: { rtol: 8 * EPS32, atol: 8 * EPS32 * scale } };
    };
    const compare = (name: string, got: number[], want: number[], tol: Tolerance, what: string) => {
      for (let i = 0; i < want.length; i++) {
        if (!close(got[i]!, want[i]!, tol)) throw new Error(`${name} ${what} field ${i}: C++ ${got[i]}, JS ${want[i]}`);
      }
    };
    it('rowLoss', () => {
      for (const l of linesOf('rowLoss')) {
        const { rl, tol, k } = decode(l);
        const want = [rl.loss, rl.weighted, rl.unweighted, rl.pLabel, rl.oneMinusPLabel, rl.focal, rl.ce, rl.targetMass];
        compare('rowLoss', l.r.map(f), want, tol, JSON.stringify(k));
      }
    });
    it('rowGrad', () => {
      for (const l of linesOf('rowGrad')) {
        const { rg, tol, k } = decode(l);
        const want = [rg.lse, rg.pLabel, rg.mass, rg.keep, rg.spread, rg.kappa, rg.zCoef, rg.sqCoef, rg.stableSum,
          rg.dlogSLabel, rg.zMax, rg.tau, rg.invSupport];
        compare('rowGrad', l.r.slice(0, -1).map(f), want, tol, JSON.stringify(k));
        expect(l.r.at(-1), 'labelInSupport').toBe(rg.labelInSupport ? 1 : 0);
      }
    });
    it('gradCoefficient', () => {
      let n = 0;
      for (const l of linesOf('gradCoefficient')) {
        const { rg, tol, k } = decode(l);
        const [z, isLabel, wK] = [f(l.a[22]!), l.a[23] === 1, f(l.a[24]!)];
        compare('gradCoefficient', [f(l.r[0]!)], [m.gradCoefficient(rg, z, isLabel, wK)], tol, `${JSON.stringify(k)} z=${z}`);
        n++;
      }
      expect(n).toBeGreaterThan(5000);
    });
  });
});
