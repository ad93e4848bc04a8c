// S2-bf16, S2-peaked-bf16 and sweep-bf16: the cpu backend's bf16 linearCrossEntropy beside its
// f32 one and the GEMM limits, timed in one child process in turns (one call of each contestant
// per round; medians over rounds, ratios per round), so a shared host's drift moves them alike:
//   S2-bf16         N 2048, D 512, V 32000: cutloss f32; cutloss bf16 on its bf16 GEMM (the
//                   logits' gradient rounded to bf16), 'split' (the gradient as two bf16 terms)
//                   and the portable path (bf16 widened, the f32 GEMM); the bf16 GEMM limit (E·Wᵀ,
//                   G·W, Gᵀ·E, bf16 operands, fp32 results) and the f32 one; PyTorch's bf16 CPU
//                   path (matmul in bf16, cross_entropy in fp32) where python3-torch is installed.
//   S2-peaked-bf16  S2 with logits of std ≈ 20 and the default filterEps, uniform and Zipf labels.
//   sweep-bf16      V 8k .. 256k at N 4096, D 256: bf16 and f32 (also with label smoothing 0.1, and
//                   each of the cpu backend's layouts forced: whole rows, vocabulary tiles)
//                   against the bf16 and f32 GEMM limits (each row's ratio to its own limit; f32
//                   against the GEMMs into fresh outputs, as PyTorch times them, and into reused ones).
//   tsx lib/bench/bf16-child.ts [--tiny] [--quick] [--runs 3] [--groups S2-bf16,sweep-bf16]

import { spawnSync } from 'node:child_process';
import * as lib from '../index.js';
import { native } from '../native.js';
import { cpuAddon, type CpuAddon } from '../cpuBackend.js';
import { labelValues, toBf16, uniformValues } from './data.js';

export const BF16_GROUPS = ['S2-bf16', 'S2-peaked-bf16', 'sweep-bf16'];

export interface Bf16Row {
  name: string;
  ms: number;
  /** Median over rounds of this row's time over the reference row's (the group's first). */
  ratio: number;
  /** Median over rounds of this row's time over its limit row's (named in `limit`). */
  vsLimit?: number;
  limit?: string;
  /** The same over a second limit row (`limit2`). */
  vsLimit2?: number;
  limit2?: string;
  note?: string;
}

export interface Bf16Result {
  bf16Gemm: string;
  threads: number;
  runs: number;
  groups: { name: string; shape: { N: number; D: number; V: number }; rows: Bf16Row[] }[];
  skipped: { what: string; reason: string }[];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/**
 * Each contestant once per round after one warm-up call each; medians and per-round ratios to
 * the first, and to the contestant named by `limit` where one is. The first runs last in each
 * round: an f32 call keeps its 64 MB gradient, taking a pooled buffer that the bf16 calls (which
 * hand theirs back) would otherwise find gone, a fresh mapping they never meet in a loop of their
 * own; each contestant then sees memory as in a loop of its own calls.
 */
function inTurns(runs: number, contestants: { name: string; run: () => unknown; note?: string; limit?: string; limit2?: string }[]): Bf16Row[] {
  for (const c of contestants) c.run();
  const times = contestants.map(() => [] as number[]);
  const order = [...contestants.keys()].slice(1).concat(0);
  for (let r = 0; r < runs; r++) {
    for (const i of order) {
      const t0 = performance.now();
      contestants[i]!.run();
      times[i]!.push(performance.now() - t0);
    }
  }
  const perRound = (i: number, ref: number) => median(times[i]!.map((t, r) => t / times[ref]![r]!));
  return contestants.map((c, i) => {
    const limit = c.limit === undefined ? -1 : contestants.findIndex((d) => d.name === c.limit);
    const limit2 = c.limit2 === undefined ? -1 : contestants.findIndex((d) => d.name === c.limit2);
    return {
      name: c.name, ms: median(times[i]!), ratio: perRound(i, 0), ...(limit >= 0 ? { vsLimit: perRound(i, limit), limit: c.limit } : {}),
      ...(limit2 >= 0 ? { vsLimit2: perRound(i, limit2), limit2: c.limit2 } : {}),
      ...(c.note ? { note: c.note } : {}),
    };
  });
}

/** Labels drawn from a Zipf law over the vocabulary (p_j ∝ 1/(j + 1)^1.1), by inverting its CDF. */
function zipfLabels(N: number, V: number, seed: number): Int32Array {
  const cdf = new Float64Array(V);
  let s = 0;
  for (let j = 0; j < V; j++) cdf[j] = s += 1 / (j + 1) ** 1.1;
  const u = uniformValues(N, seed, 1); // uniform in (−√3, √3)
  return Int32Array.from(u, (x) => {
    const t = ((x / Math.sqrt(3) + 1) / 2) * s;
    let lo = 0, hi = V - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cdf[mid]! < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  });
}

/**
 * Outputs of the three products: allocated once (the limit times the GEMMs alone), or null: each
 * product into a new array, as PyTorch times them (the issue's "three full-size GEMMs").
 */
function limitOutputs(N: number, D: number, block: number, reuse: boolean) {
  return reuse ? { logits: new Float32Array(N * block), dE: new Float32Array(N * D), dW: new Float32Array(block * D) } : null;
}

/** E·Wᵀ, G·W, Gᵀ·E with bf16 operands (G a fixed block, reused), over the vocabulary in blocks of `block` columns. */
function bf16GemmLimit(a: CpuAddon, E: Uint16Array, W: Uint16Array, N: number, D: number, V: number, block: number): () => void {
  const G = toBf16(uniformValues(N * Math.min(block, V), 7, 1e-3));
  const out = limitOutputs(N, D, Math.min(block, V), true)!;
  return () => {
    for (let v0 = 0; v0 < V; v0 += block) {
      const vb = Math.min(block, V - v0);
      const Wb = W.subarray(v0 * D, (v0 + vb) * D);
      const Gb = vb === block || vb === V ? G : G.subarray(0, N * vb); // only the shape matters for time
      a.cpuBf16Gemm(false, true, N, vb, D, E, Wb, out.logits.subarray(0, N * vb));
      a.cpuBf16Gemm(false, false, N, D, vb, Gb, Wb, out.dE);
      a.cpuBf16Gemm(true, false, vb, D, N, Gb, E, out.dW.subarray(0, vb * D));
    }
  };
}

function f32GemmLimit(a: CpuAddon, E: Float32Array, W: Float32Array, N: number, D: number, V: number, block: number,
  reuse = true): () => void {
  const G = uniformValues(N * Math.min(block, V), 7, 1e-3);
  const out = limitOutputs(N, D, Math.min(block, V), reuse);
  return () => {
    for (let v0 = 0; v0 < V; v0 += block) {
      const vb = Math.min(block, V - v0);
      const Wb = W.subarray(v0 * D, (v0 + vb) * D);
      const Gb = vb === block || vb === V ? G : G.subarray(0, N * vb);
      a.cpuSgemm(false, true, N, vb, D, E, Wb, out?.logits.subarray(0, N * vb));
      a.cpuSgemm(false, false, N, D, vb, Gb, Wb, out?.dE);
      a.cpuSgemm(true, false, vb, D, N, Gb, E, out?.dW.subarray(0, vb * D));
    }
  };
}

/** PyTorch's bf16 CPU path on the same shape: median ms of fwd+bwd, or why it did not run. */
function torchBf16(N: number, D: number, V: number, std: number, runs: number, threads: number): { ms: number; note: string } | { reason: string } {
  const program = `
import json, sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(${threads})
N, D, V = ${N}, ${D}, ${V}
E = (torch.rand(N, D) * 2 - 1).mul(3 ** 0.5).bfloat16().requires_grad_()
W = (torch.rand(V, D) * 2 - 1).mul(${std} * 3 ** 0.5).bfloat16().requires_grad_()
y = torch.randint(0, V, (N,))
def step():
    E.grad = None; W.grad = None
    loss = torch.nn.functional.cross_entropy((E @ W.t()).float(), y)
    loss.backward()
t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
ts = []
for _ in range(${runs} if first < 60 else 0):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
ts.sort()
print(json.dumps({"ms": 1000 * (ts[len(ts) // 2] if ts else first), "version": torch.__version__, "runs": len(ts)}))
`;
  // Debian's python3-torch is for /usr/bin/python3, which another python3 may shadow on PATH
  let r = spawnSync('/usr/bin/python3', ['-c', program], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) r = spawnSync('python3', ['-c', program], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) return { reason: `python3 with torch did not run: ${(r.stderr || String(r.error ?? '')).trim().split('\n').pop()}` };
  const o = JSON.parse(r.stdout.trim().split('\n').pop()!) as { ms: number; version: string; runs: number };
  return { ms: o.ms, note: `torch ${o.version}, bf16 matmul, cross_entropy in fp32, ${threads} threads; ${o.runs ? `median of ${o.runs}` : 'one call (over 60 s)'}; timed after the rounds` };
}

export function measureBf16(o: { tiny: boolean; quick: boolean; runs: number; groups: string[] }): Bf16Result {
  lib.setBackend('cpu');
  const a = cpuAddon(native().addon);
  if (a === null) throw new Error('the cpu backend is unavailable');
  const info = a.cpuInfo();
  const out: Bf16Result = {
    bf16Gemm: info.bf16Gemm.isa === '' ? `${info.bf16Gemm.path}: ${info.bf16Gemm.note}` : `${info.bf16Gemm.path} on ${info.bf16Gemm.isa}`,
    threads: info.threads, runs: o.runs, groups: [], skipped: [],
  };
  const oneDnn = a.cpuSetBf16Gemm('auto');
  if (!oneDnn) out.skipped.push({ what: "bf16 'auto' and 'split'", reason: `no bf16 GEMM here (${info.bf16Gemm.note}): both are the portable path` });
  const withMode = (mode: 'auto' | 'split' | 'off', fn: () => unknown) => () => {
    a.cpuSetBf16Gemm(mode);
    try {
      return fn();
    } finally {
      a.cpuSetBf16Gemm('auto');
    }
  };
  // the cpu backend's two layouts of a call, forced (auto picks tiles where the budget holds few whole rows)
  const withTiles = (tiles: 'on' | 'off', fn: () => unknown) => () => {
    const before = process.env.CUTLOSS_CPU_VOCAB_TILES;
    process.env.CUTLOSS_CPU_VOCAB_TILES = tiles;
    try {
      return fn();
    } finally {
      if (before === undefined) delete process.env.CUTLOSS_CPU_VOCAB_TILES;
      else process.env.CUTLOSS_CPU_VOCAB_TILES = before;
    }
  };
  const problem = (N: number, D: number, V: number, std: number) => {
    const Ef = uniformValues(N * D, 1, 1), Wf = uniformValues(V * D, 2, std);
    return {
      E32: lib.tensor(Ef, [N, D]), W32: lib.tensor(Wf, [V, D]),
      E16: lib.tensor(toBf16(Ef), [N, D], 'bf16'), W16: lib.tensor(toBf16(Wf), [V, D], 'bf16'),
    };
  };

  if (o.groups.includes('S2-bf16')) {
    const [N, D, V] = o.tiny ? [32, 32, 500] : [2048, 512, 32000];
    const p = problem(N, D, V, 0.05);
    const labels = labelValues(N, V, 3);
    const block = o.tiny ? V : 8000;
    const rows = inTurns(o.runs, [
      { name: 'cutloss f32', run: () => lib.linearCrossEntropy(p.E32, p.W32, labels) },
      { name: 'cutloss bf16 (G rounded to bf16)', run: withMode('auto', () => lib.linearCrossEntropy(p.E16, p.W16, labels)) },
      { name: "cutloss bf16 'split' (G as two bf16 terms)", run: withMode('split', () => lib.linearCrossEntropy(p.E16, p.W16, labels)) },
      { name: 'cutloss bf16 portable (widened, f32 GEMM)', run: withMode('off', () => lib.linearCrossEntropy(p.E16, p.W16, labels)) },
      { name: 'bf16 GEMM limit (E·Wᵀ, G·W, Gᵀ·E)', run: bf16GemmLimit(a, p.E16.data as Uint16Array, p.W16.data as Uint16Array, N, D, V, block) },
      { name: 'f32 GEMM limit (E·Wᵀ, G·W, Gᵀ·E)', run: f32GemmLimit(a, p.E32.data as Float32Array, p.W32.data as Float32Array, N, D, V, block) },
    ]);
    const t = torchBf16(N, D, V, 0.05, o.runs, info.threads);
    if ('ms' in t) rows.push({ name: 'PyTorch bf16 (CPU)', ms: t.ms, ratio: t.ms / rows[0]!.ms, note: t.note });
    else out.skipped.push({ what: 'PyTorch bf16', reason: t.reason });
    out.groups.push({ name: 'S2-bf16', shape: { N, D, V }, rows });
  }
  if (o.groups.includes('S2-peaked-bf16')) {
    const [N, D, V] = o.tiny ? [32, 32, 500] : [2048, 512, 32000];
    const p = problem(N, D, V, 0.884); // logits of std √512·0.884 ≈ 20
    const uniform = labelValues(N, V, 3);
    const zipf = zipfLabels(N, V, 5);
    const rows = inTurns(o.runs, [
      { name: 'cutloss f32, uniform labels', run: () => lib.linearCrossEntropy(p.E32, p.W32, uniform) },
      { name: 'cutloss bf16, uniform labels', run: withMode('auto', () => lib.linearCrossEntropy(p.E16, p.W16, uniform)) },
      { name: 'cutloss f32, Zipf labels', run: () => lib.linearCrossEntropy(p.E32, p.W32, zipf) },
      { name: 'cutloss bf16, Zipf labels', run: withMode('auto', () => lib.linearCrossEntropy(p.E16, p.W16, zipf)) },
      { name: 'cutloss bf16 portable, Zipf labels', run: withMode('off', () => lib.linearCrossEntropy(p.E16, p.W16, zipf)) },
    ]);
    out.groups.push({ name: 'S2-peaked-bf16 (default filterEps)', shape: { N, D, V }, rows });
  }
  if (o.groups.includes('sweep-bf16')) {
    const [N, D] = o.tiny ? [32, 32] : [4096, 256];
    let vocabs = o.tiny ? [256, 512, 1024, 2048] : [8000, 16000, 32000, 64000, 128000, 256000];
    if (o.quick) vocabs = vocabs.filter((_, i) => i % 2 === 0 || i === vocabs.length - 1);
    for (const V of vocabs) {
      const p = problem(N, D, V, 0.05);
      const labels = labelValues(N, V, 3);
      const f32Limit = 'f32 GEMM limit (fresh outputs)', f32Reused = 'f32 GEMMs, outputs reused', bf16Limit = 'bf16 GEMM limit';
      const block = o.tiny ? V : 4000;
      const rows = inTurns(o.runs, [
        { name: bf16Limit, run: bf16GemmLimit(a, p.E16.data as Uint16Array, p.W16.data as Uint16Array, N, D, V, block) },
        { name: 'cutloss bf16', run: withMode('auto', () => lib.linearCrossEntropy(p.E16, p.W16, labels)), limit: bf16Limit },
        { name: "cutloss bf16 'split'", run: withMode('split', () => lib.linearCrossEntropy(p.E16, p.W16, labels)), limit: bf16Limit },
        { name: f32Limit, run: f32GemmLimit(a, p.E32.data as Float32Array, p.W32.data as Float32Array, N, D, V, block, false) },
        { name: f32Reused, run: f32GemmLimit(a, p.E32.data as Float32Array, p.W32.data as Float32Array, N, D, V, block) },
        { name: 'cutloss f32', run: () => lib.linearCrossEntropy(p.E32, p.W32, labels), limit: f32Limit, limit2: f32Reused },
        { name: 'cutloss f32, label smoothing 0.1', run: () => lib.linearCrossEntropy(p.E32, p.W32, labels, { labelSmoothing: 0.1 }),
          limit: f32Limit, limit2: f32Reused },
        { name: 'cutloss f32, whole rows', run: withTiles('off', () => lib.linearCrossEntropy(p.E32, p.W32, labels)),
          limit: f32Limit, limit2: f32Reused },
        { name: 'cutloss f32, vocabulary tiles', run: withTiles('on', () => lib.linearCrossEntropy(p.E32, p.W32, labels)),
          limit: f32Limit, limit2: f32Reused },
      ]);
      out.groups.push({ name: `sweep-bf16 V ${V}`, shape: { N, D, V }, rows });
    }
  }
  return out;
}

export function bf16Table(r: Bf16Result): string {
  const lines = [`bf16 on cpu: ${r.bf16Gemm}; ${r.threads} threads; forward + backward, median of ${r.runs} rounds in turns`];
  for (const g of r.groups) {
    lines.push(`${g.name}: N ${g.shape.N}, D ${g.shape.D}, V ${g.shape.V}   (ratio: time over the first row's, per round)`);
    for (const row of g.rows) {
      const vsLimit = (row.vsLimit === undefined ? '' : `   ${row.vsLimit.toFixed(2)}× the ${row.limit!.replace(/ \(.*/, '')}`) +
        (row.vsLimit2 === undefined ? '' : `, ${row.vsLimit2.toFixed(2)}× the ${row.limit2!.replace(/ \(.*/, '')}`);
      lines.push(`  ${row.name.padEnd(44)} ${row.ms.toFixed(1).padStart(9)} ms   ${row.ratio.toFixed(2)}×${vsLimit}${row.note ? `   ${row.note}` : ''}`);
    }
  }
  for (const s of r.skipped) lines.push(`skipped: ${s.what}: ${s.reason}`);
  return lines.join('\n');
}

/** The child process's entry (lib/bench/bf16-child.ts). */
export function bf16Main(): void {
  const args = process.argv.slice(2);
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const groups = (value('--groups') ?? BF16_GROUPS.join(',')).split(',');
  const r = measureBf16({ tiny: args.includes('--tiny'), quick: args.includes('--quick'), runs: Number(value('--runs') ?? 3), groups });
  console.log(bf16Table(r));
  console.log(`@@BF16 ${JSON.stringify(r)}`);
}
