// Sharded losses: vocabulary-parallel (classes split over ranks) and data-parallel (rows split
// over ranks), exact against the single-process loss on every backend without new kernels.
//
// Vocabulary-parallel, per call:
//   1. local forward passes on this rank's classes (no gradients): the local lse, and the
//      per-row sums the options need, read off the loss of a call whose options isolate them
//      (label smoothing 1 gives Σ w·z; squentropy gives Σ z²; StableMax gives Σ s(z));
//   2. two all-reduces: max of the local lse [N], then the sum of [N × fields] (Σ exp(lse − max),
//      the label's logit and weight from the rank that owns it, the option sums) → global row
//      statistics, from which lib/js/math.ts's rowLoss/rowGrad give the loss and the per-row
//      gradient constants, the same on every rank;
//   3. local gradient passes with a per-row gradScale chosen so that the backend's local
//      softmax (normalized by the local sum) comes out normalized by the global one; each
//      backend gradient is d = s·(p_local − [j = k]) (plus the option's own term), so what is
//      left differs from the global gradient only in the one column k a row was given as its
//      local label: a rank-1 correction per row, O(N·D) here;
//   4. one all-reduce of dEmbeddings [N, D] (linear only).
// Data-parallel 'mean': one all-reduce of [count, Σ target weights] before, one of the loss after;
// the class weights are scaled so that one backend call yields the exact share of the gradient.

import type { Backend, CrossEntropyOutput, LinearCrossEntropyOutput } from './backend.js';
import { checkCommunicator, type Communicator } from './communicator.js';
import { CutlossError, describe } from './errors.js';
import {
  NORMALIZER_GUMBEL, NORMALIZER_SOFTMAX, NORMALIZER_SPARSEMAX, NORMALIZER_STABLEMAX, effectiveLogit, effectiveSlope, rowGrad, rowLoss,
  harmonicGrad, harmonicLogit, marginLabelLogit, marginLabelSlope, stablemaxDlogS, stablemaxLogS, type LossConstants, type RowStats,
} from './js/math.js';
import {
  asOptionsObject, harmonicExponent, labelMarginOf, LOGITS_HARMONIC, resolveLabels, resolveLossOptions, type ResolvedLogits, type ResolvedLossOptions,
} from './options.js';
import { toF32, type Matrix } from './tensor.js';

interface VocabSplit {
  comm: Communicator;
  start: number;
  size: number;
}

interface ScaleOut {
  vocab: VocabSplit | null;
  data: Communicator | null;
  rest: Record<string, unknown>;
}

/** True when the options ask for a sharded loss. */
export function isScaleOut(options: unknown): boolean {
  return typeof options === 'object' && options !== null &&
    ((options as Record<string, unknown>).vocabParallel !== undefined ||
      (options as Record<string, unknown>).dataParallel !== undefined);
}

function splitOptions(options: unknown, fn: string): ScaleOut | null {
  if (!isScaleOut(options)) return null;
  const { vocabParallel, dataParallel, ...rest } = asOptionsObject(options, fn);
  let vocab: VocabSplit | null = null;
  if (vocabParallel !== undefined) {
    if (typeof vocabParallel !== 'object' || vocabParallel === null) {
      throw new CutlossError('E_OPTION', `options.vocabParallel must be { communicator, vocabStart, vocabSize }, got ${describe(vocabParallel)}`);
    }
    const v = vocabParallel as Record<string, unknown>;
    const comm = checkCommunicator(v.communicator, 'vocabParallel.communicator');
    for (const k of ['vocabStart', 'vocabSize'] as const) {
      if (!Number.isSafeInteger(v[k]) || (v[k] as number) < (k === 'vocabSize' ? 1 : 0)) {
        throw new CutlossError('E_OPTION', `options.vocabParallel.${k} must be an integer >= ${k === 'vocabSize' ? 1 : 0}, got ${describe(v[k])}`);
      }
    }
    vocab = { comm, start: v.vocabStart as number, size: v.vocabSize as number };
  }
  let data: Communicator | null = null;
  if (dataParallel !== undefined) {
    if (typeof dataParallel !== 'object' || dataParallel === null) {
      throw new CutlossError('E_OPTION', `options.dataParallel must be { communicator }, got ${describe(dataParallel)}`);
    }
    data = checkCommunicator((dataParallel as Record<string, unknown>).communicator, 'dataParallel.communicator');
  }
  if (vocab !== null && data !== null) {
    throw new CutlossError('E_OPTION', 'vocabParallel and dataParallel in one call are not supported: give each call one of them');
  }
  return { vocab, data, rest };
}

/** One backend call on this rank's share, its gradients as a list of f32 arrays. */
interface LocalProblem {
  rows: number;
  vocab: number;
  run(o: ResolvedLossOptions, labels: Int32Array): { loss: number | Float32Array; lse: Float32Array; grads: (Float32Array | null)[] };
  /** The largest device workspace a run used (native backends), else undefined. */
  workspaceBytes?: number;
  /** The raw logit of (row, local class col). */
  rawLogit(row: number, col: number): number;
  /** Adds c·∂x(row, col)/∂(inputs) into grads: the gradient of one logit with coefficient c. */
  addLogitGrad(grads: (Float32Array | null)[], row: number, col: number, c: number): void;
  /** The same problem on some of the rows (linear problems only). */
  subset?(rows: Int32Array): LocalProblem;
}

type LocalRun = ReturnType<LocalProblem['run']>;

/**
 * A cosine margin maps the label's logit, and a local call maps whatever column it is given as a
 * row's label: right for the rows whose label this rank owns, wrong for the others (their local
 * label column is a stand-in). This problem runs the two groups of rows as two calls, the margin
 * off for the second, and puts their results back together (each row is computed once).
 */
function ownedApart(p: LocalProblem, own: Uint8Array): LocalProblem {
  const owned: number[] = [];
  const others: number[] = [];
  own.forEach((v, n) => (v ? owned : others).push(n));
  const groups = [Int32Array.from(owned), Int32Array.from(others)].filter((g) => g.length > 0);
  const parts = groups.map((g) => p.subset!(g));
  return {
    ...p,
    run(o, labels) {
      const N = p.rows;
      let loss: number | Float32Array = 0;
      let lse = new Float32Array(0);
      let grads: (Float32Array | null)[] = [];
      groups.forEach((rows, gi) => {
        const withMargin = own[rows[0]!] === 1;
        const pick = <T extends Float32Array | Int32Array>(a: T): T => {
          const out = new (a.constructor as new (n: number) => T)(rows.length);
          rows.forEach((n, i) => (out[i] = a[n]!));
          return out;
        };
        const og: ResolvedLossOptions = {
          ...o,
          logits: withMargin ? o.logits : { ...o.logits, margin: 0, angularMargin: 0 },
          gradScale: o.gradScale instanceof Float32Array ? pick(o.gradScale) : o.gradScale,
        };
        const r: LocalRun = parts[gi]!.run(og, pick(labels));
        if (r.loss instanceof Float32Array) {
          if (!(loss instanceof Float32Array)) loss = new Float32Array(N);
          const l = loss;
          rows.forEach((n, i) => (l[n] = (r.loss as Float32Array)[i]!));
        } else {
          loss = (loss as number) + r.loss;
        }
        if (r.lse.length === rows.length) {
          if (lse.length !== N) lse = new Float32Array(N);
          rows.forEach((n, i) => (lse[n] = r.lse[i]!));
        }
        if (grads.length === 0) grads = r.grads.map(() => null);
        r.grads.forEach((g, k) => {
          if (g === null || g === undefined) return;
          if (k === 0) { // dEmbeddings [rows, D]: scattered back
            const D = g.length / rows.length;
            const dE = (grads[0] ??= new Float32Array(N * D));
            rows.forEach((n, i) => dE.set(g.subarray(i * D, (i + 1) * D), n * D));
          } else if (grads[k] === null || grads[k] === undefined) {
            grads[k] = g; // dClassifier, dBias: summed over the groups
          } else {
            const acc = grads[k]!;
            for (let j = 0; j < acc.length; j++) acc[j]! += g[j]!;
          }
        });
        p.workspaceBytes = Math.max(p.workspaceBytes ?? 0, parts[gi]!.workspaceBytes ?? 0);
      });
      return { loss, lse, grads };
    },
  };
}

function denseProblem(b: Backend, m: Matrix): LocalProblem {
  let values: Float32Array | null = null;
  return {
    rows: m.rows,
    vocab: m.cols,
    run(o, labels) {
      const r = b.crossEntropy(m, labels, o);
      return { loss: r.loss, lse: r.lse, grads: [r.dLogits] };
    },
    rawLogit(row, col) {
      values ??= toF32(m);
      return values[row * m.cols + col]!;
    },
    addLogitGrad(grads, row, col, c) {
      grads[0]![row * m.cols + col]! += c;
    },
  };
}

function linearProblem(b: Backend, E: Matrix, W: Matrix, bias: Float32Array | null, logits: ResolvedLogits): LocalProblem {
  const D = E.cols;
  let e: Float32Array | null = null;
  let w: Float32Array | null = null;
  // harmonic logits (math.ts): each shard's distances are its own, so the label column's logit and gradient are local too
  const harmonic = logits.kind === LOGITS_HARMONIC ? harmonicExponent(logits, D) : 0;
  const sqDistance = (row: number, col: number): number => {
    let s = 0;
    for (let d = 0; d < D; d++) s += (e![row * D + d]! - w![col * D + d]!) ** 2;
    return s;
  };
  const p: LocalProblem = {
    rows: E.rows,
    vocab: W.rows,
    run(o, labels) {
      const r = b.linearCrossEntropy(E, W, labels, o);
      if (r.workspaceBytes !== undefined) p.workspaceBytes = Math.max(p.workspaceBytes ?? 0, r.workspaceBytes);
      return { loss: r.loss, lse: r.lse, grads: [r.dEmbeddings, r.dClassifier, r.dBias] };
    },
    rawLogit(row, col) {
      e ??= toF32(E);
      w ??= toF32(W);
      if (harmonic > 0) return harmonicLogit(sqDistance(row, col), harmonic);
      let s = bias === null ? 0 : bias[col]!;
      for (let d = 0; d < D; d++) s += e[row * D + d]! * w[col * D + d]!;
      return s;
    },
    addLogitGrad(grads, row, col, c) {
      e ??= toF32(E);
      w ??= toF32(W);
      const [dE, dW, dB] = grads;
      if (harmonic > 0) { // dz/de = −n·(e − w)/d², dz/dw = −n·(w − e)/d²
        const h = harmonicGrad(c, sqDistance(row, col), harmonic);
        for (let d = 0; d < D; d++) {
          const diff = e[row * D + d]! - w[col * D + d]!;
          dE![row * D + d]! -= h * diff;
          dW![col * D + d]! += h * diff;
        }
        return;
      }
      for (let d = 0; d < D; d++) {
        dE![row * D + d]! += c * w[col * D + d]!;
        dW![col * D + d]! += c * e[row * D + d]!;
      }
      if (dB !== null && dB !== undefined) dB[col]! += c;
    },
    subset(rows) {
      const Ctor = E.data.constructor as new (n: number) => Float32Array | Uint16Array;
      const data = new Ctor(rows.length * D);
      rows.forEach((n, i) => data.set(E.data.subarray(n * D, (n + 1) * D), i * D));
      return linearProblem(b, { data, rows: rows.length, cols: D, dtype: E.dtype, shape: [rows.length, D] }, W, bias, logits);
    },
  };
  return p;
}

function addInto(acc: (Float32Array | null)[], more: (Float32Array | null)[]): void {
  for (let i = 0; i < acc.length; i++) {
    const a = acc[i];
    const m = more[i];
    if (a === null || a === undefined || m === null || m === undefined) continue;
    for (let j = 0; j < a.length; j++) a[j]! += m[j]!;
  }
}

/** sharded crossEntropy on column-sharded logits, or null when the options ask for none. */
export function scaleOutCrossEntropy(
  b: Backend, m: Matrix, labels: unknown, options: unknown,
): (CrossEntropyOutput & { returnLse: boolean }) | null {
  const so = splitOptions(options, 'crossEntropy');
  if (so === null) return null;
  const o = resolveLossOptions(so.rest, m.rows, m.cols, m.dtype, false);
  const r = runScaleOut(denseProblem(b, m), so, o, labels);
  return { loss: r.loss, lse: r.lse, dLogits: r.grads[0] ?? null, returnLse: o.returnLse };
}

/** sharded linearCrossEntropy, or null when the options ask for none. */
export function scaleOutLinearCrossEntropy(
  b: Backend, E: Matrix, W: Matrix, labels: unknown, options: unknown,
): (LinearCrossEntropyOutput & { returnLse: boolean }) | null {
  const so = splitOptions(options, 'linearCrossEntropy');
  if (so === null) return null;
  if (E.cols !== W.cols) {
    throw new CutlossError('E_SHAPE', `linearCrossEntropy: embeddings [N, D] and classifier [V, D] must share D; got D = ${E.cols} and ${W.cols}`);
  }
  const dtype = E.dtype === 'bf16' || W.dtype === 'bf16' ? 'bf16' : 'f32';
  const o = resolveLossOptions(so.rest, E.rows, W.rows, dtype, true);
  const p = linearProblem(b, E, W, o.bias, o.logits);
  const r = runScaleOut(p, so, o, labels);
  const [dE, dW, dB] = r.grads;
  const out: LinearCrossEntropyOutput & { returnLse: boolean } = {
    loss: r.loss, lse: r.lse, dEmbeddings: dE ?? null, dClassifier: dW ?? null, dBias: dB ?? null, returnLse: o.returnLse,
  };
  if (p.workspaceBytes !== undefined) out.workspaceBytes = p.workspaceBytes;
  return out;
}

interface Result {
  loss: number | Float32Array;
  lse: Float32Array;
  grads: (Float32Array | null)[];
}

function runScaleOut(p: LocalProblem, so: ScaleOut, o: ResolvedLossOptions, labels: unknown): Result {
  if (so.vocab !== null) return vocabParallel(p, o, labels, so.vocab);
  const t = resolveLabels(labels, p.rows, p.vocab, o.ignoreIndex);
  return dataParallel(p, o, t, so.data!);
}

// ---- data-parallel

function dataParallel(p: LocalProblem, o: ResolvedLossOptions, labels: Int32Array, comm: Communicator): Result {
  if (o.reduction === 'none') return p.run(o, labels);
  if (o.reduction === 'sum') {
    const r = p.run(o, labels);
    const total = Float64Array.of(r.loss as number);
    comm.allReduce(total, 'sum');
    return { ...r, loss: total[0]! };
  }
  const counts = new Float64Array(2); // [non-ignored rows, Σ target weights]
  for (const t of labels) {
    if (t === o.ignoreIndex) continue;
    counts[0]!++;
    counts[1]! += o.classWeights === null ? 1 : o.classWeights[t]!;
  }
  comm.allReduce(counts, 'sum');
  const [count, weightSum] = counts as unknown as [number, number];
  if (count === 0) return p.run(o, labels); // every rank: all ignored, NaN and zero gradients
  // Σ w·ℓ / Σw + Σ u / count = (Σ (κw)·ℓ + Σ u) / count with κ = count / Σw: one call, reduced
  // as a sum scaled by 1/count, gives this rank's exact share of the global mean.
  const kappa = count / weightSum;
  const classWeights = o.classWeights === null ? null : Float32Array.from(o.classWeights, (w) => w * kappa);
  const g = o.gradScale as number;
  const r = p.run({ ...o, reduction: 'none', classWeights, gradScale: g / count }, labels);
  let sum = 0;
  for (const l of r.loss as Float32Array) sum += l;
  const total = Float64Array.of(sum);
  comm.allReduce(total, 'sum');
  return { ...r, loss: total[0]! / count };
}

// ---- vocabulary-parallel

function vocabParallel(p: LocalProblem, o: ResolvedLossOptions, labels: unknown, vp: VocabSplit): Result {
  const N = p.rows;
  const Vl = p.vocab;
  const { comm, start, size: V } = vp;
  if (start + Vl > V) {
    throw new CutlossError('E_SHAPE', `vocabParallel: classes [${start}, ${start + Vl}) of this rank exceed vocabSize ${V}`);
  }
  if (o.normalizer === NORMALIZER_SPARSEMAX) {
    // its threshold τ needs the sorted top of each row over every rank: not a fixed number of sums
    throw new CutlossError('E_OPTION', "vocabParallel: normalizer 'sparsemax' is not supported sharded (its threshold needs the whole row)");
  }
  if (o.normalizer === NORMALIZER_GUMBEL) {
    // Σ_{j≠t} ψ(z_j) adds up over ranks, but a rank without the row's label would need its local
    // Σ ψ with no label term: a local call has one (u_k at some column k), and subtracting it
    // cancels exactly where a trained model's negatives sit (z ≪ 0, u_k ≫ Σ ψ)
    throw new CutlossError('E_OPTION', "vocabParallel: normalizer 'gumbel' is not supported sharded (a rank's label-free row sum would cancel)");
  }
  const t = resolveLabels(labels, N, V, o.ignoreIndex);
  const margin = labelMarginOf(o.logits); // cosine logits' label map (lib/cosine.ts)
  const stable = o.normalizer === NORMALIZER_STABLEMAX;
  const smooth = o.smoothing > 0;
  const sq = o.squentropy !== 0 && V > 1;
  const w = o.classWeights;

  // local labels: the own class, any local class (0) for rows owned elsewhere, -1 for ignored rows
  const local = new Int32Array(N);
  const own = new Uint8Array(N);
  const zk = new Float64Array(N); // effective logit of the local label column
  for (let n = 0; n < N; n++) {
    const label = t[n]!;
    if (label === o.ignoreIndex) {
      local[n] = -1;
      continue;
    }
    const c = label - start;
    if (c >= 0 && c < Vl) {
      local[n] = c;
      own[n] = 1;
    }
    const x = p.rawLogit(n, local[n]!);
    zk[n] = effectiveLogit(margin !== null && own[n] ? marginLabelLogit(margin, x) : x, o.softcap, o.invTemperature);
  }
  if (margin !== null) p = ownedApart(p, own);
  const base: ResolvedLossOptions = {
    ...o, reduction: 'none', ignoreIndex: -1, smoothing: 0, classWeights: null, zLoss: 0, focalGamma: 0, polyEpsilon: 0,
    squentropy: 0, computeGrad: false, gradScale: 1, returnLse: true,
  };
  // label smoothing α' = ½ (backends take α < 1): its loss minus the plain loss's label part isolates the spread sum
  const PROBE = 0.5;
  const smoothOptions: ResolvedLossOptions = { ...base, smoothing: PROBE, classWeights: w };
  const wk = (n: number): number => (w === null ? 1 : w[local[n]!]!);
  const sqOptions: ResolvedLossOptions = { ...base, squentropy: 1 };

  // 1. local statistics
  const f1 = p.run(base, local);
  const l1 = f1.loss as Float32Array;
  const l2 = smooth ? (p.run(smoothOptions, local).loss as Float32Array) : null;
  const l3 = sq && Vl > 1 ? (p.run(sqOptions, local).loss as Float32Array) : null;
  let wSumLocal = Vl;
  if (w !== null) {
    wSumLocal = 0;
    for (let j = 0; j < Vl; j++) wSumLocal += w[j]!;
  }

  // 2. global statistics
  const M = Float64Array.from(f1.lse);
  comm.allReduce(M, 'max');
  const F = 3 + (stable ? 1 : 0) + (smooth ? 1 : 0) + (sq ? 1 : 0);
  const S = new Float64Array(N * F + 2);
  const iStable = 3;
  const iSmooth = 3 + (stable ? 1 : 0);
  const iSq = iSmooth + (smooth ? 1 : 0);
  const stableLocal = stable ? new Float64Array(N) : null;
  for (let n = 0; n < N; n++) {
    const o0 = n * F;
    const lseL = f1.lse[n]!;
    const m = M[n]!;
    S[o0] = m === Infinity || m === -Infinity ? (lseL === m ? 1 : 0) : Math.exp(lseL - m);
    if (local[n]! < 0) continue;
    if (own[n]) {
      S[o0 + 1] = zk[n]!;
      S[o0 + 2] = w === null ? 1 : w[local[n]!]!;
    }
    if (stableLocal !== null) {
      // the local StableMax loss is log S_local − log s(z_k)
      stableLocal[n] = Math.exp(l1[n]! + stablemaxLogS(zk[n]!));
      S[o0 + iStable] = stableLocal[n]!;
    }
    if (l2 !== null) {
      // spreadLoss_local = W_local·L_local − Σ_local w·(z or log s); the global spread term adds W·L back
      const spreadLocal = ((l2[n]! - (1 - PROBE) * wk(n) * l1[n]!) * Vl) / PROBE;
      S[o0 + iSmooth] = spreadLocal - wSumLocal * (stable ? Math.log(stableLocal![n]!) : lseL - m);
    }
    if (sq) {
      // the backend leaves out column k: put it back where k is not the label
      S[o0 + iSq] = (l3 === null ? 0 : (l3[n]! - l1[n]!) * (Vl - 1)) + (own[n] ? 0 : zk[n]! * zk[n]!);
    }
  }
  S[N * F] = Vl;
  S[N * F + 1] = wSumLocal;
  comm.allReduce(S, 'sum');
  if (S[N * F] !== V) {
    throw new CutlossError('E_SHAPE', `vocabParallel: the ranks' classes add up to ${S[N * F]}, not vocabSize ${V}`);
  }
  const wSum = w === null ? V : S[N * F + 1]!;

  // per-row losses and the reduction, as lib/js/fusedLoss.ts
  const k: LossConstants = {
    vocab: V, normalizer: o.normalizer, smoothing: o.smoothing, focalGamma: o.focalGamma, polyEpsilon: o.polyEpsilon,
    zLoss: o.zLoss, squentropy: o.squentropy,
  };
  const lse = new Float32Array(N);
  const stats: RowStats[] = new Array<RowStats>(N);
  const counts = new Float64Array(2);
  for (let n = 0; n < N; n++) {
    const o0 = n * F;
    const m = M[n]!;
    const logSum = Math.log(S[o0]!);
    const lseG = m === Infinity || m === -Infinity ? m : m + logSum;
    lse[n] = lseG;
    if (local[n]! < 0) continue;
    const stableSum = stable ? S[o0 + iStable]! : 0;
    const spread = smooth ? S[o0 + iSmooth]! + wSum * (stable ? Math.log(stableSum) : logSum) : 0;
    stats[n] = {
      lse: lseG, logSum, zLabel: S[o0 + 1]!, zMax: m,
      spreadGap: smooth && !stable ? (o.smoothing / V) * S[o0 + iSmooth]! : 0, // (α/V)·Σ w (m − z)
      sumWeightedLogS: smooth && stable ? wSum * Math.log(stableSum) - spread : 0,
      sumSqOthers: sq ? S[o0 + iSq]! : 0,
      stableSum, tau: 0, omega: 0, support: 0,
    };
    counts[0]!++;
    counts[1]! += S[o0 + 2]!;
  }
  const [nValid, sumTargetWeights] = counts as unknown as [number, number];

  const perRow = o.reduction === 'none' ? new Float32Array(N) : null;
  const totals = new Float64Array(2);
  const grad = o.computeGrad ? { s1: new Float32Array(N), s2: new Float32Array(N), s3: new Float32Array(N), s4: new Float32Array(N), delta: new Float64Array(N) } : null;
  for (let n = 0; n < N; n++) {
    const st = stats[n];
    if (st === undefined) continue;
    const o0 = n * F;
    const wLabel = S[o0 + 2]!;
    const rl = rowLoss(k, st, wLabel, wSum);
    if (perRow !== null) perRow[n] = rl.loss;
    totals[0]! += rl.weighted;
    totals[1]! += rl.unweighted;
    if (grad === null) continue;
    const g = typeof o.gradScale === 'number' ? o.gradScale : o.gradScale[n]!;
    let sW = g;
    let sU = g;
    if (o.reduction === 'mean') {
      sW = sumTargetWeights === 0 ? NaN : g / sumTargetWeights;
      sU = g / nValid;
    }
    const rg = rowGrad(k, st, rl, wLabel, sW, sU);
    // dloss/dz_j = P·q_j + Lab·[j = t] − spread·w_j·(1 or dlog s_j) + sqCoef·z_j·[j ≠ t] (+ zCoef·p_j for
    // StableMax), q the global softmax (or s'(z)/S); the local calls give q scaled by `ratio`
    const ratio = stable ? stableLocal![n]! / st.stableSum : Math.exp(f1.lse[n]! - st.lse);
    const P = (stable ? 0 : rg.zCoef) + rg.mass - rg.kappa * rg.pLabel;
    const s2 = smooth ? Math.fround((rg.spread * Vl) / PROBE) : 0;
    const keep2 = (1 - PROBE) * wk(n); // the probe's own label term, at column k
    const s3 = sq && Vl > 1 ? Math.fround((rg.sqCoef * (Vl - 1)) / 2) : 0;
    const s1 = Math.fround(P * ratio - s2 * (keep2 + (PROBE * wSumLocal) / Vl) - s3);
    const s4 = stable && o.zLoss !== 0 ? Math.fround(rg.zCoef * Math.exp(f1.lse[n]! - st.lse)) : 0;
    const ck = stable ? stablemaxDlogS(zk[n]!) : 1; // what a local call puts at its label column
    const labelTerm = own[n] ? (rg.kappa * rg.pLabel - rg.keep) * ck : rg.sqCoef * zk[n]!;
    grad.s1[n] = s1;
    grad.s2[n] = s2;
    grad.s3[n] = s3;
    grad.s4[n] = s4;
    grad.delta[n] = labelTerm + (s1 + s3 + s2 * keep2) * ck + s4;
  }
  let loss: number | Float32Array;
  if (perRow !== null) loss = perRow;
  else if (o.reduction === 'sum') loss = totals[0]! + totals[1]!;
  else loss = nValid === 0 ? NaN : totals[0]! / sumTargetWeights + totals[1]! / nValid;

  // 3. gradients against the global statistics
  let grads: (Float32Array | null)[] = [];
  if (grad !== null) {
    const back: ResolvedLossOptions = { ...base, computeGrad: true, returnLse: false };
    grads = p.run({ ...back, gradScale: grad.s1 }, local).grads;
    if (smooth) addInto(grads, p.run({ ...smoothOptions, computeGrad: true, returnLse: false, gradScale: grad.s2 }, local).grads);
    if (sq && Vl > 1) addInto(grads, p.run({ ...sqOptions, computeGrad: true, returnLse: false, gradScale: grad.s3 }, local).grads);
    if (stable && o.zLoss !== 0) {
      addInto(grads, p.run({ ...back, normalizer: NORMALIZER_SOFTMAX, gradScale: grad.s4 }, local).grads);
    }
    for (let n = 0; n < N; n++) {
      const d = grad.delta[n]!;
      if (local[n]! < 0 || d === 0) continue;
      const x = p.rawLogit(n, local[n]!);
      const mapped = margin !== null && own[n] === 1;
      const slope = mapped ? effectiveSlope(marginLabelLogit(margin, x), o.softcap, o.invTemperature) * marginLabelSlope(margin, x)
        : effectiveSlope(x, o.softcap, o.invTemperature);
      p.addLogitGrad(grads, n, local[n]!, d * slope);
    }
    // 4. dEmbeddings: every rank's classes contribute to every row
    if (grads.length === 3 && grads[0] !== null) comm.allReduce(grads[0]!, 'sum');
  }
  return { loss, lse, grads };
}
