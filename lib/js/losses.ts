// crossEntropy and linearCrossEntropy on the reference backend: two logit sources for the
// shared blockwise engine (fusedLoss.ts). The linear source computes each logit tile as
// E_tile·W_tileᵀ + b and folds the tile's gradient into dE, dW and dBias at once, so the
// N×V logits never exist. Caller-provided outputs (options.out) of f32 are written in place;
// dLogits may be the logits' own array: the backward reads each tile, then writes its gradient.

import { allocate, f32Copy } from '../alloc.js';
import { gemmNNAcc, gemmTNAcc } from './gemm.js';
import { runFusedLoss, type LogitSource, type LossConfig } from './fusedLoss.js';
import { harmonicExponent, labelMarginOf, LOGITS_HARMONIC, type HostOutput, type HostOutputs, type ResolvedLogits } from '../options.js';
import { HarmonicLogits } from './harmonic.js';

/** Tiles sized so a logit tile (64×256 float64 = 128 KiB) and its W rows stay in cache. */
export const DEFAULT_TILE_ROWS = 64;
export const DEFAULT_TILE_COLS = 256;

export type LossSettings = Omit<LossConfig, 'rows' | 'labels' | 'tileRows' | 'tileCols' | 'vocab'> & {
  tileRows?: number;
  tileCols?: number;
  /** Where gradients go; only f32 ones are written here, the facade rounds the rest into bf16 outputs. */
  out?: HostOutputs | null;
  /** linearCrossEntropy's logit kind (absent: dot). */
  logits?: ResolvedLogits;
};

/** The output's array when it takes f32 values, else null (a new array, copied by the facade). */
function f32Dest(o: HostOutput | null | undefined): Float32Array | null {
  return o !== null && o !== undefined && o.data instanceof Float32Array ? o.data : null;
}

class DenseLogits implements LogitSource {
  readonly dLogits: Float32Array | null;
  constructor(private readonly x: Float32Array, private readonly V: number, withGrad: boolean, dest: Float32Array | null) {
    this.dLogits = withGrad ? dest ?? allocate(Float32Array, x.length, 'dLogits') : null;
  }
  fill(r0: number, nr: number, c0: number, nc: number, out: Float64Array): void {
    for (let r = 0; r < nr; r++) {
      const src = (r0 + r) * this.V + c0;
      for (let j = 0; j < nc; j++) out[r * nc + j] = this.x[src + j]!;
    }
  }
  beginClassTile(): void {}
  accumulateGrad(r0: number, nr: number, c0: number, nc: number, grad: Float64Array): void {
    const d = this.dLogits!;
    for (let r = 0; r < nr; r++) {
      const dst = (r0 + r) * this.V + c0;
      for (let j = 0; j < nc; j++) d[dst + j] = grad[r * nc + j]!;
    }
  }
  endClassTile(): void {}
}

class LinearLogits implements LogitSource {
  readonly dE: Float64Array | null;
  readonly dW: Float32Array | null;
  readonly dBias: Float64Array | null;
  private readonly dWTile: Float64Array | null;
  private readonly wT: Float64Array;
  private wTileStart = -1;
  private wTileCols = 0;
  constructor(
    private readonly E: Float32Array,
    private readonly W: Float32Array,
    private readonly bias: Float32Array | null,
    private readonly N: number,
    private readonly D: number,
    V: number,
    tileCols: number,
    withGrad: boolean,
    dWDest: Float32Array | null,
  ) {
    this.dE = withGrad ? allocate(Float64Array, N * D, 'dE') : null;
    // a caller's dW starts zeroed: class tiles are skipped when no row has a gradient
    this.dW = withGrad ? dWDest?.fill(0) ?? allocate(Float32Array, V * D, 'dW') : null;
    this.dWTile = withGrad ? allocate(Float64Array, Math.min(tileCols, V) * D, 'dWTile') : null;
    this.dBias = withGrad && bias !== null ? allocate(Float64Array, V, 'dBias') : null;
    this.wT = allocate(Float64Array, Math.min(tileCols, V) * D, 'wT');
  }
  fill(r0: number, nr: number, c0: number, nc: number, out: Float64Array): void {
    const D = this.D;
    if (c0 !== this.wTileStart || nc !== this.wTileCols) this.transposeWTile(c0, nc);
    out.fill(0, 0, nr * nc);
    gemmNNAcc(nr, D, nc, this.E, r0 * D, D, this.wT, 0, nc, out, 0, nc);
    const b = this.bias;
    if (b !== null) for (let r = 0; r < nr; r++) for (let j = 0; j < nc; j++) out[r * nc + j] += b[c0 + j]!;
  }
  /**
   * Wᵀ of the class tile, so logits accumulate as X += E[:, d]·Wᵀ[d, :] with the class index
   * contiguous; every row tile of the tile reuses it (the walk is class-tile outermost).
   */
  private transposeWTile(c0: number, nc: number): void {
    const { D, W, wT } = this;
    for (let j = 0; j < nc; j++) {
      const src = (c0 + j) * D;
      for (let d = 0; d < D; d++) wT[d * nc + j] = W[src + d]!;
    }
    this.wTileStart = c0;
    this.wTileCols = nc;
  }
  beginClassTile(): void {
    this.dWTile!.fill(0);
  }
  accumulateGrad(r0: number, nr: number, c0: number, nc: number, grad: Float64Array): void {
    const D = this.D;
    gemmNNAcc(nr, nc, D, grad, 0, nc, this.W, c0 * D, D, this.dE!, r0 * D, D, true);
    gemmTNAcc(nr, nc, D, grad, 0, nc, this.E, r0 * D, D, this.dWTile!, 0, D, true);
    const db = this.dBias;
    if (db !== null) for (let r = 0; r < nr; r++) for (let j = 0; j < nc; j++) db[c0 + j] += grad[r * nc + j]!;
  }
  endClassTile(c0: number, nc: number): void {
    // The W tile's gradient is complete once every row tile has been visited.
    this.dW!.set(this.dWTile!.subarray(0, nc * this.D), c0 * this.D);
  }
}

function config(s: LossSettings, rows: number, vocab: number, labels: Int32Array): LossConfig {
  return {
    ...s,
    rows,
    vocab,
    labels,
    tileRows: s.tileRows ?? DEFAULT_TILE_ROWS,
    tileCols: s.tileCols ?? DEFAULT_TILE_COLS,
  };
}

export function crossEntropyJs(logits: Float32Array, N: number, V: number, labels: Int32Array, s: LossSettings) {
  const dest = s.computeGrad ? f32Dest(s.out?.dLogits) : null;
  const source = new DenseLogits(logits, V, s.computeGrad, dest);
  const out = runFusedLoss(config({ ...s, filterEps: 0 }, N, V, labels), source);
  // the backward visits no ignored row: a caller's array (or the logits) still holds other values there
  if (dest !== null) for (let r = 0; r < N; r++) if (labels[r] === s.ignoreIndex) dest.fill(0, r * V, (r + 1) * V);
  return { loss: out.loss, lse: out.lse, dLogits: source.dLogits };
}

export function linearCrossEntropyJs(
  E: Float32Array, W: Float32Array, bias: Float32Array | null,
  N: number, D: number, V: number, labels: Int32Array, s: LossSettings,
) {
  const cfg = config(s, N, V, labels);
  cfg.labelMargin = labelMarginOf(s.logits);
  const harmonic = s.logits?.kind === LOGITS_HARMONIC
    ? new HarmonicLogits(E, W, N, D, V, cfg.tileRows, cfg.tileCols, harmonicExponent(s.logits, D), s.computeGrad, f32Dest(s.out?.dClassifier))
    : null;
  const source = harmonic ?? new LinearLogits(E, W, bias, N, D, V, cfg.tileCols, s.computeGrad, f32Dest(s.out?.dClassifier));
  const out = runFusedLoss(cfg, source);
  harmonic?.finish();
  /** float64 accumulators rounded to f32, into the caller's array when there is one. */
  const rounded = (values: Float64Array | null, dest: Float32Array | null, what: string) => {
    if (values === null) return null;
    if (dest === null) return f32Copy(values, what);
    dest.set(values);
    return dest;
  };
  return {
    loss: out.loss,
    lse: out.lse,
    dEmbeddings: rounded(source.dE, f32Dest(s.out?.dEmbeddings), 'dE'),
    dClassifier: source.dW,
    dBias: rounded(source.dBias, s.out?.dBias ?? null, 'dBias'),
    skippedTiles: out.skippedTiles,
    visitedTiles: out.visitedTiles,
  };
}
