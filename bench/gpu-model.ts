// A performance MODEL (not a measurement: no GPU ran) of the fused linear + cross-entropy CUDA
// kernels on an A100 and an H100, from what the compiler says about them and from their tiling:
//   - `nvcc -Xptxas -v`: registers, shared memory and spills of each kernel, for sm_80 and sm_90;
//   - the PTX of cuda/linear_cross_entropy.cu: the instruction mix of the mma forward's main loop
//     (instructions, ldmatrix and cp.async per mma.sync) and of the backward's element staging;
//   - the tiling (cuda/tile_gemm.cuh): bytes per stage, shared-memory bytes per mma, tiles, atomics.
// Each kernel's time is the largest of its tensor, issue, shared-memory, L2 and DRAM times
// (perfect overlap: a lower bound for the code as it stands), stretched by the last wave.
//
//   npm run bench:gpu-model            compile with nvcc, print the table (and --json for JSON)
//   npm run bench:gpu-model -- --check also fail on spills, local memory, or fewer than 2 mma forward blocks per SM
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { linearCrossEntropyJs } from '../lib/js/losses.js';
import { resolveLossOptions } from '../lib/options.js';

const root = fileURLToPath(new URL('..', import.meta.url));

// ---------------------------------------------------------------- hardware (published figures; assumptions marked)

export interface Gpu {
  name: string;
  sms: number;
  clockHz: number;
  /** Dense tensor-core peaks the kernels' instruction can reach, FLOP/s. */
  bf16: number;
  tf32: number;
  hbm: number; // bytes/s
  l2: number; // bytes/s, ASSUMED (microbenchmark ballpark, not published by the vendor)
  l2Bytes: number; // L2 capacity
  /** red.global.add.v2.f32 (sm_90): a lane's two adjacent columns in one reduction, a quad's 8 in one sector request. */
  vectorRed: boolean;
  smemPerSm: number; // bytes usable by blocks
  smemBytesPerClock: number; // per SM
  regsPerSm: number;
  maxWarpsPerSm: number;
  note: string;
}

export const GPUS: Gpu[] = [
  {
    name: 'A100', sms: 108, clockHz: 1.41e9, bf16: 312e12, tf32: 156e12, hbm: 2.0e12, l2: 5.0e12, l2Bytes: 40 * 2 ** 20, vectorRed: false, smemPerSm: 164 * 1024,
    smemBytesPerClock: 128, regsPerSm: 65536, maxWarpsPerSm: 64,
    note: 'A100 SXM: 108 SMs at 1.41 GHz, 312 TFLOP/s bf16 dense, 2.0 TB/s HBM; L2 5 TB/s assumed',
  },
  {
    name: 'H100', sms: 132, clockHz: 1.83e9, bf16: 989e12 * 0.62, tf32: 494e12 * 0.62, hbm: 3.35e12, l2: 10e12, l2Bytes: 50 * 2 ** 20, vectorRed: true,
    smemPerSm: 228 * 1024, smemBytesPerClock: 128, regsPerSm: 65536, maxWarpsPerSm: 64,
    note: 'H100 SXM: 132 SMs at 1.83 GHz, 989 TFLOP/s bf16 dense of which mma.sync (no wgmma) is assumed to reach 62%, 3.35 TB/s HBM; L2 10 TB/s assumed',
  },
];

// ---------------------------------------------------------------- compiler facts

export interface KernelResources {
  registers: number;
  stackBytes: number;
  spillBytes: number;
  staticSmem: number;
}

/** ptxas -v lines → resources per (mangled kernel name, arch). */
export function parsePtxasLog(log: string): Map<string, KernelResources> {
  const out = new Map<string, KernelResources>();
  let current: string | null = null;
  let res: KernelResources | null = null;
  for (const line of log.split('\n')) {
    const entry = /Compiling entry function '([^']+)' for '(sm_\d+)'/.exec(line);
    if (entry) {
      current = `${entry[1]}@${entry[2]}`;
      res = { registers: 0, stackBytes: 0, spillBytes: 0, staticSmem: 0 };
      out.set(current, res);
      continue;
    }
    if (res === null) continue;
    const frame = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
    if (frame) {
      res.stackBytes = Number(frame[1]);
      res.spillBytes = Number(frame[2]) + Number(frame[3]);
    }
    const used = /Used (\d+) registers/.exec(line);
    if (used) res.registers = Number(used[1]);
    const smem = /(\d+) bytes smem/.exec(line);
    if (smem) res.staticSmem = Number(smem[1]);
  }
  return out;
}

export interface LoopMix {
  instructions: number;
  mma: number;
  ldmatrix: number;
  cpAsync: number;
  barriers: number;
  /** Instructions of the epilogue, which runs once per class tile (every few steps). */
  epilogueInstructions: number;
}

const isInstruction = (l: string) => {
  const t = l.trim();
  return t.endsWith(';') && !t.startsWith('.') && !t.startsWith('//') && !t.startsWith('{') && !t.startsWith('}');
};

/** The body of one .entry in a PTX file. */
export function ptxEntry(ptx: string, nameIncludes: string): string[] {
  const lines = ptx.split('\n');
  const start = lines.findIndex((l) => l.includes('.entry') && l.includes(nameIncludes));
  if (start < 0) throw new Error(`no PTX entry containing ${nameIncludes}`);
  let end = lines.findIndex((l, i) => i > start && l.includes('.entry'));
  if (end < 0) end = lines.length;
  return lines.slice(start, end);
}

/**
 * The mma forward's step (cuda/linear_cross_entropy.cu, linearCeForwardMmaKernel): from the
 * loop's head (the label before its cp.async.wait_group) to the first branch after the step's
 * last mma.sync (the k-loop's back edge, or a branch past the epilogue); the epilogue is what
 * follows up to the class-tile loop's back edge (the first branch back to the head or before it).
 */
export function mmaStepMix(body: string[]): LoopMix {
  const wait = body.findIndex((l) => l.includes('cp.async.wait_group'));
  if (wait < 0) throw new Error('no cp.async.wait_group in the mma forward');
  let head = wait;
  while (head > 0 && !/^\$L__BB\S+:/.test(body[head]!.trim())) head--;
  const label = body[head]!.trim().replace(/:$/, '');
  let lastMma = -1;
  for (let i = wait; i < body.length; i++) {
    if (body[i]!.includes('shfl.sync')) break;
    if (body[i]!.includes('mma.sync')) lastMma = i;
  }
  let stepEnd = lastMma;
  while (stepEnd < body.length && !/\bbra\b/.test(body[stepEnd]!)) stepEnd++;
  const labelAt = new Map<string, number>();
  body.forEach((l, i) => {
    const m = /^(\$L__BB\S+):/.exec(l.trim());
    if (m) labelAt.set(m[1]!, i);
  });
  labelAt.set(label, head);
  let backEdge = body.length - 1;
  for (let i = stepEnd + 1; i < body.length; i++) {
    const m = /bra(?:\.uni)?\s+(\$L__BB\S+);/.exec(body[i]!);
    if (m && (labelAt.get(m[1]!) ?? Infinity) <= head) {
      backEdge = i;
      break;
    }
  }
  const step = body.slice(head, stepEnd + 1);
  const count = (re: RegExp) => step.filter((l) => re.test(l)).length;
  return {
    instructions: step.filter(isInstruction).length,
    mma: count(/mma\.sync/),
    ldmatrix: count(/ldmatrix/),
    cpAsync: count(/cp\.async\.cg/),
    barriers: count(/bar\.sync/),
    epilogueInstructions: body.slice(stepEnd + 1, backEdge + 1).filter(isInstruction).length,
  };
}

/**
 * The FloatTile products' staging (stageOperand in cuda/tile_gemm.cuh): innermost loops that
 * store to shared memory and hold no tensor-core op; instructions per staged element.
 */
export function stagingPerElement(body: string[]): number {
  const labelAt = new Map<string, number>();
  body.forEach((l, i) => {
    const m = /^(\$L__BB\S+):/.exec(l.trim());
    if (m) labelAt.set(m[1]!, i);
  });
  let best = Infinity;
  body.forEach((l, i) => {
    const m = /bra(?:\.uni)?\s+(\$L__BB\S+);/.exec(l);
    if (!m) return;
    const start = labelAt.get(m[1]!);
    if (start === undefined || start >= i) return;
    const loop = body.slice(start, i + 1);
    if (loop.some((x) => /wmma|mma\.sync|bar\.sync/.test(x))) return;
    const stores = loop.filter((x) => /st\.shared/.test(x)).length;
    const loads = loop.filter((x) => /ld\.global/.test(x)).length;
    if (stores === 0 || loads === 0) return;
    best = Math.min(best, loop.filter(isInstruction).length / stores);
  });
  if (!Number.isFinite(best)) throw new Error('no staging loop found');
  return best;
}

// ---------------------------------------------------------------- gradient filtering on trained-like logits (measured)

/** A linear head whose logits look trained: E [N × D], W [V × D] (f32, row-major), labels [N]. */
export interface Head {
  N: number;
  D: number;
  V: number;
  E: Float32Array;
  W: Float32Array;
  labels: Int32Array;
}

/**
 * A synthetic trained-like head: labels Zipf(1)-distributed over the vocabulary (frequency ranks
 * dealt to class ids at random, so the ids say nothing of frequency); W low-rank-plus-prior:
 * coordinate 0 carries 4·log p(c) (a prior sharper than calibrated: a trained tail lies far
 * below), the other D − 1 a random class direction g_c of unit length on average; E_n = (1,
 * b_n·ĝ_t + noise) points at its label's direction with b_n = 3·(−log p(t)), so rare labels are
 * predicted in context too. At N 256, D 32, V 4096: mean loss 1.8 nats, logit σ 5.4.
 */
export function trainedLikeHead(seed: number, N: number, D: number, V: number): Head {
  let state = seed >>> 0;
  const uniform = () => { // mulberry32
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const gauss = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  const rank = Array.from({ length: V }, (_, i) => i);
  for (let i = V - 1; i > 0; i--) {
    const j = Math.floor(uniform() * (i + 1));
    [rank[i], rank[j]] = [rank[j]!, rank[i]!];
  }
  let harmonic = 0;
  for (let k = 1; k <= V; k++) harmonic += 1 / k;
  const logP = rank.map((k) => -Math.log((k + 1) * harmonic));
  const cdf = new Float64Array(V);
  let acc = 0;
  for (let c = 0; c < V; c++) cdf[c] = acc += Math.exp(logP[c]!);
  const W = new Float32Array(V * D);
  for (let c = 0; c < V; c++) {
    W[c * D] = 4 * logP[c]!;
    for (let d = 1; d < D; d++) W[c * D + d] = gauss() / Math.sqrt(D - 1);
  }
  const labels = new Int32Array(N);
  const E = new Float32Array(N * D);
  for (let n = 0; n < N; n++) {
    const u = uniform() * acc;
    let lo = 0;
    let hi = V - 1;
    while (lo < hi) {
      const m = (lo + hi) >> 1;
      if (cdf[m]! < u) lo = m + 1;
      else hi = m;
    }
    labels[n] = lo;
    let norm = 0;
    for (let d = 1; d < D; d++) norm += W[lo * D + d]! ** 2;
    const b = (3 * -logP[lo]!) / Math.sqrt(norm);
    E[n * D] = 1;
    for (let d = 1; d < D; d++) E[n * D + d] = b * W[lo * D + d]! + gauss();
  }
  return { N, D, V, E, W, labels };
}

/** The classes by mean logit over the batch, descending, ties by class: the kernels' vocabulary order
 *  (cuda/linear_cross_entropy.cu, linearCeOrderKeysKernel), here in float64. */
export function meanLogitOrder(h: Head): Int32Array {
  const mean = new Float64Array(h.D);
  for (let n = 0; n < h.N; n++) for (let d = 0; d < h.D; d++) mean[d] += h.E[n * h.D + d]! / h.N;
  const key = new Float64Array(h.V);
  for (let c = 0; c < h.V; c++) for (let d = 0; d < h.D; d++) key[c] += h.W[c * h.D + d]! * mean[d]!;
  return Int32Array.from(Array.from({ length: h.V }, (_, c) => c).sort((a, b) => key[b]! - key[a]! || a - b));
}

/**
 * Tiles of 128 rows × 128 classes (the tensor-core backward's) that gradient filtering skips,
 * walking the vocabulary in `order`: counted by the JS backend's fused loss (lib/js/fusedLoss.ts,
 * the reference of the skip rule: every |coefficient| / row scale of the tile below filterEps),
 * mean cross-entropy, the classes permuted into that order.
 */
export function skippedTiles(h: Head, order: Int32Array | null, filterEps = 2 ** -12): { skipped: number; visited: number } {
  const { N, D, V } = h;
  let W = h.W;
  let labels = h.labels;
  if (order !== null) {
    W = new Float32Array(V * D);
    const position = new Int32Array(V);
    order.forEach((c, j) => {
      W.set(h.W.subarray(c * D, (c + 1) * D), j * D);
      position[c] = j;
    });
    labels = h.labels.map((t) => position[t]!);
  }
  const o = resolveLossOptions({ filterEps }, N, V, 'f32', true);
  const out = linearCrossEntropyJs(h.E, W, null, N, D, V, labels, { ...o, tileRows: 128, tileCols: 128 });
  return { skipped: out.skippedTiles, visited: out.visitedTiles };
}

// ---------------------------------------------------------------- the model

export interface Case {
  name: string;
  N: number;
  D: number;
  V: number;
  dtype: 'bf16' | 'tf32';
}

export const CASES: Case[] = [
  { name: 'CCE paper (Gemma-2 2B head)', N: 8192, D: 2304, V: 256000, dtype: 'bf16' },
  { name: 'S2 (bench:cpu), bf16', N: 2048, D: 512, V: 32000, dtype: 'bf16' },
  { name: 'S2 (bench:cpu), tf32', N: 2048, D: 512, V: 32000, dtype: 'tf32' },
];

export interface ForwardFacts {
  registers: number;
  sharedBytes: number;
  /** Threads a block (the kernel's warps share its 128 × 128 tile). */
  threads: number;
  mix: LoopMix;
}

/** The mma forward's block (cuda/tile_gemm.cuh, kMmaForwardThreads: 2 × 2 warps of 64 × 64) and its
 *  kMmaForwardSharedBytes: the 64 KiB ring and 2 warp columns × 128 rows of 28-byte row states. */
export const MMA_FORWARD = { threads: 128, sharedBytes: 65536 + 2 * 128 * 28 };

/** Blocks an SM holds: registers (allocated per warp in units of 256), shared memory (+1 KiB reserved), warps. */
export function blocksPerSm(gpu: Gpu, registers: number, threads: number, sharedBytes: number): number {
  const perWarp = Math.ceil((registers * 32) / 256) * 256;
  return Math.max(0, Math.min(
    Math.floor(gpu.regsPerSm / (perWarp * (threads / 32))),
    Math.floor(gpu.smemPerSm / (sharedBytes + 1024)),
    Math.floor(gpu.maxWarpsPerSm / (threads / 32)),
  ));
}

export interface Estimate {
  seconds: number;
  bound: string;
  parts: Record<string, number>;
  blocksPerSm: number;
}

/** The mma forward's tiling: 128 × 128 blocks of f.threads threads, 64-byte k-stages, splits of 64-class tiles as the plan makes them. */
export function forwardEstimate(c: Case, gpu: Gpu, f: ForwardFacts): Estimate {
  const bytes = c.dtype === 'bf16' ? 2 : 4;
  const flops = 2 * c.N * c.V * c.D;
  const rowBlocks = Math.ceil(c.N / 128);
  const vocabTiles = Math.ceil(c.V / 64);
  const rowTiles = Math.ceil(c.N / 64);
  const splits = Math.min(64, Math.ceil(1024 / rowTiles), vocabTiles);
  const perSplit = Math.ceil(vocabTiles / splits);
  const classTilesPerBlock = Math.ceil((perSplit * 64) / 128);
  const stagesPerTile = Math.ceil((c.D * bytes) / 64);
  const grid = rowBlocks * Math.ceil(vocabTiles / perSplit);
  const steps = grid * classTilesPerBlock * stagesPerTile;
  const resident = Math.max(1, blocksPerSm(gpu, f.registers, f.threads, f.sharedBytes));
  const waves = grid / (gpu.sms * resident);
  const tail = Math.ceil(waves) / waves;
  const peak = c.dtype === 'bf16' ? gpu.bf16 : gpu.tf32;
  const warps = f.threads / 32;
  // a step's instructions and ldmatrix are per warp; its mma cover the block's 128 × 128 × 64 bytes of K
  const warpInstructions = steps * warps * f.mix.instructions + grid * classTilesPerBlock * warps * f.mix.epilogueInstructions;
  const smemPerStep = warps * f.mix.ldmatrix * 512 + 2 * 128 * 64; // ldmatrix.x4 reads 512 B a warp; the copies write 16 KiB
  const parts = {
    tensor: flops / peak,
    issue: warpInstructions / (gpu.sms * 4 * gpu.clockHz),
    smem: (steps * smemPerStep) / (gpu.sms * gpu.smemBytesPerClock * gpu.clockHz),
    l2: (steps * 2 * 128 * 64) / gpu.l2,
    dram: ((c.N + c.V) * c.D * bytes + c.N * splits * 32) / gpu.hbm,
  };
  const [bound, t] = Object.entries(parts).reduce((a, b) => (b[1] > a[1] ? b : a));
  return { seconds: t * tail, bound, parts, blocksPerSm: resident };
}

/**
 * The backward as it stands (FloatTile products with wmma, atomic mode): per (row tile, vocabulary
 * tile) of 64 × 64 the logits are recomputed and dE, dW formed, each product staging every operand
 * element through shared memory; every product tile is folded in with 4096 scalar fp32 atomics,
 * whose accumulators (dE N·D, dW V·D fp32) do not fit in L2: read and written in DRAM.
 */
export function backwardEstimate(c: Case, gpu: Gpu, stagingInstructions: number): Estimate {
  const flops = 3 * 2 * c.N * c.V * c.D;
  const tiles = Math.ceil(c.N / 64) * Math.ceil(c.V / 64);
  const staged = 3 * tiles * 128 * c.D; // (64 + 64) · K elements per product, three products a tile
  const atomics = tiles * 2 * 64 * c.D; // dE and dW: a 64 × D block each per tile
  const parts = {
    tensor: flops / (c.dtype === 'bf16' ? gpu.bf16 : gpu.tf32),
    issue: (staged * stagingInstructions) / 32 / (gpu.sms * 4 * gpu.clockHz),
    atomics: (atomics * 4 * 2) / gpu.hbm,
  };
  // the atomics trail the products they follow: added, not overlapped
  const seconds = Math.max(parts.tensor, parts.issue) + parts.atomics;
  return { seconds, bound: parts.issue > parts.tensor ? 'issue + atomics' : 'tensor + atomics', parts, blocksPerSm: 1 };
}

export interface LoopFacts {
  instructions: number;
  mma: number;
  ldmatrix: number;
  reductions: number;
}

/**
 * The smallest loop (label … back edge) of a PTX entry that holds every pattern and none of
 * `without`: in the mma backward, the D-slice step (mma.sync and red.global) and the logit step
 * (mma.sync and cp.async.wait_group, no red.global).
 */
export function loopWith(body: string[], patterns: RegExp[], without: RegExp[] = []): LoopFacts {
  const labelAt = new Map<string, number>();
  body.forEach((l, i) => {
    const m = /^(\$L__BB\S+):/.exec(l.trim());
    if (m) labelAt.set(m[1]!, i);
  });
  let best: string[] | null = null;
  body.forEach((l, i) => {
    const m = /bra(?:\.uni)?\s+(\$L__BB\S+);/.exec(l);
    if (!m) return;
    const start = labelAt.get(m[1]!);
    if (start === undefined || start >= i) return;
    const loop = body.slice(start, i + 1);
    if (!patterns.every((re) => loop.some((x) => re.test(x))) || without.some((re) => loop.some((x) => re.test(x)))) return;
    if (best === null || loop.length < best.length) best = loop;
  });
  if (best === null) throw new Error(`no loop with ${patterns.join(', ')}`);
  const loop: string[] = best;
  const count = (re: RegExp) => loop.filter((x) => re.test(x)).length;
  return { instructions: loop.filter(isInstruction).length, mma: count(/mma\.sync/), ldmatrix: count(/ldmatrix/),
    reductions: count(/red\.global|atom\.global/) };
}

/** The mma backward's kernels (cuda/linear_ce_backward.cuh): atomic mode's one, or deterministic mode's two owners. */
export type MmaBackwardMode = 'atomic' | 'ownRows' | 'ownVocab';

export interface MmaBackwardFacts {
  registers: number;
  sharedBytes: number;
  /** One 64-byte k-stage of the logit recomputation (the forward's step). */
  logitStep: LoopFacts;
  /** One 32-column D-slice: dE and dW products and their flush (reductions per thread). */
  sliceStep: LoopFacts;
}

/**
 * The tensor-core backward (cuda/linear_ce_backward.cuh): blocks of 128 rows × a split of the
 * vocabulary, 128-class tiles; per kept tile the logits are recomputed (kStages ring steps), G
 * formed once, and kStages D-slices of 32 columns each do dE += G·W and dW += Gᵀ·E on mma.sync and
 * flush 2 · 128 · 32 fp32 reductions (red.global.add). Assumptions, stated:
 *   - the reductions execute in L2: splits vary fastest in the grid, so the blocks in flight add
 *     into a few row blocks' dE and the split's current dW tiles (tens of MB at most); a warp's
 *     red touches 8 sectors of 4 floats: one sector operation per 4 reductions, at one 32-byte
 *     sector per 32 bytes of L2 bandwidth;
 *   - dW tiles leave L2 between waves: V·D fp32 read and written once per wave, dE once;
 *   - `skipped` is the fraction of tiles gradient filtering skips (products and flush; the
 *     recomputation always runs);
 *   - `dERun`: the class tiles whose G the kernel holds at once and whose dE products it folds in
 *     with one flush (dW rows differ per tile: still one flush each); 2 as built, other values are
 *     projections with registers and issue unchanged; with filtering, every pair is assumed to
 *     keep both of its tiles or neither (a pair keeping one flushes dE for it alone).
 * Deterministic mode (`mode`): 'ownRows' blocks (128 rows × a dE split, ⌈512 / ⌈N/64⌉⌉ splits ≤ 16)
 * recompute the logits and do dE alone, 'ownVocab' blocks (a class tile, every row block, two at a
 * time, dW held across the pair as dE is) recompute them again and do dW alone. Their flushes are
 * plain adds of column pairs (an 8-byte load and store: as many L2 sector requests as reductions)
 * to accumulators each block owns, which stay in L2 only while the blocks in flight own less than
 * its capacity (otherwise every flush reads and writes DRAM); dE's partials are zeroed and summed
 * in split order by streaming passes.
 */
export function mmaBackwardEstimate(c: Case, gpu: Gpu, f: MmaBackwardFacts, skipped = 0, dERun = 1,
  mode: MmaBackwardMode = 'atomic'): Estimate {
  const bytes = 2;
  const rowBlocks = Math.ceil(c.N / 128);
  const vocabTiles = Math.ceil(c.V / 64);
  const rowTiles = Math.ceil(c.N / 64);
  const stages = Math.ceil((c.D * bytes) / 64);
  let grid: number;
  let tiles: number;
  let splits = 1;
  if (mode === 'ownVocab') {
    grid = Math.ceil(c.V / 128);  // class tiles, each walking every row block, two at a time
    tiles = grid * rowBlocks;
  } else {
    // cuda/kernels.h linearCrossEntropyPlan: the forward's splits, or deterministic dE's
    const [target, most] = mode === 'atomic' ? [1024, 64] : [512, 16];
    const wanted = Math.min(most, Math.ceil(target / rowTiles), vocabTiles);
    const perSplit = Math.ceil(vocabTiles / wanted);
    splits = Math.ceil(vocabTiles / perSplit);
    grid = rowBlocks * splits;
    tiles = grid * Math.ceil((perSplit * 64) / 128);
  }
  const kept = tiles * (1 - skipped);
  const resident = Math.max(1, blocksPerSm(gpu, f.registers, 256, f.sharedBytes));
  const waves = grid / (gpu.sms * resident);
  const tail = Math.ceil(waves) / waves;
  const nvd = c.N * c.V * c.D;
  const foldsDE = mode !== 'ownVocab';
  const foldsDW = mode !== 'ownRows';
  // flushed elements: dE once per dERun kept tiles, dW once per kept tile (ownVocab: per dERun, its pairs share classes)
  const flushed = kept * ((foldsDE ? 1 / dERun : 0) + (foldsDW ? (mode === 'ownVocab' ? 1 / dERun : 1) : 0)) * 128 * c.D;
  const products = (foldsDE ? 1 : 0) + (foldsDW ? 1 : 0);
  // owners copy one operand per D-slice stage (the other is zero-filled), atomic mode both
  const sliceOperands = products;
  let dram = (c.N + c.V) * c.D * bytes;
  // a scalar reduction: a quarter of a sector request (a quad's 4 in one sector); a paired one half as much
  let l2Ops = gpu.vectorRed ? flushed / 2 : flushed;
  if (mode === 'atomic') {
    dram += Math.ceil(waves) * c.V * c.D * 4 * 2 + c.N * c.D * 4 * 2;
  } else {
    // an owner's plain add of a column pair: a load and a store, so a quad's 8 columns (one sector) take
    // two sector requests, as two reductions of 4 do
    l2Ops = flushed;
    // each block in flight owns its accumulators (128 dE rows, or 2 × 128 dW rows, × D fp32): beyond
    // L2's capacity every flush reads and writes DRAM; the partials' zeroing and ordered sum stream
    const owned = Math.min(grid, gpu.sms * resident) * 128 * c.D * 4;
    dram += owned > gpu.l2Bytes ? flushed * 8 : (foldsDE ? c.N : c.V) * c.D * 4 * 2;
    if (foldsDE && splits > 1) dram += ((splits - 1) + splits + 1) * c.N * c.D * 4;
  }
  const parts = {
    tensor: (2 * nvd + 2 * products * nvd * (1 - skipped)) / gpu.bf16,
    issue: (tiles * stages * 8 * f.logitStep.instructions + kept * stages * 8 * f.sliceStep.instructions) / (gpu.sms * 4 * gpu.clockHz),
    smem: (tiles * stages * (8 * f.logitStep.ldmatrix * 512 + 16384) + kept * stages * (8 * f.sliceStep.ldmatrix * 512 + 16384)) /
      (gpu.sms * gpu.smemBytesPerClock * gpu.clockHz),
    l2: (tiles * stages * 2 * 128 * 64 + kept * stages * sliceOperands * 128 * 64 + (l2Ops / 4) * 32) / gpu.l2,
    dram: dram / gpu.hbm,
  };
  const [bound, t] = Object.entries(parts).reduce((a, b) => (b[1] > a[1] ? b : a));
  return { seconds: t * tail, bound, parts, blocksPerSm: resident };
}

/**
 * The vocabulary order that filtering's backward walks (cuda/linear_cross_entropy.cu): E's mean
 * row and the GEMV W·mean read E and W once from DRAM; the bitonic sort of the power-of-2 padded
 * 8-byte keys is log₂P·(log₂P + 1)/2 launches, each reading and writing every key (L2 holds them
 * at these sizes, DRAM assumed), plus ~3 µs a launch (assumed).
 */
export function orderSeconds(c: Case, gpu: Gpu): number {
  const bytes = c.dtype === 'bf16' ? 2 : 4;
  const lg = Math.ceil(Math.log2(c.V));
  const launches = (lg * (lg + 1)) / 2 + 4;
  return ((c.N + c.V) * c.D * bytes) / gpu.hbm + launches * ((2 ** lg * 8 * 2) / gpu.hbm + 3e-6);
}

/** Three GEMMs (logits, dE, dW) at the tensor peak, and at 70% of it: the row-chunked baseline. */
export function threeGemmSeconds(c: Case, gpu: Gpu): [number, number] {
  const t = (3 * 2 * c.N * c.V * c.D) / (c.dtype === 'bf16' ? gpu.bf16 : gpu.tf32);
  return [t, t / 0.7];
}

// ---------------------------------------------------------------- compile and report

interface Compiled {
  resources: Map<string, KernelResources>;
  ptx80: string;
}

/** ptxas -v for sm_80 and sm_90, and the sm_80 PTX, of cuda/linear_cross_entropy.cu. */
function compile(): Compiled {
  const work = mkdtempSync(path.join(tmpdir(), 'cutloss-gpu-model-'));
  const src = path.join(root, 'cuda/linear_cross_entropy.cu');
  const ptx = path.join(work, 'lce.ptx');
  const run = (args: string[]) => {
    const r = spawnSync('nvcc', ['-std=c++17', '-O3', ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
    if (r.status !== 0) throw new Error(`nvcc ${args.join(' ')} failed: ${r.error?.message ?? r.stderr}`);
    return `${r.stdout}${r.stderr}`;  // ptxas -v reports on stderr
  };
  run(['-arch=sm_80', '-ptx', src, '-o', ptx]);
  const log = run(['-gencode', 'arch=compute_80,code=sm_80', '-gencode', 'arch=compute_90,code=sm_90', '-Xptxas=-v', '-c', src,
    '-o', path.join(work, 'lce.o')]);
  return { resources: parsePtxasLog(log), ptx80: readFileSync(ptx, 'utf8') };
}

/** The mma forward's instantiation: plain softmax cross-entropy (the cases here), or with every option's epilogue. */
export const MMA_KERNEL = (dtype: 'bf16' | 'tf32', options = false) =>
  `linearCeForwardMmaKernelINS0_7Mma${dtype === 'bf16' ? 'Bf16' : 'Tf32'}ELb${options ? 1 : 0}E`;
const BACKWARD_KERNEL = 'linearCeBackwardKernelINS0_8WmmaTileI13__nv_bfloat16Li16ES3_Li32ELi8EEELi0E';
export const MMA_BACKWARD_KERNEL = 'linearCeBackwardMmaKernelILi0E';
/** Deterministic mode's owner kernels (BackwardMode kBackwardOwnRows, kBackwardOwnVocab). */
const MMA_OWNER_KERNELS = { ownRows: 'linearCeBackwardMmaKernelILi1E', ownVocab: 'linearCeBackwardMmaKernelILi2E' } as const;
/** cuda/linear_ce_backward.cuh's kMmaBackwardSharedBytes: ring 64 KiB, G of two tiles 64 KiB, bias sums 1 KiB, 2 × 128 row records, 2 × 128 classes. */
const MMA_BACKWARD_SHARED = 65536 + 2 * 32768 + 1024 + 2 * 128 * 72 + 2 * 512;
/** cuda/linear_ce_backward.cuh's kGradPairTiles: class tiles whose dE products share one flush. */
const MMA_BACKWARD_DE_RUN = 2;

function resourcesOf(res: Map<string, KernelResources>, nameIncludes: string, arch: string): KernelResources {
  for (const [k, v] of res) if (k.includes(nameIncludes) && k.endsWith(`@${arch}`)) return v;
  throw new Error(`ptxas said nothing about ${nameIncludes} for ${arch}`);
}

const ms = (s: number) => `${(s * 1e3).toFixed(1)} ms`;

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const c = compile();
  const rows: Record<string, unknown>[] = [];
  const problems: string[] = [];
  for (const [dtype, options] of [['bf16', false], ['bf16', true], ['tf32', false], ['tf32', true]] as const) {
    for (const arch of ['sm_80', 'sm_90']) {
      const r = resourcesOf(c.resources, MMA_KERNEL(dtype, options), arch);
      if (r.spillBytes > 0 || r.stackBytes > 0) problems.push(`${dtype} mma forward on ${arch}: ${r.stackBytes} B stack, ${r.spillBytes} B spills`);
      const gpu = GPUS[arch === 'sm_80' ? 0 : 1]!;
      const resident = blocksPerSm(gpu, r.registers, MMA_FORWARD.threads, MMA_FORWARD.sharedBytes);
      if (resident < 2) problems.push(`${dtype} mma forward on ${arch}: ${r.registers} registers, ${resident} block(s) per SM (< 2)`);
    }
  }
  const staging = stagingPerElement(ptxEntry(c.ptx80, BACKWARD_KERNEL));
  const bwdBody = ptxEntry(c.ptx80, MMA_BACKWARD_KERNEL);
  const logitStep = loopWith(bwdBody, [/mma\.sync/, /cp\.async\.wait_group/], [/ldmatrix\S*\.trans/]);
  // ptxas lays the flush (bounds-checked red.global.add) out of the slice loop's straight line:
  // its reductions, each with ~4 instructions of address and predicate, are added to the step
  const sliceLoop = loopWith(bwdBody, [/mma\.sync/, /ldmatrix\S*\.trans/]);
  // atomicAdd with its result unused: atom.global.add.f32 in the PTX, RED in SASS; dBias's, one per tile of a pair, are not the step's
  const reds = bwdBody.filter((l) => /(?:red|atom)\.global\.add\.f32/.test(l)).length - MMA_BACKWARD_DE_RUN;
  // the step holds both warp roles' code (warps 0–3 dE, 4–7 dW, 32 × 32 each): a warp runs one half of it
  const roles = 2;
  const sliceStep = { instructions: (sliceLoop.instructions + 4 * reds) / roles, mma: sliceLoop.mma / roles,
    ldmatrix: sliceLoop.ldmatrix / roles, reductions: reds / roles };
  // the owners' flushes are plain adds of column pairs (ld.v2, two adds, st.v2: ~6 instructions with address and
  // predicate); the scalar stores are the unaligned fallback and dBias's, not the step's
  const ownerSteps = Object.fromEntries((['ownRows', 'ownVocab'] as const).map((mode) => {
    const body = ptxEntry(c.ptx80, MMA_OWNER_KERNELS[mode]);
    const loop = loopWith(body, [/mma\.sync/, /ldmatrix\S*\.trans/]);
    const pairStores = body.filter((l) => /st\.global\.v2\.f32/.test(l)).length;
    if (pairStores === 0) problems.push(`mma ${mode} owners: no paired (st.global.v2.f32) flush in the PTX`);
    return [mode, { logitStep: loopWith(body, [/mma\.sync/, /cp\.async\.wait_group/], [/ldmatrix\S*\.trans/]),
      sliceStep: { ...loop, instructions: loop.instructions + 6 * pairStores, reductions: 0 } }];
  })) as Record<'ownRows' | 'ownVocab', { logitStep: LoopFacts; sliceStep: LoopFacts }>;
  for (const arch of ['sm_80', 'sm_90']) {
    for (const [what, name] of [['mma backward', MMA_BACKWARD_KERNEL], ['mma dE owners', MMA_OWNER_KERNELS.ownRows],
      ['mma dW owners', MMA_OWNER_KERNELS.ownVocab]] as const) {
      const r = resourcesOf(c.resources, name, arch);
      if (r.spillBytes > 0 || r.stackBytes > 0) problems.push(`${what} on ${arch}: ${r.stackBytes} B stack, ${r.spillBytes} B spills`);
    }
  }
  /** Deterministic mode's backward: the two owner kernels, one after the other. */
  const deterministicEstimate = (cs: Case, g: Gpu, arch: string, skipped: number) =>
    (['ownRows', 'ownVocab'] as const).map((mode) => {
      const r = resourcesOf(c.resources, MMA_OWNER_KERNELS[mode], arch);
      const facts = { registers: r.registers, sharedBytes: MMA_BACKWARD_SHARED, ...ownerSteps[mode] };
      return mmaBackwardEstimate(cs, g, facts, skipped, MMA_BACKWARD_DE_RUN, mode);
    });
  // Skipped tiles measured on a trained-like head of the case's V (256 rows: two row blocks; rank 32),
  // sorted by mean logit as the kernels walk it, counted by the JS backend's fused loss.
  const skips = new Map<Case, { skipped: number; visited: number }>();
  for (const cs of CASES) {
    const h = trainedLikeHead(7, Math.min(cs.N, 256), 32, cs.V);
    skips.set(cs, skippedTiles(h, meanLogitOrder(h)));
  }
  const projections = GPUS.map((g) => {
    const rb = resourcesOf(c.resources, MMA_BACKWARD_KERNEL, g.name === 'A100' ? 'sm_80' : 'sm_90');
    const f = { registers: rb.registers, sharedBytes: MMA_BACKWARD_SHARED, logitStep, sliceStep };
    return `${g.name} ${[1, 2, 4, Infinity].map((run) => ms(mmaBackwardEstimate(CASES[0]!, g, f, 0, run).seconds)).join(' → ')}`;
  });
  console.log('cutloss GPU performance MODEL — estimates from ptxas, the PTX and the tiling; no GPU measured these.');
  for (const g of GPUS) console.log(`  ${g.note}`);
  for (const cs of CASES) {
    const mix = mmaStepMix(ptxEntry(c.ptx80, MMA_KERNEL(cs.dtype)));
    const optionsMix = mmaStepMix(ptxEntry(c.ptx80, MMA_KERNEL(cs.dtype, true)));
    for (const g of GPUS) {
      const arch = g.name === 'A100' ? 'sm_80' : 'sm_90';
      const r = resourcesOf(c.resources, MMA_KERNEL(cs.dtype), arch);
      const fwd = forwardEstimate(cs, g, { registers: r.registers, ...MMA_FORWARD, mix });
      const ro = resourcesOf(c.resources, MMA_KERNEL(cs.dtype, true), arch);
      const fwdOptions = forwardEstimate(cs, g, { registers: ro.registers, ...MMA_FORWARD, mix: optionsMix });
      const old = backwardEstimate(cs, g, staging);
      const rb = resourcesOf(c.resources, MMA_BACKWARD_KERNEL, arch);
      const bwdFacts = { registers: rb.registers, sharedBytes: MMA_BACKWARD_SHARED, logitStep, sliceStep };
      // tf32 keeps the FloatTile backward
      const bwd = cs.dtype === 'bf16' ? mmaBackwardEstimate(cs, g, bwdFacts, 0, MMA_BACKWARD_DE_RUN) : old;
      const skip = skips.get(cs)!;
      const bwdSkip = cs.dtype === 'bf16' ? mmaBackwardEstimate(cs, g, bwdFacts, skip.skipped / skip.visited, MMA_BACKWARD_DE_RUN) : null;
      const order = orderSeconds(cs, g);
      const [ownRows, ownVocab] = deterministicEstimate(cs, g, arch, 0);
      const ownersFiltered = deterministicEstimate(cs, g, arch, skip.skipped / skip.visited).reduce((t, e) => t + e.seconds, 0);
      const [gemm, gemm70] = threeGemmSeconds(cs, g);
      rows.push({
        case: cs.name, gpu: g.name, registers: r.registers, blocksPerSm: fwd.blocksPerSm,
        instrPerMma: +(mix.instructions / mix.mma).toFixed(2), smemBytesPerMma: +((mix.ldmatrix * 512 + 16384 / (MMA_FORWARD.threads / 32)) / mix.mma).toFixed(1),
        forward: ms(fwd.seconds), forwardBound: fwd.bound, forwardOfPeak: `${((fwd.parts.tensor! / fwd.seconds) * 100).toFixed(0)}%`,
        forwardWithOptions: `${ms(fwdOptions.seconds)} (${fwdOptions.bound}, ${ro.registers} registers)`,
        backward: ms(bwd.seconds), backwardBound: bwd.bound,
        backwardOfPeak: `${(((6 * cs.N * cs.V * cs.D) / (cs.dtype === 'bf16' ? g.bf16 : g.tf32) / bwd.seconds) * 100).toFixed(0)}%`,
        skipped: `${((skip.skipped / skip.visited) * 100).toFixed(1)}%`,
        backwardFiltered: bwdSkip === null ? '' : `${ms(bwdSkip.seconds)} + order ${ms(order)}`,
        oldBackward: ms(old.seconds), total: ms(fwd.seconds + bwd.seconds),
        totalFiltered: bwdSkip === null ? '' : ms(fwd.seconds + order + bwdSkip.seconds),
        deterministicBackward: cs.dtype === 'bf16'
          ? `${ms(ownRows!.seconds + ownVocab!.seconds)} (dE ${ms(ownRows!.seconds)} ${ownRows!.bound}, dW ${ms(ownVocab!.seconds)} ${ownVocab!.bound}); ` +
            `filtered ${ms(ownersFiltered)} + order ${ms(order)}`
          : '',
        threeGemm: `${ms(gemm)} (at 70%: ${ms(gemm70)})`, cce: cs.N === 8192 && g.name === 'A100' ? '134.8 ms (paper, measured)' : '',
      });
    }
  }
  if (args.includes('--json')) {
    console.log(JSON.stringify({ model: true, staging, rows }, null, 2));
  } else {
    console.table(rows);
    console.log(`backward staging: ${staging.toFixed(1)} PTX instructions per staged element (FloatTile products: tf32, and deterministic mode off the bf16 tensor-core path)`);
    console.log(`mma backward: logit step ${logitStep.instructions} instructions / ${logitStep.mma} mma; D-slice step per warp ${sliceStep.instructions} / ${sliceStep.mma} mma, ${sliceStep.ldmatrix} ldmatrix, ${sliceStep.reductions} red`);
    console.log(`exact gradients of the paper case with dE flushed once per 1 / 2 (as built) / 4 / ∞ class tiles (the others projections): ${projections.join('; ')}`);
    console.log('skipped: 128 × 128 tiles that filterEps 2^-12 skips on a trained-like head (bench/gpu-model.ts trainedLikeHead: ' +
      'Zipf labels, 256 rows, the case\'s V), vocabulary sorted by mean logit: measured by the JS backend\'s count; ' +
      'backwardFiltered: the mma backward with that fraction skipped, plus the vocabulary order (GEMV and sort)');
  }
  if (problems.length > 0) {
    console.error(problems.join('\n'));
    if (args.includes('--check')) process.exitCode = 1;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
