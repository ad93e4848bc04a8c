// Harmonic logits (Baek et al. 2025) as a logit source of the blockwise engine (fusedLoss.ts):
// each tile is E_tile·W_tileᵀ turned into −(n/2)·log d² with the squared norms r_i = ‖e_i‖²,
// c_j = ‖w_j‖² computed once; the backward's dloss/dlogit G becomes H = n·G/d² and goes
// through the same two products as the dot logits' gradient, plus per-row and per-class sums
// of H for the −e_i·Σ_j H_ij and −w_j·Σ_i H_ij terms (math.ts harmonicGrad).

import { allocate } from '../alloc.js';
import { gemmNNAcc, gemmTNAcc } from './gemm.js';
import type { LogitSource } from './fusedLoss.js';
import { harmonicGrad, harmonicLogit, harmonicSqDistance } from './math.js';

/** ‖row‖² of each of `rows` rows of width D, in float64. */
export function squaredRowNorms(M: Float32Array, rows: number, D: number): Float64Array {
  const out = allocate(Float64Array, rows, 'norms');
  for (let i = 0; i < rows; i++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += M[i * D + d]! * M[i * D + d]!;
    out[i] = s;
  }
  return out;
}

export class HarmonicLogits implements LogitSource {
  readonly dE: Float64Array | null;
  readonly dW: Float32Array | null;
  readonly dBias = null; // harmonic logits take no bias
  private readonly dWTile: Float64Array | null;
  private readonly wT: Float64Array;
  private readonly rowSq: Float64Array;
  private readonly colSq: Float64Array;
  /** Σ_j H_ij so far; Σ_i H_ij of the current class tile. */
  private readonly rowSumH: Float64Array | null;
  private readonly colSumH: Float64Array | null;
  /** d² of the tile fill() computed last: the backward's accumulateGrad follows it for the same tile. */
  private readonly sq: Float64Array;
  private sqTile = [-1, 0, -1, 0];
  private wTileStart = -1;
  private wTileCols = 0;
  constructor(
    private readonly E: Float32Array,
    private readonly W: Float32Array,
    private readonly N: number,
    private readonly D: number,
    V: number,
    tileRows: number,
    tileCols: number,
    private readonly exponent: number,
    withGrad: boolean,
    dWDest: Float32Array | null,
  ) {
    const TC = Math.min(tileCols, V);
    this.dE = withGrad ? allocate(Float64Array, N * D, 'dE') : null;
    this.dW = withGrad ? dWDest?.fill(0) ?? allocate(Float32Array, V * D, 'dW') : null;
    this.dWTile = withGrad ? allocate(Float64Array, TC * D, 'dWTile') : null;
    this.rowSumH = withGrad ? allocate(Float64Array, N, 'rowSumH') : null;
    this.colSumH = withGrad ? allocate(Float64Array, TC, 'colSumH') : null;
    this.wT = allocate(Float64Array, TC * D, 'wT');
    this.sq = allocate(Float64Array, Math.min(tileRows, N) * TC, 'sq');
    this.rowSq = squaredRowNorms(E, N, D);
    this.colSq = squaredRowNorms(W, V, D);
  }
  fill(r0: number, nr: number, c0: number, nc: number, out: Float64Array): void {
    const { D, sq, exponent } = this;
    if (c0 !== this.wTileStart || nc !== this.wTileCols) this.transposeWTile(c0, nc);
    out.fill(0, 0, nr * nc);
    gemmNNAcc(nr, D, nc, this.E, r0 * D, D, this.wT, 0, nc, out, 0, nc);
    for (let r = 0; r < nr; r++) {
      for (let j = 0; j < nc; j++) {
        const k = r * nc + j;
        sq[k] = harmonicSqDistance(this.rowSq[r0 + r]!, this.colSq[c0 + j]!, out[k]!);
        out[k] = harmonicLogit(sq[k]!, exponent);
      }
    }
    this.sqTile = [r0, nr, c0, nc];
  }
  private transposeWTile(c0: number, nc: number): void {
    const { D, W, wT } = this;
    for (let j = 0; j < nc; j++) {
      for (let d = 0; d < D; d++) wT[d * nc + j] = W[(c0 + j) * D + d]!;
    }
    this.wTileStart = c0;
    this.wTileCols = nc;
  }
  beginClassTile(): void {
    this.dWTile!.fill(0);
    this.colSumH!.fill(0);
  }
  accumulateGrad(r0: number, nr: number, c0: number, nc: number, grad: Float64Array): void {
    const { D, sq, exponent } = this;
    const [fr0, fnr, fc0, fnc] = this.sqTile;
    if (fr0 !== r0 || fnr !== nr || fc0 !== c0 || fnc !== nc) this.fill(r0, nr, c0, nc, allocate(Float64Array, nr * nc, 'tile'));
    const rowSum = this.rowSumH!;
    const colSum = this.colSumH!;
    for (let r = 0; r < nr; r++) {
      let s = 0;
      for (let j = 0; j < nc; j++) {
        const k = r * nc + j;
        const h = harmonicGrad(grad[k]!, sq[k]!, exponent);
        grad[k] = h;
        s += h;
        colSum[j] += h;
      }
      rowSum[r0 + r] += s;
    }
    gemmNNAcc(nr, nc, D, grad, 0, nc, this.W, c0 * D, D, this.dE!, r0 * D, D, true);
    gemmTNAcc(nr, nc, D, grad, 0, nc, this.E, r0 * D, D, this.dWTile!, 0, D, true);
  }
  endClassTile(c0: number, nc: number): void {
    // dW_j = Σ_i H_ij·e_i − w_j·Σ_i H_ij, complete once every row tile has been visited
    const { D, W } = this;
    const t = this.dWTile!;
    for (let j = 0; j < nc; j++) {
      const h = this.colSumH![j]!;
      for (let d = 0; d < D; d++) t[j * D + d] -= h * W[(c0 + j) * D + d]!;
    }
    this.dW!.set(t.subarray(0, nc * D), c0 * D);
  }
  /** dE_i −= e_i·Σ_j H_ij, after the engine's last tile. */
  finish(): void {
    const { D, E, N } = this;
    const dE = this.dE;
    if (dE === null) return;
    for (let i = 0; i < N; i++) {
      const h = this.rowSumH![i]!;
      if (h !== 0) for (let d = 0; d < D; d++) dE[i * D + d] -= h * E[i * D + d]!;
    }
  }
}
