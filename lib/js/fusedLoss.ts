// The blockwise loss engine behind crossEntropy and linearCrossEntropy on the reference
// backend. It walks tiles of (rows × classes), vocabulary tiles outermost:
//   forward:  per row an online log-sum-exp plus the few sums its options need
//             (label logit, smoothing's gaps Σ w·(max − z), Σ z² for squentropy, StableMax's Σ s(z), Gumbel's Σ ψ(z),
//             sparsemax candidates); nothing of size N×V is kept;
//   backward: recompute each tile, turn it into dloss/dx with math.ts's epilogue, and hand
//             it to the logit source (which folds it into dE/dW, or writes dLogits).
// Where the logits come from is the LogitSource's business, so both losses share this code.

import { allocate, f32Copy } from '../alloc.js';
import { CutlossError } from '../errors.js';
import { sparsemaxThreshold } from './sparse.js';
import {
  NORMALIZER_GUMBEL, NORMALIZER_SPARSEMAX, NORMALIZER_STABLEMAX, effectiveLogit, gumbelPsi, effectiveSlope, gradCoefficient, lseOfBlock,
  lseValue, marginLabelLogit, marginLabelSlope, mergeLse, rowGrad, rowLoss, SEARCH_DONE, SPARSEMAX_PASS_LIMIT, sparsemaxSearchStart, sparsemaxSearchStep,
  stablemaxLogS, stablemaxS, type LabelMargin, type LossConstants, type RowGrad, type RowStats, type SparsemaxSearch, rowGradScale,
} from './math.js';

export type Reduction = 'mean' | 'sum' | 'none';

export interface LossConfig extends LossConstants {
  rows: number;
  labels: Int32Array;
  ignoreIndex: number;
  reduction: Reduction;
  classWeights: Float32Array | null;
  softcap: number; // 0 = off
  invTemperature: number;
  computeGrad: boolean;
  gradScale: number | Float32Array;
  filterEps: number; // 0 = exact
  tileRows: number;
  tileCols: number;
  /** Margin softmax: the label's raw logit goes through math.ts's marginLabelLogit (absent: as it is). */
  labelMargin?: LabelMargin | null;
}

/** Where raw logits come from, and where their gradient goes, one tile at a time. */
export interface LogitSource {
  /** Raw logits of rows [r0, r0 + nr) × classes [c0, c0 + nc) into `out` (row stride nc). */
  fill(r0: number, nr: number, c0: number, nc: number, out: Float64Array): void;
  /** Called before the backward visits the row tiles of classes [c0, c0 + nc). */
  beginClassTile(c0: number, nc: number): void;
  /** dloss/dx for that tile (row stride nc). Skipped tiles are never passed. */
  accumulateGrad(r0: number, nr: number, c0: number, nc: number, grad: Float64Array): void;
  endClassTile(c0: number, nc: number): void;
}

export interface LossOutput {
  loss: number | Float32Array;
  lse: Float32Array;
  /** Tiles the backward skipped through filterEps, of all it visited. */
  skippedTiles: number;
  visitedTiles: number;
  /** Passes over the vocabulary the sparsemax threshold search took for crowded rows (0: none). */
  sparsemaxPasses: number;
}

// Sparsemax support lies within 1 of the row max; rows keep those candidates up to this
// many, and rows with more fall back to the threshold search's passes over the tiles.
const SPARSEMAX_CANDIDATE_CAP = 256;

class SparsemaxCandidates {
  values: Float64Array[];
  counts: Int32Array;
  overflow: Uint8Array;
  constructor(rows: number) {
    this.values = new Array<Float64Array>(rows);
    this.counts = allocate(Int32Array, rows, 'counts');
    this.overflow = allocate(Uint8Array, rows, 'overflow');
  }
  /** Keeps z when it is within 1 of the running max (compared as a gap: exact for huge z). */
  push(row: number, z: number, max: number): void {
    if (this.overflow[row]) return;
    let buf = this.values[row];
    let n = this.counts[row]!;
    if (buf === undefined) buf = this.values[row] = new Float64Array(8);
    if (n === buf.length) {
      let kept = 0; // drop values that a larger max has since pushed out of reach
      for (let i = 0; i < n; i++) if (buf[i]! - max > -1) buf[kept++] = buf[i]!;
      n = kept;
      if (n === buf.length) {
        if (n >= SPARSEMAX_CANDIDATE_CAP) {
          this.overflow[row] = 1;
          this.values[row] = new Float64Array(0);
          return;
        }
        const grown = new Float64Array(n * 2);
        grown.set(buf);
        buf = this.values[row] = grown;
      }
    }
    buf[n] = z;
    this.counts[row] = n + 1;
  }
}

/**
 * Margin softmax: wraps a source so the label column of each tile it fills is mapped
 * (x → s·φ(x/s)), and that column's dloss/dx is scaled by the map's slope on its way back.
 * The backward fills a tile just before it accumulates that tile's gradient, so the raw label
 * logits of the last fill are the ones the gradient needs.
 */
class MarginAtLabel implements LogitSource {
  private raw = new Float64Array(0);
  constructor(private readonly inner: LogitSource, private readonly lm: LabelMargin, private readonly labels: Int32Array) {}
  fill(r0: number, nr: number, c0: number, nc: number, out: Float64Array): void {
    this.inner.fill(r0, nr, c0, nc, out);
    if (this.raw.length < nr) this.raw = new Float64Array(nr);
    for (let r = 0; r < nr; r++) {
      const t = this.labels[r0 + r]! - c0;
      if (t < 0 || t >= nc) continue;
      this.raw[r] = out[r * nc + t]!;
      out[r * nc + t] = marginLabelLogit(this.lm, out[r * nc + t]!);
    }
  }
  beginClassTile(c0: number, nc: number): void {
    this.inner.beginClassTile(c0, nc);
  }
  accumulateGrad(r0: number, nr: number, c0: number, nc: number, grad: Float64Array): void {
    for (let r = 0; r < nr; r++) {
      const t = this.labels[r0 + r]! - c0;
      if (t >= 0 && t < nc) grad[r * nc + t] = grad[r * nc + t]! * marginLabelSlope(this.lm, this.raw[r]!);
    }
    this.inner.accumulateGrad(r0, nr, c0, nc, grad);
  }
  endClassTile(c0: number, nc: number): void {
    this.inner.endClassTile(c0, nc);
  }
}

function emptyStats(): RowStats {
  return {
    lse: 0, logSum: 0, zLabel: 0, spreadGap: 0, sumSqOthers: 0, stableSum: 0, sumWeightedLogS: 0, zMax: 0, tau: 0, omega: 0,
    support: 0,
  };
}

export function runFusedLoss(cfg: LossConfig, source: LogitSource): LossOutput {
  if (cfg.labelMargin) source = new MarginAtLabel(source, cfg.labelMargin, cfg.labels);
  const N = cfg.rows;
  const V = cfg.vocab;
  const { labels, classWeights } = cfg;
  const TR = Math.max(1, Math.min(cfg.tileRows, N));
  const TC = Math.max(1, Math.min(cfg.tileCols, V));
  const needSmooth = cfg.smoothing > 0;
  const needSq = cfg.squentropy !== 0;
  const stable = cfg.normalizer === NORMALIZER_STABLEMAX;
  const sparse = cfg.normalizer === NORMALIZER_SPARSEMAX;
  const gumbel = cfg.normalizer === NORMALIZER_GUMBEL;

  const rowMax = allocate(Float64Array, N, 'rowMax').fill(-Infinity);
  const rowSum = allocate(Float64Array, N, 'rowSum');
  const zLabel = allocate(Float64Array, N, 'zLabel');
  // Σ_j w_j (rowMax − z_j) over the columns so far (terms ≥ 0: never cancels at |z| ≫ 1), moved by
  // (new max − old max)·Σ w of those columns when a tile raises the max
  const sumWGap = needSmooth ? allocate(Float64Array, N, 'sumWGap') : null;
  let weightBefore = 0; // Σ w_j over the columns before this tile (the same for every row)
  const sumSq = needSq ? allocate(Float64Array, N, 'sumSq') : null;
  const stableSum = stable || gumbel ? allocate(Float64Array, N, 'stableSum') : null; // Σ s(z) or Σ_{j≠t} ψ(z)
  const sumWLogS = stable && needSmooth ? allocate(Float64Array, N, 'sumWLogS') : null;
  const candidates = sparse ? new SparsemaxCandidates(N) : null;

  const tile = allocate(Float64Array, TR * TC, 'tile');

  /** Fills the tile with effective logits z (softcap, temperature). */
  const loadTile = (r0: number, nr: number, c0: number, nc: number): void => {
    source.fill(r0, nr, c0, nc, tile);
    const count = nr * nc;
    if (cfg.softcap > 0 || cfg.invTemperature !== 1) {
      for (let i = 0; i < count; i++) tile[i] = effectiveLogit(tile[i]!, cfg.softcap, cfg.invTemperature);
    }
  };

  // ---- forward: one pass over the tiles
  for (let c0 = 0; c0 < V; c0 += TC) {
    const nc = Math.min(TC, V - c0);
    for (let r0 = 0; r0 < N; r0 += TR) {
      const nr = Math.min(TR, N - r0);
      loadTile(r0, nr, c0, nc);
      for (let r = 0; r < nr; r++) {
        const row = r0 + r;
        const o = r * nc;
        // online log-sum-exp: the tile's (max, Σ exp) partial merged into the row's
        const maxBefore = rowMax[row]!;
        const merged = mergeLse({ max: maxBefore, sum: rowSum[row]! }, lseOfBlock(tile, o, o + nc));
        const m = merged.max;
        rowMax[row] = m;
        rowSum[row] = merged.sum;
        const t = labels[row]! - c0;
        if (t >= 0 && t < nc) zLabel[row] = tile[o + t]!;
        if (sumWGap !== null) {
          let s = 0;
          if (classWeights === null) for (let j = 0; j < nc; j++) s += m - tile[o + j]!;
          else for (let j = 0; j < nc; j++) s += classWeights[c0 + j]! * (m - tile[o + j]!);
          sumWGap[row] = (weightBefore === 0 ? sumWGap[row]! : sumWGap[row]! + (m - maxBefore) * weightBefore) + s;
        }
        if (sumSq !== null) {
          let s = 0;
          for (let j = 0; j < nc; j++) if (j !== t) s += tile[o + j]! * tile[o + j]!;
          sumSq[row] += s;
        }
        if (gumbel) {
          let s = 0;
          for (let j = 0; j < nc; j++) if (j !== t) s += gumbelPsi(tile[o + j]!);
          stableSum![row] += s;
        } else if (stableSum !== null) {
          let s = 0;
          for (let j = 0; j < nc; j++) s += stablemaxS(tile[o + j]!);
          stableSum[row] += s;
          if (sumWLogS !== null) {
            let sl = 0;
            for (let j = 0; j < nc; j++) sl += (classWeights === null ? 1 : classWeights[c0 + j]!) * stablemaxLogS(tile[o + j]!);
            sumWLogS[row] += sl;
          }
        }
        if (candidates !== null) {
          for (let j = 0; j < nc; j++) if (tile[o + j]! - m > -1) candidates.push(row, tile[o + j]!, m);
        }
      }
    }
    if (sumWGap !== null) for (let j = 0; j < nc; j++) weightBefore += classWeights === null ? 1 : classWeights[c0 + j]!;
  }

  const lse = allocate(Float64Array, N, 'lse');
  for (let row = 0; row < N; row++) lse[row] = lseValue({ max: rowMax[row]!, sum: rowSum[row]! });

  // ---- sparsemax thresholds: exact from candidates, the bounded search's passes for crowded rows
  let sparsemaxPasses = 0;
  let tau: Float64Array | null = null;
  let omega: Float64Array | null = null;
  let support: Float64Array | null = null;
  if (candidates !== null) {
    tau = allocate(Float64Array, N, 'tau');
    omega = allocate(Float64Array, N, 'omega');
    support = allocate(Float64Array, N, 'support');
    const crowded: number[] = [];
    for (let row = 0; row < N; row++) {
      if (candidates.overflow[row]) {
        crowded.push(row);
        continue;
      }
      const n = candidates.counts[row]!;
      const shifted = candidates.values[row]!;
      for (let i = 0; i < n; i++) shifted[i] = shifted[i]! - rowMax[row]!; // τ relative to the max
      const th = n > 0 ? sparsemaxThreshold(shifted, n) : { tau: NaN, support: 0, sumSqP: NaN };
      tau[row] = th.tau;
      support[row] = th.support;
      omega[row] = th.tau + 0.5 * (1 + th.sumSqP);
    }
    if (crowded.length > 0) sparsemaxPasses = sparsemaxSearchPasses(crowded, rowMax, tau, omega, support, N, V, TR, TC, loadTile, tile);
  }

  // ---- per-row losses and the reduction
  const valid = allocate(Uint8Array, N, 'valid');
  let nValid = 0;
  let sumTargetWeights = 0;
  for (let row = 0; row < N; row++) {
    const t = labels[row]!;
    if (t === cfg.ignoreIndex) continue;
    valid[row] = 1;
    nValid++;
    sumTargetWeights += classWeights === null ? 1 : classWeights[t]!;
  }
  let sumWeights = V;
  if (classWeights !== null) {
    sumWeights = 0;
    for (let j = 0; j < V; j++) sumWeights += classWeights[j]!;
  }
  const stats = emptyStats();
  const fillStats = (row: number): RowStats => {
    stats.lse = lse[row]!;
    stats.logSum = Math.log(rowSum[row]!);
    stats.zLabel = zLabel[row]!;
    stats.spreadGap = sumWGap === null ? 0 : (cfg.smoothing / V) * sumWGap[row]!;
    stats.sumSqOthers = sumSq === null ? 0 : sumSq[row]!;
    stats.stableSum = stableSum === null ? 0 : stableSum[row]!;
    stats.sumWeightedLogS = sumWLogS === null ? 0 : sumWLogS[row]!;
    stats.zMax = rowMax[row]!;
    stats.tau = tau === null ? 0 : tau[row]!;
    stats.omega = omega === null ? 0 : omega[row]!;
    stats.support = support === null ? 0 : support[row]!;
    return stats;
  };

  const perRow = cfg.reduction === 'none' ? allocate(Float32Array, N, 'perRow') : null;
  let totalWeighted = 0;
  let totalUnweighted = 0;
  const grads: (RowGrad | null)[] = cfg.computeGrad ? new Array<RowGrad | null>(N).fill(null) : [];
  const invScale = cfg.computeGrad ? allocate(Float64Array, N, 'invScale') : null;
  for (let row = 0; row < N; row++) {
    if (!valid[row]) continue;
    const t = labels[row]!;
    const wLabel = classWeights === null ? 1 : classWeights[t]!;
    const st = fillStats(row);
    const rl = rowLoss(cfg, st, wLabel, sumWeights);
    if (perRow !== null) perRow[row] = rl.loss;
    totalWeighted += rl.weighted;
    totalUnweighted += rl.unweighted;
    if (!cfg.computeGrad) continue;
    const g = typeof cfg.gradScale === 'number' ? cfg.gradScale : cfg.gradScale[row]!;
    let sW = g;
    let sU = g;
    if (cfg.reduction === 'mean') {
      // target weights summing to 0: the weighted mean Σ w·ℓ / 0 has no gradient (NaN)
      sW = sumTargetWeights === 0 ? NaN : g / sumTargetWeights;
      sU = g / nValid;
    }
    grads[row] = rowGrad(cfg, st, rl, wLabel, sW, sU);
    const scale = rowGradScale(sW, sU);
    invScale![row] = scale > 0 ? 1 / scale : 0;
  }
  let loss: number | Float32Array;
  if (perRow !== null) loss = perRow;
  else if (cfg.reduction === 'sum') loss = totalWeighted + totalUnweighted;
  else loss = nValid === 0 ? NaN : totalWeighted / sumTargetWeights + totalUnweighted / nValid;

  // ---- backward: recompute each tile, form dloss/dx, skip tiles below filterEps
  let skippedTiles = 0;
  let visitedTiles = 0;
  if (cfg.computeGrad && nValid > 0) {
    const grad = allocate(Float64Array, TR * TC, 'grad');
    for (let c0 = 0; c0 < V; c0 += TC) {
      const nc = Math.min(TC, V - c0);
      source.beginClassTile(c0, nc);
      for (let r0 = 0; r0 < N; r0 += TR) {
        const nr = Math.min(TR, N - r0);
        let anyValid = false;
        for (let r = 0; r < nr; r++) if (grads[r0 + r] !== null) anyValid = true;
        if (!anyValid) continue;
        visitedTiles++;
        source.fill(r0, nr, c0, nc, tile);
        let tileMaxCoef = 0;
        for (let r = 0; r < nr; r++) {
          const row = r0 + r;
          const o = r * nc;
          const rg = grads[row];
          if (rg === null || rg === undefined) {
            grad.fill(0, o, o + nc);
            continue;
          }
          const t = labels[row]! - c0;
          let rowMaxCoef = 0;
          for (let j = 0; j < nc; j++) {
            const x = tile[o + j]!;
            const z = effectiveLogit(x, cfg.softcap, cfg.invTemperature);
            const coef = gradCoefficient(rg, z, j === t, classWeights === null ? 1 : classWeights[c0 + j]!);
            const a = Math.abs(coef);
            if (!(a <= rowMaxCoef)) rowMaxCoef = a; // NaN counts as large: never filtered
            grad[o + j] = coef * effectiveSlope(x, cfg.softcap, cfg.invTemperature);
          }
          const unscaled = rowMaxCoef * invScale![row]!;
          if (!(unscaled <= tileMaxCoef)) tileMaxCoef = unscaled;
        }
        if (tileMaxCoef < cfg.filterEps) {
          skippedTiles++;
          continue;
        }
        source.accumulateGrad(r0, nr, c0, nc, grad);
      }
      source.endClassTile(c0, nc);
    }
  }
  return { loss, lse: f32Copy(lse, 'lse'), skippedTiles, visitedTiles, sparsemaxPasses };
}

/**
 * The threshold search of math.ts (cuda/math/michelot.cuh) for rows whose candidates
 * overflowed: each pass recomputes those rows' tiles and sums, per row, the values z − max above
 * its trial x, rounded to float32 as the kernels hold them (the search's bracket argument needs
 * float32 values). At most SPARSEMAX_PASS_LIMIT passes for any V. Returns the passes taken.
 */
function sparsemaxSearchPasses(
  rows: number[], rowMax: Float64Array, tau: Float64Array, omega: Float64Array, support: Float64Array,
  N: number, V: number, TR: number, TC: number,
  loadTile: (r0: number, nr: number, c0: number, nc: number) => void, tile: Float64Array,
): number {
  const search = new Array<SparsemaxSearch | null>(N).fill(null);
  for (const row of rows) search[row] = sparsemaxSearchStart();
  const count = allocate(Float64Array, N, 'count');
  const sum = allocate(Float64Array, N, 'sum');
  const sumSq = allocate(Float64Array, N, 'sumSq'); // Σ (z − x)² over z > x
  let remaining = rows.length;
  let passes = 0;
  while (remaining > 0) {
    if (passes === SPARSEMAX_PASS_LIMIT) {
      throw new CutlossError('E_INTERNAL', `sparsemax thresholds still unknown after ${passes} passes over the vocabulary`);
    }
    passes++;
    for (const row of rows) count[row] = sum[row] = sumSq[row] = 0;
    for (let c0 = 0; c0 < V; c0 += TC) {
      const nc = Math.min(TC, V - c0);
      for (let r0 = 0; r0 < N; r0 += TR) {
        const nr = Math.min(TR, N - r0);
        let any = false;
        for (let r = 0; r < nr; r++) if (search[r0 + r] !== null) any = true;
        if (!any) continue;
        loadTile(r0, nr, c0, nc);
        for (let r = 0; r < nr; r++) {
          const row = r0 + r;
          const st = search[row];
          if (st === null) continue;
          const x = st.x;
          const m = rowMax[row]!;
          for (let j = 0; j < nc; j++) {
            const z = Math.fround(tile[r * nc + j]! - m);
            if (z > x) {
              count[row]++;
              sum[row] += z;
              sumSq[row] += (z - x) * (z - x);
            }
          }
        }
      }
    }
    for (const row of rows) {
      const st = search[row];
      if (st === null) continue;
      sparsemaxSearchStep(st, count[row]!, sum[row]!, sumSq[row]!);
      if (st.phase !== SEARCH_DONE) continue;
      tau[row] = st.tau;
      support[row] = st.gen;
      omega[row] = st.tau + 0.5 * (1 + st.sumSqP);
      search[row] = null;
      remaining--;
    }
  }
  return passes;
}
